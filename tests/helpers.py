"""Helpers for tests that run real processes: free ports, polling with a deadline, moto's server,
the `relay worker` subprocess and reading its /metrics.

Plain functions and context managers (no fixtures), so any test module can build on them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import boto3
from moto.server import ThreadedMotoServer
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")

REGION = "us-east-1"
TEST_KEY = "testing"
TEST_SECRET = "testing"

DEFAULT_POLL_INTERVAL_S = 0.05
WORKER_STOP_TIMEOUT_S = 40.0
"""Above the supervisor's 30 s shutdown timeout for in-flight bundles."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll_until(
    predicate: Callable[[], T],
    timeout_s: float,
    *,
    interval_s: float = DEFAULT_POLL_INTERVAL_S,
    what: str = "the condition",
) -> T:
    """Call `predicate` until it returns something truthy, and return that; fail at the deadline.

    Exceptions from `predicate` count as "not yet" until the deadline, then propagate.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = predicate()
        except Exception:
            if time.monotonic() > deadline:
                raise
        else:
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not hold within {timeout_s} s (last: {value!r})")
        time.sleep(interval_s)


# --- moto ------------------------------------------------------------------------------------


@dataclass
class MotoAws:
    """A running moto server and clients for it."""

    url: str
    sns: Any
    sqs: Any

    def create_topic(self, name: str) -> str:
        arn: str = self.sns.create_topic(Name=name)["TopicArn"]
        return arn

    def subscribe_queue(self, topic_arn: str, name: str, *, raw: bool) -> str:
        """Create an SQS queue subscribed to the topic; returns the queue URL."""
        queue_url: str = self.sqs.create_queue(QueueName=name)["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        attributes = {"RawMessageDelivery": "true"} if raw else {}
        self.sns.subscribe(
            TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn, Attributes=attributes
        )
        return queue_url

    def receive(
        self, queue_url: str, count: int, timeout_s: float, key: Callable[[dict[str, Any]], str]
    ) -> dict[str, dict[str, Any]]:
        """Receive until `count` distinct messages (by `key`) arrived or the deadline passed."""
        received: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout_s
        while len(received) < count and time.monotonic() < deadline:
            reply = self.sqs.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                VisibilityTimeout=600,  # never redelivered while the test reads
                MessageAttributeNames=["All"],
            )
            for message in reply.get("Messages", []):
                received.setdefault(key(message), message)
        return received


@contextlib.contextmanager
def moto_server() -> Iterator[MotoAws]:
    """moto in server mode on a free loopback port (FACTS §6.3), with SNS and SQS clients."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    access_log = logging.getLogger("werkzeug")
    level = access_log.level
    access_log.setLevel(logging.WARNING)  # one line per request drowns a failure's report
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        options: dict[str, Any] = {
            "endpoint_url": url,
            "region_name": REGION,
            "aws_access_key_id": TEST_KEY,
            "aws_secret_access_key": TEST_SECRET,
        }
        yield MotoAws(url, boto3.client("sns", **options), boto3.client("sqs", **options))
    finally:
        server.stop()
        access_log.setLevel(level)


# --- the relay as a subprocess ---------------------------------------------------------------


def relay_env(
    variables: Mapping[str, str], base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A subprocess environment: the caller's without any RELAY_* or AWS_* variable, plus these."""
    env = {
        name: value
        for name, value in (os.environ if base is None else base).items()
        if not name.startswith(("RELAY_", "AWS_"))
    }
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # no slow instance-metadata lookups
    env["PYTHONUNBUFFERED"] = "1"
    env.update(variables)
    return env


def relay_command(*args: str) -> list[str]:
    """The `relay` command line, run by this interpreter (the console script may not be on PATH)."""
    return [sys.executable, "-m", "relay.cli", *args]


@dataclass
class WorkerProcess:
    """A `relay worker` subprocess and where its metrics and log are."""

    process: subprocess.Popen[bytes]
    metrics_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = WORKER_STOP_TIMEOUT_S) -> int:
        """SIGTERM, then wait for the exit code (kill and fail if it does not come in time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"relay worker did not exit within {timeout_s} s of SIGTERM\n{self.log()}"
            ) from None


@contextlib.contextmanager
def relay_worker(
    variables: Mapping[str, str],
    log_dir: Path,
    *,
    processes: int = 1,
    threads: int = 4,
) -> Iterator[WorkerProcess]:
    """`relay worker -p N -t T` with these RELAY_* variables and its metrics on a free port.

    Stopped with SIGTERM on exit if the test has not stopped it already.
    """
    port = free_port()
    env = relay_env({**variables, "RELAY_METRICS_PORT": str(port)})
    log_path = log_dir / f"worker-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            relay_command("worker", "-p", str(processes), "-t", str(threads)),
            env=env,
            cwd=log_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    worker = WorkerProcess(process, f"http://127.0.0.1:{port}/metrics", log_path)
    try:
        yield worker
    except BaseException:
        print(f"--- relay worker log ({log_path}) ---\n{worker.log()}")  # shown on failure
        raise
    finally:
        if process.poll() is None:
            with contextlib.suppress(AssertionError):
                worker.stop()


def scrape(url: str, timeout_s: float = 2.0) -> str:
    """The text of a Prometheus endpoint."""
    with urllib.request.urlopen(url, timeout=timeout_s) as reply:  # noqa: S310 (our own http URL)
        text: str = reply.read().decode()
    return text


def sample_value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """The value of one sample in Prometheus text (e.g. `relay_events_published_total`)."""
    wanted = dict(labels or {})
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == wanted:
                return float(sample.value)
    return None
