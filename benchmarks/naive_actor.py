"""The naive relay, as a user writes it in an afternoon: one dramatiq message and one boto3
`publish` per event, on a plain RedisBroker. Run with `dramatiq benchmarks.naive_actor -p 2 -t 8`.

Configured from BENCH_REDIS_URL, BENCH_TOPIC_ARN and BENCH_SNS_URL (the local SNS).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"])  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)
TOPIC_ARN = os.environ.get("BENCH_TOPIC_ARN", "")
_client: Any = None
_client_lock = threading.Lock()


def sns() -> Any:
    """The SNS client, made once per process: lazily, so producers importing the actor don't
    load boto3, and under a lock, as botocore's client creation is not thread-safe."""
    global _client
    with _client_lock:
        if _client is None:
            import boto3

            _client = boto3.client(
                "sns",
                endpoint_url=os.environ["BENCH_SNS_URL"],
                region_name="us-east-1",
                aws_access_key_id="bench",
                aws_secret_access_key="bench",  # noqa: S106 (the local SNS checks no signature)
            )
        return _client


@dramatiq.actor(queue_name="naive-events")
def publish(event_id: str, body: str) -> None:
    """Publish one event; `event_id` rides along as an attribute so latency can be measured."""
    sns().publish(
        TopicArn=TOPIC_ARN,
        Message=body,
        MessageAttributes={"event_id": {"DataType": "String", "StringValue": event_id}},
    )
