"""`make bench`: the relay against its baselines, measured in one run on loopback.

`python -m benchmarks.run [--quick] [--events N] [--naive-events N] [--only NAME,...]
[--json PATH] [--backlog N] [--idle]`. Starts an embedded durable Valkey per path, the local SNS
in its own process and each path's processes; prints a table and writes JSON (default
benchmarks/results/latest.json). `--backlog N` runs the backlog checks instead (backlog.py),
`--idle` an idle fleet's (idle.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks import http_front, measure, profile, report
from benchmarks.harness import BenchError, LocalSns, Valkey
from benchmarks.scenarios import SCENARIOS, Context
from benchmarks.workload import write_events
from relay.settings import DEFAULT_WORKER_IDLE_POLL_MS

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"
FULL: dict[str, float] = {"events": 40_000, "naive_events": 3_000, "paced_s": 6.0, "front_s": 10.0}
QUICK: dict[str, float] = {"events": 2_000, "naive_events": 200, "paced_s": 1.0, "front_s": 1.0}
HTTP_PATHS = {"naive-http", "relay-http"}
"""Selected together, they also get the fronts-alone comparison (http_front.py)."""
SEED = 7
EXIT_OK, EXIT_FAILED = 0, 1
WIDE_CONSOLE_COLUMNS = 150
BUSY_LOAD_AVERAGE = 1.0
"""Above this 1-minute load average before the run, something else is competing for CPU."""


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, under a minute (CI)")
    parser.add_argument("--events", type=int, help="events per path (full run: 40,000)")
    parser.add_argument("--naive-events", type=int, help="events for the naive paths (3,000)")
    parser.add_argument("--paced-seconds", type=float, help="length of the latency phase (6 s)")
    parser.add_argument("--only", help=f"comma-separated, of: {', '.join(SCENARIOS)}")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--backlog", type=int, help="run the backlog checks with N events")
    parser.add_argument(
        "--idle",
        action="store_true",
        help="measure an idle fleet instead: its CPU, and how soon it publishes after a pause",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    parser.add_argument(
        "--worker-nice",
        type=int,
        default=None,
        help="run the relay's workers at this niceness (default 0, as relay up and relay worker "
        "run them)",
    )
    parser.add_argument(
        "--worker-idle-poll-ms",
        type=int,
        default=None,
        help="run the relay's workers with this RELAY_WORKER_IDLE_POLL_MS (default: the relay's)",
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy the workers during each flood into DIR (skews CPU)"
    )
    return parser.parse_args(argv)


def run_paths(args: argparse.Namespace, workdir: Path, console: Console) -> dict[str, Any]:
    sizes = dict(QUICK if args.quick else FULL)
    for key, value in (
        ("events", args.events),
        ("naive_events", args.naive_events),
        ("paced_s", args.paced_seconds),
    ):
        if value is not None:
            sizes[key] = value
    names = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown path {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    events_file = workdir / "events.jsonl"
    stream = write_events(events_file, int(max(sizes["events"], sizes["naive_events"])), SEED)
    console.print(
        f"{stream['count']:,} Stream-shaped events, median {stream['median_bytes']:,.0f} bytes; "
        f"paths: {', '.join(names)}",
        highlight=False,
    )
    sns = LocalSns.start(workdir, max_recorded_messages=int(stream["count"]) + 1_000)
    results = []
    teardowns = Teardowns()
    try:
        for name in names:
            scenario = SCENARIOS[name]
            count = int(sizes["naive_events"] if scenario.naive_sized else sizes["events"])
            results.append(
                run_one(
                    scenario,
                    count,
                    sizes["paced_s"],
                    workdir,
                    sns,
                    teardowns,
                    console,
                    args.profile,
                    args.worker_nice,
                    args.worker_idle_poll_ms,
                )
            )
    finally:
        teardowns.settle()
        sns.stop()
    report.add_ratios(results)
    document = {"kind": "paths", "sizes": sizes, "stream": stream, "results": results}
    if set(names) >= HTTP_PATHS:
        console.print("HTTP fronts alone: naive-front, ingest", highlight=False)
        document["fronts"] = http_front.run(
            events_file, workdir, sizes["front_s"], sizes["paced_s"]
        )
    return document


class Teardowns:
    """Paths stopping in the background (a dramatiq fleet takes seconds to shut down), each
    joined before the next measured window opens, so none runs inside it."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def add(self, stop: Callable[[], None]) -> None:
        thread = threading.Thread(target=stop, name="teardown")
        thread.start()
        self.threads.append(thread)

    def settle(self) -> None:
        for thread in self.threads:
            thread.join()
        self.threads.clear()


def run_one(
    scenario: Any,
    count: int,
    paced_s: float,
    workdir: Path,
    sns: LocalSns,
    teardowns: Teardowns,
    console: Console,
    profile_dir: Path | None = None,
    worker_nice: int | None = None,
    worker_idle_poll_ms: int | None = None,
) -> dict[str, Any]:
    began = time.monotonic()
    valkey_dir = workdir / f"valkey-{scenario.name}"
    valkey = Valkey.start(valkey_dir)
    nice = scenario.worker_nice if worker_nice is None else worker_nice
    ctx = Context(workdir, valkey.url, sns, workdir / "events.jsonl", nice, worker_idle_poll_ms)
    fleet = None
    try:
        fleet = scenario.start(ctx)
        started_s = time.monotonic() - began
        result = measure.run(
            scenario,
            ctx,
            fleet,
            valkey.pid,
            count,
            paced_s,
            settle=teardowns.settle,
            profile_dir=profile_dir,
        )
        result["phases_s"] = {"start": round(started_s, 2), **result["phases_s"]}
        if scenario.sns_client is not None:
            result["worker_nice"] = nice
            result["worker_idle_poll_ms"] = (
                DEFAULT_WORKER_IDLE_POLL_MS if worker_idle_poll_ms is None else worker_idle_poll_ms
            )
    except (BenchError, RuntimeError) as exc:
        result = {"scenario": scenario.name, "description": scenario.description, "error": str(exc)}
    finally:

        def stop() -> None:
            if fleet is not None:
                measure.stop_fleet(fleet)
            valkey.stop()
            shutil.rmtree(valkey_dir, ignore_errors=True)

        teardowns.add(stop)
    status = result.get("error") or f"{result['rate_eps']:,.0f} events/s"
    console.print(
        f"  {scenario.name}: {status} ({time.monotonic() - began:.0f} s)", highlight=False
    )
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # Piped or in CI the console is 80 columns, too narrow for the table.
    console = Console(width=None if sys.stdout.isatty() else WIDE_CONSOLE_COLUMNS)
    load_before = os.getloadavg()[0]
    if load_before > BUSY_LOAD_AVERAGE:
        console.print(
            f"[yellow]warning: load average {load_before:.1f} before starting: other work on "
            "this machine will skew the figures[/yellow]"
        )
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    failed = True
    try:
        if args.backlog:
            from benchmarks import backlog

            document = backlog.run(args.backlog, workdir, console, args.worker_nice)
            title = f"backlog of {args.backlog:,} events"
        elif args.idle:
            from benchmarks import idle

            document = idle.run(workdir, console)
        else:
            document = run_paths(args, workdir, console)
            title = "sns-relay vs baselines" + (" (quick)" if args.quick else "")
        document |= {"command": " ".join(["python -m benchmarks.run", *(argv or sys.argv[1:])])}
        document |= {
            "machine": report.machine(),
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
        }
        if document["kind"] == "paths":
            report.print_report(document["results"], title, console)
            if "fronts" in document:
                http_front.print_report(document["fronts"], console)
            profile.print_summaries(document["results"], console)
            failed = any("error" in result for result in document["results"])
            failed |= any("error" in result for result in document.get("fronts", []))
        elif document["kind"] == "idle":
            failed = idle.print_report(document, console)
        else:
            failed = backlog.print_report(document, console)
        report.write_json(args.json, document)
        console.print(f"written to {args.json}", highlight=False)
    finally:
        if args.keep or failed:
            console.print(f"work directory (logs): {workdir}", highlight=False)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return EXIT_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
