"""Tests of relay.ingest.payload: bodies split into events whose text is the exact source slice."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.event import PAYLOAD_ATTRIBUTES
from relay.ingest.payload import MalformedBody, parse_body

WHITESPACE = ["", " ", "\n", "\t", "\r\n  ", "   \n\t "]


def test_a_single_object_is_one_element_with_the_whole_body_as_its_text() -> None:
    """A body that is one object is forwarded whole, surrounding whitespace included."""
    raw = b' \n{"type": "message.new" ,"n":1, "team": 7}\r\n'

    body = parse_body(raw)

    assert not body.is_array
    assert [element.text for element in body.elements] == [raw.decode()]
    # Only the attribute fields are read; one that is not a string reads as None.
    assert body.elements[0].fields == {
        **dict.fromkeys(PAYLOAD_ATTRIBUTES),
        "type": "message.new",
    }


def test_array_elements_keep_their_whitespace_escapes_and_key_order() -> None:
    """Each element of an array is cut out of the body as written, not re-serialized."""
    first = '{ "b" : 1 ,\n\t"a":"x,]}[{\\"" }'
    second = (
        '{"caf\\u00e9":"\\ud83d\\ude00 \\/ \\n","list":[1, {"k": []}, "]"],'
        '"cid":"m\\u00e9ssaging:1"}'
    )
    third = "{}"
    raw = f"\n[ {first}\r\n,\t{second},{third}  ]\n".encode()

    body = parse_body(raw)

    assert body.is_array
    assert [element.text for element in body.elements] == [first, second, third]
    assert body.elements[1].fields == {**dict.fromkeys(PAYLOAD_ATTRIBUTES), "cid": "méssaging:1"}
    assert body.elements[1].size_bytes == len(second.encode())


def test_non_object_elements_are_kept_for_the_caller_to_refuse() -> None:
    """Array elements that are not objects are reported with their kinds, not dropped here."""
    body = parse_body(b'[1, "two", null, [3], {"ok": true}, false]')

    assert [element.text for element in body.elements] == [
        "1",
        '"two"',
        "null",
        "[3]",
        '{"ok": true}',
        "false",
    ]
    assert [element.fields is None for element in body.elements] == [True] * 4 + [False, True]
    assert [element.kind for element in body.elements] == [
        "a number",
        "a string",
        "null",
        "an array",
        "an object",
        "a boolean",
    ]


def test_an_empty_array_has_no_elements() -> None:
    """`[]` (with any whitespace) is an array of nothing."""
    assert parse_body(b" [ \n ] ").elements == []
    assert parse_body(b"[]").elements == []


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b'{"a": "\xff"}', "not UTF-8 (invalid byte at offset 7)"),
        (b'{"a": 1', "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"a": 1} {"b": 2}', "not valid JSON"),
        (b'{"a": NaN}', "not valid JSON"),
        (b'[{"a": 1},]', "not valid JSON"),
        (b'{"a": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", "not valid JSON: nested too deeply"),
        (b'[1, {"a": "x" ]', "not valid JSON"),
        (b"42", "not a number"),
        (b'"text"', "not a string"),
        (b"null", "not null"),
        (b"true", "not a boolean"),
    ],
)
def test_malformed_bodies_say_what_is_wrong(raw: bytes, says: str) -> None:
    """Bodies that cannot be events raise MalformedBody naming the problem."""
    with pytest.raises(MalformedBody) as exc_info:
        parse_body(raw)

    assert says in exc_info.value.reason


def render(value: Any, rnd: random.Random) -> str:
    """JSON text of `value` with random whitespace and randomly escaped characters."""

    def ws() -> str:
        return rnd.choice(WHITESPACE)

    if isinstance(value, dict):
        members = [
            f"{ws()}{render(k, rnd)}{ws()}:{ws()}{render(v, rnd)}{ws()}" for k, v in value.items()
        ]
        return "{" + ",".join(members) + ws() + "}"
    if isinstance(value, list):
        return "[" + ",".join(f"{ws()}{render(item, rnd)}{ws()}" for item in value) + ws() + "]"
    if isinstance(value, str):
        return '"' + "".join(escape(char, rnd) for char in value) + '"'
    return json.dumps(value)


def escape(char: str, rnd: random.Random) -> str:
    if char in '"\\' or ord(char) < 0x20:
        return json.dumps(char)[1:-1]
    if char == "/" and rnd.random() < 0.5:
        return "\\/"
    if rnd.random() < 0.3:
        return json.dumps(char, ensure_ascii=True)[1:-1]  # \uXXXX, or a surrogate pair
    return char


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=5), max_size=6),
    st.randoms(use_true_random=False),
)
def test_array_elements_are_exact_slices_whatever_the_formatting(
    events: list[dict[str, Any]], rnd: random.Random
) -> None:
    """For any array of objects, written any valid way, each element's text is its exact slice."""
    texts = [render(event, rnd) for event in events]
    raw = (
        rnd.choice(WHITESPACE)
        + "["
        + ",".join(f"{rnd.choice(WHITESPACE)}{t}{rnd.choice(WHITESPACE)}" for t in texts)
        + rnd.choice(WHITESPACE)
        + "]"
    ).encode()

    body = parse_body(raw)

    assert [element.text for element in body.elements] == texts
    assert [json.loads(element.text) for element in body.elements] == events
