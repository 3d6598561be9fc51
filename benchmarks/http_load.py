"""A low-overhead HTTP load generator: signed `POST /events` over keep-alive asyncio streams.

`python -m benchmarks.http_load --port P --events-file F --count N [--connections 16]
[--rate R] --out J`. One event per request, as Stream sends them: `X-Signature` is the
HMAC-SHA256 of the body keyed with RELAY_WEBHOOK_SECRET, `X-Webhook-Id` a fresh id (which the
ingest uses as the event id). Requests are built and signed before the clock starts, so the
generator's own CPU goes to the sockets. With `--rate`, request k is due at k/R seconds and its
latency counts from then (so a slow server cannot hide its queueing: no coordinated omission).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import hmac
import os
import resource
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

from benchmarks.harness import peak_rss_bytes
from benchmarks.workload import dump, percentile, read_events

DEFAULT_CONNECTIONS = 16
CONNECT_TIMEOUT_S = 5.0
ANSWER_TIMEOUT_S = 30.0


def build_requests(port: int, bodies: list[bytes], secret: bytes) -> tuple[list[str], list[bytes]]:
    """The event ids and the raw HTTP requests that carry them."""
    ids, requests = [], []
    for body in bodies:
        event_id = uuid.uuid4().hex
        signature = hmac.digest(secret, body, hashlib.sha256).hex()
        head = (
            f"POST /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"X-Signature: {signature}\r\nX-Webhook-Id: {event_id}\r\n\r\n"
        )
        ids.append(event_id)
        requests.append(head.encode() + body)
    return ids, requests


@dataclass
class Load:
    """The shared schedule and what the connections observed."""

    requests: list[bytes]
    rate_eps: float | None
    started: float = 0.0
    next_index: int = 0
    sent_at: list[float] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    last_answer: float = 0.0

    def take(self) -> int | None:
        index = self.next_index
        if index >= len(self.requests):
            return None
        self.next_index += 1
        return index


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(port: int) -> Stream:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), CONNECT_TIMEOUT_S)


async def connection(port: int, load: Load, stream: Stream) -> None:
    """One keep-alive connection sending requests one after another until none are left."""
    loop = asyncio.get_running_loop()
    reader, writer = stream
    try:
        while (index := load.take()) is not None:
            if load.rate_eps:
                due = load.started + index / load.rate_eps
                if (delay := due - loop.time()) > 0:
                    await asyncio.sleep(delay)
            else:
                due = loop.time()
            load.sent_at[index] = time.time()
            writer.write(load.requests[index])
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ANSWER_TIMEOUT_S)
            lowered = head.lower()
            start = lowered.find(b"content-length:")
            length = int(lowered[start + 15 : lowered.find(b"\r\n", start)]) if start >= 0 else 0
            await reader.readexactly(length)
            load.latencies_s.append(loop.time() - due)
            load.statuses[int(head[9:12])] += 1
            if b"connection: close" in lowered:
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
        load.last_answer = max(load.last_answer, time.time())
    finally:
        writer.close()


async def drive(port: int, load: Load, connections: int) -> None:
    # Connected first, as a webhook sender's keep-alive connections are: the clock measures
    # answers, not the handshakes before the first request.
    streams = await asyncio.gather(*(connect(port) for _ in range(connections)))
    load.started = asyncio.get_running_loop().time()
    await asyncio.gather(*(connection(port, load, stream) for stream in streams))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--events-file", type=Path, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS)
    parser.add_argument("--rate", type=float, default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--record-sends", action="store_true")
    args = parser.parse_args()

    secret = os.environ["RELAY_WEBHOOK_SECRET"].split(",")[0].encode()
    ids, requests = build_requests(
        args.port, list(read_events(args.events_file, args.count)), secret
    )
    load = Load(requests, args.rate, sent_at=[0.0] * len(requests))
    # Everything made so far (the imports, the requests) lives until the end: frozen, the
    # collector's full passes skip it. Unfrozen, a full pass took 14 to 32 ms here, and one
    # falling inside the paced phase held up every connection: each request in flight gained
    # that much latency, which the ingest never caused (its p99 read 15 to 31 ms in those runs).
    gc.collect()
    gc.freeze()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    uvloop.run(drive(args.port, load, args.connections))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    dump(
        args.out,
        {
            "sent": len(requests),
            "first_send": min(load.sent_at, default=0.0),
            "last_send": load.last_answer,
            "cpu_s": usage.ru_utime + usage.ru_stime - cpu_before,
            "peak_rss_bytes": peak_rss_bytes(os.getpid()),
            "statuses": {str(status): n for status, n in load.statuses.items()},
            "http_p50_s": percentile(load.latencies_s, 0.50),
            "http_p99_s": percentile(load.latencies_s, 0.99),
            "sends": list(zip(ids, load.sent_at, strict=True)) if args.record_sends else [],
        },
    )


if __name__ == "__main__":
    main()
