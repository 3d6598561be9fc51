"""Dead bundles: bundles in dramatiq's own dead letters, listed, and queued again once fixed.

A bundle whose attempts failed for a reason that is neither SNS nor Redis (a bug in the relay,
workers.actors.BUG_MAX_RETRIES times) is moved by dramatiq to a sorted set of message ids with
the messages in a hash beside it, and dramatiq deletes both 7 days later. Its events no longer
count as waiting (workers.broker settles them). `requeue` writes a dead bundle's events back as
a fresh bundle and deletes the dead message in one script that runs only if the message is
still there, so two requeues, or a requeue racing dramatiq's expiry, never queue it twice.

The message holds the events not yet published, dropped or dead-lettered: the actor trims its
arguments as they are settled, and dramatiq keeps the message as its last attempt left it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import dramatiq
import redis

from relay.errors import InvalidEvent
from relay.event import Event
from relay.keys import ACTOR_NAME, Keys
from relay.queue import (
    BundleWriter,
    CommandRecorder,
    as_text,
    translate_redis_errors,
    write_once_if_present,
)


@dataclass(frozen=True, slots=True)
class DeadBundle:
    """One message of dramatiq's dead letters: its events, or why they cannot be read."""

    redis_id: str
    dead_at_s: float
    events: tuple[Event, ...] = ()
    problem: str | None = None
    """Set when the message cannot be read as a relay bundle; then `events` is empty."""


class DeadBundles:
    """Reads and requeues the dead bundles of one namespace."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def list(self) -> list[DeadBundle]:
        """Every dead bundle, oldest first (they are few: each is a bug). Raises
        QueueUnavailable."""
        with translate_redis_errors(self.client, writes=False):
            entries: list[tuple[bytes, float]] = cast(
                Any, self.client.zrange(self.keys.dramatiq_dead_letters, 0, -1, withscores=True)
            )
            ids = [as_text(member) for member, _score in entries]
            raws: list[bytes | None] = (
                cast(Any, self.client.hmget(self.keys.dramatiq_dead_messages, ids)) if ids else []
            )
        # dramatiq scores a dead message with the time it arrived, in milliseconds.
        return [
            _read(redis_id, score / 1000, raw)
            for redis_id, (_member, score), raw in zip(ids, entries, raws, strict=True)
        ]

    def requeue(self, dead: DeadBundle, writer: BundleWriter) -> bool:
        """Queue `dead`'s events again as one bundle and delete it from the dead letters, in one
        write; False when it was no longer there (requeued by another command, or expired).
        Raises ValueError for a bundle that cannot be read, QueueUnavailable when Redis fails."""
        if dead.problem is not None:
            raise ValueError(f"dead bundle {dead.redis_id} cannot be read: {dead.problem}")
        commands = CommandRecorder()
        if dead.events:  # a bundle whose every event was settled before it died has none left
            writer.write([list(dead.events)], pipe=commands)
        commands.hdel(self.keys.dramatiq_dead_messages, dead.redis_id)
        commands.zrem(self.keys.dramatiq_dead_letters, dead.redis_id)
        missing = write_once_if_present(
            self.client, self.keys, commands, self.keys.dramatiq_dead_messages, [dead.redis_id]
        )
        return not missing


def _read(redis_id: str, dead_at_s: float, raw: bytes | None) -> DeadBundle:
    """The dead message `raw` as a bundle, or as a problem saying why it is not one."""
    if raw is None:
        return DeadBundle(redis_id, dead_at_s, problem="its message is missing")
    try:
        message = dramatiq.Message.decode(raw)
    except dramatiq.errors.DecodeError as exc:
        return DeadBundle(redis_id, dead_at_s, problem=f"cannot be decoded: {exc}")
    if message.actor_name != ACTOR_NAME:
        return DeadBundle(redis_id, dead_at_s, problem=f"a message for {message.actor_name!r}")
    try:
        (wires,) = message.args
        events = tuple(Event.from_wire(wire) for wire in wires)
    except (InvalidEvent, TypeError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, InvalidEvent) else str(exc)
        return DeadBundle(redis_id, dead_at_s, problem=f"not a bundle of events: {reason}")
    return DeadBundle(redis_id, dead_at_s, events)
