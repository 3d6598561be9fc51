"""Tests of `POST /events` in process, against a real Valkey: every status, header and count.

Given a started app (lifespan entered) in a namespace of its own; when a request is sent; then
the answer, what is in Redis (dramatiq messages decoded) and the metrics' deltas are checked.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from relay.errors import ConfigError
from relay.ingest import create_app
from relay.ingest.payload import MAX_ELEMENTS
from relay.keys import Keys
from relay.settings import Settings
from relay.store import RelayStore
from tests.ingest.conftest import SECRETS, AppRunner, make_settings, signed, stored_events

EVENT = b'{"type":"message.new","cid":"messaging:general","channel_type":"messaging","n":1}'


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def runner(settings: Settings) -> Iterator[AppRunner]:
    with AppRunner(create_app(settings)) as runner:
        yield runner


def queue_length(client: redis.Redis, settings: Settings) -> int:
    return int(client.llen(Keys(settings.namespace).queue))


def test_a_signed_event_is_stored_byte_for_byte_with_its_webhook_id(
    runner: AppRunner, settings: Settings, redis_sync: redis.Redis
) -> None:
    """A valid single event answers 200 once stored, its raw body and id in a dramatiq message."""
    enqueued = sample("relay_events_enqueued_total")
    received = sample("relay_events_received_total", source="webhook")

    response = runner.post(EVENT, signed(EVENT, webhook_id="wh-1"))

    assert response.status_code == 200
    assert response.json() == {"status": "enqueued", "event_id": "wh-1"}
    [(event_id, body, attributes, _at)] = stored_events(redis_sync, settings.namespace)
    assert (event_id, body.encode()) == ("wh-1", EVENT)
    assert attributes == {
        "type": "message.new",
        "cid": "messaging:general",
        "channel_type": "messaging",
        "event_id": "wh-1",
    }
    assert sample("relay_events_enqueued_total") - enqueued == 1
    assert sample("relay_events_received_total", source="webhook") - received == 1


def test_array_elements_are_forwarded_as_their_exact_source_text(
    runner: AppRunner, settings: Settings, redis_sync: redis.Redis
) -> None:
    """Each element keeps its whitespace, escapes and raw UTF-8; ids are `<webhook id>-<index>`."""
    elements = [
        '{ "type" :"message.new",\n\t"text":"caf\\u00e9 \\ud83d\\ude00 \\/ ,]}"  }',
        '{"type":"reaction.new","text":"café 😀","nested":{"a":[1, 2 ,{"b":"]"}]}}',
        "{}",
    ]
    body = ("\r\n[ " + " ,\n".join(elements) + "\t]\n").encode()

    response = runner.post(body, signed(body, webhook_id="batch-7"))

    assert response.status_code == 200
    assert [o["status"] for o in response.json()["outcomes"]] == ["enqueued"] * 3
    stored = stored_events(redis_sync, settings.namespace)
    assert [(e[0], e[1]) for e in stored] == [
        (f"batch-7-{index}", text) for index, text in enumerate(elements)
    ]


def test_an_event_of_an_unknown_type_is_accepted(
    runner: AppRunner, settings: Settings, redis_sync: redis.Redis
) -> None:
    """Types the relay has never heard of are stored like any other (FACTS §7.5)."""
    body = b'{"type":"custom.future-event.v9"}'

    response = runner.post(body, signed(body))

    assert response.status_code == 200
    assert stored_events(redis_sync, settings.namespace)[0][2]["type"] == "custom.future-event.v9"


def test_without_a_webhook_id_each_event_gets_a_fresh_id_and_no_dedup_marker(
    runner: AppRunner, settings: Settings, redis_sync: redis.Redis
) -> None:
    """No X-Webhook-Id: the relay makes ids, and the same body sent twice is stored twice."""
    first = runner.post(EVENT, signed(EVENT))
    second = runner.post(EVENT, signed(EVENT))

    assert first.status_code == second.status_code == 200
    assert first.json()["event_id"] != second.json()["event_id"]
    assert len(stored_events(redis_sync, settings.namespace)) == 2
    assert not redis_sync.keys(f"{settings.namespace}:relay:webhook-seen:*")


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({}, "X-Signature is missing"),
        ({"X-Signature": "0" * 64}, "X-Signature is not the HMAC-SHA256 of the body"),
        (signed(EVENT, secret="some-other-secret"), "not the HMAC"),
        (signed(EVENT + b" "), "not the HMAC"),
    ],
)
def test_a_missing_or_wrong_signature_is_401_and_nothing_is_stored(
    runner: AppRunner,
    settings: Settings,
    redis_sync: redis.Redis,
    headers: dict[str, str],
    says: str,
) -> None:
    """Unsigned or wrongly signed requests are refused and counted, and never reach Redis."""
    rejected = sample("relay_events_rejected_total", reason="bad_signature")

    response = runner.post(EVENT, headers | {"X-Webhook-Id": "unsigned-1"})

    assert response.status_code == 401
    assert response.json() == {"error": says} or says in response.json()["error"]
    assert sample("relay_events_rejected_total", reason="bad_signature") - rejected == 1
    assert redis_sync.keys(f"{settings.namespace}:*") == []


def test_the_signature_is_checked_before_the_body_is_parsed(runner: AppRunner) -> None:
    """Malformed JSON without a valid signature is a 401, not a 400: nothing unsigned is parsed."""
    response = runner.post(b"{not json", {"X-Signature": "00"})

    assert response.status_code == 401


def test_the_previous_secret_still_verifies_during_a_rotation(runner: AppRunner) -> None:
    """A body signed with the second configured secret is accepted."""
    response = runner.post(EVENT, signed(EVENT, secret=SECRETS[1]))

    assert response.status_code == 200


def test_a_repeated_delivery_within_the_ttl_answers_200_and_stores_nothing_new(
    runner: AppRunner, settings: Settings, redis_sync: redis.Redis
) -> None:
    """Stream's retry of a stored delivery is a 200 duplicate; the queue does not grow."""
    runner.post(EVENT, signed(EVENT, webhook_id="retry-me"))
    duplicates = sample("relay_events_rejected_total", reason="duplicate")

    again = runner.post(EVENT, signed(EVENT, webhook_id="retry-me", **{"X-Webhook-Attempt": "2"}))

    assert again.status_code == 200
    assert again.json() == {"status": "duplicate", "webhook_id": "retry-me"}
    assert queue_length(redis_sync, settings) == 1
    assert len(stored_events(redis_sync, settings.namespace)) == 1
    assert sample("relay_events_rejected_total", reason="duplicate") - duplicates == 1
    ttl_ms = redis_sync.pttl(Keys(settings.namespace).webhook_seen("retry-me"))
    assert 0 < ttl_ms <= settings.webhook_dedup_ttl_s * 1000


def test_once_the_dedup_marker_expires_the_id_is_stored_again(
    runner: AppRunner, settings: Settings, redis_sync: redis.Redis
) -> None:
    """The window is the marker's TTL: without the marker the same id is a new delivery."""
    runner.post(EVENT, signed(EVENT, webhook_id="expiring"))
    redis_sync.delete(Keys(settings.namespace).webhook_seen("expiring"))  # as its TTL would

    response = runner.post(EVENT, signed(EVENT, webhook_id="expiring"))

    assert response.json()["status"] == "enqueued"
    assert len(stored_events(redis_sync, settings.namespace)) == 2


def test_concurrent_copies_of_one_delivery_are_stored_once(
    runner: AppRunner, settings: Settings, redis_sync: redis.Redis
) -> None:
    """Copies of one webhook id sent at once: one is stored, every other answers duplicate."""
    responses = runner.post_all([(EVENT, signed(EVENT, webhook_id="twin"))] * 8)

    assert [r.status_code for r in responses] == [200] * 8
    assert sorted(r.json()["status"] for r in responses) == ["duplicate"] * 7 + ["enqueued"]
    assert [e[0] for e in stored_events(redis_sync, settings.namespace)] == ["twin"]


def test_copies_racing_through_two_ingest_processes_are_stored_once(
    settings: Settings, redis_sync: redis.Redis
) -> None:
    """Two apps (own loops, own clients) taking the same deliveries at once store each once."""
    bodies = [f'{{"type":"race","n":{n}}}'.encode() for n in range(40)]
    requests = [(body, signed(body, webhook_id=f"race-{n}")) for n, body in enumerate(bodies)]
    with (
        AppRunner(create_app(settings)) as first,
        AppRunner(create_app(settings)) as second,
        ThreadPoolExecutor(2) as pool,
    ):
        answers = [
            response
            for runner_answers in pool.map(
                lambda runner: runner.post_all(requests), [first, second]
            )
            for response in runner_answers
        ]

    assert all(response.status_code == 200 for response in answers)
    statuses = [response.json()["status"] for response in answers]
    assert statuses.count("enqueued") == 40
    assert statuses.count("duplicate") == 40
    assert sorted(e[0] for e in stored_events(redis_sync, settings.namespace)) == sorted(
        f"race-{n}" for n in range(40)
    )


def test_concurrent_requests_are_group_committed_into_fewer_bundles(
    runner: AppRunner, settings: Settings, redis_sync: redis.Redis
) -> None:
    """Requests arriving together are written as shared bundles, each answered once stored."""
    requests = [
        (body, signed(body, webhook_id=f"gc-{index}"))
        for index, body in enumerate(f'{{"type":"t","i":{i}}}'.encode() for i in range(20))
    ]

    responses = runner.post_all(requests)

    assert [r.status_code for r in responses] == [200] * 20
    stored = stored_events(redis_sync, settings.namespace)
    assert sorted(e[0] for e in stored) == sorted(f"gc-{i}" for i in range(20))
    assert queue_length(redis_sync, settings) < 20


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"type": "message.new",', "not valid JSON"),
        (b'{"text": "caf\xe9"}', "not UTF-8"),
        (b'"message.new"', "not a string"),
        (b"17", "not a number"),
        (b"", "not valid JSON"),
    ],
)
def test_a_malformed_body_is_400_saying_what_is_wrong(
    runner: AppRunner, settings: Settings, redis_sync: redis.Redis, body: bytes, says: str
) -> None:
    """Bodies that are not UTF-8 JSON objects (or arrays) are refused and never stored."""
    invalid = sample("relay_events_rejected_total", reason="invalid")

    response = runner.post(body, signed(body, webhook_id="bad-body"))

    assert response.status_code == 400
    assert says in response.json()["error"]
    assert sample("relay_events_rejected_total", reason="invalid") - invalid == 1
    assert redis_sync.keys(f"{settings.namespace}:*") == []


def test_a_number_beyond_a_double_is_stored_exactly_as_written(
    runner: AppRunner, settings: Settings, redis_sync: redis.Redis
) -> None:
    """`1e400` is JSON by RFC 8259's grammar; nothing converts it, so it is stored byte for byte
    with the rest of the body (orjson, which converts numbers, refused it)."""
    body = b'{"type": "message.new", "score": 1e400, "n": -1E+400}'

    response = runner.post(body, signed(body, webhook_id="big-number"))

    assert response.status_code == 200
    ((event_id, text, attributes, _received_at),) = stored_events(redis_sync, settings.namespace)
    assert (event_id, text.encode(), attributes["type"]) == ("big-number", body, "message.new")


@pytest.mark.parametrize("webhook_id", ["has space", "x" * 129, "tab\there"])
def test_an_unusable_webhook_id_is_400(runner: AppRunner, webhook_id: str) -> None:
    """An X-Webhook-Id that cannot be an SNS attribute and FIFO dedup id is refused."""
    response = runner.post(EVENT, signed(EVENT, webhook_id=webhook_id))

    assert response.status_code == 400
    assert "X-Webhook-Id" in response.json()["error"]


@pytest.mark.parametrize(
    ("id_chars", "elements", "status"),
    [(126, 10, 200), (126, 11, 400), (127, 1, 400), (126, 100, 400), (125, 100, 200)],
)
def test_a_webhook_id_too_long_for_its_array_indexes_is_400_saying_why(
    runner: AppRunner, id_chars: int, elements: int, status: int
) -> None:
    """`<id>-<index>` must also be a valid event id (at most 128 characters): an id that fits a
    single event but not its array's last index is refused, and the answer says so."""
    body = ("[" + ",".join(['{"a":1}'] * elements) + "]").encode()

    response = runner.post(body, signed(body, webhook_id="y" * id_chars))

    assert response.status_code == status
    if status == 400:
        longest = id_chars + 1 + len(str(elements - 1))
        assert response.json()["error"] == (
            "X-Webhook-Id cannot serve as an event id: as `<id>-<index>` for an array of "
            f"{elements} events it makes ids of up to {longest} characters, over 128"
        )


def test_an_announced_oversize_body_is_413_before_any_of_it_is_read(
    valkey: Any, runner: AppRunner
) -> None:
    """A Content-Length over the bound is refused without one receive() call (no 100 Continue)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read")

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/events",
        "raw_path": b"/events",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-length", str(8 * 1024 * 1024 + 1).encode())],
        "server": ("ingest", 80),
        "client": ("sender", 1234),
    }

    runner.call(runner.app(scope, receive, send))

    assert sent[0]["status"] == 413
    assert (b"connection", b"close") in sent[0]["headers"]
    assert "over the limit of 8388608" in json.loads(sent[1]["body"])["error"]


def test_a_chunked_body_is_cut_off_with_413_once_it_passes_the_bound(
    valkey: Any,
) -> None:
    """A body without Content-Length is read only until it exceeds the bound, then refused."""
    chunk = b"x" * 65_536
    produced = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(200):
            produced += 1
            yield chunk

    settings = make_settings(valkey.connection_url, ingest_max_body_bytes=256 * 1024)
    with AppRunner(create_app(settings)) as runner:
        too_large = sample("relay_events_rejected_total", reason="body_too_large")
        response = runner.post(chunks(), {"X-Signature": "00"})

    assert response.status_code == 413
    assert produced <= 5  # 256 KiB + one chunk, not the 12.5 MiB offered
    assert sample("relay_events_rejected_total", reason="body_too_large") - too_large == 1


def test_a_single_event_over_the_sns_limit_is_413_and_recorded_as_dropped(
    valkey: Any, redis_sync: redis.Redis
) -> None:
    """An event bigger than the topic limit is never enqueued: 413, counted, in the dropped log."""
    settings = make_settings(valkey.connection_url, max_message_bytes=1024)
    body = json.dumps({"type": "message.new", "text": "x" * 1100}).encode()
    dropped = sample("relay_events_dropped_total", reason="too_large")

    with AppRunner(create_app(settings)) as runner:
        response = runner.post(body, signed(body, webhook_id="huge"))

    assert response.status_code == 413
    assert response.json()["status"] == "dropped"
    assert "too_large" in response.json()["detail"]
    assert stored_events(redis_sync, settings.namespace) == []
    [record] = RelayStore(redis_sync, Keys(settings.namespace)).dropped()
    assert (record.event_id, record.reason, record.limit_bytes) == ("huge", "too_large", 1024)
    assert record.size_bytes > 1024
    assert sample("relay_events_dropped_total", reason="too_large") - dropped == 1


def _multibyte_event(size_bytes: int, event_id: str) -> str:
    """A JSON object of exactly `size_bytes` as an SNS message: UTF-8 body plus attributes."""
    attributes = len("type") + len("String") + len("message.new")
    attributes += len("event_id") + len("String") + len(event_id)
    head, tail = '{"type":"message.new","text":"', '"}'
    room = size_bytes - attributes - len(head) - len(tail)
    text = "é" * (room // 2) + "x" * (room % 2)  # two UTF-8 bytes per character
    event = head + text + tail
    assert len(event.encode()) + attributes == size_bytes
    return event


@pytest.mark.parametrize("over_by", [-1, 0, 1])
def test_the_sns_limit_counts_utf8_bytes_and_attributes_at_its_boundary(
    valkey: Any, redis_sync: redis.Redis, over_by: int
) -> None:
    """Multibyte events of limit-1 and limit bytes (attributes counted) are stored, limit+1 not,
    both as a single event and as an array element."""
    limit = 1024
    settings = make_settings(valkey.connection_url, max_message_bytes=limit)
    single = _multibyte_event(limit + over_by, "one").encode()
    element = _multibyte_event(limit + over_by, "arr-0")
    array = f"[{element}]".encode()

    with AppRunner(create_app(settings)) as runner:
        answers = [
            runner.post(single, signed(single, webhook_id="one")),
            runner.post(array, signed(array, webhook_id="arr")),
        ]

    stored = {event_id for event_id, *_ in stored_events(redis_sync, settings.namespace)}
    dropped = {r.event_id for r in RelayStore(redis_sync, Keys(settings.namespace)).dropped()}
    if over_by <= 0:
        assert [answer.status_code for answer in answers] == [200, 200]
        assert (stored, dropped) == ({"one", "arr-0"}, set())
    else:
        assert [answer.status_code for answer in answers] == [413, 413]
        assert (stored, dropped) == (set(), {"one", "arr-0"})


@pytest.mark.parametrize("extra", [0, 1], ids=["at the limit", "one over"])
def test_an_array_of_more_events_than_the_per_request_limit_is_413_and_stores_nothing(
    runner: AppRunner, settings: Settings, redis_sync: redis.Redis, extra: int
) -> None:
    """MAX_ELEMENTS events in one array are stored; one more and the body is refused whole
    (413, one event rejected as body_too_large) before it is split."""
    count = MAX_ELEMENTS + extra
    body = ("[" + ",".join(['{"type":"message.new"}'] * count) + "]").encode()
    too_large = sample("relay_events_rejected_total", reason="body_too_large")

    response = runner.post(body, signed(body, webhook_id="many"))

    if extra:
        assert response.status_code == 413
        assert response.json() == {
            "error": f"an array of {count} events is over the limit of {MAX_ELEMENTS} per request"
        }
        assert queue_length(redis_sync, settings) == 0
        assert sample("relay_events_rejected_total", reason="body_too_large") - too_large == 1
    else:
        assert response.status_code == 200
        assert len(stored_events(redis_sync, settings.namespace)) == MAX_ELEMENTS


def test_thousands_of_oversize_events_in_one_array_are_all_recorded(
    valkey: Any, redis_sync: redis.Redis
) -> None:
    """An array of 9,000 events over the limit is 413 with every drop recorded and counted."""
    settings = make_settings(
        valkey.connection_url, max_message_bytes=1024, ingest_max_body_bytes=16 * 1024 * 1024
    )
    element = json.dumps({"type": "big", "text": "z" * 1100})
    body = ("[" + ",".join([element] * 9000) + "]").encode()

    with AppRunner(create_app(settings)) as runner:
        response = runner.post(body, signed(body, webhook_id="many-big"))

    assert response.status_code == 413
    store = RelayStore(redis_sync, Keys(settings.namespace))
    assert store.dropped_counts() == {"too_large": 9000}
    assert len(store.dropped(limit=10_000)) == 9000
    assert stored_events(redis_sync, settings.namespace) == []


def test_a_mixed_array_is_202_with_each_events_outcome(
    valkey: Any, redis_sync: redis.Redis
) -> None:
    """Stored, dropped and invalid elements of one array are each reported in order."""
    settings = make_settings(valkey.connection_url, max_message_bytes=1024)
    big = json.dumps({"type": "big", "text": "y" * 1100})
    body = f'[{{"type":"ok"}}, {big}, "not an object", {{"type":"ok2"}}]'.encode()

    with AppRunner(create_app(settings)) as runner:
        response = runner.post(body, signed(body, webhook_id="mix"))

    assert response.status_code == 202
    outcomes = response.json()["outcomes"]
    assert [(o["index"], o["event_id"], o["status"]) for o in outcomes] == [
        (0, "mix-0", "enqueued"),
        (1, "mix-1", "dropped"),
        (2, "mix-2", "invalid"),
        (3, "mix-3", "enqueued"),
    ]
    assert "not a JSON object but a string" in outcomes[2]["detail"]
    assert [e[0] for e in stored_events(redis_sync, settings.namespace)] == ["mix-0", "mix-3"]
    assert [r.event_id for r in RelayStore(redis_sync, Keys(settings.namespace)).dropped()] == [
        "mix-1"
    ]


def test_an_array_of_only_non_objects_is_400_and_marks_nothing_seen(
    runner: AppRunner, settings: Settings, redis_sync: redis.Redis
) -> None:
    """Nothing to store means nothing stored, and the webhook id stays free for a fixed retry."""
    body = b'[1, "two"]'

    response = runner.post(body, signed(body, webhook_id="all-bad"))

    assert response.status_code == 400
    assert [o["status"] for o in response.json()["outcomes"]] == ["invalid", "invalid"]
    assert redis_sync.keys(f"{settings.namespace}:*") == []


@pytest.mark.parametrize("webhook_id", [None, "w" * 128], ids=["no id", "a 128-character id"])
def test_an_empty_array_is_200_with_no_outcomes(runner: AppRunner, webhook_id: str | None) -> None:
    """`[]` carries no events: nothing to store, nothing wrong, whatever valid id it has (an
    id of up to 128 characters makes no `<id>-<index>` ids for no elements)."""
    response = runner.post(b"[]", signed(b"[]", webhook_id=webhook_id))

    assert response.status_code == 200
    assert response.json()["outcomes"] == []


def test_retries_are_logged_with_their_attempt_number(
    runner: AppRunner, caplog: pytest.LogCaptureFixture
) -> None:
    """X-Webhook-Attempt above 1 is logged at INFO with the webhook id."""
    with caplog.at_level(logging.INFO, logger="relay.ingest"):
        runner.post(EVENT, signed(EVENT, webhook_id="wh-log", **{"X-Webhook-Attempt": "3"}))

    assert any(
        "webhook_id='wh-log'" in r.getMessage() and "attempt='3'" in r.getMessage()
        for r in caplog.records
    )


def test_without_a_secret_the_app_refuses_to_start(valkey: Any) -> None:
    """No RELAY_WEBHOOK_SECRET and no explicit opt-out: ConfigError naming the variable."""
    settings = make_settings(valkey.connection_url, webhook_secret=None)

    with pytest.raises(ConfigError, match="RELAY_WEBHOOK_SECRET"):
        create_app(settings)


def test_the_insecure_opt_out_warns_loudly_and_accepts_unsigned_events(
    valkey: Any, redis_sync: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """`insecure_no_signature` logs a warning at start and then takes unsigned requests."""
    settings = make_settings(valkey.connection_url, webhook_secret=None)

    with caplog.at_level(logging.WARNING, logger="relay.ingest"):
        app = create_app(settings, insecure_no_signature=True)
    with AppRunner(app) as runner:
        response = runner.post(EVENT)

    assert any(
        r.levelno == logging.WARNING and "INSECURE" in r.getMessage() for r in caplog.records
    )
    assert response.status_code == 200
    assert len(stored_events(redis_sync, settings.namespace)) == 1


def test_a_configured_secret_wins_over_the_insecure_opt_out(valkey: Any) -> None:
    """With a secret set, the opt-out changes nothing: unsigned requests are still refused."""
    settings = make_settings(valkey.connection_url)

    with AppRunner(create_app(settings, insecure_no_signature=True)) as runner:
        assert runner.post(EVENT).status_code == 401


def test_other_methods_on_events_are_405(runner: AppRunner) -> None:
    """Only POST is routed to the endpoint; Starlette answers the rest."""
    assert runner.get("/events").status_code == 405


def test_a_content_length_that_is_not_a_number_is_400(runner: AppRunner) -> None:
    """A garbled Content-Length is refused before the body is read."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read")

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/events",
        "headers": [(b"content-length", b"12abc")],
    }
    runner.call(runner.app(scope, receive, send))

    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"]) == {"error": "Content-Length is not a number"}
