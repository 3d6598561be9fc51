"""What a `POST /events` body holds: one event, or a JSON array of events, each as its raw text.

The body is checked once (strict UTF-8, then strict JSON: relay.json_text) and never
re-serialized; only the fields SNS attributes are taken from are read out of it. For an array,
each element's exact source text is cut out of the body, so odd whitespace, escapes and key
order reach SNS unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.event import PAYLOAD_FIELDS
from relay.json_text import NotJson, array_elements, kind_of

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


# Element, Body (and the ingest's Answer and Delivery) are made for every request and never
# changed after: not frozen, as a frozen dataclass's __init__ sets each field through
# object.__setattr__, 0.3 µs more per object, about 1.5 µs of the ingest's CPU per request.
@dataclass(slots=True)
class Element:
    """One event candidate: its exact source text, the text's size in UTF-8 bytes, and the
    top-level fields attributes are taken from (relay.event.PAYLOAD_FIELDS), or None when it is
    not a JSON object (`kind` says what it is)."""

    text: str
    size_bytes: int
    fields: dict[str, str | None] | None
    kind: str = "an object"


@dataclass(slots=True)
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
        fields = PAYLOAD_FIELDS.fields(raw)
        if fields is not None:  # one event: Stream's case, read without building the rest of it
            return Body(False, [Element(text, len(raw), fields)])
        texts = array_elements(raw)
    except NotJson as exc:
        raise _not_json(exc) from None
    except ValueError:  # JSON, but neither an object nor an array
        raise MalformedBody(
            f"body must be a JSON object or an array of objects, not {kind_of(raw)}"
        ) from None
    if len(texts) > MAX_ELEMENTS:
        raise TooManyElements(len(texts))
    return Body(True, [_element(element) for element in texts])


def _element(raw: bytes) -> Element:
    try:
        fields = PAYLOAD_FIELDS.fields(raw)
    except NotJson as exc:  # checked with the whole body; only a bug could bring this here
        raise _not_json(exc) from None
    text = raw.decode("utf-8")  # a slice of a body already checked as UTF-8
    if fields is None:
        return Element(text, len(raw), None, kind_of(raw))
    return Element(text, len(raw), fields)


def _not_json(exc: NotJson) -> MalformedBody:
    return MalformedBody(f"body is not valid JSON: {exc.reason}")
