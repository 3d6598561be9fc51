"""What ingest needs to know about the queue before it stores more: the backlog and the size limit.

Both are read together in one MGET and cached for about a second, so a request costs no extra
round trip; concurrent requests that find the cache stale share one read.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import redis.asyncio

from relay.ingest.commit import REDIS_FAILURES, unavailable
from relay.keys import Keys
from relay.producer import effective_limit
from relay.settings import Settings

DEFAULT_CACHE_S = 1.0
"""How long a read of the backlog and the topic limit is reused."""


@dataclass(frozen=True, slots=True)
class QueueState:
    """The queue as last read: events waiting, and the SNS size limit events must fit."""

    pending_events: int
    limit_bytes: int
    read_at_s: float


class QueueView:
    """Cached reads of the pending-events count and the topic's size limit."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        keys: Keys,
        settings: Settings,
        *,
        cache_s: float = DEFAULT_CACHE_S,
        timeout_s: float,
    ) -> None:
        self.client = client
        self.settings = settings
        self.cache_s = cache_s
        self.timeout_s = timeout_s
        self._keys = [keys.pending_events]
        if settings.sns_topic_arn:
            self._keys.append(keys.topic_limit(settings.sns_topic_arn))
        self._state: QueueState | None = None
        self._reading: asyncio.Future[QueueState] | None = None

    def cached(self) -> QueueState | None:
        """The last read if it is younger than `cache_s`, else None (then await `state`)."""
        state = self._state
        if state is not None and time.monotonic() - state.read_at_s < self.cache_s:
            return state
        return None

    async def state(self) -> QueueState:
        """The cached state, or a fresh read when it is older than `cache_s`.

        Raises QueueUnavailable when Redis does not answer within `timeout_s`.
        """
        state = self.cached()
        if state is not None:
            return state
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read())
            self._reading.add_done_callback(self._forget_read)
        # shield: one request giving up (its client went away) must not cancel the shared read.
        return await asyncio.shield(self._reading)

    async def refresh(self) -> QueueState:
        """A fresh read, bypassing the cache (readiness checks); raises QueueUnavailable."""
        return await self._read()

    def over_bound(self, state: QueueState) -> bool:
        """True when more events wait than `RELAY_INGEST_MAX_BACKLOG_EVENTS` allows."""
        return state.pending_events > self.settings.ingest_max_backlog_events

    async def _read(self) -> QueueState:
        try:
            async with asyncio.timeout(self.timeout_s):
                values = await self.client.mget(self._keys)
        except REDIS_FAILURES as exc:
            raise unavailable(exc, wrote=False) from None
        pending = max(0, int(values[0] or 0))
        topic_limit = int(values[1]) if len(values) > 1 and values[1] is not None else None
        state = QueueState(pending, effective_limit(self.settings, topic_limit), time.monotonic())
        self._state = state
        return state

    def _forget_read(self, future: asyncio.Future[QueueState]) -> None:
        self._reading = None
        if not future.cancelled():
            future.exception()  # retrieved here, so a failed read nobody awaited is not logged
