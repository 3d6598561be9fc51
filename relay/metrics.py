"""Every Prometheus metric of the relay, defined once (DESIGN's names, base units).

Worker processes write to a shared directory (`PROMETHEUS_MULTIPROC_DIR`, prometheus_client's
multiprocess mode) and `relay worker` serves their sum. Queue gauges are read from Redis at
scrape time by QueueCollector, so every scraper sees the same fleet-wide figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

EVENTS_RECEIVED = Counter(
    "relay_events_received",
    "Events offered to the relay, by source (api, cli, webhook).",
    ["source"],
)
EVENTS_REJECTED = Counter(
    "relay_events_rejected",
    "Events refused before they were accepted (invalid, bad signature...), by reason.",
    ["reason"],
)
EVENTS_ENQUEUED = Counter("relay_events_enqueued", "Events stored in the Redis queue.")
EVENTS_PUBLISHED = Counter("relay_events_published", "Events SNS accepted.")
EVENTS_DROPPED = Counter(
    "relay_events_dropped", "Events accepted but dropped (and recorded), by reason.", ["reason"]
)
EVENTS_DEAD_LETTERED = Counter(
    "relay_events_dead_lettered",
    "Events SNS rejected, kept as dead letters, by error code.",
    ["reason"],
)
PUBLISH_REQUESTS = Counter(
    "relay_publish_requests",
    "PublishBatch requests by outcome (ok, partial, throttled, error, unavailable, rejected).",
    ["outcome"],
)
PUBLISH_RETRIES = Counter("relay_publish_retries", "Publish attempts that were retries.")
PUBLISH_DURATION = Histogram(
    "relay_publish_duration_seconds",
    "Duration of one PublishBatch request.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
EVENT_DELIVERY = Histogram(
    "relay_event_delivery_seconds",
    "Time from an event's receipt to SNS accepting it.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
SNS_CIRCUIT_OPEN = Gauge(
    "relay_sns_circuit_open", "1 while the SNS circuit breaker is open.", multiprocess_mode="max"
)
TOPIC_MAX_MESSAGE_BYTES = Gauge(
    "relay_topic_max_message_bytes",
    "The size limit the workers enforce (the topic's MaximumMessageSize or 262144).",
    multiprocess_mode="max",
)


class QueueCollector(Collector):
    """Fleet-wide queue gauges read from Redis at scrape time.

    `stats` is a callable returning a mapping with pending_events, oldest_age_s, dead_letters
    and dead_bundles (see relay.stats); a Redis failure leaves the gauges out of that scrape
    rather than failing it, so the rest of the metrics still arrive.
    """

    def __init__(self, stats: Any) -> None:
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            stats = self._stats()
        except Exception:  # a scrape must never fail because Redis is down
            return
        yield GaugeMetricFamily(
            "relay_queue_depth_events", "Events waiting in Redis.", value=stats["pending_events"]
        )
        yield GaugeMetricFamily(
            "relay_queue_oldest_age_seconds",
            "Age of the oldest bundle not yet published: in the queue, or taken by a worker.",
            value=stats["oldest_age_s"] or 0.0,
        )
        yield GaugeMetricFamily(
            "relay_dead_letter_depth", "Events in dead letters.", value=stats["dead_letters"]
        )
        yield GaugeMetricFamily(
            "relay_dead_bundles",
            "Bundles in dramatiq's own dead letters (a relay bug), deleted 7 days after arriving.",
            value=stats["dead_bundles"],
        )


class _BeforeCollect(Collector):
    """Runs `hook` as a scrape starts, ahead of the collectors registered after it."""

    def __init__(self, hook: Callable[[], None]) -> None:
        self._hook = hook

    def collect(self) -> Iterator[GaugeMetricFamily]:
        self._hook()
        return iter(())


def multiprocess_registry(
    path: str, *, before_collect: Callable[[], None] | None = None
) -> CollectorRegistry:
    """A registry summing the metrics of every process writing to the multiprocess dir `path`;
    `before_collect` runs at each scrape before the files are read."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    if before_collect is not None:
        registry.register(_BeforeCollect(before_collect))
    multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return registry


INGEST_REQUEST_DURATION = Histogram(
    "relay_ingest_request_duration_seconds",
    "Duration of HTTP requests to the ingest, from their headers to their answer, by status.",
    ["status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 6),
)
