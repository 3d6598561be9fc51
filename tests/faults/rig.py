"""One fault test's world, and DESIGN's accounting invariant.

`FaultRig` starts a durable Valkey (AOF) on a fixed port, the local SNS on a fixed port with a
topic, and hands out `relay worker` fleets and paced producers; it observes the topic and Redis.
`Accounting` checks the guarantee: every acknowledged event was published, dropped or
dead-lettered, and duplicates are counted, never silent.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import dramatiq
import orjson
import redis

from relay.dead_letters import DeadLetters
from relay.errors import QueueUnavailable
from relay.keys import DROPPED_LOG_MAX_ENTRIES, Keys
from relay.local_sns import LocalSnsServer
from relay.queue import redis_client
from relay.settings import Settings
from relay.store import RelayStore
from tests.faults.harness import DurableValkey, WorkerFleet
from tests.faults.load import LoadProducer
from tests.helpers import (
    REGION,
    TEST_KEY,
    TEST_SECRET,
    free_port,
    poll_until,
    relay_command,
    relay_env,
)

T = TypeVar("T")

NAMESPACE = "faults"
DRAIN_TIMEOUT_S = 90.0
DRAIN_QUIET_S = 1.0
"""Drained means nothing pending or queued and no new SNS message for this long."""


@dataclass
class Accounting:
    """Where every acknowledged event ended, read from the topic and from Redis."""

    acknowledged: set[str]
    delivered: Counter[str]
    dropped: dict[str, str]
    """Event id to the drop reason, from the dropped log."""
    dead_lettered: dict[str, str]
    """Event id to SNS's error code, from the relay's dead letters."""

    @property
    def unaccounted(self) -> set[str]:
        return self.acknowledged - set(self.delivered) - set(self.dropped) - set(self.dead_lettered)

    @property
    def duplicates(self) -> int:
        """SNS messages beyond the first for the same event id (at-least-once, DESIGN)."""
        return sum(count - 1 for count in self.delivered.values())

    @property
    def delivered_unacknowledged(self) -> int:
        """Published events whose producer call failed after Redis stored them (a lost reply)."""
        return len(set(self.delivered) - self.acknowledged)

    def assert_invariant(self) -> None:
        """DESIGN's guarantee: each acknowledged event is published, dropped or dead-lettered."""
        missing = sorted(self.unaccounted)
        assert not missing, f"{len(missing)} acknowledged events lost, e.g. {missing[:5]}"
        assert all(self.dropped.values()), "a drop without a reason"
        assert all(self.dead_lettered.values()), "a dead letter without SNS's error code"


class FaultRig:
    """One fault test's processes and clients; `close()` stops whatever is still running."""

    def __init__(self, workdir: Path, *, appendfsync: str = "everysec") -> None:
        self.workdir = workdir
        self.valkey = DurableValkey(workdir / "valkey", appendfsync=appendfsync)
        self.valkey.start()
        self.sns = LocalSnsServer(port=free_port()).start()
        self.topic_arn = self.sns.create_topic("faults", REGION)
        self.settings = Settings.load(
            redis_url=self.valkey.url,
            namespace=NAMESPACE,
            sns_topic_arn=self.topic_arn,
        )
        self.keys = Keys(NAMESPACE)
        self.redis = redis_client(self.valkey.url, self.settings)
        self.store = RelayStore(self.redis, self.keys)
        self.dead_letters = DeadLetters(self.redis, self.keys)
        self.fleets: list[WorkerFleet] = []
        self.loads: list[LoadProducer] = []

    def worker_variables(self, redis_url: str | None = None) -> dict[str, str]:
        return {
            "RELAY_REDIS_URL": redis_url or self.valkey.url,
            "RELAY_NAMESPACE": NAMESPACE,
            "RELAY_SNS_TOPIC_ARN": self.topic_arn,
            "RELAY_SNS_ENDPOINT_URL": self.sns.url,
            "RELAY_SNS_KEY": TEST_KEY,
            "RELAY_SNS_SECRET": TEST_SECRET,
        }

    def fleet(self, redis_url: str | None = None, *, terminal: bool = False) -> WorkerFleet:
        """A started `relay worker` fleet (its Redis URL may be a proxy's; `terminal`: run as
        in a terminal, in a process group of its own)."""
        fleet = WorkerFleet(self.worker_variables(redis_url), self.workdir, terminal=terminal)
        self.fleets.append(fleet)
        return fleet.start()

    def producer(self, **options: Any) -> LoadProducer:
        """A started LoadProducer writing straight to Valkey."""
        load = LoadProducer(self.settings, **options)
        self.loads.append(load)
        return load.start()

    # Observations ------------------------------------------------------------------------------

    def published(self) -> int:
        """Messages the topic has recorded so far (duplicates included)."""
        return int(self.sns.stats()["published"])

    def published_ids(self, offset: int = 0) -> set[str]:
        return {_event_id(message) for message in self.sns.messages(offset)}

    def wait_published(self, count: int, timeout_s: float = 60.0) -> None:
        self.sns.wait_for_published(count, timeout_s=timeout_s)

    def ack_sets(self) -> dict[str, set[bytes]]:
        """dramatiq's per-process sets of fetched, unacked message ids, by key (FACTS §9.1)."""
        pattern = f"{NAMESPACE}:__acks__.*"
        return {
            key.decode(): self.redis.smembers(key) for key in self.redis.scan_iter(match=pattern)
        }

    def bundle_event_ids(self, ack_key: str, redis_ids: set[bytes]) -> set[str]:
        """Event ids of the bundles with these redis message ids (those still stored)."""
        if not redis_ids:
            return set()
        delayed = ack_key.endswith(".DQ")
        messages = self.keys.delay_queue_messages if delayed else self.keys.queue_messages
        ids: set[str] = set()
        for raw in self.redis.hmget(messages, list(redis_ids)):
            if raw is not None:
                ids.update(item[0] for item in dramatiq.Message.decode(raw).args[0])
        return ids

    def queued_messages(self) -> int:
        """dramatiq messages stored and not yet acked: waiting, in flight or delayed."""
        return int(self.redis.hlen(self.keys.queue_messages)) + int(
            self.redis.hlen(self.keys.delay_queue_messages)
        )

    def describe_queue(self) -> str:
        """What is still pending or stored, for a failure's message."""
        stored = {
            name: {
                key.decode(): raw[:300]
                for key, raw in self.redis.hgetall(name).items()  # type: ignore[union-attr]
            }
            for name in (self.keys.queue_messages, self.keys.delay_queue_messages)
        }
        return (
            f"{self.store.pending_events()} events pending; ack sets {self.ack_sets()}; "
            f"stored messages {stored}"
        )

    def until(
        self, predicate: Callable[[], T], timeout_s: float, *, what: str, interval_s: float = 0.2
    ) -> T:
        """`poll_until`, with what Redis still holds added to a failure's message."""
        try:
            return poll_until(predicate, timeout_s, interval_s=interval_s, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {self.describe_queue()}") from None

    def wait_drained(self, timeout_s: float = DRAIN_TIMEOUT_S) -> float:
        """Poll until nothing is pending or queued and the topic count stopped moving; return
        when that state began (monotonic), which ends a fault's time to recover."""
        count, since = -1, time.monotonic()
        deadline = since + timeout_s
        while True:
            now = time.monotonic()
            try:
                empty = self.store.pending_events() == 0 and self.queued_messages() == 0
            except (QueueUnavailable, redis.RedisError):
                empty = False
            published = self.published()
            if not empty or published != count:
                count, since = published, now
            elif now - since >= DRAIN_QUIET_S:
                return since
            if now > deadline:
                raise AssertionError(f"not drained within {timeout_s} s: {self.describe_queue()}")
            time.sleep(0.1)

    def wait_settled(self, event_ids: set[str], timeout_s: float = DRAIN_TIMEOUT_S) -> float:
        """Poll until each of these events was published, dropped or dead-lettered; return when
        (monotonic). With the ids acknowledged by a fault's end, that ends its time to recover."""

        def unsettled() -> set[str]:
            dropped = {record.event_id for record in self.store.dropped(DROPPED_LOG_MAX_ENTRIES)}
            return event_ids - self.published_ids() - dropped - set(self.dead_letters.ids())

        deadline = time.monotonic() + timeout_s
        while left := unsettled():
            assert time.monotonic() < deadline, f"{len(left)} events unsettled after {timeout_s} s"
            time.sleep(0.2)
        return time.monotonic()

    def account(self, *loads: LoadProducer) -> Accounting:
        acknowledged = {event_id for load in loads or self.loads for event_id in load.acknowledged}
        return Accounting(
            acknowledged=acknowledged,
            delivered=Counter(_event_id(message) for message in self.sns.messages()),
            dropped={
                record.event_id: record.reason
                for record in self.store.dropped(DROPPED_LOG_MAX_ENTRIES)
            },
            dead_lettered={letter.event.id: letter.code for letter in self.dead_letters.iter()},
        )

    def stats_json(self) -> dict[str, Any]:
        """`relay stats --json`, run as an operator would."""
        done = subprocess.run(
            relay_command("stats", "--json"),
            env=relay_env({"RELAY_REDIS_URL": self.valkey.url, "RELAY_NAMESPACE": NAMESPACE}),
            cwd=self.workdir,
            capture_output=True,
            timeout=30,
            check=True,
        )
        figures: dict[str, Any] = orjson.loads(done.stdout)
        return figures

    def close(self) -> None:
        for load in self.loads:
            with contextlib.suppress(AssertionError):
                load.stop()
        for fleet in self.fleets:
            if fleet.running():
                with contextlib.suppress(AssertionError):
                    fleet.stop()
            print(f"--- relay worker logs ({len(fleet.logs)} runs) ---\n{fleet.log()[-20_000:]}")
        self.sns.stop()
        self.redis.close()
        self.valkey.stop()


def _event_id(message: dict[str, Any]) -> str:
    return str(message["attributes"]["event_id"]["StringValue"])
