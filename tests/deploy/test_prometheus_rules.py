"""deploy/prometheus/: promtool checks the rules and both scrape configs and runs every alert's
unit tests; every alert is documented, and every query names a metric the relay defines.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics import MetricWrapperBase

from relay import metrics
from tests.deploy import (
    DASHBOARD_FILE,
    DEPLOY,
    INGEST_JOB,
    K8S_DIR,
    PROMETHEUS_DIR,
    REPO_ROOT,
    RULE_TESTS_DIR,
    RULES_FILE,
    WORKER_JOB,
    alert_rules,
    load_json,
    load_yaml,
    load_yaml_documents,
    require_tool,
)

RUNBOOK_BASE = "https://github.com/sns-relay/sns-relay/blob/main/README.md#"
README_FILES = (REPO_ROOT / "README.md", DEPLOY / "README-operations.md")
"""Runbook anchors must be headings of the README; until the Operations section is merged into
it, deploy/README-operations.md holds them."""
PROMQL_BUILTINS = frozenset({"up"})
GRAFANA_RANGE_VARIABLES = ("$__rate_interval", "$__interval", "$__range")


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run promtool; the result, whose output names what failed."""
    return subprocess.run(
        [require_tool("promtool"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{' '.join(result.args)}\n{result.stdout}\n{result.stderr}"


def test_the_alert_rules_pass_promtool_check_rules() -> None:
    """`promtool check rules` accepts the rules file and finds every alert in it."""
    result = promtool("check", "rules", RULES_FILE)
    assert_ok(result)
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_the_compose_scrape_config_passes_promtool_check_config() -> None:
    """`promtool check config` accepts prometheus.yml, and its rule_files glob finds the rules."""
    result = promtool("check", "config", PROMETHEUS_DIR / "prometheus.yml")
    assert_ok(result)
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_the_kubernetes_scrape_config_passes_promtool_and_selects_the_manifests_pods(
    tmp_path: Path,
) -> None:
    """prometheus-kubernetes.yml keeps exactly the pods and ports of deploy/k8s/."""
    config = load_yaml(PROMETHEUS_DIR / "prometheus-kubernetes.yml")
    pods = _pod_templates()
    for job in config["scrape_configs"]:
        # Given each job's pod discovery in the relay's namespace
        (discovery,) = job["kubernetes_sd_configs"]
        assert discovery["role"] == "pod"
        keeps = [rule for rule in job["relabel_configs"] if rule.get("action") == "keep"]
        # Then its keep rules select exactly one of the manifests' pods and its metrics port
        kept = [
            name
            for name, (namespace, labels, ports) in pods.items()
            if namespace in discovery["namespaces"]["names"]
            and all(_keeps(rule, labels, ports) for rule in keeps)
        ]
        expected = {WORKER_JOB: "sns-relay-worker", INGEST_JOB: "sns-relay-ingest"}[job["job_name"]]
        assert kept == [expected], (job["job_name"], kept)
    # And promtool accepts the rest: Debian's promtool has no Kubernetes discovery compiled
    # in, so the discovery blocks checked above become static targets for it.
    for job in config["scrape_configs"]:
        del job["kubernetes_sd_configs"]
        job["static_configs"] = [{"targets": ["127.0.0.1:9191"]}]
    config["rule_files"] = [str(RULES_FILE)]
    checked = tmp_path / "prometheus-kubernetes.yml"
    checked.write_text(yaml.safe_dump(config))
    assert_ok(promtool("check", "config", checked))


def _pod_templates() -> dict[str, tuple[str, dict[str, str], list[str]]]:
    """Deployment name -> (namespace, pod labels, container port names) in deploy/k8s/."""
    pods = {}
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in load_yaml_documents(path):
            if doc["kind"] != "Deployment":
                continue
            template = doc["spec"]["template"]
            ports = [
                port["name"]
                for container in template["spec"]["containers"]
                for port in container.get("ports", [])
            ]
            pods[doc["metadata"]["name"]] = (
                doc["metadata"]["namespace"],
                template["metadata"]["labels"],
                ports,
            )
    return pods


def _keeps(rule: dict[str, Any], labels: dict[str, str], ports: list[str]) -> bool:
    """Whether a `keep` relabel rule keeps a pod with these labels on one of these ports."""
    prefix = "__meta_kubernetes_pod_label_"
    candidates = [
        ";".join(
            port
            if source == "__meta_kubernetes_pod_container_port_name"
            else labels.get(_label_name(source.removeprefix(prefix), labels), "")
            for source in rule["source_labels"]
        )
        for port in ports
    ]
    return any(re.fullmatch(rule["regex"], value) for value in candidates)


def _label_name(sanitized: str, labels: dict[str, str]) -> str:
    # Prometheus exposes label app.kubernetes.io/name as app_kubernetes_io_name.
    return next((name for name in labels if re.sub(r"[^a-zA-Z0-9_]", "_", name) == sanitized), "")


def test_the_scrape_configs_name_the_jobs_the_alerts_use() -> None:
    """Both scrape configs define the relay-worker and relay-ingest jobs, at the relay's ports."""
    for name in ("prometheus.yml", "prometheus-kubernetes.yml"):
        jobs = {job["job_name"]: job for job in load_yaml(PROMETHEUS_DIR / name)["scrape_configs"]}
        assert set(jobs) == {WORKER_JOB, INGEST_JOB}, name
        assert all(job["metrics_path"] == "/metrics" for job in jobs.values())
    compose_jobs = load_yaml(PROMETHEUS_DIR / "prometheus.yml")["scrape_configs"]
    ports = {job["job_name"]: job["dns_sd_configs"][0]["port"] for job in compose_jobs}
    assert ports == {WORKER_JOB: 9191, INGEST_JOB: 8080}
    for rule in alert_rules():
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job in (WORKER_JOB, INGEST_JOB), (rule["alert"], job)


def test_every_alert_passes_its_promtool_unit_tests() -> None:
    """`promtool test rules` passes on every test file of deploy/prometheus/tests/."""
    test_files = sorted(RULE_TESTS_DIR.glob("*.yml"))
    assert test_files, f"no promtool test files in {RULE_TESTS_DIR}"
    result = promtool("test", "rules", *test_files)
    assert_ok(result)
    assert "FAILED" not in result.stdout + result.stderr


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_stays_quiet() -> None:
    """Each alert is expected firing in some promtool test case and absent in another."""
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in sorted(RULE_TESTS_DIR.glob("*.yml")):
        for case in load_yaml(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "alerts with no unit test where they fire"
    assert names - quiet == set(), "alerts with no unit test where they stay quiet"


def test_every_alert_has_a_severity_summary_description_and_a_runbook_heading() -> None:
    """Each alert is labelled, explained, and links to an existing heading of the README."""
    anchors = {github_anchor(heading) for heading in readme_headings()}
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert len(annotations["description"]) > 40, name
        url = annotations["runbook_url"]
        assert url == f"{RUNBOOK_BASE}alert-{name.lower()}", name
        assert url.removeprefix(RUNBOOK_BASE) in anchors, f"no README heading 'Alert: {name}'"


def readme_headings() -> list[str]:
    headings = []
    for path in README_FILES:
        if path.exists():
            headings += [
                line.lstrip("#").strip()
                for line in path.read_text().splitlines()
                if line.startswith("#")
            ]
    return headings


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lowercase, punctuation dropped, spaces as -."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_github_anchor_matches_githubs_rule() -> None:
    """The anchor helper drops the colon and keeps case-folded words, as GitHub does."""
    assert github_anchor("Alert: RelayEventsDropped") == "alert-relayeventsdropped"
    assert github_anchor("Scaling the fleet") == "scaling-the-fleet"
    assert (
        github_anchor("Redis: durability and loss windows") == "redis-durability-and-loss-windows"
    )


def known_sample_names() -> set[str]:
    """Every sample name the relay exposes: relay/metrics.py's metrics and the queue gauges."""
    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names.add(family.name)
                if family.type == "counter":
                    names.update({f"{family.name}_total", f"{family.name}_created"})
                if family.type == "histogram":
                    names.update(
                        f"{family.name}{suffix}"
                        for suffix in ("_bucket", "_count", "_sum", "_created")
                    )
    collector = metrics.QueueCollector(
        lambda: {"pending_events": 0, "oldest_age_s": 0.0, "dead_letters": 0, "dead_bundles": 0}
    )
    names.update(family.name for family in collector.collect())
    return names


def promql_metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(relay_[a-z0-9_]+)\b", expr))


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of the Grafana dashboard."""
    dashboard = load_json(DASHBOARD_FILE)
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def test_the_rules_and_the_dashboard_query_only_metrics_the_relay_defines() -> None:
    """No alert or panel can go blank because it names a metric the relay does not export."""
    known = known_sample_names()
    assert "relay_events_dropped_total" in known
    assert "relay_queue_depth_events" in known
    assert "relay_ingest_request_duration_seconds_count" in known
    queries = [(rule["alert"], rule["expr"]) for rule in alert_rules()] + dashboard_exprs()
    for where, expr in queries:
        unknown = promql_metric_names(expr) - known
        assert not unknown, f"{where}: {sorted(unknown)} not defined in relay/metrics.py"


def test_the_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """promtool parses every dashboard query (Grafana's range variables given a value)."""
    rules = []
    for index, (_title, expr) in enumerate(dashboard_exprs()):
        for variable in GRAFANA_RANGE_VARIABLES:
            expr = expr.replace(variable, "1m")
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", path)
    assert_ok(result)
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
