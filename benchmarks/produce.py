"""A producer process: feeds the events file into one path, then reports what it cost.

`python -m benchmarks.produce {relay,naive,floor} --events-file F --count N [--rate R] --out J`

Without `--rate` it sends as fast as it can (`send_many` and floor pipelines in chunks of
FLOOD_CHUNK_EVENTS, naive one `actor.send` per event). The report holds the first and last
send times, its own CPU and peak RSS (read right before it exits, the send loop's CPU only),
and with `--record-sends` every event id with the time it was handed over.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from benchmarks.workload import FLOOD_CHUNK_EVENTS, chunks, dump, paced, read_events

Sends = list[tuple[str, float]]
Feeder = Callable[[list[bytes], float, Sends], None]


def relay_feeder() -> Feeder:
    from relay.producer import Producer

    producer = Producer.from_env()

    def feed(group: list[bytes], now: float, sends: Sends) -> None:
        report = producer.send_many(group, source="bench")
        if report.enqueued != len(group):
            raise SystemExit(f"{len(group) - report.enqueued} events not enqueued: {report}")
        sends.extend((outcome.event_id or "", now) for outcome in report.outcomes)

    return feed


def naive_feeder() -> Feeder:
    from benchmarks.naive_actor import publish

    def feed(group: list[bytes], now: float, sends: Sends) -> None:
        for body in group:
            event_id = uuid.uuid4().hex
            publish.send(event_id, body.decode())
            sends.append((event_id, now))

    return feed


def floor_feeder() -> Feeder:
    import redis

    from benchmarks.floor import QUEUE_KEY

    client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])

    def feed(group: list[bytes], now: float, sends: Sends) -> None:
        pipe = client.pipeline(transaction=False)
        ids = [uuid.uuid4().hex for _ in group]
        pipe.rpush(
            QUEUE_KEY,
            *(f"{event_id} ".encode() + body for event_id, body in zip(ids, group, strict=True)),
        )
        pipe.execute()
        sends.extend((event_id, now) for event_id in ids)

    return feed


FEEDERS = {"relay": relay_feeder, "naive": naive_feeder, "floor": floor_feeder}


def groups(mode: str, bodies: Iterator[bytes], rate_eps: float | None) -> Iterator[list[bytes]]:
    if rate_eps:
        return paced(bodies, rate_eps)
    return chunks(bodies, 1 if mode == "naive" else FLOOD_CHUNK_EVENTS)


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=sorted(FEEDERS))
    parser.add_argument("--events-file", type=Path, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument(
        "--rate", type=float, default=None, help="events per second; default: flood"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--record-sends", action="store_true")
    args = parser.parse_args()

    feed = FEEDERS[args.mode]()
    sends: Sends = []
    bodies = read_events(args.events_file, args.count)
    cpu_before, first = cpu_s(), time.time()
    sent = 0
    for group in groups(args.mode, bodies, args.rate):
        feed(group, time.time(), sends)
        sent += len(group)
    last = time.time()
    cpu_used = cpu_s() - cpu_before
    from benchmarks.harness import peak_rss_bytes

    dump(
        args.out,
        {
            "sent": sent,
            "first_send": first,
            "last_send": last,
            "cpu_s": cpu_used,
            "peak_rss_bytes": peak_rss_bytes(os.getpid()),
            "sends": sends if args.record_sends else [],
        },
    )


if __name__ == "__main__":
    main()
