"""deploy/compose.yaml: valid against the compose-spec JSON schema, and what the relay needs of
it (durable Redis, a scalable worker reachable by Prometheus, a long enough stop) holds.

The schema is the one check-jsonschema vendors (`vendor.compose-spec`): offline, current.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from relay.settings import Settings
from relay.supervisor import SHUTDOWN_TIMEOUT_MS
from tests.deploy import (
    COMPOSE_FILE,
    DASHBOARD_FILE,
    DEPLOY,
    GRAFANA_DIR,
    PROMETHEUS_DIR,
    REPO_ROOT,
    load_json,
    load_yaml,
)

SCHEMA_PACKAGE = "check_jsonschema.builtin_schemas.vendor"
SCHEMA_FILE = "compose-spec.json"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 (what containers must listen on; compared, not bound)
_DURATION_PART = re.compile(r"(\d+)(ms|h|m|s)")
_DURATION_UNITS_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def compose_schema() -> dict[str, Any]:
    try:
        text = (importlib.resources.files(SCHEMA_PACKAGE) / SCHEMA_FILE).read_text()
    except ModuleNotFoundError:
        pytest.fail("check-jsonschema is not installed: run `make install` (the dev extra)")
    schema: dict[str, Any] = json.loads(text)
    return schema


def schema_errors(document: Any) -> list[str]:
    schema = compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    return [f"{error.json_path}: {error.message}" for error in validator.iter_errors(document)]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return document


def duration_s(text: str) -> float:
    """A compose duration (`45s`, `1m30s`) in seconds."""
    parts = _DURATION_PART.findall(text)
    assert parts, f"not a duration: {text!r}"
    assert "".join(f"{n}{u}" for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(int(number) * _DURATION_UNITS_S[unit] for number, unit in parts)


def test_the_compose_file_is_valid_against_the_compose_spec_schema(compose: dict[str, Any]) -> None:
    """No schema error: every key is one Compose knows, with a value of the right type."""
    assert schema_errors(compose) == []


def test_the_schema_check_rejects_a_misspelled_service_key(compose: dict[str, Any]) -> None:
    """The validator is strict: a typo in a service (stop_grace for stop_grace_period) fails."""
    broken = copy.deepcopy(compose)
    broken["services"]["worker"]["stop_grace"] = "45s"
    assert any("stop_grace" in error for error in schema_errors(broken))


def test_redis_keeps_an_aof_fsynced_every_second_and_never_evicts(compose: dict[str, Any]) -> None:
    """Redis 7 runs with appendonly yes, appendfsync everysec, noeviction, on a volume."""
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    command = redis["command"]
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    assert command[0] == "redis-server"
    assert flags["--appendonly"] == "yes"
    assert flags["--appendfsync"] == "everysec"
    assert flags["--maxmemory-policy"] == "noeviction"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_the_worker_scales_serves_metrics_to_prometheus_and_outlives_its_shutdown_timeout(
    compose: dict[str, Any],
) -> None:
    """No fixed name or host port (so it scales), metrics on 0.0.0.0, stop after 30 s and more."""
    worker = compose["services"]["worker"]
    assert worker["command"][0] == "worker"
    assert "container_name" not in worker
    assert "ports" not in worker
    environment = worker["environment"]
    assert environment["RELAY_METRICS_HOST"] == ALL_INTERFACES
    assert "9191" in [str(port) for port in worker["expose"]]
    assert environment["RELAY_METRICS_PORT"] == "9191"
    assert duration_s(worker["stop_grace_period"]) >= SHUTDOWN_TIMEOUT_MS / 1000 + 10


def test_the_ingest_serves_8080_with_the_webhook_secret_from_the_environment(
    compose: dict[str, Any],
) -> None:
    """Ingest listens on 0.0.0.0:8080, published, with RELAY_WEBHOOK_SECRET required from env."""
    ingest = compose["services"]["ingest"]
    assert ingest["command"] == ["ingest", "--host", ALL_INTERFACES, "--port", "8080"]
    assert "8080:8080" in ingest["ports"]
    assert ingest["environment"]["RELAY_WEBHOOK_SECRET"].startswith("${RELAY_WEBHOOK_SECRET:?")
    assert "RELAY_WEBHOOK_SECRET" not in compose["services"]["worker"]["environment"]


def test_every_relay_variable_in_the_compose_file_is_a_setting(compose: dict[str, Any]) -> None:
    """A misspelled RELAY_* variable would be ignored silently by the relay: none is."""
    settings = {f"RELAY_{name.upper()}" for name in Settings.model_fields}
    for name in ("ingest", "worker"):
        unknown = {
            key for key in compose["services"][name]["environment"] if key.startswith("RELAY_")
        }
        assert unknown - settings == set(), name


def test_every_file_the_compose_file_builds_or_mounts_exists(compose: dict[str, Any]) -> None:
    """Build context and bind mounts resolve, relative to deploy/, to files of the repository."""
    for name, service in compose["services"].items():
        if "build" in service:
            context = (DEPLOY / service["build"]["context"]).resolve()
            assert context == REPO_ROOT, name
            assert (context / service["build"]["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
            else:
                assert source in compose["volumes"], f"{name}: named volume {source} not declared"


def test_prometheus_and_grafana_load_the_relays_rules_config_and_dashboard(
    compose: dict[str, Any],
) -> None:
    """The mounts put the rules where prometheus.yml looks and the dashboard where Grafana does."""
    mounts = {
        name: dict(volume.split(":")[:2] for volume in service.get("volumes", []))
        for name, service in compose["services"].items()
    }
    prometheus = mounts["prometheus"]
    assert prometheus["./prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    rule_globs = load_yaml(PROMETHEUS_DIR / "prometheus.yml")["rule_files"]
    assert [f"{prometheus['./prometheus/rules']}/*.yml"] == [
        f"/etc/prometheus/{glob}" for glob in rule_globs
    ]
    grafana = mounts["grafana"]
    provider = load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "sns-relay.yml")
    assert grafana["./grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    assert grafana["./grafana/provisioning"] == "/etc/grafana/provisioning"
    home = compose["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert home == f"{grafana['./grafana/dashboards']}/{DASHBOARD_FILE.name}"
    (datasource,) = load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")[
        "datasources"
    ]
    assert datasource["url"] == "http://prometheus:9090"
    assert (
        load_json(DASHBOARD_FILE)["templating"]["list"][0]["current"]["value"] == datasource["uid"]
    )


def test_duration_parsing_reads_compose_durations() -> None:
    """The test's own duration reader: 45s, 1m30s, 1500ms."""
    assert duration_s("45s") == 45
    assert duration_s("1m30s") == 90
    assert duration_s("1500ms") == pytest.approx(1.5)


def test_the_dockerfile_the_compose_file_builds_is_the_root_one() -> None:
    """One image for both services: ingest and worker build (or reuse) the same Dockerfile."""
    compose = load_yaml(COMPOSE_FILE)
    ingest, worker = compose["services"]["ingest"], compose["services"]["worker"]
    assert ingest["image"] == worker["image"]
    assert ingest["build"] == worker["build"]
    assert Path(REPO_ROOT / "Dockerfile").is_file()
