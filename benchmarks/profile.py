"""`--profile DIR`: py-spy on the relay's processes during the flood, and what it found.

Each worker process (and the HTTP front) is sampled for PROFILE_S with
`py-spy record --nonblocking -f raw` (collapsed stacks, one `frame;frame;... count` per line);
the summary is the frames where samples end (self time) and the share of the stacks that pass
through a few frames worth knowing about. Sampling costs CPU: figures of a profiled run are
for finding where the time goes, not for the table.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

PROFILE_S = 8
TOP_FRAMES = 15
PY_SPY = Path(sys.executable).parent / "py-spy"
WAITING_FUNCTIONS = frozenset(
    {
        "SocketIO.readinto",
        "_HiredisParser.read_from_socket",
        "_socket_can_read",
        "poll_wait_for_socket.<locals>.do_poll",
        "Condition.wait",
        "Event.wait",
        "select",
        "sleep",
    }
)
WAITING_LINES = frozenset({"_RedisConsumer.__next__ (dramatiq/brokers/redis.py:370)"})
"""Leaf frames that are a thread blocked on a socket, a lock or a sleep (dramatiq 2.2's idle
back-off, line 370): py-spy shows Python frames only and --nonblocking sampling does not
always tell them from work, so they are counted apart, as waiting."""


def start(
    pids: dict[int, str], out_dir: Path, tag: str
) -> list[tuple[Path, subprocess.Popen[bytes]]]:
    """Start one py-spy per process in `pids` (pid -> role); each stops after PROFILE_S."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started = []
    for pid, role in pids.items():
        out = out_dir / f"{tag}-{role}-{pid}.txt"
        argv = [str(PY_SPY), "record", "-p", str(pid), "-d", str(PROFILE_S)]
        argv += ["-f", "raw", "-o", str(out), "--nonblocking"]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append((out, process))
    return started


def finish(started: list[tuple[Path, subprocess.Popen[bytes]]]) -> dict[str, Any]:
    """Wait for the profilers; the summary of each profile, by file name."""
    summaries = {}
    for out, process in started:
        try:
            process.wait(PROFILE_S + 30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if out.exists():
            summaries[out.name] = summarize(out)
    return summaries


def summarize(path: Path, top: int = TOP_FRAMES) -> dict[str, Any]:
    """Shares of a raw py-spy profile's working samples (waiting ones only counted): self time
    by line (where a stack ends; the line tells which C call it is in) and by package,
    inclusive time by function."""
    own: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = waiting = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        leaf = stack.rsplit(";", 1)[-1]
        frames = [_function(frame) for frame in stack.split(";")]
        if leaf.partition(" (")[0] in WAITING_FUNCTIONS or leaf in WAITING_LINES:
            waiting += samples
            continue
        total += samples
        own[leaf] += samples
        areas[_area(frames[-1])] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    if not total:
        return {"samples": 0, "waiting_samples": waiting}

    def shares(counter: Counter[str], limit: int) -> list[tuple[str, float]]:
        return [(name, round(n / total, 3)) for name, n in counter.most_common(limit)]

    return {
        "samples": total,
        "waiting_samples": waiting,
        "self_by_line": shares(own, top),
        "self_by_package": shares(areas, top),
        "inclusive_by_function": shares(inclusive, top * 2),
    }


def _function(frame: str) -> str:
    """`name (file.py:123)` without its line number."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def _area(function: str) -> str:
    """The package (or stdlib module) a frame's file belongs to."""
    where = function.partition(" (")[2].rstrip(")")
    return where.split("/", 1)[0].removesuffix(".py") if where else "?"


def print_summaries(results: list[dict[str, Any]], console: Any, lines: int = 8) -> None:
    """The hottest lines of each profiled process, under the table."""
    for result in results:
        for name, summary in result.get("profiles", {}).items():
            working, waiting = summary["samples"], summary["waiting_samples"]
            share = working / (working + waiting) if working + waiting else 0.0
            console.print(
                f"{name}: {working} working samples ({share:.0%}; the rest blocked on I/O)",
                highlight=False,
            )
            for line, part in summary.get("self_by_line", [])[:lines]:
                console.print(f"  {part:6.1%}  {line}", highlight=False, markup=False)
