"""`--idle`: what an idle worker fleet costs, and how soon it publishes after a quiet spell.

The relay's fleet (`relay worker -p 2 -t 8`, lean) runs twice, against a fresh Valkey each time:
with dramatiq's own idle poll (its worker timeout, 1,000 ms) as the baseline, then with the
relay's (RELAY_WORKER_IDLE_POLL_MS, DEFAULT_WORKER_IDLE_POLL_MS). Each time:

1. One event published, then IDLE_S of quiet: the CPU the workers and Valkey spend doing nothing.
2. PROBES single events, sent PROBE_GAP_S apart (each after a quiet second, as a quiet app's
   events come): enqueue to publish of each.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from dramatiq.worker import WORKER_TIMEOUT
from rich.console import Console
from rich.table import Table

from benchmarks.harness import BenchError, LocalSns, Valkey, cpu_s, descendants, wait_until
from benchmarks.measure import stop_fleet
from benchmarks.scenarios import SCENARIOS, Context, relay_env
from benchmarks.workload import percentile
from relay.settings import DEFAULT_WORKER_IDLE_POLL_MS

DRAMATIQ_DEFAULT_POLL_MS = WORKER_TIMEOUT
"""dramatiq's worker timeout, which its consumer's idle backoff grows to (1,000 ms)."""
SETTLE_S = 3.0
"""After the first event, before the idle window opens: the consumers back off to their cap."""
IDLE_S = 20.0
PROBES = 20
PROBE_GAP_S = 1.0
PUBLISH_TIMEOUT_S = 30.0


def run(workdir: Path, console: Console) -> dict[str, Any]:
    runs = []
    for label, poll_ms in (
        ("dramatiq's default", DRAMATIQ_DEFAULT_POLL_MS),
        ("the relay's", DEFAULT_WORKER_IDLE_POLL_MS),
    ):
        console.print(f"idle poll {poll_ms:,} ms ({label})", highlight=False)
        runs.append({"label": label, "poll_ms": poll_ms, **_measure(workdir, poll_ms)})
    return {"kind": "idle", "runs": runs}


def _measure(workdir: Path, poll_ms: int) -> dict[str, Any]:
    scenario = SCENARIOS["relay-lean"]
    sns = LocalSns.start(workdir, max_recorded_messages=1_000)
    valkey_dir = workdir / f"valkey-idle-{poll_ms}"
    valkey = Valkey.start(valkey_dir)
    ctx = Context(workdir, valkey.url, sns, workdir / "events.jsonl", worker_idle_poll_ms=poll_ms)
    fleet = None
    producer = None
    try:
        fleet = scenario.start(ctx)
        producer = _producer(ctx)
        _publish_one(producer, sns, 1)
        time.sleep(SETTLE_S)  # the quiet is what is measured, not a wait for work
        pids = [*descendants(fleet.processes["workers"].pid), valkey.pid]
        before = {pid: cpu_s(pid) for pid in pids}
        time.sleep(IDLE_S)
        spent = {pid: cpu_s(pid) - before[pid] for pid in pids}
        latencies = []
        for number in range(PROBES):
            time.sleep(PROBE_GAP_S)
            latencies.append(_publish_one(producer, sns, number + 2))
    finally:
        if producer is not None:
            producer.close()
        if fleet is not None:
            stop_fleet(fleet)
        valkey.stop()
        sns.stop()
        shutil.rmtree(valkey_dir, ignore_errors=True)
    fleet_s = sum(seconds for pid, seconds in spent.items() if pid != valkey.pid)
    pickup_p50_s = percentile(latencies, 0.5)
    if pickup_p50_s is None:
        raise BenchError("no probe event was published")
    return {
        "idle_cpu_ms_per_s": {
            "fleet": round(fleet_s / IDLE_S * 1e3, 2),
            "valkey": round(spent[valkey.pid] / IDLE_S * 1e3, 2),
        },
        "fleet_processes": len(pids) - 1,
        "pickup_ms": {
            "p50": round(pickup_p50_s * 1e3, 1),
            "max": round(max(latencies) * 1e3, 1),
        },
        "probes": PROBES,
    }


def _producer(ctx: Context) -> Any:
    from relay.producer import Producer
    from relay.settings import Settings

    env = relay_env(ctx, "lean")
    return Producer(
        Settings(
            redis_url=env["RELAY_REDIS_URL"],
            namespace=env["RELAY_NAMESPACE"],
            sns_topic_arn=env["RELAY_SNS_TOPIC_ARN"],
        )
    )


def _publish_one(producer: Any, sns: LocalSns, published: int) -> float:
    """Send one event; seconds from its send until the local SNS accepted it."""
    sent = time.time()
    producer.send(b'{"type":"probe.idle"}', source="bench")
    wait_until(lambda: sns.published() >= published, PUBLISH_TIMEOUT_S, "the probe's publish")
    return sns.last_received_at() - sent


def print_report(document: dict[str, Any], console: Console) -> bool:
    """Print the idle results; True if the run failed (it never does once it got here)."""
    grid = Table(title=f"an idle fleet ({PROBES} events sent {PROBE_GAP_S:.0f} s apart)")
    for column in ("idle poll", "pickup p50 ms", "pickup max ms", "fleet CPU ms/s", "Valkey"):
        grid.add_column(column, justify="left" if column == "idle poll" else "right")
    for run in document["runs"]:
        grid.add_row(
            f"{run['poll_ms']:,} ms ({run['label']})",
            f"{run['pickup_ms']['p50']:.0f}",
            f"{run['pickup_ms']['max']:.0f}",
            f"{run['idle_cpu_ms_per_s']['fleet']:.1f}",
            f"{run['idle_cpu_ms_per_s']['valkey']:.1f}",
        )
    console.print(grid)
    base, relay = document["runs"]
    console.print(
        f"pickup p50 {base['pickup_ms']['p50'] / max(relay['pickup_ms']['p50'], 0.1):.1f}x "
        "faster at the relay's poll; CPU ms/s is per second of idle; the fleet is the supervisor, "
        "dramatiq's parent and its worker processes",
        highlight=False,
    )
    return False
