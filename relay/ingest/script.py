"""The ingest's store script, run on connections of its own: one EVALSHA per group commit.

redis.asyncio's client wraps every command in layers the hot path does not need: a pool
checkout and release under a lock, a retry object, a response-callback lookup, and (redis-py
8) observability hooks awaited per command, plus a task per write (`asyncio.wait_for` around
the socket write) and a second timer around the read. Measured on a loopback Valkey, one
EVALSHA of a group commit cost 61 to 84 µs of CPU through the client and 28 to 38 on a bare
connection. So the script runs on connections made by the client's own pool class, from the
pool's settings (TLS, AUTH, database, Unix socket: whatever the URL said), with no socket
timeout of their own: the committer's deadline (`asyncio.timeout` around the batch) bounds
every call, and a call it cancels closes its connection, which is out of step with the server.

What the client did and this keeps: a broken connection is retried once on a fresh one (the
script's own marker makes a replay a no-op, relay.queue), and a server that lost its script
cache (a restart) gets the script's source once.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from typing import Any

import redis.asyncio
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError


class ScriptRunner:
    """Runs one Lua script; as many calls at once as connections it has made (it keeps them)."""

    def __init__(self, pool: redis.asyncio.ConnectionPool, source: str) -> None:
        self._source = source
        # The name Redis caches the script under (EVALSHA), not a security use of SHA-1.
        self._sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        self._class = pool.connection_class
        # The committer's deadline bounds each call; a socket timeout too would add a task
        # per write and a timer per read.
        self._kwargs = {**pool.connection_kwargs, "socket_timeout": None}
        self._idle: list[AbstractConnection] = []

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """The script's reply; redis errors as the client raises them (ResponseError for an
        error reply, ConnectionError when the retry failed too)."""
        connection = self._idle.pop() if self._idle else self._class(**self._kwargs)
        try:
            try:
                reply = await self._evalsha(connection, keys, args)
            except RedisConnectionError:
                # A pooled connection to a Redis that restarted fails at first use.
                await connection.disconnect(nowait=True)
                reply = await self._evalsha(connection, keys, args)
        except ResponseError:
            self._idle.append(connection)  # an error reply leaves the connection in step
            raise
        except BaseException:
            await connection.disconnect(nowait=True)
            self._idle.append(connection)  # reconnects on its next use
            raise
        self._idle.append(connection)
        return reply

    async def close(self) -> None:
        """Close every connection; one that fails to close is left to the garbage collector."""
        idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(Exception):
                await connection.disconnect()

    async def _evalsha(self, connection: AbstractConnection, keys: Sequence[Any], args: Any) -> Any:
        try:
            await connection.send_command("EVALSHA", self._sha, len(keys), *keys, *args)
            return await connection.read_response()
        except NoScriptError:
            # EVAL runs the source and caches it, so the next call's EVALSHA finds it.
            await connection.send_command("EVAL", self._source, len(keys), *keys, *args)
            return await connection.read_response()
