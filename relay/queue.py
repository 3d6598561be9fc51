"""The durable queue: Redis clients and the bundle writer producers use.

Producers write bundles as dramatiq messages directly (dramatiq's documented foreign-producer
protocol, FACTS §9.3), each chunk in one atomic script call (write_once): one round trip for
many bundles, a failed write leaves nothing half-stored, and a retried one is applied once.
Workers consume them with dramatiq's Redis broker (workers/broker.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import dramatiq
import orjson
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from relay.errors import QueueUnavailable
from relay.event import Event
from relay.ids import uuid4_hex, uuid4_str
from relay.keys import ACTOR_NAME, QUEUE_NAME, Keys
from relay.settings import Settings


class OrjsonEncoder(dramatiq.Encoder):
    """dramatiq's message encoding with orjson: the same JSON, several times faster both ways.

    Producers and workers must share an encoder (FACTS §9.16); importing this module sets it.
    Messages written by the stdlib encoder decode the same, so a rolling upgrade is safe.
    """

    def encode(self, data: dict[str, Any]) -> bytes:
        return orjson.dumps(data)

    def decode(self, data: bytes) -> dict[str, Any]:
        decoded: dict[str, Any] = orjson.loads(data)
        return decoded


dramatiq.set_encoder(OrjsonEncoder())

BUNDLE_MAX_EVENTS = 100
BUNDLE_MAX_BYTES = 2 * 1024 * 1024
"""A bundle closes at either bound; an event alone may still be up to the 1 MiB SNS maximum."""

TRANSACTION_MAX_BYTES = 8 * 1024 * 1024
"""Bundles are written in transactions of about this size, so one write never stalls Redis."""

WRITE_DONE_TTL_S = 60
"""How long a write (a producer's transaction, an ingest batch, a settle) stays marked as
applied: far longer than a client-side retry of it can come (one, right after a broken
connection, within a 0.2 s backoff)."""

REFUSED_WRITES = (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError)
"""Answers with which Redis refuses a script at its first write, so nothing of it is stored."""
NO_SUCH_DATABASE = "DB index is out of range"
"""How Redis and Valkey refuse a SELECT of a database number they do not have."""
REFUSED_ACCESS = (
    redis.exceptions.AuthenticationError,
    redis.exceptions.AuthorizationError,
    redis.exceptions.NoPermissionError,
)
"""Redis refusing the relay's user or password (RELAY_REDIS_URL), or under an ACL the command
itself: before anything ran, so nothing was stored. The first two are ConnectionErrors to
redis-py; said as what they are, they point at the configuration, not the network."""

# Runs the writes recorded in ARGV from position `at` on (a CommandRecorder's args).
_RUN_WRITES_LUA = """
while at <= #ARGV do
  local argc = tonumber(ARGV[at])
  redis.call(unpack(ARGV, at + 1, at + argc))
  at = at + argc + 1
end
"""

# KEYS: markers, the first this write's own (write_done), the others the ingest's webhook ids.
# ARGV: the first marker's TTL, the others' TTL, then the writes, each as its argument count
# followed by the command. If any marker exists, nothing is written and the positions of those
# found are returned (1: this very write was applied before, by an attempt whose answer was
# lost); else every write runs, then every marker is set, and the answer is empty. One script is
# atomic, like MULTI/EXEC. A Redis out of memory refuses it at its first write, before anything
# is stored; and the markers come last, so a script failing halfway could leave writes unmarked
# (a duplicate on a retry) but never a marker without its writes (a loss).
CHECK_AND_WRITE_LUA = (
    """
local seen = {}
for index, key in ipairs(KEYS) do
  if redis.call('exists', key) == 1 then seen[#seen + 1] = index end
end
if #seen > 0 then return seen end
local at = 3
"""
    + _RUN_WRITES_LUA
    + """
for index, key in ipairs(KEYS) do
  redis.call('set', key, '1', 'EX', index == 1 and ARGV[1] or ARGV[2])
end
return seen
"""
)


# KEYS: this write's marker, a hash. ARGV: the marker's TTL, a count N, N fields of the hash,
# then the writes as in CHECK_AND_WRITE_LUA. If the marker exists (a replayed call), nothing is
# written and nothing returned; if any of the fields is missing from the hash, nothing is written
# and the missing fields are returned; else the writes run, then the marker is set.
WRITE_IF_PRESENT_LUA = (
    """
if redis.call('exists', KEYS[1]) == 1 then return {} end
local count = tonumber(ARGV[2])
local missing = {}
for at = 3, 2 + count do
  if redis.call('hexists', KEYS[2], ARGV[at]) == 0 then missing[#missing + 1] = ARGV[at] end
end
if #missing > 0 then return missing end
local at = 3 + count
"""
    + _RUN_WRITES_LUA
    + """
redis.call('set', KEYS[1], '1', 'EX', ARGV[1])
return {}
"""
)


DRAIN_WHEN_FULL_FLAG = "#!lua flags=allow-oom\n"
"""Declares a script that may write when Redis is at `maxmemory` (Redis 7 and Valkey)."""


class DrainScript:
    """A Lua script the workers need to drain the queue, run even when Redis is full.

    Every dramatiq fetch and acknowledgement writes (the heartbeat first), and so does a settle.
    With `maxmemory-policy noeviction`, a Redis at `maxmemory` refuses such scripts: the
    workers would stall on the very backlog whose publishing frees the memory, until someone
    raised `maxmemory`. Redis 7 and Valkey run a script declared with DRAIN_WHEN_FULL_FLAG, and
    what these scripts write (a heartbeat, ids moving between sets, markers) is small beside
    what their acks and settles delete. Producers' scripts carry no flag: a full Redis still
    refuses new events.

    A server older than Redis 7 cannot compile the flag line; the first call it refuses so
    falls back, for good, to the plain script (and to the stall, on that server). Called as
    redis-py's Script is: `script(keys=..., args=...)`.
    """

    def __init__(self, client: redis.Redis, source: str | bytes) -> None:
        text = source.decode() if isinstance(source, bytes) else source
        self._plain = client.register_script(text)
        self._flagged = client.register_script(DRAIN_WHEN_FULL_FLAG + text)
        self._script = self._flagged

    @property
    def flagged(self) -> bool:
        """False once the server has refused the flag line (older than Redis 7)."""
        return self._script is self._flagged

    def __call__(
        self, keys: Sequence[Any] = (), args: Sequence[Any] = (), client: Any = None
    ) -> Any:
        try:
            return self._script(keys=keys, args=args, client=client)
        except redis.exceptions.ResponseError as exc:
            if not self.flagged or not _flag_line_refused(exc):
                raise
        self._script = self._plain
        return self._script(keys=keys, args=args, client=client)


def _flag_line_refused(exc: redis.exceptions.ResponseError) -> bool:
    """Redis 6 failing to compile `#!lua ...` as Lua ("unexpected symbol near '#'"), or a
    server that knows shebangs but not this flag."""
    text = str(exc)
    return "near '#'" in text or "shebang" in text.lower()


SCRIPT_COMMAND_MAX_VALUES = 1_000
"""Values one recorded command may carry: Lua's unpack takes at most about 8,000, so a command
with more (an LPUSH of every drop record of a huge array) would fail its script every time."""


T = TypeVar("T")


def command_chunks(values: Sequence[T]) -> Iterator[Sequence[T]]:
    """`values` in slices that one recorded command can carry beside its key."""
    per_command = SCRIPT_COMMAND_MAX_VALUES - 1  # the key is one of the command's values
    for start in range(0, len(values), per_command):
        yield values[start : start + per_command]


class CommandRecorder:
    """Stands in for a pipeline: every command called on it is recorded, flat, for the script.

    A command of more than SCRIPT_COMMAND_MAX_VALUES values is refused (ValueError) when it is
    recorded: in the script it would fail after the writes before it had been applied.
    """

    def __init__(self, *leading: Any) -> None:
        self.args: list[Any] = list(leading)

    def __getattr__(self, name: str) -> Callable[..., CommandRecorder]:
        def record(*args: Any) -> CommandRecorder:
            if len(args) > SCRIPT_COMMAND_MAX_VALUES:
                raise ValueError(
                    f"{name.upper()} of {len(args)} values: record it in commands of at most "
                    f"{SCRIPT_COMMAND_MAX_VALUES}"
                )
            self.args += [len(args) + 1, name.upper(), *args]
            return self

        return record


def write_once(client: redis.Redis, keys: Keys, commands: CommandRecorder) -> None:
    """Apply the recorded commands atomically, once, even when the client retries the call.

    The client's one reconnect retry (see redis_client) replays a command whose answer was lost
    to a stalled or broken connection; a replayed MULTI/EXEC pushed the same bundle twice, and
    the second copy, found without its message, was never settled. Here the replay finds this
    transaction's marker and writes nothing. Raises QueueUnavailable when Redis fails.
    """
    marker = keys.write_done(uuid4_hex())
    script = client.register_script(CHECK_AND_WRITE_LUA)
    with translate_redis_errors(client):
        script(keys=[marker], args=[WRITE_DONE_TTL_S, WRITE_DONE_TTL_S, *commands.args])


def write_once_if_present(
    client: redis.Redis,
    keys: Keys,
    commands: CommandRecorder,
    hash_key: str,
    fields: Sequence[str],
) -> list[str]:
    """`write_once`, applied only if each of `fields` is in the hash `hash_key` when it runs.

    Returns the fields found missing, in which case nothing was written: the caller that lost a
    race for them (two replays of the same dead letters) writes again without them. Raises
    QueueUnavailable when Redis fails.
    """
    marker = keys.write_done(uuid4_hex())
    script = client.register_script(WRITE_IF_PRESENT_LUA)
    with translate_redis_errors(client):
        missing = script(
            keys=[marker, hash_key], args=[WRITE_DONE_TTL_S, len(fields), *fields, *commands.args]
        )
    return [as_text(field) for field in missing]


def redis_client(url: str, settings: Settings, *, retries: int = 1) -> redis.Redis:
    """A client with bounded timeouts: an unreachable Redis fails fast instead of hanging.

    By default one quick reconnect attempt absorbs a dropped idle connection (every write and
    settle through it carries a marker of its own, so a replay is applied once); more would
    only delay the error a producer needs to see. A timeout is not retried: Redis is stalled,
    and waiting twice only doubles the time to the error. `retries=0` for callers to whom a
    replayed command is worse than an error (the workers' dramatiq calls: FACTS §9.4 D6).
    """
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        socket_timeout=settings.redis_timeout_s,
        retry=Retry(
            ExponentialBackoff(cap=0.2, base=0.05),
            retries=retries,
            supported_errors=(redis.ConnectionError,),
        ),
        health_check_interval=30,
    )


def bundles(events: Sequence[Event]) -> Iterator[Sequence[Event]]:
    """Split events, in order, into bundles bounded by BUNDLE_MAX_EVENTS and BUNDLE_MAX_BYTES."""
    start, size = 0, 0
    for index, event in enumerate(events):
        if index > start and (
            index - start == BUNDLE_MAX_EVENTS or size + event.size_bytes > BUNDLE_MAX_BYTES
        ):
            yield events[start:index]
            start, size = index, 0
        size += event.size_bytes
    if start < len(events):
        yield events[start:]


def bundle_message(
    events: Sequence[Event], queued_at_ms: int | None = None
) -> dramatiq.Message[Any]:
    """The dramatiq message that carries one bundle to the `publish_bundle` actor.

    `queued_at_ms` (default now) is its timestamp, which the queue's oldest age is read from.
    """
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=QUEUE_NAME,
        actor_name=ACTOR_NAME,
        args=([event.to_wire() for event in events],),
        kwargs={},
        options={"redis_message_id": uuid4_str()},
        message_id=uuid4_str(),  # dramatiq's default draws a uuid4 from os.urandom (relay.ids)
    )
    if queued_at_ms is not None:
        message = message.copy(message_timestamp=queued_at_ms)
    return message


@dataclass
class BundleWriter:
    """Writes bundles into the queue as dramatiq messages, with the relay's bookkeeping."""

    client: redis.Redis
    keys: Keys

    def write(
        self,
        bundles_: Sequence[Sequence[Event]],
        *,
        pipe: Any = None,
        queued_at_ms: int | None = None,
    ) -> None:
        """Store bundles atomically and once (write_once); raise QueueUnavailable when Redis fails.

        `pipe`, when given, is a CommandRecorder the caller adds more commands to and writes.
        `queued_at_ms`: when these events were first queued, for a bundle that goes back to the
        queue and should keep its age (default now).
        """
        own = pipe is None
        pipe = CommandRecorder() if own else pipe
        for bundle in bundles_:
            message = bundle_message(bundle, queued_at_ms)
            redis_id = message.options["redis_message_id"]
            pipe.hset(self.keys.queue_messages, redis_id, message.encode())
            pipe.rpush(self.keys.queue, redis_id)
            pipe.hset(self.keys.pending_bundles, message.message_id, len(bundle))
            pipe.zadd(self.keys.pending_ages, message.message_timestamp, message.message_id)
            pipe.incrby(self.keys.pending_events, len(bundle))
        if own:
            write_once(self.client, self.keys, pipe)


@contextmanager
def translate_redis_errors(client: redis.Redis, *, writes: bool = True) -> Iterator[None]:
    """Turn redis-py's connection and timeout errors, a write Redis refuses (out of memory,
    read-only replica) and refused credentials, database or ACL, into QueueUnavailable naming
    host:port and, for `writes`, what may have been stored."""
    try:
        yield
    except REFUSED_WRITES as exc:
        raise QueueUnavailable(
            f"Redis at {_where(client)} refused the write: {type(exc).__name__} (nothing was "
            "stored)"
        ) from None
    except redis.RedisError as exc:
        if refused_access(exc):
            raise QueueUnavailable(
                f"Redis at {_where(client)} refused the relay's access: {type(exc).__name__} "
                f"({database_detail(exc)}check the user, password and database number in "
                "RELAY_REDIS_URL and the user's ACL" + ("; nothing was stored)" if writes else ")")
            ) from None
        if isinstance(exc, redis.TimeoutError):
            raise QueueUnavailable(
                f"Redis at {_where(client)} did not answer in time: {type(exc).__name__}"
                + (" (what was being written may have been stored)" if writes else ""),
                maybe_stored=writes,
            ) from None
        if isinstance(exc, redis.ConnectionError):
            raise QueueUnavailable(
                f"Redis at {_where(client)} is unreachable: {type(exc).__name__}"
                + (
                    " (if the connection broke after a write was sent, what it was writing "
                    "may have been stored)"
                    if writes
                    else ""
                ),
                maybe_stored=writes,
            ) from None
        if isinstance(exc, redis.exceptions.InvalidResponse):
            raise QueueUnavailable(
                f"Redis at {_where(client)} did not answer as Redis does: {type(exc).__name__} "
                "(is RELAY_REDIS_URL the address of a Redis?"
                + ("; nothing was stored)" if writes else ")")
            ) from None
        raise


def refused_access(exc: BaseException) -> bool:
    """Whether Redis refused the relay's user, password or ACL (REFUSED_ACCESS), or the
    database number in RELAY_REDIS_URL: redis-py selects it on connecting, before anything
    runs, and a server without it answers a ResponseError."""
    return isinstance(exc, REFUSED_ACCESS) or (
        isinstance(exc, redis.ResponseError) and NO_SUCH_DATABASE in str(exc)
    )


def database_detail(exc: BaseException) -> str:
    """The server's own words for a database it does not have, ending in '; ' (else empty):
    they say which part of RELAY_REDIS_URL is wrong, and hold no secret."""
    return f"{NO_SUCH_DATABASE}; " if NO_SUCH_DATABASE in str(exc) else ""


def _where(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return str(kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}")


def as_text(value: bytes | str) -> str:
    """A Redis reply as text (the clients here return bytes; typing allows either)."""
    return value.decode() if isinstance(value, bytes) else value
