"""Two checkouts' ingests flooded at once: which answers more requests, on how much CPU.

    python -m benchmarks.ingest_ab DIR_A DIR_B [--rounds 6] [--seconds 8]

Sequential floods of A and then B measure the VM's drift as much as the change: on the VMs
here the same code ran 10 to 15 % faster or slower from one minute to the next. Here both
ingests, each on a fresh durable Valkey and warmed up, take a wrk flood over the same seconds,
so a drift hits both alike; the rounds alternate which one starts first. The absolute figures
are not what one ingest does alone (two floods share the two cores): read the ratios B/A, per
round and their medians. Two copies of one checkout measured within 4 % in rate and 2.5 % in
CPU per request (2026-11-29, four rounds). DIR_A and DIR_B are source trees (a `git worktree`
of the commit to compare); the ingest imports its `relay` from each.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks import http_front
from benchmarks.harness import BenchError, cpu_s
from benchmarks.run import SEED
from benchmarks.workload import write_events

EVENTS = 40_000


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest_ab", description=__doc__)
    parser.add_argument("a", type=Path, help="the baseline checkout")
    parser.add_argument("b", type=Path, help="the checkout to compare with it")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each flood")
    return parser.parse_args(argv)


def flood_both(
    checkouts: list[Path], events_file: Path, signed: Path, workdir: Path, seconds: float, tag: str
) -> list[dict[str, Any]]:
    """One round: both ingests flooded at once; per checkout, requests/s and CPU µs per request."""
    with ExitStack() as stack:
        served = [
            stack.enter_context(
                http_front.serving("ingest", events_file, workdir, f"{tag}-{i}", checkout)
            )
            for i, checkout in enumerate(checkouts)
        ]
        before = [cpu_s(front.pid) for _port, front, _valkey in served]
        floods: dict[int, dict[str, Any]] = {}
        failures: list[BaseException] = []

        def flood(index: int, port: int) -> None:
            try:
                floods[index] = http_front.wrk_flood(port, signed, seconds)
            except BaseException as exc:  # reported below, in the main thread
                failures.append(exc)

        ports = [port for port, _front, _valkey in served]
        threads = [threading.Thread(target=flood, args=(i, port)) for i, port in enumerate(ports)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise BenchError(f"a flood failed: {failures[0]}")
        results = []
        for index, (_port, front, _valkey) in enumerate(served):
            requests = floods[index]["requests"]
            results.append(
                {
                    "rate_rps": requests / floods[index]["elapsed_s"],
                    "cpu_us_per_request": (cpu_s(front.pid) - before[index]) / requests * 1e6,
                }
            )
        return results


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    checkouts = [args.a.resolve(), args.b.resolve()]
    for checkout in checkouts:
        if not (checkout / "relay" / "ingest").is_dir():
            raise SystemExit(f"{checkout} is not a checkout of sns-relay (no relay/ingest)")
    if not http_front.wrk_available():
        raise SystemExit("wrk is not installed (make bench-deps)")
    console = Console()
    grid = Table(title="Both ingests flooded at once: B against A")
    for column in ("round", "A req/s", "B req/s", "A µs/req", "B µs/req", "B/A rate", "B/A CPU"):
        grid.add_column(column, justify="right")
    rate_ratios, cpu_ratios = [], []
    with tempfile.TemporaryDirectory(prefix="ingest-ab-") as tmp:
        workdir = Path(tmp)
        events_file = workdir / "events.jsonl"
        write_events(events_file, EVENTS, SEED)
        signed = workdir / "signed-events.txt"
        http_front.write_signed(events_file, signed, http_front.SIGNED_BODIES)
        for round_ in range(args.rounds):
            order = [0, 1] if round_ % 2 == 0 else [1, 0]  # which one is started (and warmed) first
            measured = flood_both(
                [checkouts[i] for i in order],
                events_file,
                signed,
                workdir,
                args.seconds,
                f"round{round_}",
            )
            a, b = (measured[order.index(i)] for i in (0, 1))
            rate_ratios.append(b["rate_rps"] / a["rate_rps"])
            cpu_ratios.append(b["cpu_us_per_request"] / a["cpu_us_per_request"])
            grid.add_row(
                str(round_),
                f"{a['rate_rps']:,.0f}",
                f"{b['rate_rps']:,.0f}",
                f"{a['cpu_us_per_request']:.1f}",
                f"{b['cpu_us_per_request']:.1f}",
                f"{rate_ratios[-1]:.3f}",
                f"{cpu_ratios[-1]:.3f}",
            )
    console.print(grid)
    console.print(
        f"median B/A: rate {statistics.median(rate_ratios):.3f}, "
        f"CPU per request {statistics.median(cpu_ratios):.3f}",
        highlight=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
