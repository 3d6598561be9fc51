"""Tests of the ingest as a real uvicorn process (`python -m relay.ingest`) against a real Valkey.

The end-to-end path over TCP with keep-alive, and SIGTERM: stop accepting, finish the request
in flight (stored and answered), exit 0.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from relay.settings import Settings
from tests.helpers import free_port
from tests.ingest.conftest import WEBHOOK_SECRET, make_settings, poll, signed, stored_events

pytestmark = pytest.mark.slow

START_DEADLINE_S = 20.0
EXIT_DEADLINE_S = 20.0


class IngestProcess:
    """`python -m relay.ingest` on a free port, with the given settings in its environment."""

    def __init__(
        self,
        settings: Settings,
        cwd: Path,
        *,
        secret: str | None = WEBHOOK_SECRET,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        extra = env or {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")} | extra
        env |= {
            "RELAY_REDIS_URL": settings.require_redis_url(),
            "RELAY_NAMESPACE": settings.namespace,
        }
        if secret is not None:
            env["RELAY_WEBHOOK_SECRET"] = secret
        self.log_path = cwd / "ingest.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "relay.ingest", "--port", str(self.port)],
            cwd=cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self) -> None:
        def up() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"ingest exited {self.process.returncode}: {self.log()}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        assert poll(up, START_DEADLINE_S), f"ingest did not start: {self.log()}"

    def accepts_connections(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


def start(valkey: Any, tmp_path: Path) -> tuple[IngestProcess, Settings]:
    settings = make_settings(valkey.connection_url)
    process = IngestProcess(settings, tmp_path)
    process.wait_ready()
    return process, settings


def test_events_posted_over_http_are_stored_and_counted(
    valkey: Any, tmp_path: Path, redis_sync: redis.Redis
) -> None:
    """Over real HTTP with keep-alive: single and array posts stored, probes and metrics served."""
    process, settings = start(valkey, tmp_path)
    try:
        single = b'{"type":"message.new","cid":"messaging:a"}'
        array = b'[{"type":"reaction.new"} ,\n {"type":"member.added"}]'
        with httpx.Client(base_url=process.url, timeout=5) as client:
            answers = [
                client.post("/events", content=single, headers=signed(single, webhook_id="e2e-1")),
                client.post("/events", content=array, headers=signed(array, webhook_id="e2e-2")),
                client.post("/events", content=single, headers=signed(single, webhook_id="e2e-1")),
                client.post("/events", content=single, headers={"X-Signature": "bad"}),
            ]
            ready = client.get("/readyz")
            metrics = client.get("/metrics").text
    finally:
        process.close()

    assert [a.status_code for a in answers] == [200, 200, 200, 401]
    assert answers[2].json()["status"] == "duplicate"
    stored = stored_events(redis_sync, settings.namespace)
    assert [(e[0], e[1]) for e in stored] == [
        ("e2e-1", single.decode()),
        ("e2e-2-0", '{"type":"reaction.new"}'),
        ("e2e-2-1", '{"type":"member.added"}'),
    ]
    assert ready.json() == {"status": "ready", "pending_events": 3}
    assert "relay_events_enqueued_total 3.0" in metrics
    assert 'relay_events_rejected_total{reason="bad_signature"} 1.0' in metrics
    assert 'relay_events_received_total{source="webhook"} 5.0' in metrics


def test_sigterm_finishes_the_request_in_flight_then_exits_0(
    valkey: Any, tmp_path: Path, redis_sync: redis.Redis
) -> None:
    """SIGTERM mid-request: new connections are refused, the started request is stored and
    answered 200, and the process exits 0."""
    process, settings = start(valkey, tmp_path)
    body = b'{"type":"message.new","text":"in flight during shutdown"}'
    headers = signed(body, webhook_id="in-flight")
    head = (
        f"POST /events HTTP/1.1\r\nHost: ingest\r\nContent-Length: {len(body)}\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        + "\r\n"
    ).encode()
    try:
        with socket.create_connection(("127.0.0.1", process.port), timeout=10) as sock:
            # Given a request whose headers and half its body have arrived
            sock.sendall(head + body[:10])
            # When the server is told to stop
            process.process.send_signal(signal.SIGTERM)
            stopped = poll(lambda: not process.accepts_connections(), EXIT_DEADLINE_S)
            assert stopped, "still accepting connections after SIGTERM"
            # Then the request still completes
            sock.sendall(body[10:])
            reply = b""
            while not reply.endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        returncode = process.process.wait(EXIT_DEADLINE_S)
    finally:
        process.close()

    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 200 OK", process.log()
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1]) == {
        "status": "enqueued",
        "event_id": "in-flight",
    }
    assert returncode == 0, process.log()
    assert [e[0] for e in stored_events(redis_sync, settings.namespace)] == ["in-flight"]


def test_without_a_secret_the_server_will_not_start(valkey: Any, tmp_path: Path) -> None:
    """No RELAY_WEBHOOK_SECRET and no --insecure-no-signature: exit 2 naming the variable."""
    process = IngestProcess(make_settings(valkey.connection_url), tmp_path, secret=None)
    try:
        returncode = process.process.wait(EXIT_DEADLINE_S)
    finally:
        process.close()

    assert returncode == 2
    assert "RELAY_WEBHOOK_SECRET is not set" in process.log()


def test_with_json_logs_every_line_is_one_json_object_and_none_is_doubled(
    valkey: Any, tmp_path: Path
) -> None:
    """RELAY_LOG_FORMAT=json: uvicorn's lines and the relay's (a retried delivery is logged at
    INFO) are JSON objects, each written once."""
    settings = make_settings(valkey.connection_url)
    process = IngestProcess(settings, tmp_path, env={"RELAY_LOG_FORMAT": "json"})
    try:
        process.wait_ready()
        body = b'{"type":"message.new"}'
        headers = signed(body, webhook_id="retried-1") | {"X-Webhook-Attempt": "2"}
        assert httpx.post(f"{process.url}/events", content=body, headers=headers).status_code == 200
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(EXIT_DEADLINE_S) == 0
    finally:
        process.close()

    lines = [line for line in process.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    assert all(isinstance(record, dict) and "event" in record for record in records)
    retried = [r for r in records if "webhook_id='retried-1'" in r["event"]]
    assert len(retried) == 1, lines
    assert retried[0]["level"] == "info"
    assert any(r.get("logger", "").startswith("uvicorn") for r in records), lines
