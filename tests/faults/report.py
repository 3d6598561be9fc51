"""The fault report: one row per fault test, written to `tests/faults/report.md` after a run.

Rows are collected by `tests/faults/conftest.py` and rendered as the markdown table the README's
reliability section shows.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.faults.load import LoadProducer
from tests.faults.rig import Accounting

REPORT_PATH = Path(__file__).with_name("report.md")

FAULT_ORDER = (
    "kill -9 of a worker process, 5 times",
    "Redis SIGKILLed and restarted (AOF)",
    "worker-Redis TCP connections cut 5 s",
    "SNS throttling storm",
    "SNS down 60 s (refused, 500, 503)",
    "Redis full (maxmemory) while SNS is down",
    "credentials rejected, then fixed",
    "malformed, oversize and poison inputs",
    "SIGTERM while the breaker holds bundles",
    "Ctrl-C while bundles are being published",
)
"""The issue's order, which the table keeps whatever order the tests ran in."""


@dataclass(frozen=True)
class FaultResult:
    """What one fault test measured."""

    fault: str
    sent: int
    acknowledged: int
    delivered: int
    duplicates: int
    dropped: int
    dead_lettered: int
    producer_errors: int
    recover_s: float
    notes: str = ""

    @classmethod
    def of(
        cls,
        fault: str,
        accounting: Accounting,
        loads: Sequence[LoadProducer],
        recover_s: float,
        notes: str = "",
    ) -> FaultResult:
        assert fault in FAULT_ORDER, fault
        return cls(
            fault=fault,
            sent=sum(load.sent for load in loads),
            acknowledged=len(accounting.acknowledged),
            delivered=len(set(accounting.delivered) & accounting.acknowledged),
            duplicates=accounting.duplicates,
            dropped=len(accounting.dropped),
            dead_lettered=len(accounting.dead_lettered),
            producer_errors=sum(len(load.failures) for load in loads),
            recover_s=recover_s,
            notes=notes,
        )


COLUMNS = (
    "fault",
    "sent",
    "acknowledged",
    "delivered (distinct)",
    "duplicates",
    "dropped",
    "dead-lettered",
    "producer errors",
    "time to recover",
    "notes",
)


def render(results: Sequence[FaultResult]) -> str:
    """The report as markdown: a heading, how it was made, and the table."""
    ordered = sorted(results, key=lambda result: FAULT_ORDER.index(result.fault))
    lines = [
        "# Fault report",
        "",
        f"`make faults` on {time.strftime('%Y-%m-%d %H:%M')}, {platform.system()} "
        f"{platform.machine()}, Python {platform.python_version()}: real Valkey (AOF), "
        "`relay worker -p 2 -t 4`, the local SNS. Every acknowledged event was published, "
        'dropped or dead-lettered in every row; "delivered" counts acknowledged events the '
        'topic received, "duplicates" the extra copies it received. "time to recover": from '
        "the end of the fault until every event acknowledged by then was published (the "
        "notes say where a row measures it otherwise).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "| " + " | ".join("---" for _ in COLUMNS) + " |",
    ]
    for r in ordered:
        cells = (
            r.fault,
            f"{r.sent:,}",
            f"{r.acknowledged:,}",
            f"{r.delivered:,}",
            f"{r.duplicates:,}",
            f"{r.dropped:,}",
            f"{r.dead_lettered:,}",
            f"{r.producer_errors:,}",
            f"{r.recover_s:.1f} s",
            r.notes,
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
