"""Publishing a bundle: size check, PublishBatch packing, retries, dead letters. One retry policy.

Tiers (DESIGN "Failures"): transient errors are retried here with jittered exponential backoff
within a bounded number of attempts and time; systemic ones (and spent retries) raise
SnsUnavailable so the events wait in Redis; an entry SNS rejects for itself is dead-lettered.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from relay import limits, metrics
from relay.dead_letters import DeadLetter, DeadLetters
from relay.errors import QueueUnavailable, SnsUnavailable
from relay.event import Event
from relay.producer import effective_limit
from relay.settings import Settings
from relay.store import RelayStore
from workers.sns import (
    BatchEntry,
    ErrorKind,
    SnsGateway,
    classify_entry_failure,
    classify_error,
    credentials_refused,
    throttled,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

PUBLISH_MAX_ATTEMPTS = 6
PUBLISH_MAX_DELAY_S = 20.0
PUBLISH_BACKOFF_INITIAL_S = 0.1
PUBLISH_BACKOFF_MAX_S = 5.0
"""One batch gets at most 6 attempts within 20 s; botocore itself makes one attempt per call,
so these are the only retries below dramatiq's (FACTS §5.1: one layer owns retries)."""

TOO_LARGE_CODE = "BatchRequestTooLong"
"""What SNS answers when a PublishBatch is over the topic's limit (FACTS §2)."""

SPLITTABLE_CODES = frozenset({TOO_LARGE_CODE, "TooManyEntriesInBatchRequest"})
"""Whole-request errors about the batch's shape, mended by sending its entries alone."""

TOPIC_LIMIT_REFRESH_S = 300.0
"""How often a worker re-reads the topic's MaximumMessageSize (it can change at any time)."""

FIFO_GROUP_ATTRIBUTE = "cid"
"""On a FIFO topic an event's MessageGroupId is its Stream channel (`cid`): a channel's events
are delivered in the order SNS accepted them, and a busy channel does not hold up the others."""
FIFO_FALLBACK_GROUP_ID = "sns-relay"
"""The group of events without a `cid` that SNS takes as a group id (absent, non-ASCII, long)."""


class _RetryableBatch(Exception):
    """Some entries of a batch failed transiently; the loop re-sends only those."""


@dataclass
class BundleResult:
    published: int = 0
    dropped: int = 0
    dead_lettered: int = 0
    retried_entries: int = 0
    delivery_s: list[float] = field(default_factory=list)
    drops: list[tuple[Event, int]] = field(default_factory=list)
    """Each dropped event with the limit it was over, for the bundle's log line."""
    letters: list[DeadLetter] = field(default_factory=list)
    """The bundle's dead letters, for its log lines."""
    sns_answered: bool = False
    """SNS answered a request of the bundle (accepting or refusing its content): a verdict the
    circuit breaker may close on. False when every event was dropped before any request."""
    settled: set[int] = field(default_factory=set)
    """`id()` of each event published, dropped (recorded) or dead-lettered (recorded), so a
    bundle failing halfway is retried with only the rest."""

    def totals(self) -> dict[str, int]:
        """The outcomes as the fleet-wide totals of `relay stats` name them."""
        return {
            "published": self.published,
            "dead_lettered": self.dead_lettered,
            "dropped": self.dropped,
        }


class TopicLimit:
    """The size limit to enforce, refreshed from SNS and shared with producers through Redis."""

    def __init__(
        self,
        settings: Settings,
        gateway: SnsGateway,
        store: RelayStore,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.gateway = gateway
        self.store = store
        self.clock = clock
        self._value: int | None = None
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def bytes(self) -> int:
        with self._lock:
            if self._value is None or self.clock() - self._read_at > TOPIC_LIMIT_REFRESH_S:
                self._refresh()
            assert self._value is not None
            return self._value

    def invalidate(self) -> None:
        """Make the next `bytes()` read the topic's limit from SNS again."""
        with self._lock:
            self._read_at = float("-inf")

    def last_bytes(self) -> int:
        """The limit last enforced, without a refresh."""
        return self._value if self._value is not None else limits.SNS_DEFAULT_MAX_MESSAGE_BYTES

    def _refresh(self) -> None:
        topic = self.settings.require_topic_arn()
        try:
            reported = self.gateway.max_message_bytes(topic)
        except Exception as exc:  # a failed read must not stop publishing: keep the last value
            log.warning("could not read the topic's MaximumMessageSize: %s", type(exc).__name__)
            if self._value is None:
                # What another worker recorded beats the default; never overwrite it from here.
                with contextlib.suppress(QueueUnavailable):
                    recorded = self.store.topic_limit(topic)
                    self._value = effective_limit(self.settings, recorded)
                if self._value is None:
                    self._value = effective_limit(self.settings, None)
                metrics.TOPIC_MAX_MESSAGE_BYTES.set(self._value)
            self._read_at = self.clock()
            return
        self._value = effective_limit(self.settings, reported)
        self._read_at = self.clock()
        metrics.TOPIC_MAX_MESSAGE_BYTES.set(self._value)
        # On failure producers keep their configured limit; the worker checks every event anyway.
        with contextlib.suppress(QueueUnavailable):
            self.store.set_topic_limit(topic, reported or limits.SNS_DEFAULT_MAX_MESSAGE_BYTES)


def fifo_ids(event: Event) -> tuple[str, str]:
    """(MessageGroupId, MessageDeduplicationId) of `event` on a FIFO topic.

    The event id deduplicates: a bundle redelivered after a worker was killed, or an event
    replayed from the dead letters, within SNS's 5-minute window is delivered once.
    """
    group_id = event.attributes.get(FIFO_GROUP_ATTRIBUTE)
    if group_id is None or not limits.is_fifo_id(group_id):
        group_id = FIFO_FALLBACK_GROUP_ID
    return group_id, event.id


class Publisher:
    """Publishes bundles of events to one topic. Shared by the threads of one worker process."""

    def __init__(
        self,
        settings: Settings,
        gateway: SnsGateway,
        store: RelayStore,
        dead_letters: DeadLetters,
        *,
        sleep: Callable[[float], None] = time.sleep,
        renew_gateway: Callable[[SnsGateway], SnsGateway] | None = None,
    ) -> None:
        self.topic_arn = settings.require_topic_arn()
        self.fifo = self.topic_arn.endswith(".fifo")  # only FIFO topic names end so (FACTS §3.3)
        self.gateway = gateway
        self.store = store
        self.dead_letters = dead_letters
        self.limit = TopicLimit(settings, gateway, store)
        self.sleep = sleep
        self.renew_gateway = renew_gateway
        """Makes a gateway whose credentials are resolved again, in place of the one given."""
        self._credentials_refused = False

    def publish(
        self,
        events: Sequence[Event],
        result: BundleResult | None = None,
        *,
        record_totals: bool = True,
    ) -> BundleResult:
        """Publish a bundle. Every event ends published, dropped (recorded) or dead-lettered.

        The outcomes are added to the fleet-wide totals (`relay stats`) unless `record_totals`
        is False: the actor writes them with the bundle's settle instead. Raises
        SnsUnavailable, carrying the events not yet accepted, when SNS is down or refuses the
        credentials or the topic; QueueUnavailable when Redis fails while recording, when
        `result` (given by the caller) says which events were settled before.
        """
        result = result if result is not None else BundleResult()
        limit = self.limit.bytes()
        fitting = [event for event in events if event.size_bytes <= limit]
        too_large = [event for event in events if event.size_bytes > limit]
        if too_large:
            self._drop(too_large, limit, result)
        batches = limits.pack_batches(fitting, lambda event: event.size_bytes, limit)
        try:
            for number, batch in enumerate(batches):
                try:
                    self._publish_batch(batch, result)
                except SnsUnavailable as exc:
                    later = [event for rest in batches[number + 1 :] for event in rest]
                    raise SnsUnavailable(str(exc), [*exc.remaining, *later]) from exc.__cause__
        finally:
            log_outcomes(result)
            if record_totals:  # one write per bundle, not per batch
                self.add_totals(result.totals())
        return result

    def add_totals(self, totals: Mapping[str, int]) -> None:
        """Add to the fleet-wide totals, best effort: they are for `relay stats` only (the
        metrics and the records are exact), so a Redis blip never fails the bundle for them."""
        with contextlib.suppress(QueueUnavailable):
            self.store.add_totals(**totals)

    def _publish_batch(self, batch: Sequence[Event], result: BundleResult) -> None:
        remaining = {str(index): event for index, event in enumerate(batch)}
        retrying = Retrying(
            stop=stop_after_attempt(PUBLISH_MAX_ATTEMPTS) | stop_after_delay(PUBLISH_MAX_DELAY_S),
            wait=wait_exponential_jitter(
                multiplier=PUBLISH_BACKOFF_INITIAL_S,
                max=PUBLISH_BACKOFF_MAX_S,
                jitter=PUBLISH_BACKOFF_INITIAL_S,
            ),
            retry=retry_if_exception_type(_RetryableBatch),
            before_sleep=_log_retry,
            sleep=self.sleep,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        metrics.PUBLISH_RETRIES.inc()
                        result.retried_entries += len(remaining)
                    self._attempt(remaining, result)
        except _RetryableBatch as exc:
            raise SnsUnavailable(
                f"SNS kept failing after {PUBLISH_MAX_ATTEMPTS} attempts: {exc}",
                list(remaining.values()),
            ) from None

    def _attempt(self, remaining: dict[str, Event], result: BundleResult) -> None:
        if self._credentials_refused and self.renew_gateway is not None:
            # Made here, for the attempt (the breaker's probe), not when the credentials were
            # refused: resolved then, they would be the same missing or refused ones.
            self._credentials_refused = False
            self.gateway = self.limit.gateway = self.renew_gateway(self.gateway)
        if self.fifo:
            entries = [
                BatchEntry(id_, event.body, event.attributes, *fifo_ids(event))
                for id_, event in remaining.items()
            ]
        else:
            entries = [
                BatchEntry(id_, event.body, event.attributes) for id_, event in remaining.items()
            ]
        started = time.perf_counter()
        try:
            response = self.gateway.publish_batch(self.topic_arn, entries)
        except Exception as exc:
            metrics.PUBLISH_DURATION.observe(time.perf_counter() - started)
            self._request_failed(exc, remaining, result)
            return
        metrics.PUBLISH_DURATION.observe(time.perf_counter() - started)
        result.sns_answered = True
        accepted = [remaining.pop(id_) for id_ in response.successful if id_ in remaining]
        rejected: list[DeadLetter] = []
        systemic: set[str] = set()
        now = time.time()
        for id_, failure in response.failed.items():
            if id_ not in remaining:
                continue
            kind = classify_entry_failure(failure.code, failure.sender_fault)
            if kind is ErrorKind.PERMANENT:
                rejected.append(DeadLetter(remaining.pop(id_), failure.code, failure.message, now))
            elif kind is ErrorKind.SYSTEMIC:
                systemic.add(failure.code)
        self._settled(accepted, rejected, result)
        if systemic:
            # As for a whole request refused so: the breaker holds every entry not yet accepted.
            metrics.PUBLISH_REQUESTS.labels("unavailable").inc()
            raise SnsUnavailable(
                f"SNS refused entries: {', '.join(sorted(systemic))}", list(remaining.values())
            )
        if remaining:
            metrics.PUBLISH_REQUESTS.labels("partial").inc()
            codes = sorted(
                {response.failed[id_].code for id_ in remaining if id_ in response.failed}
            )
            raise _RetryableBatch(
                f"{len(remaining)} entries failed transiently ({', '.join(codes)})"
            )
        # A request with entries SNS refused for good is not `ok`: RelayPublishErrors and the
        # dashboard's outcome panel should see it, as the runbook says.
        metrics.PUBLISH_REQUESTS.labels("partial" if rejected else "ok").inc()

    def _request_failed(
        self, exc: Exception, remaining: dict[str, Event], result: BundleResult
    ) -> None:
        kind = classify_error(exc)
        code = error_code(exc)
        if kind is ErrorKind.TRANSIENT:
            metrics.PUBLISH_REQUESTS.labels("throttled" if throttled(exc) else "error").inc()
            raise _RetryableBatch(code) from exc
        if kind is ErrorKind.SYSTEMIC:
            metrics.PUBLISH_REQUESTS.labels("unavailable").inc()
            # The default chain is resolved once per client: credentials written or fixed
            # since are only found by a new one ("picked up without a restart").
            self._credentials_refused = credentials_refused(exc)
            raise SnsUnavailable(f"SNS refused the request: {code}", list(remaining.values()))
        if kind is ErrorKind.RELAY_BUG and code not in SPLITTABLE_CODES:
            # Not SNS's verdict on these events: never dead-letter them for it. dramatiq's bug
            # retries (and then its own dead letters) take the bundle.
            metrics.PUBLISH_REQUESTS.labels("error").inc()
            raise exc
        # SNS rejected the whole request for its content: find the culprit by sending alone.
        result.sns_answered = True
        metrics.PUBLISH_REQUESTS.labels("rejected").inc()
        if len(remaining) == 1 and code == TOO_LARGE_CODE:
            # One event over a limit we believed it fit: the topic's limit shrank. A size drop
            # (recorded), not a dead letter; and re-read the limit before the next bundle.
            (event,) = remaining.values()
            remaining.clear()
            self.limit.invalidate()
            # Recorded with the limit as SNS now reports it (the old one would show the event
            # fitting); the next bundles are checked against it too.
            self._drop([event], self.limit.bytes(), result)
            return
        if len(remaining) == 1:
            (event,) = remaining.values()
            remaining.clear()
            self._settled([], [DeadLetter(event, code, str(exc)[:1000], time.time())], result)
            return
        alone = list(remaining.values())
        remaining.clear()
        for number, event in enumerate(alone):
            try:
                self._publish_batch([event], result)
            except SnsUnavailable as unavailable:
                untried = alone[number + 1 :]
                raise SnsUnavailable(str(unavailable), [*unavailable.remaining, *untried]) from None

    def _drop(self, events: Sequence[Event], limit: int, result: BundleResult) -> None:
        self.store.record_drops(events, "too_large", limit)
        metrics.EVENTS_DROPPED.labels("too_large").inc(len(events))
        result.dropped += len(events)
        result.drops.extend((event, limit) for event in events)
        result.settled.update(map(id, events))

    def _settled(
        self, accepted: Sequence[Event], rejected: Sequence[DeadLetter], result: BundleResult
    ) -> None:
        now = time.time()
        if accepted:
            metrics.EVENTS_PUBLISHED.inc(len(accepted))
            for event in accepted:
                delivery = max(0.0, now - event.received_at_s)
                metrics.EVENT_DELIVERY.observe(delivery)
                result.delivery_s.append(delivery)
            result.published += len(accepted)
            result.settled.update(map(id, accepted))
        if rejected:
            self.dead_letters.add(rejected)
            for letter in rejected:
                metrics.EVENTS_DEAD_LETTERED.labels(letter.code).inc()
            result.dead_lettered += len(rejected)
            result.letters.extend(rejected)
            result.settled.update(id(letter.event) for letter in rejected)


DEAD_LETTER_LOG_CHARS = 200
"""SNS's reason as logged; the whole of it is kept with the dead letter."""
LOG_IDS_MAX = 10
"""Event ids named in one log line; the rest are counted (every one is in its record)."""


def log_outcomes(result: BundleResult) -> None:
    """A WARNING per bundle for its drops, and one per SNS error code for its dead letters.

    Per bundle, not per event: a run of bad events (every one rejected for the same reason)
    would otherwise write a line per event, as fast as the workers read them. Each line names
    up to LOG_IDS_MAX events; the records (`relay stats`, `relay dlq list`) hold every one.
    """
    by_limit: dict[int, list[Event]] = {}
    for event, limit in result.drops:
        by_limit.setdefault(limit, []).append(event)
    for limit, dropped in by_limit.items():
        log.warning(
            "dropped %s over the topic's limit of %d bytes (recorded; relay stats): %s%s",
            _count(len(dropped)),
            limit,
            ", ".join(f"{event.id} ({event.size_bytes} bytes)" for event in _head(dropped)),
            _more(len(dropped)),
        )
    by_code: dict[str, list[DeadLetter]] = {}
    for letter in result.letters:
        by_code.setdefault(letter.code, []).append(letter)
    for code, letters in by_code.items():
        first = letters[0].event.id
        log.warning(
            "dead-lettered %s (%s%s), SNS answered %s, for %s: %s (relay dlq show %s)",
            _count(len(letters)),
            ", ".join(letter.event.id for letter in _head(letters)),
            _more(len(letters)),
            code,
            first,
            letters[0].message[:DEAD_LETTER_LOG_CHARS],
            first,
        )


def _head(items: Sequence[T]) -> Sequence[T]:
    return items[:LOG_IDS_MAX]


def _more(count: int) -> str:
    return f" and {count - LOG_IDS_MAX} more" if count > LOG_IDS_MAX else ""


def _count(count: int) -> str:
    return "1 event" if count == 1 else f"{count} events"


def _log_retry(retry_state: RetryCallState) -> None:
    """One line per retried PublishBatch: which failure, which attempt comes next, and when."""
    failure = retry_state.outcome.exception() if retry_state.outcome is not None else None
    wait_s = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
    log.info(
        "PublishBatch failed transiently (%s); attempt %d of %d in %.2f s",
        failure,
        retry_state.attempt_number + 1,
        PUBLISH_MAX_ATTEMPTS,
        wait_s,
    )


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError, else the exception's class name."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
    return type(exc).__name__
