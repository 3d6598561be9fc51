"""`relay demo`: the whole relay on embedded defaults, shown working on a spike of Stream events.

Starts a durable Valkey under ./.relay/, the local SNS endpoint, `relay ingest` and `relay worker`
processes; posts the spike to the ingest as signed webhooks, as Stream would, with a progress
bar; waits until every event is accounted for; checks what the topic received against what was
sent; prints a summary. Exit 1 if any event is unaccounted for or any body differs.
"""

from __future__ import annotations

import os
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from relay import demo_events
from relay.embedded import start_valkey, stop_valkey
from relay.ingest.client import WebhookSender
from relay.keys import Keys, glob_escape
from relay.local_sns import LocalSnsServer
from relay.settings import Settings
from relay.store import RelayStore

DEMO_REGION = "us-east-1"
DEMO_TOPIC = "stream-events"
SENDER_THREADS = 8
"""Concurrent keep-alive connections posting the spike, like a webhook sender's pool."""
START_TIMEOUT_S = 30.0
LOCAL_SNS_CREDENTIAL = "demo"
"""The local SNS checks no signature; botocore still wants some credentials to sign with."""
DELIVERY_TIMEOUT_S = 120.0
"""A stuck demo stops and says what is missing, rather than hanging."""


@dataclass
class DemoResult:
    sent: int = 0
    enqueued: int = 0
    dropped_at_ingest: int = 0
    invalid: int = 0
    published: int = 0
    received: int = 0
    dropped_at_worker: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    missing: list[str] = field(default_factory=list)
    body_mismatches: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    drop_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def accounted(self) -> bool:
        return not self.missing and not self.body_mismatches


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_demo(
    *,
    events: int,
    processes: int = 2,
    threads: int = 8,
    data_dir: Path = Path(".relay"),
    console: Console | None = None,
) -> int:
    """Run the demo; return the exit code (0: every event accounted for, bodies identical)."""
    console = console or Console()
    data_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]sns-relay demo[/bold]: {events} Stream-shaped events")
    valkey = start_valkey(data_dir)
    namespace = f"demo-{int(time.time())}"
    local = LocalSnsServer().start()
    topic_arn = local.create_topic(DEMO_TOPIC, DEMO_REGION)
    settings = Settings.load(
        redis_url=valkey.connection_url,
        namespace=namespace,
        sns_topic_arn=topic_arn,
        sns_endpoint_url=local.url,
        sns_key=LOCAL_SNS_CREDENTIAL,
        sns_secret=LOCAL_SNS_CREDENTIAL,
        metrics_port=_free_port(),
        data_dir=data_dir,
    )
    console.print(
        f"  Valkey (AOF on) {valkey.connection_url}   local SNS {local.url}   "
        f"topic {topic_arn}   workers {processes}x{threads}"
    )
    secret = secrets.token_hex(16)
    env = _relay_env(settings, secret)
    ingest_url = f"http://127.0.0.1:{_free_port()}"
    log = (data_dir / "demo.log").open("ab")
    ingest = _start(["ingest", "--port", ingest_url.rsplit(":", 1)[1]], env, log)
    workers = _start(["worker", "-p", str(processes), "-t", str(threads)], env, log)
    try:
        _wait_until_up(ingest_url, ingest)
        console.print(f"  ingest {ingest_url}   logs {data_dir / 'demo.log'}")
        result = _drive(settings, local, ingest_url, secret, events, console)
    finally:
        for process in (ingest, workers):
            process.terminate()
        for process in (ingest, workers):
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()
        local.stop()
        _forget_namespace(valkey.connection_url, namespace)
        stop_valkey(valkey, data_dir)
    _print_summary(result, console)
    return 0 if result.accounted else 1


def _relay_env(settings: Settings, webhook_secret: str) -> dict[str, str]:
    """The demo's settings as RELAY_* variables for its ingest and worker processes."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("RELAY_")}
    env.update(
        RELAY_REDIS_URL=settings.require_redis_url(),
        RELAY_NAMESPACE=settings.namespace,
        RELAY_SNS_TOPIC_ARN=settings.require_topic_arn(),
        RELAY_SNS_ENDPOINT_URL=settings.sns_endpoint_url or "",
        RELAY_SNS_KEY=LOCAL_SNS_CREDENTIAL,
        RELAY_SNS_SECRET=LOCAL_SNS_CREDENTIAL,
        RELAY_METRICS_PORT=str(settings.metrics_port),
        RELAY_WEBHOOK_SECRET=webhook_secret,
        RELAY_LOG_LEVEL="WARNING",
    )
    return env


def _start(args: list[str], env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "relay.cli", *args], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def _wait_until_up(url: str, process: subprocess.Popen[bytes]) -> None:
    """Poll /healthz until the ingest answers; raise if it exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the ingest exited with code {process.returncode} (see the log)")
        try:
            # the URL is the demo's own http://127.0.0.1 ingest
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as answer:  # noqa: S310
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)  # start-up poll cadence
    raise RuntimeError(f"the ingest did not answer on {url} within {START_TIMEOUT_S} s")


def _drive(
    settings: Settings,
    local: LocalSnsServer,
    ingest_url: str,
    secret: str,
    count: int,
    console: Console,
) -> DemoResult:
    result = DemoResult(sent=count)
    sent_bodies: dict[str, bytes] = {}
    sent_at: dict[str, float] = {}
    columns = (
        TextColumn("{task.description:>10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    bodies = list(demo_events.generate(count))
    ids = [f"demo-{index:07d}" for index in range(count)]
    local_senders = threading.local()

    def post(index: int) -> int:
        sender = getattr(local_senders, "sender", None)
        if sender is None:
            sender = local_senders.sender = WebhookSender(ingest_url, secret)
        sent_at[ids[index]] = time.time()
        status, _ = sender.post(bodies[index], webhook_id=ids[index])
        return status

    with Progress(*columns, console=console) as progress:
        store = RelayStore(
            redis.Redis.from_url(settings.require_redis_url()), Keys(settings.namespace)
        )
        enqueue_task = progress.add_task("posted", total=count)
        started = time.time()
        with ThreadPoolExecutor(SENDER_THREADS) as pool:
            for index, status in enumerate(pool.map(post, range(count), chunksize=64)):
                if status in (200, 202):
                    result.enqueued += 1
                    sent_bodies[ids[index]] = bodies[index]
                elif status == 413:
                    result.dropped_at_ingest += 1
                else:
                    result.invalid += 1
                progress.advance(enqueue_task)
        publish_task = progress.add_task("published", total=result.enqueued)
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        while time.monotonic() < deadline:
            progress.update(publish_task, completed=local.stats()["published"])
            if store.pending_events() == 0:
                break
            time.sleep(0.1)  # progress display cadence; the condition is polled with a deadline
        progress.update(publish_task, completed=local.stats()["published"])
        result.elapsed_s = time.time() - started
        totals = store.totals()
        result.dead_lettered = totals.get("dead_lettered", 0)
        result.dropped_at_worker = totals.get("dropped", 0) - result.dropped_at_ingest
        result.drop_reasons = store.dropped_counts()
        store.client.close()
    received = local.messages(topic_arn=settings.sns_topic_arn)
    result.received = len(received)
    seen: Counter[str] = Counter()
    for message in received:
        event_id = message["attributes"]["event_id"]["StringValue"]
        seen[event_id] += 1
        if seen[event_id] > 1:
            continue
        if event_id in sent_bodies and message["body"].encode("utf-8") != sent_bodies[event_id]:
            result.body_mismatches.append(event_id)
        if event_id in sent_at:
            result.latencies_s.append(message["received_at"] - sent_at[event_id])
    result.duplicates = sum(n - 1 for n in seen.values())
    result.published = len(seen)
    unaccounted = (
        len(sent_bodies) - result.published - result.dead_lettered - result.dropped_at_worker
    )
    if unaccounted:
        result.missing = [event_id for event_id in sent_bodies if event_id not in seen][
            :unaccounted
        ]
    return result


def _forget_namespace(url: str, namespace: str) -> None:
    """The demo's keys are its own; clear them so reruns don't grow the AOF."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{glob_escape(namespace)}:*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass
    finally:
        client.close()


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _print_summary(result: DemoResult, console: Console) -> None:
    table = Table(title="sns-relay demo summary", show_header=False)
    table.add_row("sent", str(result.sent))
    table.add_row("stored (2xx from the ingest)", str(result.enqueued))
    table.add_row("refused by the ingest: too large (413, recorded)", str(result.dropped_at_ingest))
    table.add_row("dropped by workers", str(result.dropped_at_worker))
    table.add_row("refused otherwise (not 2xx or 413)", str(result.invalid))
    table.add_row("published (distinct events)", str(result.published))
    table.add_row("received by the topic", f"{result.received} ({result.duplicates} duplicates)")
    table.add_row("dead-lettered", str(result.dead_lettered))
    for reason, count in sorted(result.drop_reasons.items()):
        table.add_row(f"drops recorded: {reason}", str(count))
    identical = result.published - len(result.body_mismatches)
    table.add_row("bodies byte-identical", f"{identical} of {result.published}")
    rate = result.published / result.elapsed_s if result.elapsed_s else 0.0
    table.add_row("events per second (first POST to last publish)", f"{rate:,.0f}")
    table.add_row(
        "POST to SNS p50 / p99",
        f"{_percentile(result.latencies_s, 0.5) * 1000:.0f} ms / "
        f"{_percentile(result.latencies_s, 0.99) * 1000:.0f} ms",
    )
    table.add_row(
        "mean",
        f"{statistics.fmean(result.latencies_s) * 1000:.0f} ms" if result.latencies_s else "-",
    )
    console.print(table)
    if result.accounted:
        console.print(
            "[green]every event is accounted for: published, or dropped with a recorded "
            "reason[/green]"
        )
    else:
        console.print(
            f"[red]{len(result.missing)} events unaccounted for, "
            f"{len(result.body_mismatches)} bodies differ[/red] "
            f"(e.g. {result.missing[:3] + result.body_mismatches[:3]})"
        )
