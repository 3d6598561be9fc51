"""Tests of relay.event: raw bodies kept byte for byte, ids, SNS attributes, the wire codec."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay import limits
from relay.errors import InvalidEvent
from relay.event import (
    EVENT_ID_ATTRIBUTE,
    MAX_ATTRIBUTE_VALUE_CHARS,
    PAYLOAD_ATTRIBUTES,
    Event,
    make_event,
    new_event_id,
)

# Odd whitespace, an unusual key order, an escaped "\u00e9" and a raw "é": all must survive.
RAW_BODY = (
    b'{ "text" :"caf\\u00e9 and caf\xc3\xa9",\n\t"type":"message.new" ,'
    b'  "cid": "messaging:general","n":1.50}'
)


# --- the body, byte for byte -----------------------------------------------------------------


def test_bytes_body_is_kept_byte_for_byte() -> None:
    """Raw JSON bytes become the body unchanged: whitespace, key order, escapes, raw UTF-8."""
    event = make_event(RAW_BODY, event_id="evt-1")
    assert event.body.encode("utf-8") == RAW_BODY
    assert "\\u00e9" in event.body
    assert "é" in event.body


def test_str_body_is_kept_exactly() -> None:
    """A str payload is the body unchanged."""
    raw = RAW_BODY.decode("utf-8")
    assert make_event(raw, event_id="evt-1").body == raw


@pytest.mark.parametrize("wrap", [bytearray, memoryview], ids=["bytearray", "memoryview"])
def test_bytes_like_bodies_are_kept_byte_for_byte(wrap: Any) -> None:
    """bytearray and memoryview payloads are decoded, not re-serialized."""
    assert make_event(wrap(RAW_BODY), event_id="evt-1").body.encode("utf-8") == RAW_BODY


def test_a_dict_payload_is_serialized_once_as_compact_json() -> None:
    """A mapping becomes compact JSON (no spaces, non-ASCII kept) that parses back equal."""
    payload = {"type": "message.new", "text": "café €5 😀", "n": 1, "user": {"id": "u1"}}
    event = make_event(payload, event_id="evt-1")
    assert event.body == json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    assert json.loads(event.body) == payload


def test_a_dict_payload_that_is_not_json_serializable_raises_invalid_event() -> None:
    """A mapping holding a value JSON cannot represent raises InvalidEvent naming the problem."""
    with pytest.raises(InvalidEvent, match="JSON-serializable"):
        make_event({"when": object()}, event_id="evt-1")


# --- attributes ------------------------------------------------------------------------------


def test_stream_fields_are_copied_into_attributes_with_the_event_id() -> None:
    """type, cid, channel_type and team become String attributes, plus event_id."""
    payload = {
        "type": "message.new",
        "cid": "messaging:general",
        "channel_type": "messaging",
        "team": "blue",
        "channel_id": "general",
        "user": {"id": "u1"},
    }
    event = make_event(payload, event_id="evt-1")
    assert dict(event.attributes) == {
        "type": "message.new",
        "cid": "messaging:general",
        "channel_type": "messaging",
        "team": "blue",
        "event_id": "evt-1",
    }
    assert event.type == "message.new"


@pytest.mark.parametrize(
    "value",
    [1, 1.5, 0, True, None, "", {"a": "b"}, ["message.new"]],
    ids=["int", "float", "zero", "bool", "null", "empty", "object", "array"],
)
@pytest.mark.parametrize("field", PAYLOAD_ATTRIBUTES)
def test_non_string_or_empty_fields_are_not_copied(field: str, value: Any) -> None:
    """Numbers, booleans, null, objects, arrays and empty strings never become attributes."""
    event = make_event({field: value}, event_id="evt-1")
    assert field not in event.attributes
    assert dict(event.attributes) == {EVENT_ID_ATTRIBUTE: "evt-1"}


def test_an_event_without_stream_fields_still_has_its_event_id_attribute() -> None:
    """event_id is always an attribute, even when nothing else is."""
    event = make_event(b"{}", event_id="evt-1")
    assert dict(event.attributes) == {EVENT_ID_ATTRIBUTE: "evt-1"}
    assert event.type is None


def test_an_event_id_field_in_the_payload_cannot_override_the_event_id_attribute() -> None:
    """A payload's own "event_id" field does not replace the relay's id in the attributes."""
    event = make_event({"event_id": "spoofed", "type": "x"}, event_id="evt-1")
    assert event.attributes[EVENT_ID_ATTRIBUTE] == "evt-1"


def test_attribute_values_longer_than_the_cap_are_left_out() -> None:
    """A field of 1,024 characters is copied; one of 1,025 is not (attributes are for filtering)."""
    at_cap = "t" * MAX_ATTRIBUTE_VALUE_CHARS
    over_cap = "c" * (MAX_ATTRIBUTE_VALUE_CHARS + 1)
    event = make_event({"type": at_cap, "cid": over_cap}, event_id="evt-1")
    assert event.attributes["type"] == at_cap
    assert "cid" not in event.attributes


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(
    payload=st.dictionaries(
        st.sampled_from([*PAYLOAD_ATTRIBUTES, EVENT_ID_ATTRIBUTE]) | st.text(max_size=12),
        json_values,
        max_size=30,
    )
)
def test_attributes_never_exceed_ten_and_are_non_empty_strings(payload: dict[str, Any]) -> None:
    """For any JSON object: ≤10 attributes, only known names, each value a non-empty string."""
    event = make_event(payload)
    assert len(event.attributes) <= limits.SNS_MAX_ATTRIBUTES
    assert set(event.attributes) <= {*PAYLOAD_ATTRIBUTES, EVENT_ID_ATTRIBUTE}
    assert event.attributes[EVENT_ID_ATTRIBUTE] == event.id
    for name, value in event.attributes.items():
        assert isinstance(value, str)
        assert value
        assert limits.attribute_name_error(name) is None


# --- event ids -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event_id",
    ["evt-1", "3f6c1c9e-2d4b-4c55-9a1e-7b0d2f0c1a2b", "a" * 128, "!#$%&'()*+,-./:;<=>?@[]^_`{|}~"],
)
def test_a_given_event_id_is_kept(event_id: str) -> None:
    """A valid id (1-128 printable ASCII, no space) is the event's id and its attribute."""
    event = make_event(b"{}", event_id=event_id)
    assert event.id == event_id
    assert event.attributes[EVENT_ID_ATTRIBUTE] == event_id


def test_generated_event_ids_are_unique_version_4_uuids_in_hex() -> None:
    """Events without an id get distinct 32-hex-digit ids, each a random (version 4) UUID."""
    ids = [make_event(b"{}").id for _ in range(1_000)] + [new_event_id() for _ in range(1_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", event_id) for event_id in ids)
    parsed = [uuid.UUID(hex=event_id) for event_id in ids]
    assert {(one.version, one.variant) for one in parsed} == {(4, uuid.RFC_4122)}
    assert [one.hex for one in parsed] == ids


@pytest.mark.parametrize(
    "event_id",
    [
        pytest.param("has space", id="space"),
        pytest.param("", id="empty"),
        pytest.param("a" * 129, id="129-chars"),
        pytest.param("café", id="non-ascii"),
        pytest.param("tab\there", id="tab"),
    ],
)
def test_invalid_event_ids_raise_invalid_event(event_id: str) -> None:
    """A space, empty, over 128 characters, non-ASCII or control characters: InvalidEvent,
    naming the id only as it was given (never cut to a different, valid one)."""
    with pytest.raises(InvalidEvent, match="event id") as caught:
        make_event(b"{}", event_id=event_id)
    assert caught.value.event_id in (event_id, None)
    if len(event_id) > 128:
        assert caught.value.event_id is None


def test_an_event_id_with_a_trailing_newline_raises_invalid_event() -> None:
    """An id ending in a newline is rejected (a regex `$` would let it through)."""
    with pytest.raises(InvalidEvent, match="event id"):
        make_event(b"{}", event_id="evt-1\n")


# --- invalid payloads ------------------------------------------------------------------------


@pytest.mark.parametrize("event_id", [5, b"evt-1", None.__class__])
def test_an_event_id_that_is_not_a_str_raises_invalid_event_naming_its_type(
    event_id: object,
) -> None:
    """An int, bytes or any other object as the id: InvalidEvent, not a TypeError."""
    with pytest.raises(
        InvalidEvent, match=f"event id must be a str, not {type(event_id).__name__}"
    ):
        make_event(b"{}", event_id=event_id)  # type: ignore[arg-type]


@pytest.mark.parametrize("payload", [42, None, 1.5, ["not", "a", "mapping"], object()])
def test_a_payload_of_the_wrong_type_raises_invalid_event_naming_its_type(payload: object) -> None:
    """Not bytes, str or a mapping: InvalidEvent saying what was given, not 'not valid JSON'."""
    with pytest.raises(InvalidEvent) as exc_info:
        make_event(payload)  # type: ignore[arg-type]
    assert exc_info.value.reason == (
        f"payload must be JSON text (bytes or str) or a mapping, not {type(payload).__name__}"
    )


@pytest.mark.parametrize(
    "payload",
    [
        {"x": float("nan")},
        {"x": [1.0, float("inf")]},
        {"x": {"deep": (float("-inf"),)}},
    ],
)
def test_nan_or_an_infinity_in_a_mapping_raises_invalid_event(payload: dict[str, Any]) -> None:
    """JSON cannot represent them (orjson would write null): refused, not silently changed."""
    with pytest.raises(InvalidEvent, match="NaN or an infinity"):
        make_event(payload)


def test_nan_in_a_dataclass_inside_a_mapping_raises_invalid_event() -> None:
    """orjson serializes dataclasses too, and would write their NaN as null: refused."""

    @dataclass
    class Point:
        x: float

    with pytest.raises(InvalidEvent, match="NaN or an infinity"):
        make_event({"p": Point(float("nan"))})
    assert make_event({"p": Point(1.5)}).body == '{"p":{"x":1.5}}'


def test_null_and_finite_floats_in_a_mapping_are_kept() -> None:
    """A real null and ordinary floats serialize as given."""
    event = make_event({"x": None, "y": [1.5, -0.0, 1e308]})
    assert event.body == '{"x":null,"y":[1.5,-0.0,1e+308]}'


def test_an_invalid_payload_without_an_id_names_no_event() -> None:
    """A generated id was never stored: the error does not name one."""
    with pytest.raises(InvalidEvent) as exc_info:
        make_event(b'{"text":"caf\xe9"}')
    assert exc_info.value.event_id is None
    assert str(exc_info.value) == "body is not UTF-8 (byte 12)"


def test_non_utf8_bytes_raise_invalid_event_saying_so() -> None:
    """Bytes that are not UTF-8 raise InvalidEvent that says so, with the event id."""
    with pytest.raises(InvalidEvent, match="not UTF-8") as exc_info:
        make_event(b'{"text":"caf\xe9"}', event_id="evt-1")
    assert exc_info.value.event_id == "evt-1"
    assert "evt-1" in str(exc_info.value)


@pytest.mark.parametrize(
    "body",
    [b"", b"   ", b'{"a":', b"{'a': 1}", b"{a:1}", b'{"a":1}}', b"NaN"],
    ids=["empty", "blank", "truncated", "single-quotes", "bare-key", "trailing-brace", "nan"],
)
def test_invalid_json_raises_invalid_event_saying_so(body: bytes) -> None:
    """Text that is not JSON raises InvalidEvent that says the body is not valid JSON."""
    with pytest.raises(InvalidEvent, match="not valid JSON"):
        make_event(body, event_id="evt-1")


def test_a_str_body_with_a_lone_surrogate_raises_invalid_event() -> None:
    """A str that UTF-8 cannot encode (a lone surrogate character) is refused as InvalidEvent
    naming the character, never let through as an encoding error."""
    with pytest.raises(
        InvalidEvent, match="character at offset 11 is a lone surrogate"
    ) as exc_info:
        make_event('{"type": "a\ud800"}', event_id="evt-1")
    assert exc_info.value.event_id == "evt-1"


@pytest.mark.parametrize(
    "body",
    [b"[]", b'[{"type":"message.new"}]', b"1", b'"text"', b"null", b"true"],
    ids=["empty-array", "array", "number", "string", "null", "bool"],
)
def test_json_that_is_not_an_object_raises_invalid_event_saying_so(body: bytes) -> None:
    """A JSON array or scalar raises InvalidEvent that says the body must be an object."""
    with pytest.raises(InvalidEvent, match="must be a JSON object"):
        make_event(body, event_id="evt-1")


# --- size ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        RAW_BODY,
        RAW_BODY.decode("utf-8"),
        {"type": "message.new", "cid": "messaging:café", "text": "€" * 100 + "😀"},
    ],
    ids=["raw", "str", "dict"],
)
def test_size_bytes_is_the_sns_message_size_of_body_and_attributes(payload: Any) -> None:
    """Event.size_bytes equals limits.message_bytes(body, attributes), multibyte included."""
    event = make_event(payload, event_id="evt-1")
    assert event.size_bytes == limits.message_bytes(event.body, event.attributes)
    assert event.size_bytes > len(event.body)  # multibyte text and attributes both count


# --- wire codec ------------------------------------------------------------------------------


@given(text=st.text(), kind=st.text(max_size=30), received_at_s=st.floats(0, 4e9))
def test_wire_round_trip_keeps_the_event_exactly(
    text: str, kind: str, received_at_s: float
) -> None:
    """to_wire, a JSON encode/decode, then from_wire gives back the same event and body bytes."""
    # Given an event with any unicode text in its JSON body
    body = orjson.dumps({"type": kind, "text": text})
    event = make_event(body, received_at_s=received_at_s)
    # When it crosses the wire as JSON
    decoded = Event.from_wire(orjson.loads(orjson.dumps(event.to_wire())))
    # Then nothing changed
    assert decoded == event
    assert decoded.body.encode("utf-8") == body
    assert decoded.size_bytes == event.size_bytes
    assert decoded.received_at_s == received_at_s


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(None, id="none"),
        pytest.param(42, id="number"),
        pytest.param([], id="empty"),
        pytest.param(["evt-1", "{}", {}], id="three-items"),
        pytest.param(["evt-1", "{}", {}, 1.0, "extra"], id="five-items"),
        pytest.param(["evt-1", "{}", "not-a-map", 1.0], id="attributes-string"),
        pytest.param(["evt-1", "{}", 7, 1.0], id="attributes-number"),
        pytest.param(["evt-1", "{}", {}, "yesterday"], id="time-string"),
        pytest.param(["evt-1", "{}", {}, None], id="time-null"),
        pytest.param(["evt\n2026-11-28 [error] forged", "{}", {}, 1.0], id="id-with-newline"),
        pytest.param(["evt 1", "{}", {}, 1.0], id="id-with-space"),
        pytest.param(["", "{}", {}, 1.0], id="id-empty"),
        pytest.param(["e" * 129, "{}", {}, 1.0], id="id-too-long"),
    ],
)
def test_from_wire_on_malformed_items_raises_invalid_event(wire: Any) -> None:
    """A bundle item that is not [id, body, attributes, received_at_s] raises InvalidEvent."""
    with pytest.raises(InvalidEvent, match="malformed bundle item"):
        Event.from_wire(wire)


@pytest.mark.parametrize(
    "attributes",
    [{"event_id": 5}, {"type": None}, {7: "x"}],
    ids=["number-value", "null-value", "number-name"],
)
def test_from_wire_with_non_string_attributes_raises_invalid_event(attributes: Any) -> None:
    """Attributes whose names or values are not strings raise InvalidEvent, not a stray error."""
    with pytest.raises(InvalidEvent, match="malformed bundle item"):
        Event.from_wire(["evt-1", "{}", attributes, 1.0])
