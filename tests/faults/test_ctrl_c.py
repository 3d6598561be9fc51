"""Ctrl-C in the terminal that runs `relay worker`, while bundles are being published.

A terminal's Ctrl-C is a SIGINT to its whole foreground process group. The fleet lets the
bundles in flight finish and exits 0: no worker process is killed in the middle of a bundle
(dramatiq's "Killing worker process", on a second signal), so no bundle waits for its heartbeat
to run out and nothing is published twice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from relay.supervisor import SHUTDOWN_TIMEOUT_MS
from tests.faults.harness import PROCESSES
from tests.faults.report import FaultResult
from tests.faults.rig import FaultRig
from tests.helpers import poll_until

pytestmark = pytest.mark.slow

EXIT_BOUND_S = SHUTDOWN_TIMEOUT_MS / 1000 + 5.0
PUBLISH_DELAY_S = 1.0
"""Each PublishBatch answered after this long: a Ctrl-C always finds bundles in flight."""


@pytest.mark.timeout(150)
def test_ctrl_c_lets_the_bundles_in_flight_finish_exits_0_and_publishes_nothing_twice(
    rig: FaultRig, fault_report: Callable[[FaultResult], None]
) -> None:
    # Given a fleet run as in a terminal, publishing bundles SNS answers slowly
    rig.sns.set_fault("slow", delay_s=PUBLISH_DELAY_S)
    fleet = rig.fleet(terminal=True)
    load = rig.producer(rate_per_s=100, chunk=20)
    poll_until(
        lambda: rig.published() > 0 and any(rig.ack_sets().values()),
        30.0,
        what="bundles published and more in flight",
    )
    load.stop()
    # and dramatiq's processes outside the terminal's process group, which only the supervisor
    # is in: the Ctrl-C reaches dramatiq once, forwarded (twice, its workers' second SIGTERM
    # would kill them mid-bundle; whether two signals merge into one is a race)
    (master,) = fleet.masters()
    group = os.getpgid(fleet.pid())
    pids = [master, *fleet.wait_workers()]
    assert [os.getpgid(pid) for pid in pids] == [master] * (1 + PROCESSES)
    assert group == fleet.pid()

    # When the terminal's Ctrl-C reaches the whole process group
    interrupted_at = time.monotonic()
    fleet.ctrl_c()
    exit_code = fleet.wait_exit(EXIT_BOUND_S + 10.0)
    exit_s = time.monotonic() - interrupted_at

    # Then the fleet exits 0 within its shutdown bound, killing no worker mid-bundle, and
    # leaves no bundle in an ack set to wait for its heartbeat
    log = fleet.log()
    assert exit_code == 0, log[-5_000:]
    assert exit_s <= EXIT_BOUND_S
    assert "Killing worker process" not in log
    assert not any(rig.ack_sets().values())

    # And a new fleet publishes what is left: every acknowledged event once
    rig.sns.set_fault("none")
    restarted_at = time.monotonic()
    rig.fleet()
    recovered_at = rig.wait_settled(set(load.acknowledged))
    rig.wait_drained()
    accounting = rig.account()
    accounting.assert_invariant()
    assert accounting.duplicates == 0
    assert not accounting.dead_lettered
    fault_report(
        FaultResult.of(
            "Ctrl-C while bundles are being published",
            accounting,
            [load],
            recovered_at - restarted_at,
            f"SIGINT to the terminal's process group; exit code 0 in {exit_s:.1f} s, no worker "
            "killed mid-bundle, 0 duplicates; time to recover includes the new fleet's start",
        )
    )
