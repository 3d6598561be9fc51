"""`relay up`: the whole relay in one supervisor: ingest, workers, and an embedded durable Valkey
when RELAY_REDIS_URL is unset. SIGTERM or SIGINT stops all of it (the ingest first) and the
workers' code is returned; an ingest that exits unasked stops it all, with the ingest's code.
"""

from __future__ import annotations

import os
import subprocess
import sys

from relay.embedded import start_valkey, stop_valkey
from relay.settings import DEFAULT_WORKER_NICE, Settings
from relay.supervisor import run_workers

INGEST_STOP_TIMEOUT_S = 20.0
"""The ingest finishes in-flight requests within 10 s of SIGTERM (sent to it as soon as `relay
up` gets one); this leaves it a margin."""


def run_up(
    settings: Settings,
    processes: int,
    threads: int,
    *,
    ingest_host: str = "127.0.0.1",
    ingest_port: int = 8080,
    insecure_no_signature: bool = False,
    worker_nice: int = DEFAULT_WORKER_NICE,
) -> int:
    """Run until signalled; return the workers' exit code, or the ingest's should it exit
    unasked (the workers are stopped then). The workers run at niceness `worker_nice` (the
    ingest and Valkey, started first, keep theirs)."""
    server = None
    if not settings.redis_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        server = start_valkey(settings.data_dir)
        settings = settings.model_copy(update={"redis_url": server.connection_url})
        print(
            f"embedded Valkey (AOF on) at {server.connection_url}, "
            f"data in {settings.data_dir}/valkey"
        )
    env = dict(os.environ, RELAY_REDIS_URL=settings.require_redis_url())
    command = [sys.executable, "-m", "relay.cli", "ingest", "--host", ingest_host]
    command += ["--port", str(ingest_port)]
    if insecure_no_signature:
        command.append("--insecure-no-signature")
    ingest = subprocess.Popen(command, env=env)
    print(f"ingest on http://{ingest_host}:{ingest_port}/events, workers {processes}x{threads}")
    try:
        return run_workers(
            settings, processes, threads, settings.metrics_port, nice=worker_nice, ingest=ingest
        )
    finally:
        ingest.terminate()
        try:
            ingest.wait(timeout=INGEST_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            ingest.kill()
        if server is not None:
            stop_valkey(server, settings.data_dir)
