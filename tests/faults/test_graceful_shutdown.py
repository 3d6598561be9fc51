"""SIGTERM to `relay worker` under load while its breaker holds bundles (SNS refusing us).

On SIGTERM the threads holding bundles behind the open breaker give them back to the queue at
once, prefetched bundles are requeued, and the fleet exits 0 well within its 30 s shutdown timeout
(SHUTDOWN_TIMEOUT_MS). A new fleet delivers everything once SNS accepts again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from relay.supervisor import SHUTDOWN_TIMEOUT_MS
from tests.faults.harness import hold
from tests.faults.report import FaultResult
from tests.faults.rig import FaultRig
from tests.helpers import poll_until

pytestmark = pytest.mark.slow

EXIT_BOUND_S = SHUTDOWN_TIMEOUT_MS / 1000 + 5.0
HELD_S = 10.0


@pytest.mark.timeout(150)
def test_sigterm_while_the_breaker_holds_bundles_exits_0_in_time_and_loses_nothing(
    rig: FaultRig, fault_report: Callable[[FaultResult], None]
) -> None:
    """The fleet exits 0 within the shutdown bound, and a new fleet publishes every
    acknowledged event once the credentials work again."""
    # Given SNS refusing the credentials, workers whose breakers hold bundles, and a load
    rig.sns.set_fault("auth")
    fleet = rig.fleet()
    load = rig.producer(rate_per_s=100, chunk=20)
    poll_until(
        lambda: len(rig.store.open_breakers()) == 2 and any(rig.ack_sets().values()),
        30.0,
        what="both worker processes' breakers open, holding bundles",
    )
    hold(HELD_S)  # the backlog grows in Redis meanwhile
    held = sum(len(ids) for ids in rig.ack_sets().values())

    # When the fleet gets SIGTERM under load
    signalled_at = time.monotonic()
    exit_code = fleet.stop(timeout_s=EXIT_BOUND_S + 10.0)
    exit_s = time.monotonic() - signalled_at

    # Then it exits 0 within the bound, holding nothing, and published nothing
    assert exit_code == 0, fleet.log()[-5_000:]
    assert exit_s <= EXIT_BOUND_S
    assert rig.published() == 0
    load.stop()
    # And every held or prefetched bundle is back in the queue, not in an ack set
    assert not any(rig.ack_sets().values())

    # When SNS accepts again and a new fleet starts
    rig.sns.set_fault("none")
    fault_end = time.monotonic()
    rig.fleet()
    recovered_at = rig.wait_settled(set(load.acknowledged))
    rig.wait_drained()

    # Then every acknowledged event is published, nothing dead-lettered
    accounting = rig.account()
    accounting.assert_invariant()
    assert not accounting.dead_lettered
    assert rig.store.dramatiq_dead_bundles() == 0
    fault_report(
        FaultResult.of(
            "SIGTERM while the breaker holds bundles",
            accounting,
            [load],
            recovered_at - fault_end,
            f"exit code 0 in {exit_s:.1f} s (bound {EXIT_BOUND_S:.0f} s) with {held} bundles "
            "held or prefetched; a new fleet published them; time to recover includes its start",
        )
    )
