"""`--backlog N`: issue 5's backlog targets, on the relay through `send_many`.

1. The producer alone (no workers): PROBE events fed as fast as it can; its rate.
2. The backlog filled to N events, still without workers.
3. `relay worker -p 2 -t 8` started; each worker process's RSS sampled as the backlog drains.
4. Once EARLY_DRAINED events are published, the same PROBE events fed again, now while the
   workers drain: its rate against step 1's (target: at most 10 % slower).
5. Drained to the end: each worker's RSS at the end against its RSS at EARLY_DRAINED (target:
   within 10 %).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks import measure
from benchmarks.harness import LocalSns, Valkey, descendants, process_name, rss_bytes
from benchmarks.measure import MIB
from benchmarks.scenarios import HTTP_SNS_CLIENT, SCENARIOS, Context, Fleet
from benchmarks.workload import write_events

EARLY_DRAINED = 100_000
"""Where the first RSS reading is taken (issue 5: 100 k against 1 M)."""
PROBE_EVENTS = 100_000
SAMPLES = 20
"""RSS readings along the drain, besides the first and the last."""
PROGRESS_EVERY_S = 15.0
SEED = 11


def worker_rss_mb(fleet: Fleet) -> dict[int, float]:
    """Resident memory of each process of the worker fleet, in MiB."""
    return {pid: rss_bytes(pid) / MIB for pid in descendants(fleet.processes["workers"].pid)}


def drain(
    ctx: Context, fleet: Fleet, target: int, marks: list[int], console: Console
) -> list[dict[str, Any]]:
    """Wait until `target` events are published, reading RSS as each mark in `marks` is passed."""
    samples: list[dict[str, Any]] = []
    pending = sorted(marks)
    last_print = time.monotonic()
    while True:
        published = ctx.sns.published()
        while pending and published >= pending[0]:
            pending.pop(0)
            samples.append({"published": published, "rss_mb": worker_rss_mb(fleet)})
        if published >= target:
            return samples
        if time.monotonic() - last_print > PROGRESS_EVERY_S:
            console.print(f"  drained {published:,} of {target:,}", highlight=False)
            last_print = time.monotonic()
        measure.wait_published(ctx, fleet, min(target, published + 1))


def run(
    events: int, workdir: Path, console: Console, worker_nice: int | None = None
) -> dict[str, Any]:
    probe = min(PROBE_EVENTS, max(events // 10, 1_000))
    early = min(EARLY_DRAINED, events // 10)
    events_file = workdir / "events.jsonl"
    stream = write_events(events_file, events, SEED)
    scenario = SCENARIOS["relay-lean" if HTTP_SNS_CLIENT == "lean" else "relay-boto3"]
    sns = LocalSns.start(workdir, max_recorded_messages=1_000)
    valkey = Valkey.start(workdir / "valkey-backlog")
    ctx = Context(workdir, valkey.url, sns, events_file, worker_nice)
    idle = Fleet()
    fleet = None
    try:
        console.print(f"producer alone: {probe:,} events", highlight=False)
        alone = measure.feed(ctx, scenario, idle, probe, "alone")
        console.print(f"filling the backlog to {events:,} events", highlight=False)
        fill = measure.feed(ctx, scenario, idle, events - probe, "fill")
        fleet = scenario.start(ctx)
        started = time.time()
        marks = sorted({early, *(events * n // SAMPLES for n in range(1, SAMPLES + 1))})
        samples = drain(ctx, fleet, early, marks, console)
        console.print(f"producer during the drain: {probe:,} events", highlight=False)
        during = measure.feed(ctx, scenario, fleet, probe, "during")
        samples += drain(ctx, fleet, events + probe, [m for m in marks if m > early], console)
        samples.append({"published": ctx.sns.published(), "rss_mb": worker_rss_mb(fleet)})
        drain_s = time.time() - started
        names = {pid: process_name(pid) for pid in samples[-1]["rss_mb"]}
    finally:
        if fleet is not None:
            measure.stop_fleet(fleet)
        sns.stop()
        valkey.stop()
        shutil.rmtree(workdir / "valkey-backlog", ignore_errors=True)
    rate_alone = alone["sent"] / (alone["last_send"] - alone["first_send"])
    rate_during = during["sent"] / (during["last_send"] - during["first_send"])
    early_sample = next(s for s in samples if s["published"] >= early)
    first, last = early_sample["rss_mb"], samples[-1]["rss_mb"]
    growth = {pid: last[pid] / first[pid] - 1 for pid in last if first.get(pid)}
    return {
        "kind": "backlog",
        "sns_client": scenario.sns_client,
        "worker_nice": worker_nice or 0,
        "events": events,
        "probe_events": probe,
        "stream": stream,
        "producer_alone_eps": round(rate_alone, 1),
        "producer_during_drain_eps": round(rate_during, 1),
        "producer_slowdown": round(1 - rate_during / rate_alone, 3),
        # The same CPU per event in both runs means the slowdown is CPU contention on this
        # machine, not the relay's producer path getting slower.
        "producer_cpu_us_per_event_alone": round(alone["cpu_s"] / probe * 1e6, 1),
        "producer_cpu_us_per_event_during": round(during["cpu_s"] / probe * 1e6, 1),
        "fill_eps": round(fill["sent"] / (fill["last_send"] - fill["first_send"]), 1),
        "drain_s": round(drain_s, 1),
        "drain_eps": round((events + probe) / drain_s, 1),
        "rss_first_at": early_sample["published"],
        "rss_last_at": samples[-1]["published"],
        "workers": [
            {
                "pid": pid,
                "name": names.get(pid, ""),
                "rss_first_mb": round(first.get(pid, 0.0), 1),
                "rss_last_mb": round(last[pid], 1),
                "growth": round(growth[pid], 3) if pid in growth else None,
            }
            for pid in last
        ],
        "rss_samples": [
            {
                "published": s["published"],
                "rss_mb": {str(k): round(v, 1) for k, v in s["rss_mb"].items()},
            }
            for s in samples
        ],
    }


def print_report(document: dict[str, Any], console: Console) -> bool:
    """Print the backlog results; True if the run failed (it never does once it got here)."""
    grid = Table(
        title=f"backlog of {document['events']:,} events ({document['sns_client']}, "
        f"workers at nice {document['worker_nice']})"
    )
    grid.add_column("measure")
    grid.add_column("value", justify="right")
    grid.add_row("producer alone (events/s)", f"{document['producer_alone_eps']:,.0f}")
    grid.add_row(
        "producer during the drain (events/s)", f"{document['producer_during_drain_eps']:,.0f}"
    )
    grid.add_row("producer slowdown (target <= 10 %)", f"{document['producer_slowdown']:.1%}")
    grid.add_row(
        "producer CPU µs/event, alone -> during",
        f"{document['producer_cpu_us_per_event_alone']:.0f} -> "
        f"{document['producer_cpu_us_per_event_during']:.0f}",
    )
    grid.add_row("drain rate (events/s)", f"{document['drain_eps']:,.0f}")
    span = f"{document['rss_first_at']:,} -> {document['rss_last_at']:,}"
    for worker in document["workers"]:
        grid.add_row(
            f"RSS of pid {worker['pid']}, published {span}",
            f"{worker['rss_first_mb']:.0f} -> {worker['rss_last_mb']:.0f} MiB "
            f"({'-' if worker['growth'] is None else format(worker['growth'], '+.1%')})",
        )
    console.print(grid)
    return False
