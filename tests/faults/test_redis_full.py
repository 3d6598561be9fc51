"""Redis filled to its maxmemory under load, while SNS is down; then SNS comes back.

With `maxmemory-policy noeviction` a full Redis refuses new events (producers get
QueueUnavailable), but the workers' own scripts (dramatiq's fetch, ack and heartbeat, the
settle) are declared allow-oom (relay.queue.DrainScript): once SNS answers, they drain the
backlog that filled Redis, and producers are taken again, with nobody raising maxmemory.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.faults.report import FaultResult
from tests.faults.rig import FaultRig

pytestmark = pytest.mark.slow

ROOM_BYTES = 3_000_000
"""maxmemory is set this far above what Valkey uses once the load flows: at 200 events a second
of about 2.4 KB, the backlog fills it within half a minute of SNS going down."""
FILL_TIMEOUT_S = 90.0


@pytest.mark.timeout(300)
def test_a_redis_full_while_sns_is_down_drains_by_itself_once_sns_is_back(
    rig: FaultRig, fault_report: Callable[[FaultResult], None]
) -> None:
    """Producers are refused only while Redis is full; the workers drain it without a restart
    or a change of maxmemory; every acknowledged event is published, none dead-lettered."""
    # Given workers and a steady load flowing through, and Redis with little room left
    fleet = rig.fleet()
    load = rig.producer(rate_per_s=200, chunk=20)
    rig.wait_published(300)
    workers = fleet.wait_workers()
    used_bytes = int(rig.redis.info("memory")["used_memory"])
    maxmemory = used_bytes + ROOM_BYTES
    rig.redis.config_set("maxmemory", str(maxmemory))

    # When SNS goes down and the backlog fills Redis until producers are refused
    rig.sns.stop()
    down_at = time.monotonic()
    rig.until(lambda: load.failures, FILL_TIMEOUT_S, what="a producer refused by a full Redis")
    full_at = time.monotonic()
    backlog = rig.store.pending_events()
    # And SNS comes back
    rig.sns.start()
    back_at = time.monotonic()
    acknowledged_by_then = set(load.acknowledged)
    recovered_at = rig.wait_settled(acknowledged_by_then)
    # Then producers are taken again: new events are acknowledged and published
    accepted_before = len(load.acknowledged)
    rig.until(
        lambda: len(load.acknowledged) >= accepted_before + 200,
        FILL_TIMEOUT_S,
        what="producers taken again",
    )
    load.stop()
    rig.wait_drained()

    # And nobody raised maxmemory, no worker restarted, nothing was lost or dead-lettered
    assert int(rig.redis.config_get("maxmemory")["maxmemory"]) == maxmemory
    assert fleet.worker_pids() == workers
    accounting = rig.account()
    accounting.assert_invariant()
    assert not accounting.dead_lettered
    assert rig.store.dramatiq_dead_bundles() == 0
    # And the producers' errors came while Redis was full, not after it drained
    assert all(failure.started_s >= down_at for failure in load.failures)
    fault_report(
        FaultResult.of(
            "Redis full (maxmemory) while SNS is down",
            accounting,
            [load],
            recovered_at - back_at,
            f"full {full_at - down_at:.1f} s after SNS went down, with {backlog:,} events "
            f"waiting; producer calls refused: {len(load.failures)}; drained by the same "
            "workers, maxmemory unchanged; time to recover from SNS's return",
        )
    )
