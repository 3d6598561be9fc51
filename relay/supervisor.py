"""Running the worker fleet: dramatiq's worker processes plus one metrics endpoint for all of them.

`relay worker` is a small supervisor: it gives the workers a fresh prometheus multiprocess
directory, serves the summed metrics (and the fleet-wide queue gauges) on RELAY_METRICS_PORT,
runs `dramatiq workers.actors`, forwards SIGTERM/SIGINT, and exits with dramatiq's exit code.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from relay.keys import Keys
from relay.queue import redis_client
from relay.settings import Settings

WORKER_MODULE = "workers.actors"
"""Named, not imported: the producer side never imports the workers package."""

UP_WORKER_NICE = 10
"""`relay up`'s workers run at this niceness: sharing a machine with the ingest, draining a
backlog must not slow the answers to webhooks (the backlog can wait; a sender times out)."""

SHUTDOWN_TIMEOUT_MS = 30_000
"""On SIGTERM, in-flight bundles get this long to finish; the rest return to the queue.
Orchestrators must allow more (Kubernetes: terminationGracePeriodSeconds >= 40)."""


def worker_command(processes: int, threads: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dramatiq",
        WORKER_MODULE,
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        "--worker-shutdown-timeout",
        str(SHUTDOWN_TIMEOUT_MS),
        # workers.actors configures logging itself (structlog; secret-logging libraries capped)
        "--skip-logging",
    ]


def worker_env(
    settings: Settings, multiproc_dir: Path, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The workers' environment: the caller's, plus the resolved Redis URL and the metrics dir."""
    env = dict(os.environ if base is None else base)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc_dir)
    if settings.redis_url:
        env["RELAY_REDIS_URL"] = settings.redis_url
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def fresh_multiproc_dir() -> Path:
    """A new, empty directory for this fleet's metric files (stale files would add old counts)."""
    return Path(tempfile.mkdtemp(prefix="relay-metrics-"))


def serve_metrics(settings: Settings, multiproc_dir: Path, port: int) -> Any:
    """Serve the workers' summed metrics and the queue gauges on `port` (0: any free port)."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc_dir)
    from prometheus_client import start_http_server

    from relay import stats
    from relay.metrics import QueueCollector, multiprocess_registry
    from relay.store import RelayStore

    registry = multiprocess_registry(str(multiproc_dir))
    store = RelayStore(
        redis_client(settings.require_redis_url(), settings), Keys(settings.namespace)
    )
    registry.register(QueueCollector(lambda: stats.collect(store)))
    server, _thread = start_http_server(port, addr=settings.metrics_host, registry=registry)
    return server


def start_workers(
    settings: Settings, processes: int, threads: int, multiproc_dir: Path
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        worker_command(processes, threads), env=worker_env(settings, multiproc_dir)
    )


def lower_priority(nice: int) -> None:
    """Run what this thread starts from now on at niceness `nice` (never raises it back).

    On Linux niceness is per thread: the metrics server's thread, already running, keeps its
    own, and processes spawned earlier (`relay up`'s ingest and Valkey) keep theirs.
    """
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        os.setpriority(os.PRIO_PROCESS, 0, nice)


def run_workers(
    settings: Settings, processes: int, threads: int, metrics_port: int, *, nice: int = 0
) -> int:
    """Run the fleet in the foreground until it exits or is signalled; return its exit code.

    The worker processes run at niceness `nice` (0: unchanged).
    """
    multiproc_dir = fresh_multiproc_dir()
    server = serve_metrics(settings, multiproc_dir, metrics_port)
    lower_priority(nice)
    child = start_workers(settings, processes, threads, multiproc_dir)

    def forward(signum: int, _frame: FrameType | None) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    previous = {
        sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    }
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.shutdown()
        shutil.rmtree(multiproc_dir, ignore_errors=True)
    return code
