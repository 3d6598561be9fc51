"""Issue 3's HTTP comparison: each webhook front alone, no workers, under the same load.

The fronts: `naive-front` (benchmarks.naive_http: Starlette, the HMAC, `json.loads`,
`actor.send()` per event) and `ingest` (`python -m relay.ingest`), each against a fresh durable
Valkey, warmed up with WARMUP_REQUESTS. Each is measured in two ways:

- **Flood**: CONNECTIONS keep-alive connections sending one signed ~1.4 KB event per POST as
  fast as the front answers, for `seconds`: requests/s, the front's CPU µs per request, its
  peak RSS. Each front is flooded twice, in the order naive, ingest, ingest, naive
  (FLOOD_ORDER), and its figures are the two floods' together. The load comes from wrk
  (Debian's package) when it is installed, with
  wrk_events.lua; otherwise from benchmarks/http_load.py, which costs the machine more CPU.
  The generator's own CPU per request is reported too: on 2 cores it competes with the front.
- **Paced**: benchmarks/http_load.py at half the flood's rate (request k due at k/R, latency
  counted from then): the answer's p50 and p99. It runs against a fresh front and Valkey, as
  if workers had kept the queue drained; the flood's undrained backlog is not what a paced
  sender meets.

Every answer must be 2xx, and for the ingest every answered event must be in Redis.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import redis
from rich.console import Console
from rich.table import Table

from benchmarks.harness import (
    BenchError,
    Valkey,
    child_env,
    cpu_s,
    free_port,
    peak_rss_bytes,
    spawn,
    stop,
)
from benchmarks.scenarios import NAMESPACE, WEBHOOK_SECRET, wait_listening
from benchmarks.workload import read_events
from relay.keys import Keys

CONNECTIONS = 16
"""As issue 3 measured: 16 keep-alive connections, one event per POST as Stream sends them."""
PACED_FRACTION = 0.5
SIGNED_BODIES = 2_000
"""Distinct signed bodies wrk cycles through (each request still gets a fresh webhook id)."""
WARMUP_REQUESTS = 200
"""Sent to each front (flood and paced alike) before anything is measured."""
FALLBACK_REQUESTS_PER_S = 2_500
"""Without wrk, the flood is a fixed count: this many per second of `seconds`."""
WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_events.lua"
TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:bench-events"
"""The ingest needs no SNS; the naive front's environment names one it never calls."""
FRONTS = ("naive-front", "ingest")
FLOOD_ORDER = ("naive-front", "ingest", "ingest", "naive-front")
"""Each front is flooded twice, in this order (ABBA). The VM's speed drifts by 10 to 15 % over
minutes; with one flood each, the ratio took whatever drift lay between them, and with two
floods each placed symmetrically a steady drift cancels out of it."""
_DURATION_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run(events_file: Path, workdir: Path, seconds: float, paced_s: float) -> list[dict[str, Any]]:
    """Measure every front; a front that fails gets an `error` entry instead of figures."""
    signed = workdir / "signed-events.txt"
    write_signed(events_file, signed, SIGNED_BODIES)
    floods: dict[str, list[dict[str, Any]]] = {name: [] for name in FRONTS}
    errors: dict[str, str] = {}
    for name in FLOOD_ORDER:
        if name not in errors:
            try:
                floods[name].append(flood(name, events_file, signed, workdir, seconds))
            except (BenchError, RuntimeError, OSError) as exc:
                errors[name] = str(exc)
    results = []
    for name in FRONTS:
        try:
            if name in errors:
                raise BenchError(errors[name])
            results.append(summarize(name, floods[name], events_file, workdir, paced_s))
        except (BenchError, RuntimeError, OSError) as exc:
            results.append({"front": name, "error": str(exc)})
    by_name = {result["front"]: result for result in results}
    naive, ingest = by_name["naive-front"], by_name["ingest"]
    if "rate_rps" in naive and "rate_rps" in ingest:
        ingest["vs_naive"] = {
            "rate": round(ingest["rate_rps"] / naive["rate_rps"], 2),
            "cpu_per_request": round(naive["cpu_us_per_request"] / ingest["cpu_us_per_request"], 2),
        }
    return results


def write_signed(events_file: Path, out: Path, count: int) -> None:
    """`<hex signature> <body>` per line, for wrk_events.lua."""
    secret = WEBHOOK_SECRET.encode()
    with out.open("wb") as sink:
        for body in read_events(events_file, count):
            signature = hmac.digest(secret, body, hashlib.sha256).hex().encode()
            sink.write(signature + b" " + body + b"\n")


def flood(
    name: str, events_file: Path, signed: Path, workdir: Path, seconds: float
) -> dict[str, Any]:
    """One flood of `name` on a fresh front and Valkey: its counts, times and CPU seconds."""
    with serving(name, events_file, workdir, "flood") as (port, front, valkey):
        front_cpu, valkey_cpu = cpu_s(front.pid), cpu_s(valkey.pid)
        result = wrk_flood(port, signed, seconds) if wrk_available() else None
        if result is None:
            count = int(seconds * FALLBACK_REQUESTS_PER_S)
            report = paced_load(port, events_file, workdir, f"{name}-flood", count, None)
            _check_statuses(name, report)
            result = {
                "generator": "benchmarks/http_load.py",
                "requests": count,
                "ok": count,
                "elapsed_s": report["last_send"] - report["first_send"],
                "p50_ms": report["http_p50_s"] * 1e3,
                "p99_ms": report["http_p99_s"] * 1e3,
                "generator_cpu_s": report["cpu_s"],
            }
        result["front_cpu_s"] = cpu_s(front.pid) - front_cpu
        result["valkey_cpu_s"] = cpu_s(valkey.pid) - valkey_cpu
        result["peak_rss_mb"] = peak_rss_bytes(front.pid) / 2**20
        stored = _stored(name, valkey.url)
        if name == "ingest" and stored < result["ok"] + WARMUP_REQUESTS:
            raise BenchError(f"{name}: {result['ok']} answered 2xx but only {stored} stored")
        result["stored_events"] = stored
    return result


def summarize(
    name: str, floods: list[dict[str, Any]], events_file: Path, workdir: Path, paced_s: float
) -> dict[str, Any]:
    """The front's floods taken together, and its paced phase at half their rate."""
    requests = sum(result["requests"] for result in floods)
    elapsed_s = sum(result["elapsed_s"] for result in floods)
    rate = requests / elapsed_s
    # The paced phase gets a fresh front and Valkey, as if workers had kept up: a flood leaves
    # its whole backlog (no workers here) and an AOF of 100-170 MB, and Valkey's forks to
    # rewrite it, 8-10 ms each at that size, stalled answers in the paced phase that a drained
    # queue never sees.
    with serving(name, events_file, workdir, "paced") as (port, _front, _valkey):
        paced_count = max(100, int(rate * PACED_FRACTION * paced_s))
        paced = paced_load(
            port, events_file, workdir, f"{name}-paced", paced_count, rate * PACED_FRACTION
        )
        _check_statuses(name, paced)
    return {
        "front": name,
        "connections": CONNECTIONS,
        "generator": floods[0]["generator"],
        "flood_rates_rps": [round(r["requests"] / r["elapsed_s"], 1) for r in floods],
        "requests": requests,
        "elapsed_s": round(elapsed_s, 2),
        "rate_rps": round(rate, 1),
        # The slowest flood's percentiles: a mean of percentiles would be no percentile at all.
        "flood_p50_ms": round(max(result["p50_ms"] for result in floods), 2),
        "flood_p99_ms": round(max(result["p99_ms"] for result in floods), 2),
        "cpu_us_per_request": _per_request_us(floods, "front_cpu_s", requests),
        "valkey_cpu_us_per_request": _per_request_us(floods, "valkey_cpu_s", requests),
        "generator_cpu_us_per_request": _per_request_us(floods, "generator_cpu_s", requests),
        "peak_rss_mb": round(max(result["peak_rss_mb"] for result in floods), 1),
        "stored_events": sum(result["stored_events"] for result in floods),
        "paced_rps": round(rate * PACED_FRACTION, 1),
        "paced_p50_ms": round(paced["http_p50_s"] * 1e3, 2),
        "paced_p99_ms": round(paced["http_p99_s"] * 1e3, 2),
    }


def _per_request_us(floods: list[dict[str, Any]], key: str, requests: int) -> float:
    return round(float(sum(result[key] for result in floods)) / requests * 1e6, 1)


@contextmanager
def serving(
    name: str, events_file: Path, workdir: Path, phase: str, checkout: Path | None = None
) -> Iterator[tuple[int, subprocess.Popen[bytes], Valkey]]:
    """The front on a free port against a fresh durable Valkey, warmed up; both stopped after.

    `checkout`: a source tree whose `relay` the front imports instead of this one's.
    """
    valkey_dir = workdir / f"valkey-{name}-{phase}"
    valkey = Valkey.start(valkey_dir)
    port = free_port()
    front = start_front(name, port, valkey.url, workdir, f"front-{name}-{phase}.log", checkout)
    try:
        wait_listening(port, front)
        warm = paced_load(
            port, events_file, workdir, f"{name}-{phase}-warmup", WARMUP_REQUESTS, None
        )
        _check_statuses(name, warm)
        yield port, front, valkey
    finally:
        stop(front)
        valkey.stop()
        shutil.rmtree(valkey_dir, ignore_errors=True)


def start_front(
    name: str,
    port: int,
    redis_url: str,
    workdir: Path,
    log_name: str,
    checkout: Path | None = None,
) -> subprocess.Popen[bytes]:
    env = {"PYTHONPATH": str(checkout)} if checkout is not None else {}
    if name == "ingest":
        env |= {
            "RELAY_REDIS_URL": redis_url,
            "RELAY_NAMESPACE": NAMESPACE,
            "RELAY_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
        argv = ["-m", "relay.ingest", "--port", str(port), "--log-level", "warning"]
    else:
        env |= {
            "BENCH_REDIS_URL": redis_url,
            "BENCH_TOPIC_ARN": TOPIC_ARN,
            "BENCH_SNS_URL": "http://127.0.0.1:9",  # never called: no workers run here
            "RELAY_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
        argv = ["-m", "benchmarks.naive_http", "--port", str(port)]
    return spawn(argv, child_env(env), workdir, log_name)


def wrk_flood(port: int, signed: Path, seconds: float) -> dict[str, Any]:
    """wrk with one thread (a second would take a core from the front on this machine)."""
    argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", "--latency"]
    argv += ["-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}/events", "--", str(signed)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    output = process.stdout.read().decode(errors="replace")
    # wait4, not wait: its resource usage is wrk's own CPU, which competes with the front.
    _pid, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise BenchError(f"wrk failed ({process.returncode}):\n{output}")
    found = re.search(r"(\d+) requests in ([\d.]+)(\w+)", output)
    if found is None:
        raise BenchError(f"wrk printed no request count:\n{output}")
    requests = int(found.group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    if bad or errors:
        raise BenchError(f"wrk saw errors or non-2xx answers:\n{output}")
    return {
        "generator": "wrk",
        "requests": requests,
        "ok": requests,
        "elapsed_s": float(found.group(2)) * _DURATION_UNITS_S[found.group(3)],
        "p50_ms": _wrk_percentile(output, "50") * 1e3,
        "p99_ms": _wrk_percentile(output, "99") * 1e3,
        "generator_cpu_s": usage.ru_utime + usage.ru_stime,
    }


def _wrk_percentile(output: str, which: str) -> float:
    found = re.search(rf"^\s+{which}%\s+([\d.]+)(us|ms|s|m)\s*$", output, flags=re.MULTILINE)
    if found is None:
        raise BenchError(f"wrk printed no {which}th percentile:\n{output}")
    return float(found.group(1)) * _DURATION_UNITS_S[found.group(2)]


def paced_load(
    port: int, events_file: Path, workdir: Path, tag: str, count: int, rate: float | None
) -> dict[str, Any]:
    """benchmarks/http_load.py over `count` events (at `rate` per second, or flat out)."""
    out = workdir / f"http-{tag}.json"
    argv = ["-m", "benchmarks.http_load", "--port", str(port), "--events-file", str(events_file)]
    argv += ["--count", str(count), "--out", str(out), "--connections", str(CONNECTIONS)]
    if rate:
        argv += ["--rate", f"{rate:.1f}"]
    env = child_env({"RELAY_WEBHOOK_SECRET": WEBHOOK_SECRET})
    process = spawn(argv, env, workdir, f"http-{tag}.log")
    if process.wait() != 0:
        raise BenchError(f"the load generator failed ({tag}); see {workdir}")
    report: dict[str, Any] = orjson.loads(out.read_bytes())
    return report


def _check_statuses(name: str, report: dict[str, Any]) -> None:
    refused = {k: n for k, n in report.get("statuses", {}).items() if not k.startswith("2")}
    if refused:
        raise BenchError(f"{name}: requests refused by status: {refused}")


def _stored(name: str, redis_url: str) -> int:
    """Events stored so far: the relay's enqueued total, or the naive queue's length."""
    client = redis.Redis.from_url(redis_url)
    try:
        if name == "ingest":
            return int(client.hget(Keys(NAMESPACE).totals, "enqueued") or 0)
        return int(client.llen("dramatiq:naive-events"))
    finally:
        client.close()


def print_report(results: list[dict[str, Any]], console: Console) -> None:
    grid = Table(
        title=f"HTTP fronts alone, {CONNECTIONS} keep-alive connections, one event per POST"
    )
    for column in (
        "front",
        "requests/s (each flood)",
        "CPU µs/req: front (Valkey, generator)",
        "flood p50 / p99 ms",
        "paced p50 / p99 ms @ req/s",
        "peak RSS MB",
        "x naive: rate, CPU",
    ):
        grid.add_column(column, justify="left" if column == "front" else "right")
    for result in results:
        if "error" in result:
            grid.add_row(result["front"], f"[red]{result['error']}[/red]", *[""] * 5)
            continue
        vs = result.get("vs_naive")
        grid.add_row(
            result["front"],
            f"{result['rate_rps']:,.0f} ("
            + ", ".join(f"{rate:,.0f}" for rate in result["flood_rates_rps"])
            + ")",
            f"{result['cpu_us_per_request']:,.0f} ({result['valkey_cpu_us_per_request']:,.0f}, "
            f"{result['generator_cpu_us_per_request']:,.0f})",
            f"{result['flood_p50_ms']:.1f} / {result['flood_p99_ms']:.1f}",
            f"{result['paced_p50_ms']:.1f} / {result['paced_p99_ms']:.1f} "
            f"@ {result['paced_rps']:,.0f}",
            f"{result['peak_rss_mb']:.0f}",
            f"{vs['rate']:.2f}, {vs['cpu_per_request']:.2f}" if vs else "-",
        )
    console.print(grid)
    generators = {str(result["generator"]) for result in results if result.get("generator")}
    console.print(
        f"Load: {', '.join(sorted(generators))} (flood); benchmarks/http_load.py at half the "
        "flood rate (paced). No workers run: this is the front's own work, each event durable "
        "in Redis before its answer.",
        highlight=False,
    )
