"""The stream every path is fed: Stream-shaped bodies in a file, and how fast they are handed over.

Bodies are generated once per run (seeded) and read back line by line, so a feeding process
spends nothing on generating them and holds none of them in memory. A body is compact JSON,
so it never contains a newline.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

from relay import demo_events

TICK_S = 0.005
"""A paced feeder hands over what is due every 5 ms: a producer calling send_many that often."""
FLOOD_CHUNK_EVENTS = 1_000
"""Events per send_many call (or per floor pipeline) when feeding as fast as possible; the
`relay send` command's chunk."""


def write_events(path: Path, count: int, seed: int) -> dict[str, float]:
    """Write `count` Stream-shaped bodies (no oversize ones), one per line; return their sizes."""
    sizes = []
    with path.open("wb") as out:
        for body in demo_events.generate(count, seed=seed, oversize_every=None):
            out.write(body + b"\n")
            sizes.append(len(body))
    return {
        "count": count,
        "median_bytes": statistics.median(sizes) if sizes else 0,
        "mean_bytes": statistics.fmean(sizes) if sizes else 0,
        "max_bytes": max(sizes, default=0),
    }


def read_events(path: Path, count: int) -> Iterator[bytes]:
    """The first `count` bodies of the file, without their newline."""
    with path.open("rb") as source:
        for line in itertools.islice(source, count):
            yield line[:-1]


def chunks(bodies: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    while chunk := list(itertools.islice(bodies, size)):
        yield chunk


def paced(bodies: Iterator[bytes], rate_eps: float) -> Iterator[list[bytes]]:
    """The bodies in groups, each yielded when it is due at `rate_eps` (checked every TICK_S)."""
    started = time.monotonic()
    handed = 0
    while True:
        due = int((time.monotonic() - started) * rate_eps) - handed
        if due > 0:
            group = list(itertools.islice(bodies, due))
            if not group:
                return
            handed += len(group)
            yield group
        time.sleep(TICK_S)  # the pacing itself, not a wait for work


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def dump(path: Path, document: object) -> None:
    path.write_bytes(orjson.dumps(document))
