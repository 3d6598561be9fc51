"""The relay's own records in Redis: dropped events, settled counts, the topic's size limit.

Producers and workers both write here, so `relay stats` and the metrics see the whole fleet.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from relay.event import Event
from relay.ids import uuid4_hex
from relay.keys import DROPPED_LOG_MAX_ENTRIES, Keys
from relay.queue import (
    WRITE_DONE_TTL_S,
    CommandRecorder,
    DrainScript,
    as_text,
    command_chunks,
    translate_redis_errors,
    write_once,
)

TOPIC_LIMIT_TTL_S = 3_600
SETTLE_ALL = 2**31 - 1
"""More events than any bundle holds: the settle script never takes more than was recorded."""
"""Producers trust a topic limit the workers recorded this recently; workers refresh it often."""

# Settling is idempotent per bundle: a bundle processed twice (a worker killed after publishing,
# FACTS §9.4 D1) cannot take more off the pending count than it put on.
# KEYS: pending bundles, pending events, this settle's own marker, the totals, pending ages.
# ARGV: bundle id, count, the marker's TTL, then pairs of a total's name and what to add to it
# (the bundle's outcomes, written with its settle: one round trip a bundle, not two). A bundle
# settled in full leaves pending ages too (the oldest age, `oldest_age_s`). The marker makes a
# settle that redis-py replays after a lost answer (the workers' client retries once on a
# broken connection) a no-op: a second partial settle of the same bundle would take its
# remaining events off the count although they are still pending, and count its totals twice.
_SETTLE_LUA = """
if redis.call('exists', KEYS[3]) == 1 then return tonumber(redis.call('get', KEYS[3])) end
local n = tonumber(redis.call('hget', KEYS[1], ARGV[1]) or '0')
local k = math.min(n, tonumber(ARGV[2]))
if k > 0 then
  if n == k then redis.call('hdel', KEYS[1], ARGV[1])
  else redis.call('hset', KEYS[1], ARGV[1], n - k) end
  redis.call('decrby', KEYS[2], k)
end
if n == k then redis.call('zrem', KEYS[5], ARGV[1]) end
for at = 4, #ARGV, 2 do redis.call('hincrby', KEYS[4], ARGV[at], ARGV[at + 1]) end
redis.call('set', KEYS[3], k, 'EX', ARGV[3])
return k
"""

# KEYS: pending ages, pending bundles. ARGV: the most entries to look at. The queued-at time (ms)
# of the oldest bundle still pending, or false. An entry whose bundle is no longer pending is
# removed on the way: a worker of a version that kept no ages settled it.
_OLDEST_PENDING_LUA = """
for _ = 1, tonumber(ARGV[1]) do
  local oldest = redis.call('zrange', KEYS[1], 0, 0, 'WITHSCORES')
  if #oldest == 0 then return false end
  if redis.call('hexists', KEYS[2], oldest[1]) == 1 then return oldest[2] end
  redis.call('zrem', KEYS[1], oldest[1])
end
return false
"""
STALE_AGES_PER_READ = 1_000
"""Bounds one read's clean-up; the next read goes on where it stopped."""


@dataclass(frozen=True, slots=True)
class DroppedRecord:
    """One dropped event as the log keeps it: never the body, which may be large or sensitive."""

    event_id: str
    event_type: str | None
    reason: str
    size_bytes: int
    limit_bytes: int
    at_s: float


class RelayStore:
    """Reads and writes the relay's bookkeeping keys of one namespace."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._settle = DrainScript(client, _SETTLE_LUA)  # workers settle even when Redis is full
        self._oldest_pending = client.register_script(_OLDEST_PENDING_LUA)

    def record_drops(
        self, events: Sequence[Event], reason: str, limit_bytes: int, *, pipe: Any = None
    ) -> None:
        """Append drop records to the capped log and count them, in `pipe` or on its own."""
        if not events:
            return
        own = pipe is None
        pipe = CommandRecorder() if own else pipe
        now = time.time()
        records = [
            orjson.dumps(
                {
                    "event_id": event.id,
                    "event_type": event.type,
                    "reason": reason,
                    "size_bytes": event.size_bytes,
                    "limit_bytes": limit_bytes,
                    "at_s": now,
                }
            )
            for event in events
        ]
        for chunk in command_chunks(records):
            pipe.lpush(self.keys.dropped_log, *chunk)
        pipe.ltrim(self.keys.dropped_log, 0, DROPPED_LOG_MAX_ENTRIES - 1)
        pipe.hincrby(self.keys.dropped_counts, reason, len(events))
        if own:
            write_once(self.client, self.keys, pipe)

    def dropped(self, limit: int = 20) -> list[DroppedRecord]:
        """The newest drop records, newest first."""
        with translate_redis_errors(self.client, writes=False):
            raw = self.client.lrange(self.keys.dropped_log, 0, limit - 1)
        return [DroppedRecord(**orjson.loads(item)) for item in raw]

    def dropped_counts(self) -> dict[str, int]:
        """Drops by reason since the namespace was created."""
        with translate_redis_errors(self.client, writes=False):
            raw = self.client.hgetall(self.keys.dropped_counts)
        return {as_text(key): int(value) for key, value in raw.items()}

    def add_totals(self, pipe: Any = None, **deltas: int) -> None:
        """Add to the fleet-wide totals (`enqueued`, `published`, ...) shown by `relay stats`."""
        own = pipe is None
        pipe = CommandRecorder() if own else pipe
        for name, delta in deltas.items():
            if delta:
                pipe.hincrby(self.keys.totals, name, delta)
        if own and pipe.args:
            write_once(self.client, self.keys, pipe)  # a replayed write counts once

    def totals(self) -> dict[str, int]:
        with translate_redis_errors(self.client, writes=False):
            raw = self.client.hgetall(self.keys.totals)
        return {as_text(key): int(value) for key, value in raw.items()}

    def settle(self, bundle_id: str, events: int, totals: Mapping[str, int] | None = None) -> int:
        """Take `events` of bundle `bundle_id` off the pending count; return how many it took.

        `totals` are added to the fleet-wide totals in the same script, as `add_totals` would.
        Raises ValueError for a negative count.
        """
        if events < 0:
            raise ValueError(f"cannot settle a negative count ({events})")
        deltas = [part for name, delta in (totals or {}).items() if delta for part in (name, delta)]
        with translate_redis_errors(self.client):
            return int(
                self._settle(
                    keys=[
                        self.keys.pending_bundles,
                        self.keys.pending_events,
                        self.keys.write_done(uuid4_hex()),
                        self.keys.totals,
                        self.keys.pending_ages,
                    ],
                    args=[bundle_id, events, WRITE_DONE_TTL_S, *deltas],
                )
            )

    def settle_all(self, bundle_id: str, totals: Mapping[str, int] | None = None) -> int:
        """Take whatever bundle `bundle_id` still counts off the pending count (and add `totals`
        to the fleet-wide totals in the same script)."""
        return self.settle(bundle_id, SETTLE_ALL, totals)

    def pending_events(self) -> int:
        """Events enqueued and not yet published, dropped or dead-lettered."""
        with translate_redis_errors(self.client, writes=False):
            return max(0, int(self.client.get(self.keys.pending_events) or 0))

    def set_topic_limit(self, topic_arn: str, max_message_bytes: int) -> None:
        """Record the topic's size limit, as a worker read it from SNS, for producers to use."""
        with translate_redis_errors(self.client):
            self.client.set(
                self.keys.topic_limit(topic_arn), max_message_bytes, ex=TOPIC_LIMIT_TTL_S
            )

    def topic_limit(self, topic_arn: str) -> int | None:
        """The topic's size limit as workers last recorded it, or None if none did recently."""
        with translate_redis_errors(self.client, writes=False):
            raw = self.client.get(self.keys.topic_limit(topic_arn))
        return int(raw) if raw is not None else None

    def oldest_age_s(self, now_s: float | None = None) -> float | None:
        """Age of the oldest bundle not yet settled, or None if there is none.

        A bundle counts from when it was queued until a worker settles it: in the queue, and
        also once a worker has taken it (held behind an open breaker, waiting for a retry,
        prefetched), where the queue's head alone does not show it. The head is read too, for
        bundles written by a producer of a version that kept no ages.
        """
        with translate_redis_errors(self.client, writes=False):
            oldest_ms = self._oldest_pending(
                keys=[self.keys.pending_ages, self.keys.pending_bundles],
                args=[STALE_AGES_PER_READ],
            )
            head = self.client.lindex(self.keys.queue, 0)
            encoded = None if head is None else self.client.hget(self.keys.queue_messages, head)
        stamps_ms = [] if oldest_ms is None else [float(oldest_ms)]
        if encoded is not None:
            stamps_ms.append(float(orjson.loads(encoded).get("message_timestamp", 0)))
        if not stamps_ms:
            return None
        return max(0.0, (now_s if now_s is not None else time.time()) - min(stamps_ms) / 1000)

    def queue_depth_bundles(self) -> int:
        with translate_redis_errors(self.client, writes=False):
            return int(self.client.llen(self.keys.queue))

    def dramatiq_dead_bundles(self) -> int:
        """Bundles dramatiq dead-lettered itself (a relay bug, not an SNS rejection)."""
        with translate_redis_errors(self.client, writes=False):
            return int(self.client.zcard(self.keys.dramatiq_dead_letters))

    def open_breakers(self) -> dict[str, dict[str, Any]]:
        """Worker processes whose SNS circuit breaker is open or probing, with the reason."""
        prefix = self.keys.breaker("")
        with translate_redis_errors(self.client, writes=False):
            names = list(self.client.scan_iter(match=self.keys.breaker_pattern, count=1000))
            values = self.client.mget(names) if names else []
        return {
            as_text(name).removeprefix(prefix): orjson.loads(value)
            for name, value in zip(names, values, strict=True)
            if value is not None
        }
