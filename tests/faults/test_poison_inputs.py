"""Malformed, oversize and poison inputs mixed into a steady load.

Invalid payloads are refused by `send_many` and never acknowledged; oversize events are dropped
with reason `too_large` and recorded; a message a foreign writer put in the queue that does not
decode goes straight to dramatiq's dead letters (FACTS §9.4 L4), and one that decodes but is not
a bundle is retried BUG_MAX_RETRIES times and then dead-lettered. Neither stalls the rest.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import dramatiq
import pytest

from relay.keys import ACTOR_NAME, QUEUE_NAME
from tests.faults.report import FaultResult
from tests.faults.rig import FaultRig
from tests.helpers import poll_until

pytestmark = pytest.mark.slow

BUG_MAX_RETRIES = 3
"""workers.actors.BUG_MAX_RETRIES, spelled out: importing the actors module starts a broker."""
OVERSIZE_EVERY = 40
INVALID_EVERY = 25
DEAD_BUNDLE_TIMEOUT_S = 60.0
"""Three retries at dramatiq's backoff from 1 s (1-2, 2-4, 4-8 s), plus delay-queue polling."""


def write_foreign(rig: FaultRig, redis_id: str, payload: bytes) -> None:
    """Put a message in the queue as a foreign writer does (FACTS §9.3): HSET, then RPUSH."""
    pipe = rig.redis.pipeline(transaction=True)
    pipe.hset(rig.keys.queue_messages, redis_id, payload)
    pipe.rpush(rig.keys.queue, redis_id)
    pipe.execute()


def not_a_bundle() -> dramatiq.Message[Any]:
    """A well-formed dramatiq message for the actor whose one event is not an event."""
    return dramatiq.Message(
        queue_name=QUEUE_NAME,
        actor_name=ACTOR_NAME,
        args=([["only-an-id", "and-a-body"]],),
        kwargs={},
        options={"redis_message_id": str(uuid.uuid4())},  # the id it is stored under
    )


def dead_bundles(rig: FaultRig) -> dict[str, dramatiq.Message[Any]]:
    """dramatiq's own dead letters by message id, those that decode."""
    decoded = {}
    for raw in rig.redis.hvals(f"{rig.keys.dramatiq_dead_letters}.msgs"):
        try:
            message = dramatiq.Message.decode(raw)
        except dramatiq.errors.DecodeError:
            continue
        decoded[message.message_id] = message
    return decoded


@pytest.mark.timeout(180)
def test_malformed_oversize_and_poison_inputs_are_refused_dropped_or_dead_lettered(
    rig: FaultRig, fault_report: Callable[[FaultResult], None]
) -> None:
    """Each bad input ends where it should, with its reason, and every acknowledged event is
    still published."""
    # Given workers and a load with an invalid payload every 25 and an oversize event every 40
    fleet = rig.fleet()
    load = rig.producer(
        rate_per_s=150, chunk=20, oversize_every=OVERSIZE_EVERY, invalid_every=INVALID_EVERY
    )
    rig.wait_published(300)

    # When a foreign writer puts an undecodable message and a message that is no bundle in the
    # queue, mid-load
    injected_at = time.monotonic()
    poison_id = str(uuid.uuid4())
    write_foreign(rig, poison_id, b"not json")
    bad_bundle = not_a_bundle()
    write_foreign(rig, bad_bundle.options["redis_message_id"], bad_bundle.encode())
    after_poison = rig.published()
    # Then both end in dramatiq's dead letters, the second after its retries
    xq = rig.keys.dramatiq_dead_letters
    poll_until(lambda: rig.redis.zscore(xq, poison_id) is not None, 30.0, what="poison in XQ")
    dead = poll_until(
        lambda: dead_bundles(rig).get(bad_bundle.message_id),
        DEAD_BUNDLE_TIMEOUT_S,
        interval_s=0.2,
        what="the invalid bundle in dramatiq's dead letters",
    )
    dead_after_s = time.monotonic() - injected_at
    assert dead.options["retries"] == BUG_MAX_RETRIES
    assert rig.store.dramatiq_dead_bundles() == 2
    # And the rest kept flowing meanwhile
    assert rig.published() > after_poison + 500

    load.stop()
    rig.wait_drained()

    # Then invalid payloads were refused, never acknowledged
    assert load.invalid == load.bad_offered > 0
    # And every oversize event was dropped and recorded with reason too_large
    accounting = rig.account()
    assert load.dropped
    assert all(detail.startswith("too_large") for detail in load.dropped.values())
    assert {accounting.dropped.get(event_id) for event_id in load.dropped} == {"too_large"}
    # And every acknowledged event was published; nothing reached the relay's dead letters
    accounting.assert_invariant()
    assert not accounting.dead_lettered
    assert fleet.running()
    fault_report(
        FaultResult.of(
            "malformed, oversize and poison inputs",
            accounting,
            [load],
            dead_after_s,
            f"{load.invalid} invalid payloads refused, never acknowledged; {len(load.dropped)} "
            "oversize events dropped (too_large); an undecodable message and an invalid bundle "
            f"in dramatiq's dead letters, the latter after {BUG_MAX_RETRIES} retries; time to "
            "recover: from writing them until both were dead-lettered, the load flowing meanwhile",
        )
    )
