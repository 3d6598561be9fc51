"""The producer API: `Producer.send` and `send_many` put events durably into the Redis queue.

A call returns only once its events are in Redis. Oversize events are never enqueued: they are
counted and recorded as dropped, and reported to the caller.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import redis

from relay import limits, metrics
from relay.errors import EventTooLarge, InvalidEvent, QueueUnavailable
from relay.event import Event, check_event_id, make_event
from relay.keys import Keys
from relay.queue import (
    TRANSACTION_MAX_BYTES,
    BundleWriter,
    CommandRecorder,
    bundles,
    redis_client,
    write_once,
)
from relay.settings import Settings
from relay.store import RelayStore

TOPIC_LIMIT_CACHE_S = 30.0
"""How long a producer reuses the topic limit it read from Redis before reading it again."""

Payload = bytes | str | Mapping[str, Any]
Status = Literal["enqueued", "dropped", "invalid", "unavailable"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one payload of a `send_many` call."""

    index: int
    event_id: str | None
    status: Status
    detail: str = ""


@dataclass
class SendReport:
    """Per-event outcomes of `send_many`, in input order."""

    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, status: Status) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status == status)

    @property
    def enqueued(self) -> int:
        return self.count("enqueued")

    @property
    def dropped(self) -> int:
        return self.count("dropped")

    @property
    def invalid(self) -> int:
        return self.count("invalid")


class Producer:
    """Enqueues events into the relay's Redis queue. Thread-safe; reuse one per process."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.client = client or redis_client(settings.require_redis_url(), settings)
        self.keys = Keys(settings.namespace)
        self.store = RelayStore(self.client, self.keys)
        self.writer = BundleWriter(self.client, self.keys)
        self._limit_bytes: int | None = None
        self._limit_read_at = float("-inf")

    @classmethod
    def from_env(cls) -> Producer:
        """A producer configured from `RELAY_*` environment variables (and `.env`)."""
        return cls(Settings.load())

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def max_message_bytes(self) -> int:
        """The SNS size limit events must fit: the topic's, as workers recorded it, capped by ours.

        Until a worker has read the topic, the configured limit applies; the worker checks again
        before publishing, so a stale value here is never a silent loss.
        """
        now = time.monotonic()
        if now - self._limit_read_at > TOPIC_LIMIT_CACHE_S:
            topic = self.settings.sns_topic_arn
            try:
                topic_limit = self.store.topic_limit(topic) if topic else None
            except QueueUnavailable:
                topic_limit = None
            self._limit_bytes = effective_limit(self.settings, topic_limit)
            self._limit_read_at = now
        assert self._limit_bytes is not None
        return self._limit_bytes

    def send(self, payload: Payload, *, event_id: str | None = None, source: str = "api") -> str:
        """Enqueue one event; return its id once it is stored in Redis.

        Raises InvalidEvent (not a JSON object, not UTF-8, bad id), EventTooLarge (recorded as
        dropped) or QueueUnavailable (Redis full or read-only: nothing was stored; unreachable
        or not answering in time: stored only if the connection failed after the write was
        sent, which its message allows for).
        """
        metrics.EVENTS_RECEIVED.labels(source).inc()
        try:
            event = make_event(payload, event_id=event_id)
        except InvalidEvent:
            metrics.EVENTS_REJECTED.labels("invalid").inc()
            raise
        limit = self.max_message_bytes()
        if event.size_bytes > limit:
            self._drop([event], limit)
            raise EventTooLarge(event.id, event.size_bytes, limit)
        self._store([event], [])
        return event.id

    def send_many(
        self,
        payloads: Iterable[Payload],
        *,
        event_ids: Iterable[str | None] | None = None,
        source: str = "api",
    ) -> SendReport:
        """Enqueue many events in bundles and few Redis round trips; report each one's outcome.

        `event_ids`, when given, pairs with `payloads` one to one (None: a generated id), so a
        caller can send again, with their ids, events a failed call may have stored. Invalid and
        oversize payloads, invalid ids and an id given twice in one call are reported (oversize
        events also recorded as dropped) and never stop the rest. Raises ValueError, storing
        nothing, when `event_ids` and `payloads` differ in length; QueueUnavailable when Redis
        fails: the events of transactions already written stay enqueued, and the error's
        `report` says which.
        """
        for name, value in (("payloads", payloads), ("event_ids", event_ids)):
            if isinstance(value, str | bytes | bytearray | memoryview | Mapping):
                # Iterating one value would send its characters, bytes or keys as events.
                raise TypeError(
                    f"send_many takes an iterable of {name}, not one {type(value).__name__}"
                    + (": use send() for a single event" if name == "payloads" else "")
                )
        report = SendReport()
        limit = self.max_message_bytes()
        accepted: list[Event] = []
        accepted_index: list[int] = []
        too_large: list[Event] = []
        invalid = 0
        given_ids: set[str] = set()
        for index, (payload, event_id) in enumerate(_paired(payloads, event_ids)):
            try:
                if event_id is not None:
                    # One id, one event: the report, and a failure's rewrite of it, go by id.
                    if check_event_id(event_id) in given_ids:
                        raise InvalidEvent(f"event id {event_id} is given twice in this call")
                    given_ids.add(event_id)
                event = make_event(payload, event_id=event_id)
            except InvalidEvent as exc:
                invalid += 1
                report.outcomes.append(Outcome(index, None, "invalid", exc.reason))
                continue
            if event.size_bytes > limit:
                too_large.append(event)
                report.outcomes.append(
                    Outcome(
                        index, event.id, "dropped", f"too_large: {event.size_bytes} > {limit} bytes"
                    )
                )
                continue
            accepted.append(event)
            accepted_index.append(index)
            report.outcomes.append(Outcome(index, event.id, "enqueued"))
        # Counted once per call, not per event: a labelled child's lookup costs more than the
        # increment, and these are counts of what was handed over, not of what was stored.
        metrics.EVENTS_RECEIVED.labels(source).inc(len(report.outcomes))
        if invalid:
            metrics.EVENTS_REJECTED.labels("invalid").inc(invalid)
        self._send_events(accepted, dropped=too_large, limit_bytes=limit, report=report)
        return report

    def _send_events(
        self,
        events: Sequence[Event],
        *,
        dropped: Sequence[Event] = (),
        limit_bytes: int | None = None,
        report: SendReport | None = None,
    ) -> None:
        """Store events `make_event` built, recording `dropped` ones in the same writes.

        Private: its events' ids were checked when they were made. A public way to store
        ready-made `Event`s would let ids no check has seen (a newline, a space) reach the
        workers' log lines and SNS.

        Raises QueueUnavailable; with a `report`, outcomes of events not stored become
        "unavailable" before it propagates: "queue unavailable" for those never sent, and for
        those of the write that failed when it may still have been applied (exc.maybe_stored),
        a detail saying so. Drops whose record was not written say that too.
        """
        limit = limit_bytes if limit_bytes is not None else self.max_message_bytes()
        chunks = _transactions(events)
        done = 0
        try:
            for chunk in chunks:
                self._store(chunk, dropped if done == 0 else [], limit)
                done += 1
            if not chunks and dropped:
                self._drop(dropped, limit)
        except QueueUnavailable as exc:
            if report is not None:
                _report_failure(report, chunks, done, dropped, exc)
                exc.report = report
            raise

    def _store(self, events: Sequence[Event], dropped: Sequence[Event], limit: int = 0) -> None:
        commands = CommandRecorder()
        self.writer.write(list(bundles(events)), pipe=commands)
        self.store.record_drops(dropped, "too_large", limit, pipe=commands)
        self.store.add_totals(commands, enqueued=len(events), dropped=len(dropped))
        write_once(self.client, self.keys, commands)
        metrics.EVENTS_ENQUEUED.inc(len(events))
        if dropped:
            metrics.EVENTS_DROPPED.labels("too_large").inc(len(dropped))

    def _drop(self, events: Sequence[Event], limit: int) -> None:
        self._store([], events, limit)


UNSENT_DETAIL = "queue unavailable"
MAYBE_STORED_DETAIL = (
    "queue unavailable; if Redis applied the write before the timeout or broken connection, "
    "it was stored: send it again with its event_id (send(payload, event_id=...) or "
    "send_many(payloads, event_ids=...)), so a second copy carries the same id"
)


def _paired(
    payloads: Iterable[Payload], event_ids: Iterable[str | None] | None
) -> Iterator[tuple[Payload, str | None]]:
    """Each payload with its id (None without `event_ids`); ValueError, before the caller has
    stored anything, when the two run out at different lengths."""
    if event_ids is None:
        for payload in payloads:
            yield payload, None
        return
    ids = iter(event_ids)
    count = 0
    for payload in payloads:
        event_id = next(ids, _MISSING)
        if event_id is _MISSING:
            raise ValueError(f"send_many got {count} event ids for more payloads; nothing was sent")
        yield payload, event_id
        count += 1
    if next(ids, _MISSING) is not _MISSING:
        raise ValueError(
            f"send_many got more event ids than its {count} payloads; nothing was sent"
        )


_MISSING: Any = object()
DROP_NOT_RECORDED = "; not recorded or counted: queue unavailable"
DROP_MAYBE_RECORDED = "; its record may not have been written: queue unavailable"


def _report_failure(
    report: SendReport,
    chunks: Sequence[Sequence[Event]],
    done: int,
    dropped: Sequence[Event],
    exc: QueueUnavailable,
) -> None:
    """Rewrite the outcomes of a send_many whose write of chunks[done] failed."""
    failed = chunks[done] if done < len(chunks) else []
    in_flight = {event.id for event in failed} if exc.maybe_stored else set()
    unsent = {event.id for chunk in chunks[done:] for event in chunk} - in_flight
    # The drops ride with the first write: unwritten if it (or the drops-only write) failed.
    drops_unwritten = {event.id for event in dropped} if done == 0 else set()
    drop_note = DROP_MAYBE_RECORDED if exc.maybe_stored else DROP_NOT_RECORDED
    outcomes = []
    for o in report.outcomes:
        if o.event_id in in_flight:
            o = Outcome(o.index, o.event_id, "unavailable", MAYBE_STORED_DETAIL)
        elif o.event_id in unsent:
            o = Outcome(o.index, o.event_id, "unavailable", UNSENT_DETAIL)
        elif o.status == "dropped" and o.event_id in drops_unwritten:
            o = Outcome(o.index, o.event_id, "dropped", o.detail + drop_note)
        outcomes.append(o)
    report.outcomes[:] = outcomes


def effective_limit(settings: Settings, topic_limit: int | None) -> int:
    """The topic's limit when known (else SNS's default), capped by RELAY_MAX_MESSAGE_BYTES."""
    base = topic_limit if topic_limit is not None else limits.SNS_DEFAULT_MAX_MESSAGE_BYTES
    if settings.max_message_bytes is not None:
        return min(base, settings.max_message_bytes)
    return base


def _transactions(events: Sequence[Event]) -> list[Sequence[Event]]:
    """Split events into runs of about TRANSACTION_MAX_BYTES, each written in one transaction."""
    chunks: list[Sequence[Event]] = []
    start, size = 0, 0
    for index, event in enumerate(events):
        if index > start and size + event.size_bytes > TRANSACTION_MAX_BYTES:
            chunks.append(events[start:index])
            start, size = index, 0
        size += event.size_bytes
    if start < len(events):
        chunks.append(events[start:])
    return chunks
