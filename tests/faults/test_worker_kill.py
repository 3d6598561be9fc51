"""`kill -9` of a dramatiq worker process mid-publish, five times in a row, under load.

dramatiq's master exits when a child dies (FACTS §9.5, #505); `relay worker` then starts a new
fleet itself. The killed process's bundles stay in its ack set until its heartbeat is
HEARTBEAT_TIMEOUT_MS (10 s) stale and another process's maintenance requeues them.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from relay.supervisor import RESTART_STABLE_RUN_S
from tests.faults.report import FaultResult
from tests.faults.rig import FaultRig
from tests.helpers import poll_until

pytestmark = pytest.mark.slow

KILLS = 5
MAX_KILL_ATTEMPTS = 8
"""A kill that finds the victim between bundles strands nothing and is tried again."""
SLOW_SNS_S = 0.2
"""Every publish takes this long, so a worker process is mid-publish most of the time."""
REQUEUE_BOUND_S = 30.0
"""Stated bound from the kill to the killed bundles published again (target 20 s: a 10 s
heartbeat timeout, a restart, and a 10 % maintenance chance per dispatch of the new workers)."""


def busy_workers(rig: FaultRig) -> int:
    """Worker processes holding fetched, unacked bundles of the main queue."""
    return sum(1 for key, ids in rig.ack_sets().items() if ids and not key.endswith(".DQ"))


def wait_republished(rig: FaultRig, events: set[str], offset: int) -> float:
    """Poll until the topic received each of `events` after message `offset`; return when."""
    rig.until(
        lambda: events <= rig.published_ids(offset),
        REQUEUE_BOUND_S * 2,
        what=f"the {len(events)} events of the killed worker's bundles published again",
    )
    return time.monotonic()


@pytest.mark.timeout(300)
def test_kill_9_of_a_worker_mid_publish_five_times_loses_no_acknowledged_event(
    rig: FaultRig, fault_report: Callable[[FaultResult], None]
) -> None:
    """Each killed worker's in-flight bundles are published by the restarted fleet within the
    bound, and every acknowledged event is published (some twice, counted)."""
    # Given a slow SNS, `relay worker -p 2 -t 4` and a steady load
    rig.sns.set_fault("slow", delay_s=SLOW_SNS_S)
    fleet = rig.fleet()
    load = rig.producer(rate_per_s=80, chunk=20)
    fleet_started_at = time.monotonic()
    requeue_s: list[float] = []
    stranded_bundles = 0
    for _attempt in range(MAX_KILL_ATTEMPTS):
        if len(requeue_s) == KILLS:
            break
        # When both worker processes are mid-publish and one of them is killed with SIGKILL,
        # the fleet having run long enough that its restart is the first one (kills faster
        # than that are a crash loop, which `relay worker` answers by doubling its backoff)
        fleet.wait_workers()
        stable_at = fleet_started_at + RESTART_STABLE_RUN_S
        poll_until(
            lambda: time.monotonic() > stable_at,  # noqa: B023 (read in this iteration only)
            RESTART_STABLE_RUN_S + 5.0,
            what="the fleet running past the restart policy's crash-loop window",
        )
        poll_until(lambda: busy_workers(rig) == 2, 30.0, what="both workers holding bundles")
        masters = fleet.masters()
        victim = fleet.worker_pids()[0]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        # Then the master stops the survivor and exits, and `relay worker` starts a new fleet
        fleet.wait_restarted(masters)
        fleet_started_at = time.monotonic()
        # (read before the heartbeat timeout lets the new fleet requeue the victim's bundles)
        stranded = rig.ack_sets()
        events = {e for key, ids in stranded.items() for e in rig.bundle_event_ids(key, ids)}
        offset = rig.published()
        if not events:
            continue  # the victim had just acked its last bundle: not mid-publish
        stranded_bundles += sum(len(ids) for ids in stranded.values())
        # And the killed worker's bundles are published again by the new fleet
        requeue_s.append(wait_republished(rig, events, offset) - killed_at)
    assert len(requeue_s) == KILLS, f"only {len(requeue_s)} kills found a worker mid-publish"
    assert max(requeue_s) <= REQUEUE_BOUND_S, requeue_s

    # When the load stops
    rig.sns.set_fault("none")
    load.stop()
    rig.wait_drained()

    # Then every acknowledged event is accounted for; duplicates are counted
    accounting = rig.account()
    accounting.assert_invariant()
    assert not accounting.dead_lettered
    # The slow SNS records a batch whose publisher was killed mid-call; the new fleet publishes
    # it again (FACTS §9.4 D1): the duplicates are there, and counted.
    assert accounting.duplicates > 0
    timings = ", ".join(f"{s:.1f}" for s in requeue_s)
    fault_report(
        FaultResult.of(
            "kill -9 of a worker process, 5 times",
            accounting,
            [load],
            max(requeue_s),
            f"{stranded_bundles} bundles stranded by the kills, published again {timings} s "
            f"after each kill (bound {REQUEUE_BOUND_S:.0f} s, target 20 s), each kill once the "
            f"fleet had run {RESTART_STABLE_RUN_S:.0f} s (faster kills are a crash loop: the "
            "restart backoff doubles); time to recover is the longest of these",
        )
    )
