"""Group commit: concurrent deliveries are stored together, atomically, in one round trip per batch.

A delivery (one request's events, its oversize events to record as dropped, and its webhook id)
gathers with others while the batches before it are written (and at most a linger more); then
its batch is written by one Lua script that checks the batch's seen-markers and, only if none
is set, runs every write: the events as bundles, the drop records, the totals, and last the
seen-markers. So a delivery is marked seen only in the script that stores it, and a duplicate
racing in from another ingest process is found by that check rather than stored twice. When
the check finds markers, nothing is written; the batch is rebuilt without those deliveries and
written again.

The writes themselves are what BundleWriter and RelayStore queue (the one home of the queue's
layout); a CommandRecorder stands in for their pipeline and hands the commands to the script,
relay.queue's CHECK_AND_WRITE_LUA, which producers run too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio

from relay import metrics
from relay.errors import QueueUnavailable
from relay.event import Event
from relay.ids import uuid4_hex
from relay.ingest.batcher import Batcher
from relay.ingest.script import ScriptRunner
from relay.keys import Keys
from relay.queue import (
    CHECK_AND_WRITE_LUA,
    REFUSED_WRITES,
    TRANSACTION_MAX_BYTES,
    WRITE_DONE_TTL_S,
    BundleWriter,
    CommandRecorder,
    bundles,
    database_detail,
    refused_access,
)
from relay.store import RelayStore

log = logging.getLogger(__name__)

DEFAULT_LINGER_S = 0.0
"""How long a batch may wait for company beyond the batches in flight: none. Measured with wrk
(16 connections, one event per POST), a 1 ms linger gave 4,580-5,635 requests/s where none gave
5,456-6,412; deliveries gather anyway while the batches before them are written."""
DEFAULT_MAX_BATCH_EVENTS = 500
DEFAULT_MAX_IN_FLIGHT = 2
"""Batches written at once; while they run, new deliveries gather into the next one. Two keep
Redis busy while the ingest prepares the next batch: 6,356-6,562 requests/s against 5,456-6,412
with one, in the same runs."""
CHECK_ATTEMPTS = 5
"""Each attempt that finds seen-markers drops their deliveries, so the batch only shrinks."""
REDIS_FAILURES = (redis.RedisError, TimeoutError, OSError)
"""What a Redis call can fail with when the server is down, slow, loading or out of memory."""


@dataclass(slots=True)  # not frozen: made per request (see relay.ingest.payload.Element)
class Delivery:
    """One request's share of a batch."""

    webhook_id: str | None
    events: Sequence[Event]
    dropped: Sequence[Event] = ()
    limit_bytes: int = 0

    @property
    def size_bytes(self) -> int:
        return sum(event.size_bytes for event in self.events)

    @property
    def weight(self) -> int:
        """How much of a batch's event budget this delivery takes (at least one)."""
        return max(1, len(self.events) + len(self.dropped))


def unavailable(exc: BaseException, *, wrote: bool = True) -> QueueUnavailable:
    """The error a request sees when Redis failed: the kind of failure, never the URL.

    Redis refusing the script (out of memory, a read-only replica) or the ingest's user,
    password or database (RELAY_REDIS_URL) stores nothing. After a timeout or a broken
    connection the script may still have run: the sender is told so, and that a retry with the
    same X-Webhook-Id is not stored twice (the script's seen-check).
    """
    if isinstance(exc, REFUSED_WRITES):
        return QueueUnavailable(
            f"Redis refused the write ({type(exc).__name__}); nothing was stored"
        )
    if refused_access(exc):
        return QueueUnavailable(
            f"Redis refused the ingest's access ({type(exc).__name__}: {database_detail(exc)}check "
            "RELAY_REDIS_URL); nothing was stored"
        )
    kind = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
    if not wrote:  # a read before any write (the backlog check): nothing can have been stored
        return QueueUnavailable(f"Redis is unavailable ({kind}); nothing was stored")
    return QueueUnavailable(
        f"Redis is unavailable ({kind}); if it failed after the write was sent, the events may "
        "have been stored: a retry with the same X-Webhook-Id stores them at most once",
        maybe_stored=True,
    )


class GroupCommitter:
    """Coalesces deliveries into batches; `submit` says stored (True) or duplicate (False).

    `writer` and `store` are only asked to queue their commands, on a CommandRecorder.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        keys: Keys,
        writer: BundleWriter,
        store: RelayStore,
        *,
        dedup_ttl_s: int,
        timeout_s: float,
        linger_s: float = DEFAULT_LINGER_S,
        max_batch_events: int = DEFAULT_MAX_BATCH_EVENTS,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        self.keys = keys
        self.writer = writer
        self.store = store
        self.dedup_ttl_s = dedup_ttl_s
        self.timeout_s = timeout_s
        self._script = ScriptRunner(client.connection_pool, CHECK_AND_WRITE_LUA)
        self._batcher: Batcher[Delivery, bool] = Batcher(
            self._commit,
            linger_s=linger_s,
            max_weight=max_batch_events,
            max_bytes=TRANSACTION_MAX_BYTES,
            max_in_flight=max_in_flight,
        )

    def submit(self, delivery: Delivery) -> asyncio.Future[bool]:
        """Store `delivery` with its batch: the future's result, or QueueUnavailable when that
        batch fails."""
        return self._batcher.submit(delivery, delivery.weight, delivery.size_bytes)

    async def close(self) -> None:
        """Write what is pending, wait for every batch in flight, then close the connections."""
        try:
            await self._batcher.close()
        finally:
            await self._script.close()

    async def _commit(self, batch: Sequence[Delivery]) -> list[bool]:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._write(batch)
        except REDIS_FAILURES as exc:
            log.warning(
                "a batch of %d deliveries failed: %s: %s", len(batch), type(exc).__name__, exc
            )
            raise unavailable(exc) from None

    async def _write(self, batch: Sequence[Delivery]) -> list[bool]:
        """Write the batch; per delivery, True if written, False if it is a duplicate."""
        # Several deliveries with one webhook id in one batch: the first is written, the
        # others answer as duplicates of it (and fail with it).
        first_of: dict[str, int] = {}
        for index, delivery in enumerate(batch):
            if delivery.webhook_id is not None:
                first_of.setdefault(delivery.webhook_id, index)
        fresh = [
            index
            for index, delivery in enumerate(batch)
            if delivery.webhook_id is None or first_of[delivery.webhook_id] == index
        ]
        # The batch's own marker: the runner replaying the script after a broken connection
        # finds it if the first execution was applied, and writes nothing.
        done = self.keys.write_done(uuid4_hex())
        for _attempt in range(CHECK_ATTEMPTS):
            if not fresh:
                return [False] * len(batch)
            ids = [wid for i in fresh if (wid := batch[i].webhook_id) is not None]
            seen = await self._script(
                [done, *(self.keys.webhook_seen(webhook_id) for webhook_id in ids)],
                self._commands([batch[index] for index in fresh]),
            )
            if not seen or seen[0] == 1:  # written now, or by an attempt whose answer was lost
                self._count([batch[index] for index in fresh])
                written = set(fresh)
                return [index in written for index in range(len(batch))]
            duplicates = {ids[position - 2] for position in seen}  # Lua counts from 1
            fresh = [i for i in fresh if batch[i].webhook_id not in duplicates]
        raise redis.RedisError("webhook ids kept turning out to be duplicates")

    def _commands(self, deliveries: Sequence[Delivery]) -> list[Any]:
        """The script's ARGV: the TTLs, then the writes that store `deliveries`."""
        recorder = CommandRecorder(WRITE_DONE_TTL_S, self.dedup_ttl_s)
        events = [event for delivery in deliveries for event in delivery.events]
        self.writer.write(list(bundles(events)), pipe=recorder)
        dropped = 0
        for delivery in deliveries:
            self.store.record_drops(
                delivery.dropped, "too_large", delivery.limit_bytes, pipe=recorder
            )
            dropped += len(delivery.dropped)
        self.store.add_totals(recorder, enqueued=len(events), dropped=dropped)
        return recorder.args

    def _count(self, deliveries: Sequence[Delivery]) -> None:
        enqueued = sum(len(delivery.events) for delivery in deliveries)
        dropped = sum(len(delivery.dropped) for delivery in deliveries)
        metrics.EVENTS_ENQUEUED.inc(enqueued)
        if dropped:
            metrics.EVENTS_DROPPED.labels("too_large").inc(dropped)
