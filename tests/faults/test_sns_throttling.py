"""An SNS throttling storm under load, then recovery.

Throttling is transient (DESIGN tier 1): the worker retries each batch with jittered backoff, and
a batch that spends its budget opens the breaker, which holds bundles instead of failing them.
Nothing is dead-lettered; everything is published once SNS accepts again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.faults.harness import hold
from tests.faults.report import FaultResult
from tests.faults.rig import FaultRig
from tests.helpers import sample_value

pytestmark = pytest.mark.slow

STORM_S = 10.0
BREAKER_OPENED = "sns circuit opened"
"""What a worker logs when its breaker opens (workers/breaker.py)."""


@pytest.mark.timeout(150)
def test_throttling_storm_retries_with_backoff_and_dead_letters_nothing(
    rig: FaultRig, fault_report: Callable[[FaultResult], None]
) -> None:
    """Every publish is throttled for 10 s; the workers retry, nothing is dead-lettered, and
    every acknowledged event is published after the storm."""
    # Given workers and a steady load flowing through
    fleet = rig.fleet()
    load = rig.producer(rate_per_s=100, chunk=20)
    rig.wait_published(300)
    workers = fleet.wait_workers()

    # When SNS throttles every publish for 10 s, then accepts again
    rig.sns.set_fault("throttle")
    hold(STORM_S)
    rig.sns.set_fault("none")
    fault_end = time.monotonic()
    load.stop()
    recovered_at = rig.wait_settled(set(load.acknowledged))
    rig.wait_drained()

    # Then the workers retried (SNS saw the throttled calls, the metrics count the retries)
    throttled = rig.sns.stats()["rejected"].get("Throttling", 0)
    assert throttled > 0
    retries = sample_value(fleet.metrics(), "relay_publish_retries_total")
    assert retries is not None
    assert retries > 0
    # And nothing was dead-lettered, and no worker restarted
    accounting = rig.account()
    accounting.assert_invariant()
    assert not accounting.dead_lettered
    assert rig.store.dramatiq_dead_bundles() == 0
    assert fleet.worker_pids() == workers
    fault_report(
        FaultResult.of(
            "SNS throttling storm",
            accounting,
            [load],
            recovered_at - fault_end,
            f"every publish throttled for {STORM_S:.0f} s: {throttled} throttled requests, "
            f"{retries:.0f} retries; breaker opened: {BREAKER_OPENED in fleet.log()}",
        )
    )
