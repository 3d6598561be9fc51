"""CPU per PublishBatch of 10 Stream-shaped events: boto3 against the lean path, and the body
encoders alone (urllib as botocore uses it, yarl's public query builder, the lean encoder).

Run: `.venv/bin/python -m benchmarks.publish_encode [--events N] [--rounds R]`. The local SNS
runs in its own process, so the CPU measured here is the client's alone.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import socket
import statistics
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

import yarl
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from relay import demo_events
from relay.event import make_event
from relay.local_sns import LocalSnsClient, serve
from relay.settings import Settings
from workers import sns_lean
from workers.sns import BatchEntry, SnsGateway, make_client
from workers.sns_lean import (
    CONTENT_TYPE,
    QUOTER_NAME,
    LeanSnsGateway,
    encode_publish_batch,
    make_lean_gateway,
    parse_publish_batch,
)

TOPIC_NAME = "bench"
BATCH_SIZE = 10
WARMUP_BATCHES = 20


def stream_batches(events: int, seed: int) -> list[list[BatchEntry]]:
    """`events` Stream-shaped events as entries, in batches of 10, as the publisher makes them."""
    made = [
        make_event(body) for body in demo_events.generate(events, seed=seed, oversize_every=None)
    ]
    entries = [BatchEntry(str(n % BATCH_SIZE), e.body, e.attributes) for n, e in enumerate(made)]
    return [entries[i : i + BATCH_SIZE] for i in range(0, len(entries), BATCH_SIZE)]


def query_pairs(topic_arn: str, entries: Sequence[BatchEntry]) -> list[tuple[str, str]]:
    """The parameters botocore's query serializer makes for SnsGateway's request, in order."""
    pairs = [("Action", "PublishBatch"), ("Version", "2010-03-31"), ("TopicArn", topic_arn)]
    for number, entry in enumerate(entries, 1):
        prefix = f"PublishBatchRequestEntries.member.{number}"
        pairs += [(f"{prefix}.Id", entry.id), (f"{prefix}.Message", entry.body)]
        for index, (name, value) in enumerate(entry.attributes.items(), 1):
            attribute = f"{prefix}.MessageAttributes.entry.{index}"
            pairs += [
                (f"{attribute}.Name", name),
                (f"{attribute}.Value.DataType", "String"),
                (f"{attribute}.Value.StringValue", value),
            ]
    return pairs


def encode_urllib(topic_arn: str, entries: Sequence[BatchEntry]) -> bytes:
    """As botocore's AWSRequestPreparer does it: urlencode over UTF-8 pairs."""
    pairs = [(k.encode(), v.encode()) for k, v in query_pairs(topic_arn, entries)]
    return urllib.parse.urlencode(pairs, doseq=True).encode()


def encode_yarl_public(topic_arn: str, entries: Sequence[BatchEntry]) -> bytes:
    """yarl's public query builder (leaves /?:@!$'()*, literal: parses the same, other bytes)."""
    return yarl.URL.build(query=query_pairs(topic_arn, entries)).raw_query_string.encode()


def cpu_us_per_call(
    call: Callable[[Sequence[BatchEntry]], Any],
    batches: list[list[BatchEntry]],
    rounds: int,
    clock: Callable[[], float],
) -> tuple[float, float]:
    """(median CPU µs per call over `rounds` passes, wall µs per call of the median pass)."""
    for batch in batches[:WARMUP_BATCHES]:
        call(batch)
    cpu: list[float] = []
    wall: list[float] = []
    for _ in range(rounds):
        cpu_start, wall_start = clock(), time.perf_counter()
        for batch in batches:
            call(batch)
        cpu.append((clock() - cpu_start) / len(batches) * 1e6)
        wall.append((time.perf_counter() - wall_start) / len(batches) * 1e6)
    return statistics.median(cpu), statistics.median(wall)


def start_local_sns(timeout_s: float = 20.0) -> tuple[multiprocessing.process.BaseProcess, str]:
    """The local SNS in a process of its own, so its CPU is not counted; returns (process, url)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    process = multiprocessing.get_context("spawn").Process(
        target=serve, kwargs={"port": port}, daemon=True
    )
    process.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while not LocalSnsClient(url).healthy():
        if time.monotonic() > deadline or not process.is_alive():
            raise RuntimeError(f"the local SNS did not start on {url}")
        time.sleep(0.05)
    return process, url


def lean_stages(
    lean: LeanSnsGateway, topic_arn: str, batches: list[list[BatchEntry]], rounds: int
) -> dict[str, float]:
    """CPU µs per batch of each step of the lean path (its internals, for this measurement only)."""
    bodies = [encode_publish_batch(topic_arn, b) for b in batches]
    credentials = lean._credentials
    assert credentials is not None

    def sign(body: bytes) -> dict[str, str]:
        headers = {"Content-Type": CONTENT_TYPE, "Host": lean._host}
        request = AWSRequest(method="POST", url=lean.url, data=body, headers=headers)
        SigV4Auth(credentials.get_frozen_credentials(), "sns", lean._region).add_auth(request)
        return dict(request.headers.items())

    signed = {id(body): sign(body) for body in bodies}

    def send(body: bytes) -> bytes:
        return lean.transport.post(lean._target, signed[id(body)], body).body

    replies = {id(batch): send(body) for batch, body in zip(batches, bodies, strict=True)}
    by_batch = dict(zip(map(id, batches), bodies, strict=True))
    steps: dict[str, Callable[[Sequence[BatchEntry]], Any]] = {
        "encode": lambda b: encode_publish_batch(topic_arn, b),
        "sign (botocore SigV4)": lambda b: sign(by_batch[id(b)]),
        "send + receive": lambda b: send(by_batch[id(b)]),
        "parse the answer": lambda b: parse_publish_batch(replies[id(b)], b),
    }
    return {
        name: cpu_us_per_call(step, batches, rounds, time.thread_time)[0]
        for name, step in steps.items()
    }


def measure_publish(
    batches: list[list[BatchEntry]], rounds: int
) -> tuple[dict[str, tuple[float, float]], dict[str, float]]:
    """(CPU and wall µs per batch of boto3 and lean, the lean steps), against a local SNS."""
    process, url = start_local_sns()
    try:
        client = LocalSnsClient(url)
        topic_arn = client.create_topic(TOPIC_NAME)
        settings = Settings(
            _env_file=None,
            sns_topic_arn=topic_arn,
            sns_key="AKIABENCHMARK0000000",
            sns_secret="benchmark-secret",  # noqa: S106 (a dummy key: the local SNS checks none)
            sns_endpoint_url=url,
        )
        boto = SnsGateway(make_client(settings))
        lean = make_lean_gateway(settings)
        assert isinstance(lean, LeanSnsGateway)
        calls = {
            "boto3 publish_batch": lambda b: boto.publish_batch(topic_arn, b),
            "lean publish_batch": lambda b: lean.publish_batch(topic_arn, b),
        }
        published = {
            name: cpu_us_per_call(call, batches, rounds, time.thread_time)
            for name, call in calls.items()
        }
        stages = lean_stages(lean, topic_arn, batches, rounds)
        stats = client.stats()
        assert not stats["rejected"], stats
        return published, stages
    finally:
        process.terminate()
        process.join(10)


def encode_yarl_bare(topic_arn: str, entries: Sequence[BatchEntry]) -> bytes:
    """yarl's C quoter alone: no sub-delims escaped, no surrogate check (the lean floor)."""
    quote = sns_lean._QUOTER
    pairs = query_pairs(topic_arn, entries)
    return "&".join([f"{key}={quote(value)}" for key, value in pairs]).encode()


def measure_encoders(
    batches: list[list[BatchEntry]], rounds: int
) -> dict[str, tuple[float, bool, bool]]:
    """CPU µs per batch of each encoder, and whether it parses to, and is, botocore's body."""
    topic_arn = f"arn:aws:sns:us-east-1:123456789012:{TOPIC_NAME}"
    encoders = {
        "urllib (botocore's)": encode_urllib,
        "yarl URL.build (public)": encode_yarl_public,
        "yarl C quoter, bare": encode_yarl_bare,
        "lean encoder": encode_publish_batch,
    }
    reference = [encode_urllib(topic_arn, b) for b in batches]
    encoded = {}
    for name, encode in encoders.items():
        bodies = [encode(topic_arn, b) for b in batches]
        same_params = all(
            urllib.parse.parse_qs(ours.decode()) == urllib.parse.parse_qs(theirs.decode())
            for ours, theirs in zip(bodies, reference, strict=True)
        )
        cpu, _ = cpu_us_per_call(
            functools.partial(encode, topic_arn), batches, rounds, time.process_time
        )
        encoded[name] = (cpu, same_params, bodies == reference)
    return encoded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    batches = stream_batches(args.events, args.seed)
    sizes = sorted(len(e.body.encode()) for batch in batches for e in batch)
    attributes = statistics.mean(len(e.attributes) for batch in batches for e in batch)
    print(
        f"{len(batches)} batches of {BATCH_SIZE} Stream-shaped events; body bytes median "
        f"{sizes[len(sizes) // 2]}, mean {statistics.mean(sizes):.0f}; {attributes:.1f} "
        f"attributes each; lean quoter: {QUOTER_NAME}; median of {args.rounds} rounds"
    )
    published, stages = measure_publish(batches, args.rounds)
    encoded = measure_encoders(batches, args.rounds)

    base = published["boto3 publish_batch"][0]
    print(f"\n{'PublishBatch to the local SNS':28} {'CPU µs/batch':>12} {'µs/msg':>8} "
          f"{'wall µs/batch':>14} {'vs boto3':>9}")  # fmt: skip
    for name, (cpu, wall) in published.items():
        print(f"{name:28} {cpu:12.0f} {cpu / BATCH_SIZE:8.1f} {wall:14.0f} {base / cpu:8.1f}x")
    for name, cpu in stages.items():
        print(f"  lean: {name:22} {cpu:12.0f} {cpu / BATCH_SIZE:8.1f}")
    base = encoded["urllib (botocore's)"][0]
    print(f"\n{'Encode the body only':28} {'CPU µs/batch':>12} {'µs/msg':>8} {'params':>7} "
          f"{'bytes':>6} {'vs urllib':>10}")  # fmt: skip
    for name, (cpu, same_params, same_bytes) in encoded.items():
        print(
            f"{name:28} {cpu:12.0f} {cpu / BATCH_SIZE:8.1f} {'same' if same_params else 'DIFF':>7} "
            f"{'same' if same_bytes else 'other':>6} {base / cpu:9.1f}x"
        )


if __name__ == "__main__":
    main()
