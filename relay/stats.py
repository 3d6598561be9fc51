"""Fleet-wide figures from Redis: what `relay stats` prints and the queue gauges export."""

from __future__ import annotations

from typing import Any

from relay.dead_letters import DeadLetters
from relay.store import RelayStore


def collect(store: RelayStore) -> dict[str, Any]:
    """Depth, oldest age, dead letters, drops and totals. Raises QueueUnavailable."""
    return {
        "pending_events": store.pending_events(),
        "queued_bundles": store.queue_depth_bundles(),
        "oldest_age_s": store.oldest_age_s(),
        "dead_letters": DeadLetters(store.client, store.keys).depth(),
        "dead_bundles": store.dramatiq_dead_bundles(),
        "dropped": store.dropped_counts(),
        "totals": store.totals(),
        "open_breakers": store.open_breakers(),
    }
