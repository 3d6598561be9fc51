"""Running the worker fleet: dramatiq's worker processes plus one metrics endpoint for all of them.

`relay worker` is a small supervisor: it gives the workers a fresh prometheus multiprocess
directory, serves the summed metrics (and the fleet-wide queue gauges) on RELAY_METRICS_PORT,
runs `dramatiq workers.actors`, starts it again when a worker process dies, forwards
SIGTERM/SIGINT/SIGHUP, and exits with dramatiq's exit code once asked to stop.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from relay.errors import ConfigError
from relay.keys import Keys
from relay.queue import redis_client
from relay.settings import ENV_PREFIX, Settings

WORKER_MODULE = "workers.actors"
"""Named, not imported: the producer side never imports the workers package."""

DRAMATIQ_WORKER_DIED = 1
"""dramatiq's exit code (RET_KILLED) when a worker process died and it shut the rest down."""
RESTART_BACKOFF_INITIAL_S = 1.0
RESTART_BACKOFF_MAX_S = 30.0
RESTART_POLL_S = 0.1
"""How often the supervisor looks up while it waits: for a stop asked during a restart's
backoff, and for `relay up`'s ingest having exited."""
RESTART_STABLE_RUN_S = 10.0
"""A fleet that ran this long before dying was working: it restarts after the initial backoff.
One that dies sooner (a crash at every start) waits twice as long each time, up to the max."""

SHUTDOWN_TIMEOUT_MS = 30_000
"""On SIGTERM, in-flight bundles get this long to finish; the rest return to the queue.
Orchestrators must allow more (Kubernetes: terminationGracePeriodSeconds >= 40)."""

WORKER_FORK_TIMEOUT_MS = 1_000
"""How long dramatiq's parent waits for its worker processes to boot before it starts its fork
processes (default 30 s). The relay has no fork processes, so the wait gates nothing; but a
worker that died while booting was waited for in full (dramatiq 2.2 checks the wrong process
before waiting), and only then was the death noticed and the fleet restarted, 30 s later."""


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
        "--worker-fork-timeout",
        str(WORKER_FORK_TIMEOUT_MS),
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

    # Pruned at each scrape, not only when a fleet restarts: dramatiq's reload (SIGHUP) replaces
    # the worker processes while the fleet runs, and an open circuit would outlive its process.
    registry = multiprocess_registry(
        str(multiproc_dir), before_collect=lambda: forget_dead_gauges(multiproc_dir)
    )
    store = RelayStore(
        redis_client(settings.require_redis_url(), settings), Keys(settings.namespace)
    )
    registry.register(QueueCollector(lambda: stats.collect(store)))
    try:
        server, _thread = start_http_server(port, addr=settings.metrics_host, registry=registry)
    except OSError as exc:  # in use, or an address this host does not have
        raise ConfigError(
            f"{ENV_PREFIX}METRICS_HOST:{ENV_PREFIX}METRICS_PORT {settings.metrics_host}:{port} "
            f"cannot serve /metrics: {exc.strerror or exc}"
        ) from None
    return server


def start_workers(
    settings: Settings, processes: int, threads: int, multiproc_dir: Path
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        worker_command(processes, threads),
        env=worker_env(settings, multiproc_dir),
        # A process group of its own: a terminal's Ctrl-C reaches only the supervisor, which
        # forwards it once. dramatiq turns each SIGINT into a SIGTERM to its workers, and a
        # worker's second SIGTERM kills it in the middle of its bundles.
        process_group=0,
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
    settings: Settings,
    processes: int,
    threads: int,
    metrics_port: int,
    *,
    nice: int = 0,
    ingest: subprocess.Popen[bytes] | None = None,
) -> int:
    """Run the fleet in the foreground until it is signalled; return dramatiq's exit code.

    dramatiq's parent shuts every worker down and exits when one worker process dies (killed by
    the kernel's OOM killer, say). Unless a stop was asked for, the fleet is started again here
    after a backoff, so `relay up`'s ingest and this metrics endpoint keep running. The worker
    processes run at niceness `nice` (0: unchanged).

    `ingest`, `relay up`'s ingest process, gets SIGTERM as soon as this gets SIGTERM or SIGINT,
    so it stops taking events while the workers finish theirs; should it exit unasked, the fleet
    is stopped and its exit code (1 for 0, 128 + N for signal N) is returned: a relay without
    its ingest must not look alive.
    """
    multiproc_dir = fresh_multiproc_dir()
    server = serve_metrics(settings, multiproc_dir, metrics_port)
    lower_priority(nice)
    # A plain flag, not a threading.Event: the handler runs in this same thread, and an Event's
    # lock taken by the interrupted code would deadlock it.
    stopping = False
    child: subprocess.Popen[bytes] | None = None
    ingest_code: int | None = None

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:  # dramatiq reloads on SIGHUP: it goes on running
            stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)
        # As SIGTERM even for SIGINT: a terminal's Ctrl-C has reached the ingest already, and a
        # second SIGINT would make uvicorn drop the requests in flight (a SIGTERM after a
        # SIGINT does not). SIGHUP is dramatiq's reload: the ingest goes on.
        if signum != signal.SIGHUP and ingest is not None and ingest.poll() is None:
            ingest.send_signal(signal.SIGTERM)

    def ingest_gone() -> bool:
        """True once the ingest has exited unasked; then the fleet is being stopped."""
        nonlocal stopping, ingest_code
        if ingest is None or stopping or (code := ingest.poll()) is None:
            return False
        # A signal's death (-9) as a shell would say it (137); 0 still means it stopped unasked.
        ingest_code = 128 - code if code < 0 else (code or 1)
        stopping = True
        print(
            f"relay up: the ingest exited with code {code}; stopping the workers.",
            file=sys.stderr,
            flush=True,
        )
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
        return True

    def wait(process: subprocess.Popen[bytes]) -> int:
        while (code := process.poll()) is None:
            ingest_gone()
            time.sleep(RESTART_POLL_S)
        return code

    previous = {
        sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    }
    backoff_s = RESTART_BACKOFF_INITIAL_S
    try:
        while True:
            started = time.monotonic()
            child = start_workers(settings, processes, threads, multiproc_dir)
            if stopping:  # asked to stop while the child was being started
                child.send_signal(signal.SIGTERM)
            code = wait(child) if ingest is not None else child.wait()
            if ingest_code is not None:
                return ingest_code
            if stopping or code != DRAMATIQ_WORKER_DIED:
                # Asked to stop, or a failure a restart would only repeat (a broken import,
                # no broker at boot): exit with it, for whoever runs us to see.
                return code
            if time.monotonic() - started > RESTART_STABLE_RUN_S:
                backoff_s = RESTART_BACKOFF_INITIAL_S
            print(
                f"relay worker: the worker processes exited with code {code} (one of them "
                f"died); starting them again in {backoff_s:.0f} s. Bundles they held return to "
                "the queue when their heartbeat runs out.",
                file=sys.stderr,
                flush=True,
            )
            forget_dead_gauges(multiproc_dir)
            restart_at = time.monotonic() + backoff_s
            while not stopping and time.monotonic() < restart_at:
                ingest_gone()
                time.sleep(RESTART_POLL_S)  # a stop signal is seen within this
            if ingest_code is not None:
                return ingest_code
            if stopping:
                return 0  # nothing runs any more, and that is what was asked for
            backoff_s = min(backoff_s * 2, RESTART_BACKOFF_MAX_S)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.shutdown()
        shutil.rmtree(multiproc_dir, ignore_errors=True)


def forget_dead_gauges(multiproc_dir: Path) -> None:
    """Remove the gauge files of processes that are gone.

    A gauge's last value stays in its process's file (the relay's gauges aggregate by max), so
    a dead worker's open circuit would otherwise be reported for as long as the fleet runs.
    Counters stay: their totals must not go backwards.
    """
    for path in multiproc_dir.glob("gauge_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            path.unlink(missing_ok=True)
