"""Tests of relay.demo_events: Stream-shaped bodies, sizes, oversize indices, determinism."""

from __future__ import annotations

import json
import re
import statistics
from typing import Any

import pytest

from relay import limits
from relay.demo_events import (
    ATTRIBUTES_ALLOWANCE_BYTES,
    EVENT_TYPES,
    EVENT_WEIGHTS,
    MAX_MEMBERS,
    generate,
    is_oversize,
    oversize_count,
)

SAMPLE_SIZE = 20_000
DOCUMENTED_TYPES = {
    *("message.new", "message.read", "message.updated", "message.deleted"),
    *("reaction.new", "reaction.updated", "reaction.deleted"),
    *("member.added", "member.updated", "member.removed"),
    *("channel.created", "channel.updated", "channel.muted", "channel.unmuted"),
    *("channel.truncated", "channel.deleted", "channel.hidden"),
    *("user.deactivated", "user.deleted", "user.reactivated", "user.updated", "user.muted"),
    *("user.unmuted", "user.banned", "user.unbanned", "user.messages.deleted", "user.flagged"),
    "user.unread_message_reminder",
    *("export.users.success", "export.users.error"),
    *("export.channels.success", "export.channels.error"),
    *("reminder.created", "reminder.updated", "reminder.deleted", "notification.reminder_due"),
}
"""stream-chat-python's webhook_events.md list (FACTS §7.5)."""
RFC3339_MICROS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture(scope="module")
def bodies() -> list[bytes]:
    """Twenty thousand default bodies, shared: generating them is the costly part."""
    return list(generate(SAMPLE_SIZE))


@pytest.fixture(scope="module")
def events(bodies: list[bytes]) -> list[dict[str, Any]]:
    """The sample, parsed."""
    return [json.loads(body) for body in bodies]


def test_event_types_are_the_facts_list_plus_message_flagged() -> None:
    """EVENT_TYPES is exactly FACTS §7.5's 36 types and message.flagged, each weighted."""
    assert len(EVENT_TYPES) == len(set(EVENT_TYPES))
    assert set(EVENT_TYPES) == DOCUMENTED_TYPES | {"message.flagged"}
    assert all(EVENT_WEIGHTS[t] > 0 for t in EVENT_TYPES)


def test_every_event_type_appears_in_a_large_sample(events: list[dict[str, Any]]) -> None:
    """Twenty thousand events include every type, the rare exports and reminders too."""
    assert {event["type"] for event in events} == set(EVENT_TYPES)


def test_chat_traffic_dominates_the_mix(events: list[dict[str, Any]]) -> None:
    """message.new is the most common type and the exports are each under 0.5%."""
    counts = {t: 0 for t in EVENT_TYPES}
    for event in events:
        counts[event["type"]] += 1
    assert max(counts, key=counts.__getitem__) == "message.new"
    assert counts["export.users.success"] < SAMPLE_SIZE * 0.005


def test_every_body_is_a_utf8_json_object_with_type_and_created_at(bodies: list[bytes]) -> None:
    """Each body decodes as UTF-8 JSON to an object with a type and an RFC 3339 created_at."""
    for body in bodies:
        event = json.loads(body.decode("utf-8"))
        assert isinstance(event, dict)
        assert event["type"] in EVENT_TYPES
        assert RFC3339_MICROS_Z.match(event["created_at"]), event["created_at"]


def test_bodies_are_compact_json_with_raw_unicode(bodies: list[bytes]) -> None:
    """A body equals the stdlib's compact, ensure_ascii=False serialization of itself."""
    for body in bodies[:2_000]:
        compact = json.dumps(json.loads(body), ensure_ascii=False, separators=(",", ":"))
        assert body == compact.encode("utf-8")


def test_cid_is_channel_type_and_channel_id(events: list[dict[str, Any]]) -> None:
    """Whenever a cid is present it is "<channel_type>:<channel_id>", on the message too."""
    with_cid = [event for event in events if "cid" in event]
    assert len(with_cid) > SAMPLE_SIZE // 2
    for event in with_cid:
        assert event["cid"] == f"{event['channel_type']}:{event['channel_id']}"
        if "message" in event:
            assert event["message"]["cid"] == event["cid"]


def test_members_never_exceed_fifty(events: list[dict[str, Any]]) -> None:
    """No members list is longer than Stream's truncation at 50, and some reach it."""
    lengths = [len(event["members"]) for event in events if "members" in event]
    assert lengths
    assert max(lengths) == MAX_MEMBERS


def test_users_carry_unread_counts(events: list[dict[str, Any]]) -> None:
    """The top-level user has the four unread fields Stream adds (FACTS §7.4)."""
    unread = {"total_unread_count", "unread_channels", "channel_last_read_at"}
    for event in events:
        if "user" in event:
            assert unread | {"channel_unread_count"} <= event["user"].keys()


def test_same_seed_gives_the_same_bodies() -> None:
    """Two runs with one seed yield byte-identical bodies."""
    assert list(generate(2_000, seed=7)) == list(generate(2_000, seed=7))


def test_different_seeds_give_different_bodies() -> None:
    """Seeds 1 and 2 yield different bodies."""
    first, second = list(generate(200, seed=1)), list(generate(200, seed=2))
    assert sum(a != b for a, b in zip(first, second, strict=True)) > 190


def test_median_size_is_between_500_bytes_and_2_kib(bodies: list[bytes]) -> None:
    """The median body is between 500 and 2,000 bytes, with a long tail above 10 KB."""
    sizes = [len(body) for body in bodies]
    assert 500 <= statistics.median(sizes) <= 2_000
    assert sum(size > 10_000 for size in sizes) > SAMPLE_SIZE // 200


def test_oversize_bodies_are_exactly_at_the_documented_indices() -> None:
    """Indices n-1, 2n-1, ... are over the limit by 1-7 KiB; all others leave attribute room."""
    limit = limits.SNS_DEFAULT_MAX_MESSAGE_BYTES
    bodies = list(generate(1_000, seed=3, oversize_every=100, max_message_bytes=limit))
    oversize = [i for i, body in enumerate(bodies) if len(body) > limit]
    assert oversize == [i for i in range(1_000) if is_oversize(i, 100)]
    assert oversize == list(range(99, 1_000, 100))
    assert len(oversize) == oversize_count(1_000, 100)
    for i, body in enumerate(bodies):
        if i in oversize:
            assert limit + 1_024 < len(body) <= limit + 7 * 1_024
            assert json.loads(body)["type"] == "message.new"
        else:
            assert len(body) + ATTRIBUTES_ALLOWANCE_BYTES <= limit


def test_a_small_limit_cuts_ordinary_bodies_to_fit() -> None:
    """With a 2 KiB limit, only the documented indices are over it, the rest fit with room."""
    bodies = list(generate(3_000, seed=4, oversize_every=250, max_message_bytes=2_048))
    over = [i for i, body in enumerate(bodies) if len(body) + ATTRIBUTES_ALLOWANCE_BYTES > 2_048]
    assert over == [i for i in range(3_000) if is_oversize(i, 250)]
    assert all(len(bodies[i]) > 2_048 for i in over)
    assert all("type" in json.loads(body) for body in bodies)


def test_no_body_is_oversize_when_disabled() -> None:
    """oversize_every=None yields no body over the limit and predicts no drops."""
    assert all(len(b) < 100_000 for b in generate(2_000, oversize_every=None))
    assert oversize_count(2_000, None) == 0
    assert not is_oversize(499, None)


def test_some_bodies_contain_raw_multibyte_text(bodies: list[bytes]) -> None:
    """The sample holds raw accents, CJK, Arabic, Hebrew and emoji, never \\u escapes."""
    text = b"".join(bodies[:2_000]).decode("utf-8")
    for name, pattern in {
        "accented Latin": "[À-ÿ]",
        "CJK": "[\u4e00-\u9fff]",
        "Arabic": "[\u0600-\u06ff]",
        "Hebrew": "[\u0590-\u05ff]",
        "emoji": "[\U0001f300-\U0001faff]",
    }.items():
        assert re.search(pattern, text), name
    assert "\\u" not in text


def test_twenty_thousand_events_generate(bodies: list[bytes]) -> None:
    """Generating 20,000 events completes (well within the per-test timeout)."""
    assert len(bodies) == SAMPLE_SIZE


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": -1}, "count"),
        ({"count": 1, "oversize_every": 0}, "oversize_every"),
        ({"count": 1, "max_message_bytes": 100}, "between"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs: dict[str, Any], message: str) -> None:
    """A negative count, an oversize_every below 1 or a limit outside SNS's range is refused."""
    with pytest.raises(ValueError, match=message):
        generate(**kwargs)
