"""The paths measured: what each one starts (its fleet) and how it is fed.

Every path runs against a fresh durable Valkey and the shared local SNS, with 2 worker
processes of 8 threads (or 2 floor consumers), on the same events file.
"""

from __future__ import annotations

import importlib
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness import (
    LOCAL_CREDENTIAL,
    START_TIMEOUT_S,
    LocalSns,
    child_env,
    free_port,
    spawn,
    wait_until,
)

WORKER_PROCESSES = 2
WORKER_THREADS = 8
NAMESPACE = "bench"
WEBHOOK_SECRET = "bench-webhook-secret"  # noqa: S105 (a loopback-only benchmark key)


@dataclass
class Context:
    """What every path shares in one run of one scenario."""

    workdir: Path
    redis_url: str
    sns: LocalSns
    events_file: Path
    worker_nice: int | None = None
    """The relay workers' RELAY_WORKER_NICE; None: the scenario's own (Scenario.worker_nice)."""
    worker_idle_poll_ms: int | None = None
    """The relay workers' RELAY_WORKER_IDLE_POLL_MS; None: the relay's default."""


@dataclass
class Fleet:
    """The long-running processes of a path, by role; `http_port` when it is fed over HTTP."""

    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    http_port: int | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    feeder: str
    """`relay`, `naive` or `floor` (benchmarks.produce), or `http` (benchmarks.http_load)."""
    start: Callable[[Context], Fleet]
    naive_sized: bool = False
    """Run on the naive event count: this path is too slow for the full one."""
    baselines: tuple[str, ...] = ()
    """Scenarios whose rate this one is divided by in the report."""
    sns_client: str | None = None
    """The relay workers' RELAY_SNS_CLIENT, for the relay's paths."""
    worker_nice: int = 0
    """The relay workers' niceness unless the run sets one (--worker-nice)."""


def relay_env(ctx: Context, sns_client: str) -> dict[str, str]:
    return child_env(
        {
            "RELAY_REDIS_URL": ctx.redis_url,
            "RELAY_NAMESPACE": NAMESPACE,
            "RELAY_SNS_TOPIC_ARN": ctx.sns.topic_arn,
            "RELAY_SNS_ENDPOINT_URL": ctx.sns.url,
            "RELAY_SNS_KEY": LOCAL_CREDENTIAL,
            "RELAY_SNS_SECRET": LOCAL_CREDENTIAL,
            "RELAY_SNS_CLIENT": sns_client,
            "RELAY_METRICS_PORT": str(free_port()),
            "RELAY_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "RELAY_WORKER_NICE": str(ctx.worker_nice or 0),
        }
        | (
            {"RELAY_WORKER_IDLE_POLL_MS": str(ctx.worker_idle_poll_ms)}
            if ctx.worker_idle_poll_ms is not None
            else {}
        )
    )


def naive_env(ctx: Context) -> dict[str, str]:
    return child_env(
        {
            "BENCH_REDIS_URL": ctx.redis_url,
            "BENCH_TOPIC_ARN": ctx.sns.topic_arn,
            "BENCH_SNS_URL": ctx.sns.url,
            "RELAY_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
    )


def feeder_env(ctx: Context, scenario: Scenario) -> dict[str, str]:
    """The environment of the producer or load generator feeding `scenario`."""
    return naive_env(ctx) if scenario.feeder in ("naive", "floor") else relay_env(ctx, "boto3")


def _relay_workers(ctx: Context, sns_client: str) -> subprocess.Popen[bytes]:
    argv = ["-m", "relay.cli", "worker", "-p", str(WORKER_PROCESSES), "-t", str(WORKER_THREADS)]
    return spawn(argv, relay_env(ctx, sns_client), ctx.workdir, f"workers-{sns_client}.log")


def _naive_workers(ctx: Context) -> subprocess.Popen[bytes]:
    argv = ["-m", "dramatiq", "benchmarks.naive_actor"]
    argv += ["-p", str(WORKER_PROCESSES), "-t", str(WORKER_THREADS)]
    return spawn(argv, naive_env(ctx), ctx.workdir, "workers-naive.log")


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    def listening() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the HTTP front exited with status {process.returncode}")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, START_TIMEOUT_S, f"port {port} to accept connections")


def start_naive(ctx: Context) -> Fleet:
    return Fleet({"workers": _naive_workers(ctx)})


def start_naive_http(ctx: Context) -> Fleet:
    port = free_port()
    front = spawn(
        ["-m", "benchmarks.naive_http", "--port", str(port)],
        naive_env(ctx),
        ctx.workdir,
        "naive-http.log",
    )
    wait_listening(port, front)
    return Fleet({"front": front, "workers": _naive_workers(ctx)}, http_port=port)


def start_floor(ctx: Context) -> Fleet:
    argv = ["-m", "benchmarks.floor", "--redis", ctx.redis_url, "--sns", ctx.sns.url]
    argv += ["--topic", ctx.sns.topic_arn]
    env = child_env({})
    return Fleet(
        {
            f"consumer {n}": spawn(argv, env, ctx.workdir, f"floor-{n}.log")
            for n in range(1, WORKER_PROCESSES + 1)
        }
    )


def start_relay(sns_client: str) -> Callable[[Context], Fleet]:
    def start(ctx: Context) -> Fleet:
        return Fleet({"workers": _relay_workers(ctx, sns_client)})

    return start


def lean_available() -> bool:
    """Whether workers/sns_lean.py is there and imports (RELAY_SNS_CLIENT=lean can work)."""
    try:
        importlib.import_module("workers.sns_lean")
    except Exception:
        return False
    return True


HTTP_SNS_CLIENT = "lean" if lean_available() else "boto3"


def start_relay_http(ctx: Context) -> Fleet:
    port = free_port()
    argv = ["-m", "relay.ingest", "--port", str(port), "--log-level", "warning"]
    front = spawn(argv, relay_env(ctx, HTTP_SNS_CLIENT), ctx.workdir, "ingest.log")
    wait_listening(port, front)
    workers = _relay_workers(ctx, HTTP_SNS_CLIENT)
    return Fleet({"front": front, "workers": workers}, http_port=port)


SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario(
            "naive",
            "dramatiq actor.send per event, boto3 publish per event",
            "naive",
            start_naive,
            naive_sized=True,
        ),
        Scenario(
            "floor",
            "pipelined RPUSH/BLMPOP, hand-built PublishBatch over keep-alive HTTP",
            "floor",
            start_floor,
        ),
        Scenario(
            "relay-lean",
            "send_many, relay worker, RELAY_SNS_CLIENT=lean",
            "relay",
            start_relay("lean"),
            baselines=("naive", "floor"),
            sns_client="lean",
        ),
        Scenario(
            "relay-boto3",
            "send_many, relay worker, RELAY_SNS_CLIENT=boto3",
            "relay",
            start_relay("boto3"),
            baselines=("naive", "floor"),
            sns_client="boto3",
        ),
        Scenario(
            "naive-http",
            "plain Starlette endpoint, actor.send per event, naive actor",
            "http",
            start_naive_http,
            naive_sized=True,
        ),
        Scenario(
            "relay-http",
            "POST /events (python -m relay.ingest), relay worker",
            "http",
            start_relay_http,
            baselines=("naive-http", "naive", "floor"),
            sns_client=HTTP_SNS_CLIENT,
        ),
    )
}
