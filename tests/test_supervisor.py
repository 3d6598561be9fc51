"""The supervisor's bookkeeping between fleets: a dead worker's gauges go, its counters stay."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from relay.supervisor import forget_dead_gauges


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
