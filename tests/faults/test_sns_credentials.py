"""SNS rejects the credentials under load (AuthorizationError), then accepts them again.

A rejected credential is systemic (DESIGN tier 2): the breaker opens at the first refusal,
`relay stats` shows it, bundles wait, nothing is dead-lettered, and once the credential works
again a probe closes the breaker without restarting anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.faults.harness import hold
from tests.faults.report import FaultResult
from tests.faults.rig import FaultRig
from tests.helpers import poll_until

pytestmark = pytest.mark.slow

REJECTED_S = 12.0
CHUNK = 20
"""Events per `send_many` call, so one bundle each."""


@pytest.mark.timeout(150)
def test_rejected_credentials_then_fixed_deliver_everything_without_a_restart(
    rig: FaultRig, fault_report: Callable[[FaultResult], None]
) -> None:
    """`relay stats --json` shows the open breaker while SNS answers AuthorizationError; after
    the fix every acknowledged event is published by the same worker processes."""
    # Given workers and a steady load flowing through
    fleet = rig.fleet()
    load = rig.producer(rate_per_s=100, chunk=CHUNK)
    rig.wait_published(300)
    workers = fleet.wait_workers()

    # When SNS rejects the credentials
    rig.sns.set_fault("auth")
    rejected_at = time.monotonic()
    sent_before = load.sent
    # Then `relay stats` shows an open breaker with the reason
    breakers = poll_until(
        lambda: rig.stats_json()["open_breakers"],
        REJECTED_S,
        interval_s=0.5,
        what="relay stats showing an open breaker",
    )
    assert any("AuthorizationError" in b["reason"] for b in breakers.values()), breakers
    hold(REJECTED_S - (time.monotonic() - rejected_at))

    # When the credential works again
    rig.sns.set_fault("none")
    fault_end = time.monotonic()
    bundles_during = (load.sent - sent_before) // CHUNK
    load.stop()
    recovered_at = rig.wait_settled(set(load.acknowledged))
    rig.wait_drained()

    # Then everything was published by the same processes, nothing dead-lettered
    accounting = rig.account()
    accounting.assert_invariant()
    assert not accounting.dead_lettered
    assert rig.store.dramatiq_dead_bundles() == 0
    assert fleet.worker_pids() == workers
    poll_until(lambda: not rig.store.open_breakers(), 10.0, what="every breaker closed again")
    # And the open breaker stopped taking bundles: only its probes reached SNS
    refusals = rig.sns.stats()["rejected"].get("AuthorizationError", 0)
    assert 0 < refusals < bundles_during
    fault_report(
        FaultResult.of(
            "credentials rejected, then fixed",
            accounting,
            [load],
            recovered_at - fault_end,
            f"AuthorizationError for {REJECTED_S:.0f} s: {refusals} refused requests for "
            f"{bundles_during} bundles sent meanwhile; "
            f"`relay stats` showed {len(breakers)} open breakers; no restart",
        )
    )
