"""The processes a fault test breaks, each one small: a durable Valkey that can be SIGKILLed and
restarted on its data, a TCP proxy that cuts (or deafens) connections, and the `relay worker`
fleet the test supervises itself. Plus /proc readers and `hold`, a fault's duration.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import child_pids
from relay.embedded import start_server
from tests.helpers import (
    WORKER_STOP_TIMEOUT_S,
    free_port,
    relay_command,
    relay_env,
    scrape,
)

PROCESSES = 2
THREADS = 4
"""`relay worker -p 2 -t 4`: two processes, so one can die while the other works."""
FLEET_START_TIMEOUT_S = 30.0
FLEET_EXIT_TIMEOUT_S = 40.0
"""A fleet whose master saw a child die stops its siblings gracefully: 30 s at most, plus slack."""
ACCEPT_POLL_S = 0.1


def rss_bytes(pid: int) -> int:
    """A process's resident memory (VmRSS), 0 if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def hold(seconds: float, *, every_s: float = 0.5, sample: Callable[[], None] | None = None) -> None:
    """Keep a fault in force for `seconds` (its length, not a wait for work), sampling meanwhile."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if sample is not None:
            sample()
        time.sleep(min(every_s, left))


class DurableValkey:
    """A Valkey with AOF on a fixed port and data dir, so it can be SIGKILLed and restarted.

    `appendfsync`: `everysec` (the embedded default) or `always` (every acknowledged write is on
    disk before the reply, so a SIGKILL at any instant loses none of them).
    """

    def __init__(self, data_dir: Path, *, appendfsync: str = "everysec") -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.config = {
            "appendonly": "yes",
            "appendfsync": appendfsync,
            "maxmemory-policy": "noeviction",
            "save": "",
        }
        self.server: Any = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (or restart) on the same port and data; returns once it answers PING."""
        self.server = start_server(self.config, data_dir=self.data_dir, port=self.port)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final AOF flush."""
        self.server.terminate()

    def stop(self) -> None:
        if self.server is not None and self.server.is_running():
            self.server.stop()


class TcpProxy:
    """Forwards loopback connections to `target_port`; `cut()` drops them all and refuses new ones
    until `restore()`, as a broken network between two hosts would."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._deaf_marker: bytes | None = None
        self._deaf: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        # create_server sets SO_REUSEADDR, so restore() can bind the port again at once.
        listener = socket.create_server(("127.0.0.1", self.port))
        listener.settimeout(ACCEPT_POLL_S)
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._acceptor.start()
        return self

    def deafen_on(self, marker: bytes) -> None:
        """From now on a connection that sends a request containing `marker` hears no reply
        again: Redis runs the command and the client never learns of it, as when a link breaks
        mid-call. Other connections carry on."""
        self._deaf_marker = marker

    def restore(self) -> TcpProxy:
        """Accept connections again (and deafen none)."""
        self._deaf_marker = None
        return self.start() if self._listener is None else self

    def cut(self) -> int:
        """Close every connection and stop listening; returns how many connections were cut."""
        with self._lock:
            self._listener = None
            cut, self._sockets = self._sockets, set()
            self._deaf.clear()
        if self._acceptor is not None:
            self._acceptor.join()
        for sock in cut:
            _close(sock)
        return len(cut) // 2

    def _accept(self, listener: socket.socket) -> None:
        with listener:
            while self._listener is listener:
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                try:
                    upstream = socket.create_connection(self.target, timeout=2.0)
                except OSError:
                    _close(client)
                    continue
                client.settimeout(None)
                upstream.settimeout(None)
                with self._lock:
                    self._sockets |= {client, upstream}
                for source, sink in ((client, upstream), (upstream, client)):
                    pump = threading.Thread(target=self._pump, args=(source, sink, client))
                    pump.daemon = True
                    pump.start()

    def _pump(self, source: socket.socket, sink: socket.socket, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65_536):
                marker = self._deaf_marker
                if source is client and marker is not None and marker in data:
                    self._deaf.add(client)
                if sink is client and client in self._deaf:
                    continue  # the reply is lost
                sink.sendall(data)
        with self._lock:
            self._sockets -= {source, sink}
            self._deaf.discard(client)
        _close(source)
        _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class WorkerFleet:
    """`relay worker -p 2 -t 4` run by the test as its supervisor: started, signalled, restarted.

    Process tree: `relay worker` (supervisor) -> `dramatiq` master -> one child per process.
    """

    def __init__(self, variables: dict[str, str], log_dir: Path, *, terminal: bool = False) -> None:
        self.variables = variables
        self.log_dir = log_dir
        self.terminal = terminal
        """Run as a terminal runs it: in a process group of its own, which Ctrl-C signals."""
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_url = ""
        self.logs: list[Path] = []

    def start(self) -> WorkerFleet:
        assert self.process is None or self.process.poll() is not None, "already running"
        port = free_port()
        self.metrics_url = f"http://127.0.0.1:{port}/metrics"
        log_path = self.log_dir / f"worker-{len(self.logs) + 1}.log"
        self.logs.append(log_path)
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                relay_command("worker", "-p", str(PROCESSES), "-t", str(THREADS)),
                env=relay_env({**self.variables, "RELAY_METRICS_PORT": str(port)}),
                cwd=self.log_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.terminal,
            )
        return self

    def pid(self) -> int:
        """The supervisor's (`relay worker`'s) process id."""
        assert self.process is not None
        return self.process.pid

    def ctrl_c(self) -> None:
        """A terminal's Ctrl-C: SIGINT to the fleet's whole process group."""
        assert self.terminal, "only a fleet started as in a terminal has a group of its own"
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGINT)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def worker_pids(self) -> list[int]:
        """The dramatiq worker processes (children of the master), [] while it is not running."""
        if not self.running():
            return []
        assert self.process is not None
        masters = child_pids(self.process.pid)
        return [pid for master in masters for pid in child_pids(master)]

    def wait_workers(self, timeout_s: float = FLEET_START_TIMEOUT_S) -> list[int]:
        """Wait for every worker process to be forked; return their pids."""
        deadline = time.monotonic() + timeout_s
        while len(pids := self.worker_pids()) < PROCESSES:
            assert self.running(), f"relay worker exited at start\n{self.log()}"
            assert time.monotonic() < deadline, f"no {PROCESSES} workers in {timeout_s} s"
            time.sleep(0.05)
        return pids

    def masters(self) -> list[int]:
        """dramatiq's master process (the supervisor's child), [] while there is none."""
        return child_pids(self.process.pid) if self.process is not None and self.running() else []

    def wait_restarted(self, before: list[int], timeout_s: float = FLEET_START_TIMEOUT_S) -> None:
        """Wait until the supervisor has a new dramatiq master (not in `before`) with all its
        worker processes forked."""
        deadline = time.monotonic() + timeout_s
        while not (set(self.masters()) - set(before)) or len(self.worker_pids()) < PROCESSES:
            assert self.running(), f"relay worker exited\n{self.log()}"
            assert time.monotonic() < deadline, f"no new fleet within {timeout_s} s"
            time.sleep(0.05)

    def wait_exit(self, timeout_s: float = FLEET_EXIT_TIMEOUT_S) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"relay worker still running after {timeout_s} s") from None

    def stop(self, timeout_s: float = WORKER_STOP_TIMEOUT_S) -> int:
        """SIGTERM the supervisor and wait for its exit code (SIGKILL the group if it hangs)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.wait_exit(timeout_s)
        except AssertionError:
            self.kill_all()
            raise

    def kill_all(self) -> None:
        """SIGKILL the supervisor, the master and every worker: the teardown of last resort."""
        if not self.running():
            return
        assert self.process is not None
        masters = child_pids(self.process.pid)
        for pid in [*(p for m in masters for p in child_pids(m)), *masters, self.process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()

    def metrics(self) -> str:
        return scrape(self.metrics_url)

    def log(self) -> str:
        return "".join(path.read_text(errors="replace") for path in self.logs if path.exists())
