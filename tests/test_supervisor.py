"""The supervisor's bookkeeping between fleets: a dead worker's gauges go, its counters stay."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from relay import supervisor
from relay.settings import Settings
from relay.supervisor import forget_dead_gauges
from tests.helpers import poll_until


def test_a_dead_processs_gauge_files_are_removed_and_its_counters_kept(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid names no process now
    live = os.getpid()
    files = {
        "dead_gauge": tmp_path / f"gauge_max_{dead.pid}.db",
        "live_gauge": tmp_path / f"gauge_max_{live}.db",
        "dead_counter": tmp_path / f"counter_{dead.pid}.db",
        "dead_histogram": tmp_path / f"histogram_{dead.pid}.db",
    }
    for path in files.values():
        path.write_bytes(b"\0" * 8)

    forget_dead_gauges(tmp_path)

    assert {name for name, path in files.items() if path.exists()} == {
        "live_gauge",
        "dead_counter",
        "dead_histogram",
    }


OPEN_CIRCUIT_PROCESS = (
    "import sys\n"
    "from relay import metrics\n"
    "metrics.SNS_CIRCUIT_OPEN.set(1)\n"
    "print('open', flush=True)\n"
    "sys.stdin.read()\n"  # holds its gauge until the test closes stdin
)


def test_a_scrape_forgets_the_open_circuit_of_a_process_gone_while_the_fleet_runs(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dramatiq's reload (SIGHUP) replaces worker processes without a fleet restart: the next
    scrape of the workers' /metrics no longer reports the circuit a replaced process had open,
    while a live process's open circuit shows."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # serve_metrics sets it too
    worker = subprocess.Popen(
        [sys.executable, "-c", OPEN_CIRCUIT_PROCESS],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None
    assert worker.stdout.readline() == "open\n"
    server = supervisor.serve_metrics(settings, tmp_path, 0)
    url = f"http://127.0.0.1:{server.server_port}/metrics"

    def circuit_open() -> str:
        with urllib.request.urlopen(url, timeout=10) as answer:
            lines = answer.read().decode().splitlines()
        return next((line for line in lines if line.startswith("relay_sns_circuit_open ")), "")

    try:
        assert circuit_open() == "relay_sns_circuit_open 1.0"
        worker.communicate("", timeout=30)
        assert circuit_open() == ""
    finally:
        server.shutdown()
        server.server_close()


# --- relay up's ingest under run_workers -------------------------------------------------------

# Stand-ins started as real processes: dramatiq's parent and the ingest are only ever seen by
# run_workers through their exit codes and the signals it sends them.
SLEEPER = "import time; time.sleep(60)"
TERM_RECORDER = (
    "import pathlib, signal, sys, time\n"
    "def stop(signum, frame):\n"
    "    pathlib.Path(sys.argv[1]).write_text(signal.Signals(signum).name)\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "signal.signal(signal.SIGINT, stop)\n"
    "pathlib.Path(sys.argv[1] + '.ready').touch()\n"
    "time.sleep(60)\n"
)


class _NoMetrics:
    def shutdown(self) -> None:
        pass


@pytest.fixture
def fake_fleet(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """run_workers with no metrics server, starting `python -c <code>` for each fleet; the test
    appends the code of each fleet it wants started, in order."""
    codes: list[str] = []

    def start(*_args: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", codes.pop(0)])

    monkeypatch.setattr(supervisor, "serve_metrics", lambda *_args: _NoMetrics())
    monkeypatch.setattr(supervisor, "start_workers", start)
    return codes


def test_an_ingest_exiting_during_a_restarts_backoff_stops_it_with_the_ingests_code(
    fake_fleet: list[str], settings: Settings
) -> None:
    """The fleet died (dramatiq's code 1) and waits its backoff to start again; the ingest
    exits 5 meanwhile: no new fleet is started and run_workers returns 5."""
    fake_fleet.append(f"import sys; sys.exit({supervisor.DRAMATIQ_WORKER_DIED})")
    ingest = subprocess.Popen(
        [sys.executable, "-c", "import time, sys; time.sleep(0.3); sys.exit(5)"]
    )
    try:
        code = supervisor.run_workers(settings, 1, 1, 0, ingest=ingest)
    finally:
        ingest.kill()
        ingest.wait()
    assert code == 5
    assert fake_fleet == []  # the one fleet ran; none was started after it


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_reaches_the_ingest_as_sigterm_at_once(
    fake_fleet: list[str], settings: Settings, tmp_path: Path, signum: signal.Signals
) -> None:
    """SIGTERM or SIGINT to `relay up` reaches its ingest as SIGTERM right away (not after the
    workers end), so it stops taking events; run_workers returns the fleet's code."""
    fake_fleet.append(SLEEPER)
    said = tmp_path / "ingest-got"
    ingest = subprocess.Popen([sys.executable, "-c", TERM_RECORDER, str(said)])
    poll_until((tmp_path / "ingest-got.ready").exists, timeout_s=10)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signum))
    timer.start()
    try:
        code = supervisor.run_workers(settings, 1, 1, 0, ingest=ingest)
    finally:
        timer.cancel()
        ingest.kill()
        ingest.wait()
    assert said.read_text() == "SIGTERM"
    assert code == -signum  # the stand-in fleet died of the forwarded signal
