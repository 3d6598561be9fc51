"""Tests of the ingest's probes and metrics: /healthz, /readyz, /metrics, and the backlog bound."""

from __future__ import annotations

from typing import Any

import redis
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from relay.ingest import Tuning, create_app
from relay.keys import Keys
from tests.ingest.conftest import AppRunner, make_settings, signed, stored_events

EVENT = b'{"type":"message.new"}'
NO_CACHE = Tuning(backlog_cache_s=0.0)
"""Read the backlog on every request, so a test sees its own writes at once."""


def test_healthz_answers_while_the_process_is_up(valkey: Any) -> None:
    """/healthz is 200 whenever the process serves at all."""
    with AppRunner(create_app(make_settings(valkey.connection_url))) as runner:
        response = runner.get("/healthz")

    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_is_200_with_redis_reachable_and_the_backlog_under_its_bound(valkey: Any) -> None:
    """/readyz reads Redis and reports the backlog it saw."""
    with AppRunner(create_app(make_settings(valkey.connection_url))) as runner:
        runner.post(EVENT, signed(EVENT))
        response = runner.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ready", "pending_events": 1}


def test_a_backlog_over_its_bound_is_503_with_retry_after_and_not_ready(
    valkey: Any, redis_sync: redis.Redis
) -> None:
    """Above RELAY_INGEST_MAX_BACKLOG_EVENTS new events are refused until the backlog drains."""
    settings = make_settings(valkey.connection_url, ingest_max_backlog_events=2)
    body = b'[{"a":1},{"a":2},{"a":3}]'
    rejected = REGISTRY.get_sample_value("relay_events_rejected_total", {"reason": "backlog"}) or 0

    with AppRunner(create_app(settings, tuning=NO_CACHE)) as runner:
        first = runner.post(body, signed(body))  # admitted: the backlog was 0
        refused = runner.post(EVENT, signed(EVENT))
        ready = runner.get("/readyz")
        redis_sync.set(Keys(settings.namespace).pending_events, 1)  # as workers settle events
        after_drain = runner.post(EVENT, signed(EVENT))

    assert first.status_code == 200
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    assert "backlog over 2 events" in refused.json()["error"]
    assert ready.status_code == 503
    assert "backlog of 3 events" in ready.json()["reason"]
    assert after_drain.status_code == 200
    assert len(stored_events(redis_sync, settings.namespace)) == 4
    assert (
        REGISTRY.get_sample_value("relay_events_rejected_total", {"reason": "backlog"}) or 0
    ) - (rejected) == 1


def test_metrics_expose_the_ingest_counters_and_request_durations(valkey: Any) -> None:
    """/metrics is Prometheus text with received, enqueued, rejected and the duration histogram."""
    with AppRunner(create_app(make_settings(valkey.connection_url))) as runner:
        runner.post(EVENT, signed(EVENT))
        runner.post(EVENT, {"X-Signature": "00"})
        response = runner.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    assert samples[("relay_events_received_total", (("source", "webhook"),))] >= 2
    assert samples[("relay_events_enqueued_total", ())] >= 1
    assert samples[("relay_events_rejected_total", (("reason", "bad_signature"),))] >= 1
    assert samples[("relay_ingest_request_duration_seconds_count", (("status", "200"),))] >= 1
    assert samples[("relay_ingest_request_duration_seconds_count", (("status", "401"),))] >= 1
