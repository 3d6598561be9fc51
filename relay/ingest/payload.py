"""What a `POST /events` body holds: one event, or a JSON array of events, each as its raw text.

The body is parsed once (orjson, strict UTF-8 and JSON) and never re-serialized. For an array,
each element's exact source text is cut out of the body by a scanner that records where the
top-level elements start and end, so odd whitespace, escapes and key order reach SNS unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from relay.limits import utf8_len

JSON_WHITESPACE = " \t\n\r"

# A JSON string (escapes included) or one structural character. Skipping whole strings is what
# keeps brackets and commas inside them from being taken for structure.
_TOKEN_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]')


MAX_ELEMENTS = 10_000
"""The most events one request may carry. Stream posts one event per request; a bigger array is
refused (413) before it is split, so one request never holds Redis, or the ingest's memory,
for long: 10,000 events are written in about 0.1 s, well within the ingest's 1 s deadline."""


class TooManyElements(ValueError):
    """The body is an array of more than MAX_ELEMENTS elements."""

    def __init__(self, count: int) -> None:
        self.reason = f"an array of {count} events is over the limit of {MAX_ELEMENTS} per request"
        super().__init__(self.reason)


class MalformedBody(ValueError):
    """The body is not UTF-8, not JSON, or neither an object nor an array; says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Element:
    """One event candidate: its exact source text, the text's size in UTF-8 bytes, and its
    parsed value (maybe not an object)."""

    text: str
    size_bytes: int
    value: Any


@dataclass(frozen=True, slots=True)
class Body:
    """A parsed body: `is_array` tells a one-element array from a single event."""

    is_array: bool
    elements: list[Element]


def parse_body(raw: bytes) -> Body:
    """Split a request body into elements; raises MalformedBody saying what is wrong, or
    TooManyElements."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedBody(f"body is not UTF-8 (invalid byte at offset {exc.start})") from None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"body is not valid JSON: {exc}") from None
    if isinstance(value, dict):
        return Body(False, [Element(text, len(raw), value)])
    if isinstance(value, list):
        if len(value) > MAX_ELEMENTS:
            raise TooManyElements(len(value))
        texts = element_texts(text)
        # The scanner runs on text orjson has just accepted, so the counts can only differ
        # through a bug here; failing loudly beats forwarding a wrong slice.
        assert len(texts) == len(value), "array scanner disagrees with the JSON parser"
        return Body(True, [Element(t, utf8_len(t), v) for t, v in zip(texts, value, strict=True)])
    raise MalformedBody(f"body must be a JSON object or an array of objects, not {kind_of(value)}")


def element_texts(text: str) -> list[str]:
    """The source text of each top-level element of the JSON array `text` (assumed valid)."""
    texts: list[str] = []
    depth = 0
    start = 0
    for match in _TOKEN_RE.finditer(text):
        char = text[match.start()]
        if char == '"':
            continue
        if char in "[{":
            depth += 1
            if depth == 1:
                start = match.end()
        elif char in "]}":
            depth -= 1
            if depth == 0:
                last = text[start : match.start()].strip(JSON_WHITESPACE)
                if last or texts:
                    texts.append(last)
                break
        elif depth == 1:
            texts.append(text[start : match.start()].strip(JSON_WHITESPACE))
            start = match.end()
    return texts


def kind_of(value: Any) -> str:
    """How an error message names the JSON type of `value`."""
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "an array"
    return "an object"
