"""Redis SIGKILLed under load and restarted on the same port and AOF data.

Valkey runs with `appendfsync always` here: each acknowledged write is fsynced before its reply,
so a SIGKILL at any instant loses none of them, and the test can demand that every acknowledged
event survives. (With `everysec`, the embedded default, a SIGKILL of the process usually loses
nothing either, since written data sits in the OS page cache, but Valkey may postpone the write
up to 2 s while an fsync is slow; a host crash loses up to about a second.)
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.faults.harness import hold
from tests.faults.report import FaultResult
from tests.faults.rig import FaultRig

pytestmark = pytest.mark.slow

DOWN_S = 4.0
"""Short of the workers' 10 s heartbeat timeout with their 3 s reconnect delay added, so no live
worker is presumed dead (that would only add duplicates, FACTS §9.4 D2)."""


@pytest.mark.timeout(180)
def test_redis_killed_and_restarted_loses_no_acknowledged_event(
    make_rig: Callable[..., FaultRig], fault_report: Callable[[FaultResult], None]
) -> None:
    """Producers get errors only while Redis is down; workers recover without a restart; every
    event acknowledged before the kill or after the restart is published."""
    # Given Valkey with AOF (fsync always), workers and a steady load flowing through
    rig = make_rig(appendfsync="always")
    fleet = rig.fleet()
    load = rig.producer(rate_per_s=100, chunk=20)
    rig.wait_published(300)
    workers = fleet.wait_workers()

    # When Valkey is killed with SIGKILL, stays down a few seconds, and restarts on its data
    killed_at = time.monotonic()
    rig.valkey.kill()
    hold(DOWN_S)
    rig.valkey.start()
    ready_at = time.monotonic()
    acknowledged_by_then = set(load.acknowledged)
    recovered_at = rig.wait_settled(acknowledged_by_then)
    rig.wait_published(rig.published() + 300)  # and new events flow again
    load.stop()
    rig.wait_drained()

    # Then producers saw errors, and only while Redis was down
    assert load.failures, "the producer never noticed Redis was down"
    for failure in load.failures:
        assert failure.ended_s >= killed_at, failure
        assert failure.started_s <= ready_at, failure
    # And the same worker processes carried on
    assert fleet.running()
    assert fleet.worker_pids() == workers
    # And every acknowledged event is accounted for
    accounting = rig.account()
    accounting.assert_invariant()
    assert not accounting.dead_lettered
    fault_report(
        FaultResult.of(
            "Redis SIGKILLed and restarted (AOF)",
            accounting,
            [load],
            recovered_at - ready_at,
            f"down {ready_at - killed_at:.1f} s, appendfsync always; producer errors only "
            f"while down; workers not restarted; {accounting.delivered_unacknowledged} events "
            "published whose producer call had failed",
        )
    )
