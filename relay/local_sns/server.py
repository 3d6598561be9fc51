"""Running the local SNS: in the foreground (`relay local-sns`), in a thread, or from afar.

`serve` is what the command calls; `LocalSnsServer` runs it on a free loopback port inside a test
or the demo; `LocalSnsClient` reads and steers one running in another process over HTTP.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from types import FrameType, TracebackType
from typing import Any

import orjson
import uvicorn

from relay.local_sns.app import LocalSnsApp
from relay.local_sns.faults import fault_spec
from relay.local_sns.protocol import DEFAULT_REGION
from relay.local_sns.state import LocalSnsState

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4575
"""LocalStack's old SNS port; the local SNS is never on AWS's well-known 443."""
DEFAULT_START_TIMEOUT_S = 10.0
DEFAULT_STOP_TIMEOUT_S = 10.0


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    record_file: str | os.PathLike[str] | None = None,
    log_level: str = "warning",
    max_recorded_messages: int | None = None,
) -> None:
    """Run the local SNS in the foreground until SIGINT or SIGTERM, then return normally.

    Raises OSError when the address cannot be bound (in use, not local).
    """
    state = LocalSnsState(record_file=record_file, max_recorded_messages=max_recorded_messages)
    # uvicorn re-raises the signal that stopped it once it has shut down, which would end the
    # process by SIGTERM (status 143) rather than exit 0; a handler in place absorbs the re-raise.
    in_main = threading.current_thread() is threading.main_thread()
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, _absorb) for sig in handled} if in_main else {}
    try:
        # Bound here rather than by uvicorn, which would log the error and exit with status 3.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.create_server((host, port), family=family) as sock:
            uvicorn.Server(_config(LocalSnsApp(state), log_level)).run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        state.close()


class LocalSnsServer:
    """The local SNS on a free loopback port in a background thread; a context manager.

    `url` is the endpoint to give boto3; the inspection methods read the server's memory directly.
    """

    def __init__(
        self,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        record_file: str | os.PathLike[str] | None = None,
        max_recorded_messages: int | None = None,
        log_level: str = "warning",
    ) -> None:
        self.state = LocalSnsState(
            record_file=record_file, max_recorded_messages=max_recorded_messages
        )
        self.app = LocalSnsApp(self.state)
        self.url = ""
        self._address = (host, port)
        self._log_level = log_level
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    def start(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> LocalSnsServer:
        """Start serving; returns once requests are answered. Raises RuntimeError if it fails."""
        # Binding here, not in uvicorn, gives the free port before the thread starts, and a
        # listening socket queues connections made before the server loop accepts them.
        self._socket = socket.create_server(self._address)
        host, port = self._socket.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        self._server = uvicorn.Server(_config(self.app, self._log_level))
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name="local-sns",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.app.started.wait(0.05):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"the local SNS did not start on {self.url} within {timeout_s} s"
                )
        return self

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop serving and wait for the thread; the recorded messages stay readable."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout_s)
            if self._thread.is_alive():  # connections that would not close: stop waiting for them
                self._server.force_exit = True
                self._thread.join(timeout_s)
        if self._socket is not None:
            self._socket.close()
        self.state.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> LocalSnsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def messages(
        self, offset: int = 0, limit: int | None = None, topic_arn: str | None = None
    ) -> list[dict[str, Any]]:
        """Recorded messages, oldest first, from sequence number `offset` on."""
        messages: list[dict[str, Any]] = self.state.page(offset, limit, topic_arn)["messages"]
        return messages

    def stats(self) -> dict[str, Any]:
        """{"published", "requests", "rejected": {code: n}, ...} since the last reset."""
        return self.state.stats()

    def reset(self, *, topics: bool = False) -> None:
        """Forget messages, counters and the fault (and the topics, with `topics`)."""
        self.state.reset(topics=topics)

    def create_topic(
        self, name: str, region: str = DEFAULT_REGION, attributes: Mapping[str, str] | None = None
    ) -> str:
        """Create a topic (idempotent) without an SNS client; returns its ARN."""
        return self.state.create_topic(name, region, attributes or {}).arn

    def set_fault(
        self,
        mode: str,
        *,
        count: int | None = None,
        actions: Sequence[str] | None = None,
        delay_s: float | None = None,
        code: str | None = None,
        sender_fault: bool | None = None,
    ) -> None:
        """Make matching requests fail or stall: see `fault_spec` for the modes."""
        spec = fault_spec(
            mode,
            count=count,
            actions=actions,
            delay_s=delay_s,
            code=code,
            sender_fault=sender_fault,
        )
        self.state.set_fault(spec)

    def wait_for_published(
        self, count: int, timeout_s: float = DEFAULT_START_TIMEOUT_S
    ) -> list[dict[str, Any]]:
        """The recorded messages once there are `count`; raises TimeoutError if they don't come."""
        if not self.state.wait_published(count, timeout_s):
            raise TimeoutError(
                f"{self.state.stats()['published']} of {count} messages after {timeout_s} s"
            )
        return self.messages()


class LocalSnsClient:
    """Reads and steers a local SNS running in another process, through `/_local/`."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        data = None if payload is None else orjson.dumps(payload)
        request = urllib.request.Request(f"{self.url}/_local/{path}", data=data, method=method)  # noqa: S310 (our own http URL)
        with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:  # noqa: S310 (same)
            return orjson.loads(reply.read())

    def healthy(self) -> bool:
        """True if the server answers its health endpoint."""
        try:
            return bool(self._call("GET", "health")["ok"])
        except OSError:
            return False

    def messages(
        self, offset: int = 0, limit: int | None = None, topic_arn: str | None = None
    ) -> list[dict[str, Any]]:
        """Recorded messages, oldest first, from sequence number `offset` on."""
        query = urllib.parse.urlencode(
            {"offset": offset}
            | ({} if limit is None else {"limit": limit})
            | ({} if topic_arn is None else {"topic_arn": topic_arn})
        )
        messages: list[dict[str, Any]] = self._call("GET", f"messages?{query}")["messages"]
        return messages

    def stats(self) -> dict[str, Any]:
        """{"published", "requests", "rejected": {code: n}, ...} since the last reset."""
        stats: dict[str, Any] = self._call("GET", "stats")
        return stats

    def reset(self, *, topics: bool = False) -> None:
        """Forget messages, counters and the fault (and the topics, with `topics`)."""
        self._call("POST", "reset", {"topics": topics})

    def create_topic(
        self, name: str, region: str = DEFAULT_REGION, attributes: Mapping[str, str] | None = None
    ) -> str:
        """Create a topic (idempotent) without an SNS client; returns its ARN."""
        payload = {"name": name, "region": region, "attributes": dict(attributes or {})}
        arn: str = self._call("POST", "topics", payload)["topic_arn"]
        return arn

    def set_fault(
        self,
        mode: str,
        *,
        count: int | None = None,
        actions: Sequence[str] | None = None,
        delay_s: float | None = None,
        code: str | None = None,
        sender_fault: bool | None = None,
    ) -> None:
        """Make matching requests fail or stall: see `fault_spec` for the modes."""
        spec = fault_spec(
            mode,
            count=count,
            actions=actions,
            delay_s=delay_s,
            code=code,
            sender_fault=sender_fault,
        )
        self._call("POST", "faults", spec)


def _config(app: LocalSnsApp, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        ws="none",  # no websockets: nothing to load, nothing to warn
        server_header=False,
        timeout_graceful_shutdown=5,
    )


def _absorb(signum: int, frame: FrameType | None) -> None:
    """Ignore the signal uvicorn re-raises after its graceful shutdown."""
