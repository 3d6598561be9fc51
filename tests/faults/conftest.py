"""Fixtures of the fault tests: a fresh rig per test, and the session's fault report.

Each test adds one `FaultResult`; at the end of the run the table is written to
`tests/faults/report.md` and printed in pytest's terminal summary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.report import REPORT_PATH, FaultResult, render
from tests.faults.rig import FaultRig

RESULTS = pytest.StashKey[list[FaultResult]]()


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., FaultRig]]:
    """Build the test's rig (`appendfsync` as asked); everything it started is stopped after."""
    rigs: list[FaultRig] = []

    def build(*, appendfsync: str = "everysec") -> FaultRig:
        rig = FaultRig(tmp_path, appendfsync=appendfsync)
        rigs.append(rig)
        return rig

    yield build
    for rig in rigs:
        rig.close()


@pytest.fixture
def rig(make_rig: Callable[..., FaultRig]) -> FaultRig:
    """A rig with the embedded default durability (AOF, appendfsync everysec)."""
    return make_rig()


@pytest.fixture
def fault_report(request: pytest.FixtureRequest) -> Callable[[FaultResult], None]:
    """Add this test's row to the session's fault report."""
    return request.config.stash.setdefault(RESULTS, []).append


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    results = config.stash.get(RESULTS, [])
    if not results:
        return
    text = render(results)
    REPORT_PATH.write_text(text)
    terminalreporter.section("fault report")
    terminalreporter.write_line(text)
    terminalreporter.write_line(f"written to {REPORT_PATH}")
