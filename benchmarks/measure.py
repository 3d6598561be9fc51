"""One scenario, measured: warm up, flood (rate, CPU, memory), then paced (latency).

Flood: the whole count is fed as fast as the feeder can; the rate runs from the first send
until the local SNS has accepted the last event. CPU is each process's use inside that window
(sampled when the last event is accepted, before anything is stopped). Paced: a fresh batch
fed at PACED_FRACTION of the flood rate, where latency means something (in a flood it only
measures the backlog); each event's send time is joined with its acceptance by the local SNS
on the `event_id` attribute.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from benchmarks import profile
from benchmarks.harness import (
    Accounting,
    BenchError,
    ProcessUsage,
    check_alive,
    descendants,
    leaves,
    spawn,
)
from benchmarks.scenarios import Context, Fleet, Scenario, feeder_env
from benchmarks.workload import percentile

WARMUP_EVENTS = 200
PACED_FRACTION = 0.5
MIN_PACED_EVENTS = 50
STALL_TIMEOUT_S = 60.0
"""A run whose published count has not moved for this long is stuck, and stopped."""
FEED_TIMEOUT_S = 1_800.0
POLL_S = 0.02
MIB = 1024 * 1024


def feed(
    ctx: Context,
    scenario: Scenario,
    fleet: Fleet,
    count: int,
    tag: str,
    *,
    rate_eps: float | None = None,
    record_sends: bool = False,
) -> dict[str, Any]:
    """Run the scenario's producer (or load generator) over `count` events; return its report."""
    out = ctx.workdir / f"{scenario.name}-{tag}.json"
    common = ["--events-file", str(ctx.events_file), "--count", str(count), "--out", str(out)]
    if scenario.feeder == "http":
        argv = ["-m", "benchmarks.http_load", "--port", str(fleet.http_port), *common]
    else:
        argv = ["-m", "benchmarks.produce", scenario.feeder, *common]
    if rate_eps:
        argv += ["--rate", f"{rate_eps:.1f}"]
    if record_sends:
        argv.append("--record-sends")
    process = spawn(argv, feeder_env(ctx, scenario), ctx.workdir, f"{scenario.name}-feed.log")
    deadline = time.monotonic() + FEED_TIMEOUT_S
    try:
        while process.poll() is None:
            check_alive(fleet.processes, ctx.workdir)
            if time.monotonic() > deadline:
                raise BenchError(f"the {scenario.name} feeder ran over {FEED_TIMEOUT_S:.0f} s")
            time.sleep(POLL_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if process.returncode != 0:
        raise BenchError(f"the {scenario.name} feeder failed; see {ctx.workdir}")
    report: dict[str, Any] = orjson.loads(out.read_bytes())
    refused = {k: n for k, n in report.get("statuses", {}).items() if not k.startswith("2")}
    if refused:
        raise BenchError(f"{scenario.name}: requests refused by status: {refused}")
    return report


def wait_published(ctx: Context, fleet: Fleet, target: int) -> None:
    """Wait until the local SNS has accepted `target` messages; BenchError if work stalls."""
    last, moved = -1, time.monotonic()
    while (published := ctx.sns.published()) < target:
        check_alive(fleet.processes, ctx.workdir)
        if published != last:
            last, moved = published, time.monotonic()
        elif time.monotonic() - moved > STALL_TIMEOUT_S:
            raise BenchError(f"stuck at {published} of {target} published")
        time.sleep(POLL_S)


def working_pids(fleet: Fleet) -> dict[int, str]:
    """The processes of the fleet that do the work (dramatiq's children, not its supervisors)."""
    return {
        pid: role.replace(" ", "-")
        for role, process in fleet.processes.items()
        for pid in leaves(process.pid)
    }


def account(ctx: Context, fleet: Fleet, valkey_pid: int) -> Accounting:
    accounting = Accounting()
    for role, process in fleet.processes.items():
        accounting.track("front" if role == "front" else "workers", descendants(process.pid))
    accounting.track("valkey", [valkey_pid])
    accounting.track("local_sns", [ctx.sns.process.pid])
    return accounting


def run(
    scenario: Scenario,
    ctx: Context,
    fleet: Fleet,
    valkey_pid: int,
    count: int,
    paced_s: float,
    *,
    settle: Callable[[], None] = lambda: None,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    """Measure one scenario whose fleet is running; the caller stops the fleet.

    `settle` is called before the measured window opens: it waits for the last path to stop.
    With `profile_dir`, py-spy samples the fleet's working processes during the flood.
    """
    clock = time.monotonic()
    warm = min(WARMUP_EVENTS, count)
    feed(ctx, scenario, fleet, warm, "warmup")
    wait_published(ctx, fleet, warm)
    ctx.sns.client.reset()
    phases_s = {"warmup": time.monotonic() - clock}

    settle()
    accounting = account(ctx, fleet, valkey_pid)
    accounting.start()
    profilers = (
        profile.start(working_pids(fleet), profile_dir, scenario.name) if profile_dir else []
    )
    flood = feed(ctx, scenario, fleet, count, "flood")
    wait_published(ctx, fleet, count)
    finished = ctx.sns.last_received_at()
    usage = accounting.close()
    profiles = profile.finish(profilers)
    elapsed_s = finished - flood["first_send"]
    rate_eps = count / elapsed_s
    ctx.sns.client.reset()
    phases_s["flood"] = time.monotonic() - clock - sum(phases_s.values())

    paced_rate = rate_eps * PACED_FRACTION
    paced_count = min(count, max(MIN_PACED_EVENTS, int(paced_rate * paced_s)))
    paced = feed(ctx, scenario, fleet, paced_count, "paced", rate_eps=paced_rate, record_sends=True)
    wait_published(ctx, fleet, paced_count)
    latency = join_latency(ctx, paced)
    # Publishing that keeps up ends a few milliseconds after the last send; a growing queue
    # shows here as seconds.
    tail_s = ctx.sns.last_received_at() - paced["last_send"]
    latency |= {"rate_eps": paced_rate, "events": paced_count, "tail_ms": _ms(tail_s)}
    if scenario.feeder == "http":
        latency |= {
            "http_p50_ms": _ms(paced["http_p50_s"]),
            "http_p99_ms": _ms(paced["http_p99_s"]),
        }
    ctx.sns.client.reset()
    phases_s["paced"] = time.monotonic() - clock - sum(phases_s.values())
    result = summarize(scenario, count, elapsed_s, flood, usage, latency)
    result["phases_s"] = {phase: round(seconds, 2) for phase, seconds in phases_s.items()}
    if profiles:
        result["profiles"] = profiles
    return result


def join_latency(ctx: Context, paced: dict[str, Any]) -> dict[str, Any]:
    """Enqueue-to-publish latency of every event the paced feeder recorded."""
    received = ctx.sns.received_at_by_event()
    latencies = [
        received[event_id] - sent for event_id, sent in paced["sends"] if event_id in received
    ]
    return {
        "p50_ms": _ms(percentile(latencies, 0.50)),
        "p99_ms": _ms(percentile(latencies, 0.99)),
        "max_ms": _ms(max(latencies, default=None)),
        "unmatched": len(paced["sends"]) - len(latencies),
    }


def summarize(
    scenario: Scenario,
    count: int,
    elapsed_s: float,
    flood: dict[str, Any],
    usage: list[ProcessUsage],
    latency: dict[str, Any],
) -> dict[str, Any]:
    by_role: dict[str, float] = {}
    for process in usage:
        by_role[process.role] = by_role.get(process.role, 0.0) + process.cpu_s
    feeder_role = "load_generator" if scenario.feeder == "http" else "producer"
    by_role[feeder_role] = flood["cpu_s"]
    relay_roles = ("front", "workers") if scenario.feeder == "http" else ("producer", "workers")
    cpu_us = {role: cpu / count * 1e6 for role, cpu in sorted(by_role.items())}
    cpu_us["relay_total"] = sum(cpu_us.get(role, 0.0) for role in relay_roles)
    processes = [
        {
            "role": p.role,
            "pid": p.pid,
            "name": p.name,
            "cpu_s": round(p.cpu_s, 3),
            "peak_rss_mb": round(p.peak_rss_bytes / MIB, 1),
        }
        for p in usage
    ]
    processes.append(
        {
            "role": feeder_role,
            "pid": None,
            "name": f"benchmarks feeder ({scenario.feeder})",
            "cpu_s": round(flood["cpu_s"], 3),
            "peak_rss_mb": round(flood["peak_rss_bytes"] / MIB, 1),
        }
    )
    result: dict[str, Any] = {
        "scenario": scenario.name,
        "description": scenario.description,
        "sns_client": scenario.sns_client,
        "baselines": list(scenario.baselines),
        "events": count,
        "elapsed_s": round(elapsed_s, 3),
        "rate_eps": round(count / elapsed_s, 1),
        "cpu_us_per_event": {role: round(value, 1) for role, value in cpu_us.items()},
        "latency": latency,
        "processes": processes,
    }
    if scenario.feeder == "http":
        accepted_s = flood["last_send"] - flood["first_send"]
        result["front_accepted_eps"] = round(count / accepted_s, 1) if accepted_s > 0 else None
    return result


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def stop_fleet(fleet: Fleet) -> None:
    for process in fleet.processes.values():
        if process.poll() is None:
            process.terminate()
    for process in fleet.processes.values():
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
