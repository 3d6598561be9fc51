"""CI's smoke check of `make bench`: the quick run completes on every path. No thresholds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
QUICK_RUN_TIMEOUT_S = 240
"""The quick run takes under a minute on an idle 2-core machine; CI machines are busier."""


@pytest.mark.slow
@pytest.mark.timeout(QUICK_RUN_TIMEOUT_S + 30)
def test_quick_benchmark_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    """`python -m benchmarks.run --quick` measures every path, prints its table, writes JSON."""
    # Given: an environment without RELAY_* settings, and a JSON path of the test's own
    env = {name: value for name, value in os.environ.items() if not name.startswith("RELAY_")}
    out = tmp_path / "bench.json"

    # When: the quick benchmark runs
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--json", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=QUICK_RUN_TIMEOUT_S,
        check=False,
    )

    # Then: it succeeds, prints the table, and every path has a measured rate in the JSON
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "sns-relay vs baselines" in run.stdout
    document = orjson.loads(out.read_bytes())
    results = {result["scenario"]: result for result in document["results"]}
    assert set(results) >= {"naive", "floor", "relay-lean", "relay-boto3", "relay-http"}
    for result in results.values():
        assert result["rate_eps"] > 0, result
        assert result["latency"]["p99_ms"] is not None, result
    # and the HTTP fronts alone, each event stored before its answer
    assert "HTTP fronts alone" in run.stdout
    fronts = {front["front"]: front for front in document["fronts"]}
    assert set(fronts) == {"naive-front", "ingest"}
    for front in fronts.values():
        assert front["rate_rps"] > 0, front
        assert front["stored_events"] >= front["requests"], front
        # each front flooded twice (naive, ingest, ingest, naive), its rate taken over both
        assert len(front["flood_rates_rps"]) == 2, front
        assert min(front["flood_rates_rps"]) <= front["rate_rps"] <= max(front["flood_rates_rps"])
    assert fronts["ingest"]["vs_naive"]["rate"] > 0
