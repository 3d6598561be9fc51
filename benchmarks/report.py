"""The results: ratios against the baselines, a rich table, and the JSON document."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

HEADLINE_BASELINES = ("naive", "floor")


def add_ratios(results: list[dict[str, Any]]) -> None:
    """Give each result with baselines a `vs` entry: rate and CPU per event, as multiples."""
    by_name = {result["scenario"]: result for result in results if "rate_eps" in result}
    for result in by_name.values():
        vs = {}
        for name in result.get("baselines", ()):
            baseline = by_name.get(name)
            if baseline is None:
                continue
            mine, theirs = result["cpu_us_per_event"], baseline["cpu_us_per_event"]
            vs[name] = {
                "rate": round(result["rate_eps"] / baseline["rate_eps"], 2),
                "cpu_per_event": round(theirs["relay_total"] / mine["relay_total"], 2)
                if mine["relay_total"]
                else None,
            }
        if vs:
            result["vs"] = vs


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratios(vs: dict[str, Any] | None) -> str:
    if vs is None:
        return "-"
    return f"{vs['rate']:.2f}, {_num(vs['cpu_per_event'], 2)}"


def _peak(result: dict[str, Any], *roles: str) -> float | None:
    peaks = [p["peak_rss_mb"] for p in result["processes"] if p["role"] in roles]
    return max(peaks) if peaks else None


def table(results: list[dict[str, Any]], title: str) -> Table:
    grid = Table(title=title)
    columns = (
        "path",
        "events",
        "events/s",
        "CPU µs/event\nrelay (workers)",
        "Valkey\nµs/event",
        "p50 / p99 ms\n@ events/s",
        "peak RSS MB\nfeed (worker)",
        "x naive\nrate, CPU",
        "x floor\nrate, CPU",
    )
    for column in columns:
        grid.add_column(column, justify="left" if column == "path" else "right")
    for result in results:
        name = result["scenario"]
        client = result.get("sns_client")
        if client and client not in name:
            name += f" ({client})"
        if "error" in result:
            grid.add_row(name, "-", f"[red]failed: {result['error'][:70]}[/red]")
            continue
        cpu, latency = result["cpu_us_per_event"], result["latency"]
        vs = result.get("vs", {})
        vs_naive = vs.get("naive-http") or vs.get("naive")
        grid.add_row(
            name,
            f"{result['events']:,}",
            _num(result["rate_eps"]),
            f"{_num(cpu['relay_total'])} ({_num(cpu.get('workers'))})",
            _num(cpu.get("valkey")),
            f"{_num(latency['p50_ms'], 1)} / {_num(latency['p99_ms'], 1)} "
            f"@ {_num(latency['rate_eps'])}",
            f"{_num(_peak(result, 'front', 'producer'))} ({_num(_peak(result, 'workers'))})",
            _ratios(vs_naive),
            _ratios(vs.get("floor")),
        )
    return grid


def print_report(results: list[dict[str, Any]], title: str, console: Console) -> None:
    console.print(table(results, title))
    console.print(
        "events/s: first send until the local SNS accepted the last event, fed as fast as "
        "possible. CPU: producer (or HTTP front) + every worker process in that window. "
        "p50/p99: enqueue to publish, fed at half that rate. feed: the producer, or the HTTP "
        "front; worker: the largest worker process. x naive: events/s over the naive path's "
        "(naive-http for the HTTP paths), and the naive path's CPU per event over this one's; "
        "x floor: the same against the floor. Rates move with other load on the machine; CPU "
        "per event much less.",
        highlight=False,
    )
    for result in results:
        http = result.get("latency", {}).get("http_p99_ms")
        if http is not None:
            console.print(
                f"{result['scenario']}: HTTP answer p50 {_num(result['latency']['http_p50_ms'], 1)}"
                f" ms, p99 {_num(http, 1)} ms at {_num(result['latency']['rate_eps'])} req/s; "
                f"front accepted {_num(result.get('front_accepted_eps'))} ev/s in the flood; "
                f"workers at nice {result.get('worker_nice', 0)}",
                highlight=False,
            )


def main() -> None:
    """`python -m benchmarks.report PATH`: print the table of a results file again."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("path", type=Path)
    document = orjson.loads(parser.parse_args().path.read_bytes())
    console = Console(width=150)
    console.print(f"{document.get('command', '')}   ({document.get('at', '')})", highlight=False)
    print_report(document["results"], "sns-relay vs baselines", console)


if __name__ == "__main__":
    main()
