"""SNS down for a minute under load: connection refused, then 500s, then 503s; then back.

Past tenacity's budget the breaker opens and every thread holds its bundle (DESIGN tier 2): the
backlog waits in Redis, worker memory stays bounded by the prefetch, nothing is dead-lettered,
and the backlog drains once a probe finds SNS answering again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.faults.harness import WorkerFleet, hold, rss_bytes
from tests.faults.report import FaultResult
from tests.faults.rig import FaultRig

pytestmark = pytest.mark.slow

REFUSED_S = 30.0
ERROR_500_S = 15.0
ERROR_503_S = 15.0
RSS_GROWTH_BOUND_BYTES = 32 * 1024 * 1024
"""Generous for a process holding at most a prefetch of bundles (8 x 20 events of ~2.4 KB), and
far below what buffering the backlog (thousands of events, tens of MB) would take."""
MIN_BACKLOG_EVENTS = 4_000


class RssSampler:
    """The worker processes' resident memory, sampled while a fault is in force."""

    def __init__(self, fleet: WorkerFleet) -> None:
        self.fleet = fleet
        self.baseline = {pid: rss_bytes(pid) for pid in fleet.wait_workers()}
        self.peak = dict(self.baseline)

    def sample(self) -> None:
        for pid in self.baseline:
            self.peak[pid] = max(self.peak[pid], rss_bytes(pid))

    @property
    def growth_bytes(self) -> int:
        return max(self.peak[pid] - self.baseline[pid] for pid in self.baseline)


@pytest.mark.timeout(240)
def test_sns_down_for_a_minute_loses_and_dead_letters_nothing_with_bounded_memory(
    rig: FaultRig, fault_report: Callable[[FaultResult], None]
) -> None:
    """While SNS refuses connections and then answers 5xx for a minute, the backlog grows in
    Redis, worker memory does not, and every acknowledged event is published afterwards."""
    # Given workers and a steady load flowing through
    fleet = rig.fleet()
    load = rig.producer(rate_per_s=100, chunk=20)
    rig.wait_published(300)
    workers = fleet.wait_workers()
    rss = RssSampler(fleet)
    backlog_before = rig.store.pending_events()

    # When SNS refuses connections for 30 s, answers 500 for 15 s and 503 for 15 s
    rig.sns.stop()
    hold(REFUSED_S, sample=rss.sample)
    rig.sns.set_fault("error500")
    rig.sns.start()
    hold(ERROR_500_S, sample=rss.sample)
    rig.sns.set_fault("unavailable503")
    hold(ERROR_503_S, sample=rss.sample)
    backlog = rig.store.pending_events() - backlog_before
    # And then is back
    rig.sns.set_fault("none")
    fault_end = time.monotonic()
    load.stop()
    recovered_at = rig.wait_settled(set(load.acknowledged))
    rig.wait_drained()

    # Then the backlog grew in Redis while worker memory stayed bounded
    assert backlog >= MIN_BACKLOG_EVENTS
    assert rss.growth_bytes <= RSS_GROWTH_BOUND_BYTES, rss.peak
    # And nothing was dead-lettered or lost, and no worker restarted
    accounting = rig.account()
    accounting.assert_invariant()
    assert not accounting.dead_lettered
    assert rig.store.dramatiq_dead_bundles() == 0
    assert fleet.worker_pids() == workers
    rejected = rig.sns.stats()["rejected"]
    fault_report(
        FaultResult.of(
            "SNS down 60 s (refused, 500, 503)",
            accounting,
            [load],
            recovered_at - fault_end,
            f"backlog grew by {backlog:,} events; worker RSS grew at most "
            f"{rss.growth_bytes / 2**20:.1f} MiB (bound {RSS_GROWTH_BOUND_BYTES / 2**20:.0f}); "
            f"{sum(rejected.values())} 5xx answers; recovery includes the breaker's cool-down "
            "(up to 30 s)",
        )
    )
