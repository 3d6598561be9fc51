"""The durable queue: Redis clients and the bundle writer producers use.

Producers write bundles as dramatiq messages directly, in one MULTI/EXEC transaction per chunk
(dramatiq's documented foreign-producer protocol, FACTS §9.3): one round trip for many bundles,
and a failed write leaves nothing half-stored. Workers consume them with dramatiq's Redis
broker (workers/broker.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import dramatiq
import orjson
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from relay.errors import QueueUnavailable
from relay.event import Event
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


def redis_client(url: str, settings: Settings, *, retries: int = 1) -> redis.Redis:
    """A client with bounded timeouts: an unreachable Redis fails fast instead of hanging.

    By default one quick reconnect attempt absorbs a dropped idle connection; more would only
    delay the error a producer needs to see. `retries=0` for callers to whom a replayed command
    is worse than an error (the workers' dramatiq calls: FACTS §9.4 D6).
    """
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        socket_timeout=settings.redis_timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=retries),
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


def bundle_message(events: Sequence[Event]) -> dramatiq.Message[Any]:
    """The dramatiq message that carries one bundle to the `publish_bundle` actor."""
    return dramatiq.Message(
        queue_name=QUEUE_NAME,
        actor_name=ACTOR_NAME,
        args=([event.to_wire() for event in events],),
        kwargs={},
        options={"redis_message_id": str(uuid4())},
    )


@dataclass
class BundleWriter:
    """Writes bundles into the queue as dramatiq messages, with the relay's bookkeeping."""

    client: redis.Redis
    keys: Keys

    def write(self, bundles_: Sequence[Sequence[Event]], *, pipe: Any = None) -> None:
        """Store bundles atomically; raise QueueUnavailable when Redis fails (nothing stored).

        `pipe`, when given, is a transaction the caller adds more commands to and executes.
        """
        own = pipe is None
        pipe = self.client.pipeline(transaction=True) if own else pipe
        for bundle in bundles_:
            message = bundle_message(bundle)
            redis_id = message.options["redis_message_id"]
            pipe.hset(self.keys.queue_messages, redis_id, message.encode())
            pipe.rpush(self.keys.queue, redis_id)
            pipe.hset(self.keys.pending_bundles, message.message_id, len(bundle))
            pipe.incrby(self.keys.pending_events, len(bundle))
        if own:
            with translate_redis_errors(self.client):
                pipe.execute()


@contextmanager
def translate_redis_errors(client: redis.Redis) -> Iterator[None]:
    """Turn redis-py's connection and timeout errors into QueueUnavailable naming host:port."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        kwargs = client.connection_pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
        raise QueueUnavailable(f"Redis at {where} is unreachable: {type(exc).__name__}") from None


def as_text(value: bytes | str) -> str:
    """A Redis reply as text (the clients here return bytes; typing allows either)."""
    return value.decode() if isinstance(value, bytes) else value
