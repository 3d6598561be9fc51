"""The TCP connections between the workers and Redis cut for 5 s under load, then restored.

The workers reach Valkey through `TcpProxy`; producers write to it directly, so only the workers
suffer. What a consumer had fetched but not handed out when its connection broke stays in this
live process's ack set (FACTS §9.4 L2); the relay requeues it as soon as Redis answers again, so
everything drains without restarting a worker. Two more ways to strand ids in a live process's
ack set, a lost fetch reply and a failed promotion of a delayed bundle, are reproduced too.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import dramatiq
import pytest

from relay.demo_events import generate
from relay.event import Event, make_event
from relay.queue import bundle_message
from tests.faults.harness import TcpProxy, hold
from tests.faults.report import FaultResult
from tests.faults.rig import FaultRig
from tests.helpers import poll_until

pytestmark = pytest.mark.slow

CUT_S = 5.0
LOST_REPLY_TIMEOUT_S = 20.0
FETCH_REQUEST = b"\r\nfetch\r\n"
"""The dispatch command in a worker's fetch (EVALSHA dispatch.lua ... fetch ..., FACTS §9.2)."""
PREFETCH = 8
"""dramatiq's default prefetch for `-t 4`: 2 x threads (FACTS §9.8)."""
ENQUEUE_REQUEST = b"\r\nenqueue\r\n"
"""The dispatch command of an enqueue, as when a worker promotes a due delayed message."""
CONNECTION_ERROR_LOG = "Consumer encountered a connection error"
"""What dramatiq's consumer thread logs before it drops its in-memory delay queue."""
STRANDED_BOUND_S = 20.0
"""Redis answers again at once after the cut; the workers' consumers restart within 3 s."""
STRANDED_LOG = re.compile(r"requeued (\d+) messages stranded by a Redis connection error")


@pytest.mark.timeout(180)
def test_worker_redis_connections_cut_and_restored_lose_nothing_without_a_restart(
    rig: FaultRig, fault_report: Callable[[FaultResult], None]
) -> None:
    """Every acknowledged event is published after the cut, by the same worker processes, and
    no message is left in any ack set."""
    # Given workers connected to Valkey through a proxy, and a steady load
    proxy = TcpProxy(rig.valkey.port).start()
    fleet = rig.fleet(redis_url=proxy.url)
    load = rig.producer(rate_per_s=100, chunk=20)
    rig.wait_published(300)
    workers = fleet.wait_workers()

    # When every worker connection is cut and refused for 5 s, then allowed again
    cut_at = time.monotonic()
    connections = proxy.cut()
    hold(CUT_S)
    proxy.restore()
    restored_at = time.monotonic()
    recovered_at = rig.wait_settled(set(load.acknowledged))
    rig.wait_published(rig.published() + 300)
    load.stop()
    rig.wait_drained()

    # Then the cut hit live connections, and the same worker processes recovered
    assert connections > 0
    assert fleet.running()
    assert fleet.worker_pids() == workers
    # And nothing is stranded in a live process's ack set
    assert not any(rig.ack_sets().values())
    # And every acknowledged event is accounted for
    accounting = rig.account()
    accounting.assert_invariant()
    assert not accounting.dead_lettered
    assert not load.failures  # producers write to Valkey directly
    requeued = sum(int(n) for n in STRANDED_LOG.findall(fleet.log()))
    fault_report(
        FaultResult.of(
            "worker-Redis TCP connections cut 5 s",
            accounting,
            [load],
            recovered_at - restored_at,
            f"{connections} connections cut for {restored_at - cut_at:.1f} s; {requeued} "
            "stranded messages requeued by the live workers (L2); workers not restarted",
        )
    )


def fetched_ids(rig: FaultRig) -> set[bytes]:
    """Every id in any worker process's ack set."""
    return {redis_id for ids in rig.ack_sets().values() for redis_id in ids}


@pytest.mark.timeout(150)
def test_bundles_fetched_by_a_call_whose_reply_was_lost_come_back_without_a_restart(
    rig: FaultRig,
) -> None:
    """Fetches that Redis ran but whose replies never reached the worker (the link broke
    mid-call) leave ids in that live process's ack set; they are requeued once Redis answers
    again, without restarting the worker."""
    # Given workers connected to Valkey through a proxy, and a steady load
    proxy = TcpProxy(rig.valkey.port).start()
    fleet = rig.fleet(redis_url=proxy.url)
    load = rig.producer(rate_per_s=100, chunk=20)
    rig.wait_published(300)
    workers = fleet.wait_workers()

    # When the link to the workers loses the reply of every fetch, until some fetches have
    # popped bundles (more than one prefetch, so not just one call already under way), and
    # then breaks
    proxy.deafen_on(FETCH_REQUEST)
    before = fetched_ids(rig)
    lost = poll_until(
        lambda: len(fetched_ids(rig) - before) > PREFETCH and fetched_ids(rig) - before,
        LOST_REPLY_TIMEOUT_S,
        interval_s=0.05,
        what="fetches that Redis ran while their replies were lost",
    )
    proxy.cut()
    hold(2.0)
    proxy.restore()
    load.stop()

    # Then those bundles leave the live worker's ack set and everything is published
    rig.until(
        lambda: not lost & fetched_ids(rig),
        STRANDED_BOUND_S,
        what=f"the {len(lost)} bundles of the lost reply requeued",
    )
    rig.wait_drained()
    rig.account().assert_invariant()
    assert fleet.worker_pids() == workers


def delayed_bundle(events: Sequence[Event], eta_s: float) -> dramatiq.Message[Any]:
    """A bundle in the delay queue, due at `eta_s`, as a dramatiq retry leaves it."""
    message = bundle_message(events)
    return message.copy(queue_name=f"{message.queue_name}.DQ", options={"eta": int(eta_s * 1000)})


def write_delayed(rig: FaultRig, bundles: Sequence[tuple[dramatiq.Message[Any], int]]) -> None:
    """Store delayed bundles (message, event count) with their pending count, in one write."""
    pipe = rig.redis.pipeline(transaction=True)
    for message, events in bundles:
        redis_id = message.options["redis_message_id"]
        pipe.hset(rig.keys.delay_queue_messages, redis_id, message.encode())
        pipe.rpush(f"{rig.keys.queue}.DQ", redis_id)
        pipe.hset(rig.keys.pending_bundles, message.message_id, events)
        pipe.incrby(rig.keys.pending_events, events)
    pipe.execute()


@pytest.mark.timeout(150)
def test_delayed_bundles_dropped_by_a_failed_promotion_come_back_without_a_restart(
    rig: FaultRig,
) -> None:
    """When the enqueue that promotes a due retry loses its reply, dramatiq's consumer thread
    drops every delayed bundle it held in memory; they are published anyway, without a restart."""
    # Given workers through a proxy, and two delayed bundles (retries) held by one worker
    proxy = TcpProxy(rig.valkey.port).start()
    fleet = rig.fleet(redis_url=proxy.url)
    fleet.wait_workers()
    events = [make_event(body) for body in generate(10, oversize_every=None)]
    now = time.time()
    due, later = delayed_bundle(events[:5], now + 4.0), delayed_bundle(events[5:], now + 10.0)
    write_delayed(rig, [(due, 5), (later, 5)])
    held = {m.options["redis_message_id"].encode() for m in (due, later)}
    poll_until(
        lambda: any(held <= ids for key, ids in rig.ack_sets().items() if key.endswith(".DQ")),
        15.0,
        what="one worker holding both delayed bundles",
    )

    # When the link loses the reply of every enqueue while the first one is promoted
    proxy.deafen_on(ENQUEUE_REQUEST)
    rig.wait_published(5, timeout_s=30.0)  # Redis ran the promotion: the first bundle is out
    poll_until(
        lambda: CONNECTION_ERROR_LOG in fleet.log(),
        30.0,
        what="the promoting consumer giving up on its connection",
    )
    proxy.restore()

    # Then the other delayed bundle is published too, without restarting the worker
    later_ids = {event.id for event in events[5:]}
    rig.until(
        lambda: later_ids <= rig.published_ids(),
        (now + 10.0 - time.time()) + STRANDED_BOUND_S,
        what="the bundle dropped from the worker's delay queue published",
    )
    rig.wait_drained()
    assert fleet.running()
