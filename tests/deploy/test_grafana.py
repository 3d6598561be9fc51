"""deploy/grafana/: the dashboard is well-formed, shows every signal the operators asked for, and
its provisioning points at it and at the compose Prometheus. (Its queries are parsed by
promtool and checked against relay/metrics.py in test_prometheus_rules.py.)
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import pytest

from tests.deploy import DASHBOARD_FILE, GRAFANA_DIR, load_json, load_yaml

GRID_COLUMNS = 24
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
P99_OF = "histogram_quantile(0.99, sum by (le) (rate"
REQUIRED_SIGNALS = {
    "received rate": r"rate(relay_events_received_total",
    "published rate": r"rate(relay_events_published_total",
    "dropped rate": r"rate(relay_events_dropped_total",
    "dead-lettered rate": r"rate(relay_events_dead_lettered_total",
    "backlog depth": "relay_queue_depth_events",
    "backlog age": "relay_queue_oldest_age_seconds",
    "publish latency": f"{P99_OF}(relay_publish_duration_seconds_bucket",
    "delivery latency": f"{P99_OF}(relay_event_delivery_seconds_bucket",
    "breaker state": "relay_sns_circuit_open",
    "retries": "rate(relay_publish_retries_total",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = load_json(DASHBOARD_FILE)
    return document


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def test_the_dashboard_shows_every_signal_operators_asked_for(dashboard: dict[str, Any]) -> None:
    """Rates in and out, losses, backlog, both latencies, breaker and retries each have a query."""
    exprs = [target["expr"] for panel in query_panels(dashboard) for target in panel["targets"]]
    missing = [
        name
        for name, fragment in REQUIRED_SIGNALS.items()
        if not any(fragment in expr for expr in exprs)
    ]
    assert missing == []


def test_the_first_row_shows_dead_letters_and_dead_bundles_at_a_glance(
    dashboard: dict[str, Any],
) -> None:
    """Both kinds of dead letters have a stat that turns red at the first one."""
    stats = [panel for panel in dashboard["panels"] if panel["type"] == "stat"]
    for metric in ("relay_dead_letter_depth", "relay_dead_bundles"):
        (panel,) = [p for p in stats if any(metric in t["expr"] for t in p["targets"])]
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert [step["value"] for step in steps] == [None, 1]
        assert steps[-1]["color"] == "red"


def test_every_panel_queries_the_dashboards_prometheus_variable(dashboard: dict[str, Any]) -> None:
    """Panels and queries use ${datasource}, a variable of Prometheus data sources."""
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    for panel in query_panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_panels_have_unique_ids_and_never_overlap(dashboard: dict[str, Any]) -> None:
    """Every panel has its own id and its own cells of the 24-column grid."""
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells = []
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        cells.append((panel["title"], grid))
    for (first, a), (second, b) in combinations(cells, 2):
        overlap = (
            a["x"] < b["x"] + b["w"]
            and b["x"] < a["x"] + a["w"]
            and a["y"] < b["y"] + b["h"]
            and b["y"] < a["y"] + a["h"]
        )
        assert not overlap, (first, second)


def test_the_dashboard_has_a_stable_uid_and_title(dashboard: dict[str, Any]) -> None:
    """A fixed uid keeps links and provisioning updates pointing at the same dashboard."""
    assert dashboard["uid"] == "sns-relay"
    assert dashboard["title"] == "sns-relay"
    assert dashboard["schemaVersion"] >= 36
    assert "id" not in dashboard, "a provisioned dashboard must not carry a database id"


def test_the_provisioning_loads_the_dashboard_directory_from_a_file_provider() -> None:
    """One file provider, and one default Prometheus data source with a fixed uid."""
    (provider,) = load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "sns-relay.yml")[
        "providers"
    ]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
    (datasource,) = load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")[
        "datasources"
    ]
    assert (datasource["type"], datasource["isDefault"]) == ("prometheus", True)
    assert datasource["uid"] == "prometheus"
