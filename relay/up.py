"""`relay up`: the whole relay in one supervisor, with an embedded durable Valkey when needed."""

from __future__ import annotations

from relay.embedded import start_valkey, stop_valkey
from relay.settings import Settings
from relay.supervisor import run_workers


def run_up(settings: Settings, processes: int, threads: int) -> int:
    """Run until signalled; return the workers' exit code."""
    server = None
    if not settings.redis_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        server = start_valkey(settings.data_dir)
        settings = settings.model_copy(update={"redis_url": server.connection_url})
        print(
            f"embedded Valkey (AOF on) at {server.connection_url}, "
            f"data in {settings.data_dir}/valkey"
        )
    try:
        return run_workers(settings, processes, threads, settings.metrics_port)
    finally:
        if server is not None:
            stop_valkey(server, settings.data_dir)
