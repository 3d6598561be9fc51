"""Tests of relay.store: the dropped log and counts, settling bundles, the topic limit, and
the queue's oldest age, against a real Valkey."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import dramatiq
import orjson
import pytest
import redis

from relay import store as store_module
from relay.embedded import start_server
from relay.errors import QueueUnavailable
from relay.event import Event, make_event
from relay.keys import ACTOR_NAME, QUEUE_NAME, Keys
from relay.queue import CHECK_AND_WRITE_LUA, BundleWriter
from relay.queue import redis_client as queue_redis_client
from relay.settings import Settings
from relay.store import TOPIC_LIMIT_TTL_S, DroppedRecord, RelayStore

TOPIC = "arn:aws:sns:us-east-1:123456789012:relay-test"


@pytest.fixture
def keys(namespace: str) -> Keys:
    return Keys(namespace)


@pytest.fixture
def store(redis_client: redis.Redis, keys: Keys) -> RelayStore:
    return RelayStore(redis_client, keys)


def events(prefix: str, n: int, event_type: str = "message.new") -> list[Event]:
    return [make_event({"type": event_type, "n": i}, event_id=f"{prefix}-{i}") for i in range(n)]


def write_bundle(
    redis_client: redis.Redis, keys: Keys, n: int, queued_at_ms: int | None = None
) -> str:
    """Write one bundle of `n` events (queued at `queued_at_ms`, default now); return its
    dramatiq message id (the settle key)."""
    BundleWriter(redis_client, keys).write([events("b", n)], queued_at_ms=queued_at_ms)
    rid = redis_client.lrange(keys.queue, -1, -1)[0]
    return dramatiq.Message.decode(redis_client.hget(keys.queue_messages, rid)).message_id


# --- dropped log -------------------------------------------------------------------------------


def test_drop_record_has_id_type_reason_size_limit_and_time(store: RelayStore) -> None:
    """A drop record keeps the event's id, type, reason, size, the limit and the time."""
    event = make_event({"type": "message.updated", "text": "x" * 50}, event_id="big-1")
    before = time.time()
    store.record_drops([event], "too_large", 40)
    (record,) = store.dropped()
    assert record == DroppedRecord(
        event_id="big-1",
        event_type="message.updated",
        reason="too_large",
        size_bytes=event.size_bytes,
        limit_bytes=40,
        at_s=record.at_s,
    )
    assert before <= record.at_s <= time.time()


def test_drop_log_body_is_never_stored(
    store: RelayStore, redis_client: redis.Redis, keys: Keys
) -> None:
    """The raw log entry does not contain the dropped event's body text."""
    event = make_event({"type": "t", "secret_text": "do-not-log-me"}, event_id="e1")
    store.record_drops([event], "too_large", 10)
    (raw,) = redis_client.lrange(keys.dropped_log, 0, -1)
    assert b"do-not-log-me" not in raw
    assert orjson.loads(raw)["event_id"] == "e1"


def test_drop_log_is_capped_newest_first_while_counts_stay_full(
    store: RelayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the cap the oldest records go, newest first remain, and counts keep every drop."""
    monkeypatch.setattr(store_module, "DROPPED_LOG_MAX_ENTRIES", 5)
    store.record_drops(events("old", 3), "too_large", 100)
    store.record_drops(events("new", 4), "too_large", 100)
    store.record_drops(events("inv", 2), "invalid_at_worker", 100)
    assert [record.event_id for record in store.dropped(limit=100)] == [
        "inv-1",
        "inv-0",
        "new-3",
        "new-2",
        "new-1",
    ]
    assert store.dropped_counts() == {"too_large": 7, "invalid_at_worker": 2}


def test_drop_log_cap_is_the_keys_constant(
    store: RelayStore, redis_client: redis.Redis, keys: Keys
) -> None:
    """With the real DROPPED_LOG_MAX_ENTRIES, one call of more drops keeps exactly the cap."""
    cap = store_module.DROPPED_LOG_MAX_ENTRIES
    many = [Event(f"e{i}", "{}", {}, 0.0) for i in range(cap + 25)]
    store.record_drops(many, "too_large", 1)
    assert redis_client.llen(keys.dropped_log) == cap
    assert store.dropped(limit=1)[0].event_id == f"e{cap + 24}"
    assert store.dropped_counts() == {"too_large": cap + 25}


def test_dropped_limit_bounds_the_records_returned(store: RelayStore) -> None:
    """`dropped(limit)` returns at most `limit` records, the newest."""
    store.record_drops(events("e", 30), "too_large", 1)
    assert [record.event_id for record in store.dropped(limit=3)] == ["e-29", "e-28", "e-27"]
    assert len(store.dropped()) == 20


def test_recording_no_drops_writes_nothing(
    store: RelayStore, redis_client: redis.Redis, namespace: str
) -> None:
    """An empty list of drops touches no key."""
    store.record_drops([], "too_large", 1)
    assert redis_client.keys(f"{namespace}:*") == []


def test_drops_in_a_callers_pipeline_wait_for_its_execute(
    store: RelayStore, redis_client: redis.Redis
) -> None:
    """Given a pipeline, drops are only queued in it: nothing is visible before it executes."""
    pipe = redis_client.pipeline(transaction=True)
    store.record_drops(events("p", 2), "too_large", 1, pipe=pipe)
    assert store.dropped_counts() == {}
    pipe.execute()
    assert store.dropped_counts() == {"too_large": 2}


# --- totals ------------------------------------------------------------------------------------


def test_totals_add_up_and_skip_zero_deltas(store: RelayStore) -> None:
    """add_totals accumulates named counters; a zero delta creates no field."""
    store.add_totals(enqueued=5, published=0)
    store.add_totals(enqueued=2, published=3)
    assert store.totals() == {"enqueued": 7, "published": 3}


# --- settle ------------------------------------------------------------------------------------


def test_settle_takes_a_bundles_events_off_the_pending_count(
    store: RelayStore, redis_client: redis.Redis, keys: Keys
) -> None:
    """Settling a whole bundle takes all its events off the pending count and forgets it."""
    bundle = write_bundle(redis_client, keys, 5)
    assert store.pending_events() == 5
    assert store.settle(bundle, 5) == 5
    assert store.pending_events() == 0
    assert not redis_client.hexists(keys.pending_bundles, bundle)


def test_a_settle_runs_when_redis_is_at_its_maxmemory(keys: Keys) -> None:
    """A full Redis (noeviction) refuses new events but not the settle that frees their room:
    the workers can drain the backlog that filled it."""
    server = start_server({"maxmemory-policy": "noeviction"})
    client = redis.Redis.from_url(server.connection_url)
    try:
        bundle = write_bundle(client, keys, 5)
        client.config_set("maxmemory", "1")
        with pytest.raises(QueueUnavailable, match="OutOfMemoryError"):
            BundleWriter(client, keys).write([events("late", 1)])
        store = RelayStore(client, keys)
        assert store.settle(bundle, 5, totals={"published": 5}) == 5
        assert store.pending_events() == 0
        assert store.totals() == {"published": 5}
    finally:
        client.close()
        server.stop()


def test_settling_the_same_bundle_twice_takes_nothing_more(
    store: RelayStore, redis_client: redis.Redis, keys: Keys
) -> None:
    """A bundle processed twice (worker killed after publishing) cannot take others' count."""
    settled = write_bundle(redis_client, keys, 4)
    write_bundle(redis_client, keys, 3)
    assert store.settle(settled, 4) == 4
    assert store.settle(settled, 4) == 0
    assert store.pending_events() == 3


def test_partial_settle_then_the_rest(
    store: RelayStore, redis_client: redis.Redis, keys: Keys
) -> None:
    """A partial settle leaves the rest pending; a later settle takes at most what remains."""
    bundle = write_bundle(redis_client, keys, 5)
    assert store.settle(bundle, 2) == 2
    assert store.pending_events() == 3
    assert int(redis_client.hget(keys.pending_bundles, bundle)) == 3
    assert store.settle(bundle, 5) == 3
    assert store.pending_events() == 0
    assert store.settle(bundle, 1) == 0


@pytest.mark.parametrize("call", ["settle", "add_totals", "settle_with_totals"])
def test_a_settle_or_totals_write_replayed_after_its_answer_was_lost_counts_once(
    make_settings: Callable[..., Settings],
    redis_client: redis.Redis,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
    call: str,
) -> None:
    """The workers' client retries once on a broken connection. A partial settle (or a totals
    increment) whose answer was lost is replayed; its marker makes the replay a no-op, so the
    bundle's other events stay pending (and the totals count once)."""
    settings = make_settings(namespace=keys.namespace)
    store = RelayStore(queue_redis_client(settings.require_redis_url(), settings), keys)
    bundle = write_bundle(redis_client, keys, 5)
    store.client.script_load(store_module._SETTLE_LUA)
    store.client.script_load(CHECK_AND_WRITE_LUA)
    real_read = redis.connection.Connection.read_response
    lost: list[Any] = []

    def lose_the_first_script_answer(self: Any, *args: Any, **kwargs: Any) -> Any:
        answer = real_read(self, *args, **kwargs)
        if isinstance(answer, int | list) and not lost:  # a settle's count, a write's markers
            lost.append(answer)
            self.disconnect()
            raise redis.ConnectionError("Connection closed by server.")
        return answer

    monkeypatch.setattr(redis.connection.Connection, "read_response", lose_the_first_script_answer)
    if call == "settle":
        assert store.settle(bundle, 2) == 2
    elif call == "settle_with_totals":
        assert store.settle(bundle, 2, {"published": 2}) == 2
    else:
        store.add_totals(published=2)
    monkeypatch.undo()

    assert len(lost) == 1
    if call != "add_totals":
        assert store.pending_events() == 3
        assert int(redis_client.hget(keys.pending_bundles, bundle)) == 3
    if call != "settle":
        assert store.totals() == {"published": 2}
    store.client.close()


def test_a_settle_adds_its_totals_in_the_same_script(
    store: RelayStore, redis_client: redis.Redis, keys: Keys
) -> None:
    """settle_all with totals takes the bundle off the pending count and adds the totals (a
    zero creates no field), as add_totals would; a second settle of the bundle adds its own."""
    bundle = write_bundle(redis_client, keys, 5)
    store.add_totals(published=1)
    assert store.settle_all(bundle, {"published": 4, "dropped": 1, "dead_lettered": 0}) == 5
    assert store.pending_events() == 0
    assert store.totals() == {"published": 5, "dropped": 1}
    assert store.settle_all(bundle, {"published": 2}) == 0
    assert store.totals() == {"published": 7, "dropped": 1}


def test_settling_an_unknown_bundle_takes_nothing(
    store: RelayStore, redis_client: redis.Redis, keys: Keys
) -> None:
    """An id that was never written (or an empty one) settles nothing."""
    write_bundle(redis_client, keys, 2)
    assert store.settle("no-such-bundle", 2) == 0
    assert store.settle("", 2) == 0
    assert store.pending_events() == 2


def test_settling_zero_or_negative_events_changes_nothing(
    store: RelayStore, redis_client: redis.Redis, keys: Keys
) -> None:
    """A settle of 0 changes nothing, and a negative count is refused before reaching Redis."""
    bundle = write_bundle(redis_client, keys, 2)
    assert store.settle(bundle, 0) == 0
    with pytest.raises(ValueError, match="negative"):
        store.settle(bundle, -3)
    assert store.pending_events() == 2
    assert int(redis_client.hget(keys.pending_bundles, bundle)) == 2


def test_pending_events_is_never_negative(
    store: RelayStore, redis_client: redis.Redis, keys: Keys
) -> None:
    """A counter pushed below zero (e.g. a key reset under running workers) reads as 0."""
    assert store.pending_events() == 0
    redis_client.set(keys.pending_events, -3)
    assert store.pending_events() == 0


# --- topic limit -------------------------------------------------------------------------------


def test_topic_limit_round_trips_with_a_ttl(
    store: RelayStore, redis_client: redis.Redis, keys: Keys
) -> None:
    """A recorded topic limit reads back as an int and expires after TOPIC_LIMIT_TTL_S."""
    assert store.topic_limit(TOPIC) is None
    store.set_topic_limit(TOPIC, 1_048_576)
    assert store.topic_limit(TOPIC) == 1_048_576
    assert 0 < redis_client.ttl(keys.topic_limit(TOPIC)) <= TOPIC_LIMIT_TTL_S


def test_topic_limits_are_per_topic(store: RelayStore) -> None:
    """Each topic has its own recorded limit; re-recording replaces the value."""
    other = TOPIC + "-other"
    store.set_topic_limit(TOPIC, 2_048)
    store.set_topic_limit(other, 4_096)
    store.set_topic_limit(TOPIC, 8_192)
    assert (store.topic_limit(TOPIC), store.topic_limit(other)) == (8_192, 4_096)


# --- oldest age --------------------------------------------------------------------------------


def put_message(redis_client: redis.Redis, keys: Keys, rid: str, timestamp_ms: int) -> None:
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=QUEUE_NAME,
        actor_name=ACTOR_NAME,
        args=([],),
        kwargs={},
        options={"redis_message_id": rid},
        message_timestamp=timestamp_ms,
    )
    redis_client.hset(keys.queue_messages, rid, message.encode())
    redis_client.rpush(keys.queue, rid)


def test_oldest_age_is_that_of_the_queue_head(
    store: RelayStore, redis_client: redis.Redis, keys: Keys
) -> None:
    """The age is measured from the head bundle (the next one taken), then the next one."""
    put_message(redis_client, keys, "first", 1_000_000)
    put_message(redis_client, keys, "second", 2_000_000)
    assert store.oldest_age_s(now_s=3_000.5) == pytest.approx(2_000.5)
    redis_client.lpop(keys.queue)  # a worker took the head
    assert store.oldest_age_s(now_s=3_000.5) == pytest.approx(1_000.5)


def test_oldest_age_counts_a_bundle_a_worker_took_until_it_is_settled(
    store: RelayStore, redis_client: redis.Redis, keys: Keys
) -> None:
    """A bundle taken off the queue (held behind an open breaker, retrying, prefetched) still
    waits: the age counts it from when it was queued, with the queue empty, until it is
    settled in full; a partial settle leaves it waiting."""
    bundle = write_bundle(redis_client, keys, 3, 1_000_000)
    redis_client.rpop(keys.queue)  # a worker took it: dramatiq moves it to an ack set
    assert store.oldest_age_s(now_s=3_000.5) == pytest.approx(2_000.5)
    store.settle(bundle, 2)
    assert store.oldest_age_s(now_s=3_000.5) == pytest.approx(2_000.5)
    store.settle(bundle, 1)
    assert store.oldest_age_s(now_s=3_000.5) is None
    assert redis_client.zcard(keys.pending_ages) == 0


def test_oldest_age_is_the_oldest_of_the_taken_bundles_and_the_queue_head(
    store: RelayStore, redis_client: redis.Redis, keys: Keys
) -> None:
    """The oldest bundle wins wherever it is: taken by a worker, or at the queue's head
    (written there by a producer of a version that kept no ages)."""
    write_bundle(redis_client, keys, 1, 2_000_000)
    redis_client.rpop(keys.queue)
    put_message(redis_client, keys, "older", 1_000_000)
    assert store.oldest_age_s(now_s=3_000.5) == pytest.approx(2_000.5)
    redis_client.lpop(keys.queue)
    assert store.oldest_age_s(now_s=3_000.5) == pytest.approx(1_000.5)


def test_oldest_age_skips_and_removes_ages_of_bundles_no_longer_pending(
    store: RelayStore, redis_client: redis.Redis, keys: Keys
) -> None:
    """An age left by a bundle settled without it (by a worker of a version that kept no ages)
    is not the oldest: it is removed, and the oldest pending bundle's age is read."""
    bundle = write_bundle(redis_client, keys, 1, 2_000_000)
    redis_client.rpop(keys.queue)
    redis_client.zadd(keys.pending_ages, {"settled-long-ago": 1_000_000})
    assert store.oldest_age_s(now_s=3_000.5) == pytest.approx(1_000.5)
    assert redis_client.zrange(keys.pending_ages, 0, -1) == [bundle.encode()]


def test_oldest_age_is_read_when_redis_is_at_its_maxmemory(keys: Keys) -> None:
    """A full Redis (noeviction) still answers the oldest age, the gauge an operator watches
    then, and the read's clean-up of a stale age runs too (it frees room)."""
    server = start_server({"maxmemory-policy": "noeviction"})
    client = redis.Redis.from_url(server.connection_url)
    try:
        bundle = write_bundle(client, keys, 2, 2_000_000)
        client.zadd(keys.pending_ages, {"settled-long-ago": 1_000_000})
        client.config_set("maxmemory", "1")
        with pytest.raises(QueueUnavailable, match="OutOfMemoryError"):
            BundleWriter(client, keys).write([events("late", 1)])
        store = RelayStore(client, keys)
        assert store.oldest_age_s(now_s=3_000.5) == pytest.approx(1_000.5)
        assert client.zrange(keys.pending_ages, 0, -1) == [bundle.encode()]
    finally:
        client.close()
        server.stop()


def test_oldest_age_of_an_empty_queue_is_none(store: RelayStore) -> None:
    """No bundle waiting: no age."""
    assert store.oldest_age_s() is None


def test_oldest_age_of_a_bundle_just_written_is_small(
    store: RelayStore, redis_client: redis.Redis, keys: Keys
) -> None:
    """A bundle BundleWriter just wrote is seconds old at most, measured by the real clock."""
    write_bundle(redis_client, keys, 1)
    age = store.oldest_age_s()
    assert age is not None
    assert 0.0 <= age < 60.0


def test_oldest_age_never_negative_under_clock_skew(
    store: RelayStore, redis_client: redis.Redis, keys: Keys
) -> None:
    """A head stamped in the future (another host's clock ahead) reads as age 0."""
    put_message(redis_client, keys, "future", 5_000_000)
    assert store.oldest_age_s(now_s=1_000.0) == 0.0


def test_oldest_age_of_a_head_without_payload_is_none(
    store: RelayStore, redis_client: redis.Redis, keys: Keys
) -> None:
    """A head id whose payload is gone (acked meanwhile) gives no age rather than an error."""
    redis_client.rpush(keys.queue, "orphan")
    assert store.oldest_age_s() is None


def test_queue_depth_and_dramatiq_dead_bundles(
    store: RelayStore, redis_client: redis.Redis, keys: Keys
) -> None:
    """Depth counts bundles waiting; dramatiq's own dead letters are counted apart."""
    write_bundle(redis_client, keys, 3)
    write_bundle(redis_client, keys, 1)
    redis_client.zadd(keys.dramatiq_dead_letters, {"x": 1})
    assert store.queue_depth_bundles() == 2
    assert store.dramatiq_dead_bundles() == 1
