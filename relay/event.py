"""Events and their wire form: the body forwarded byte for byte, a stable id, SNS attributes.

An event's body is the producer's JSON text exactly as received; it is parsed once, to check it
and to read the attributes subscribers filter on, and never re-serialized.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import orjson

from relay import limits
from relay.errors import InvalidEvent
from relay.ids import uuid4_hex
from relay.json_text import FieldReader, NotJson

EVENT_ID_ATTRIBUTE = "event_id"
PAYLOAD_ATTRIBUTES = ("type", "cid", "channel_type", "team")
"""Top-level payload fields copied into String attributes when present (Stream's schema)."""
PAYLOAD_FIELDS = FieldReader(PAYLOAD_ATTRIBUTES)
"""Checks an event's JSON text and reads those fields, without building the rest of it."""

MAX_EVENT_ID_CHARS = limits.SNS_MAX_FIFO_ID_CHARS
"""An event id is a valid FIFO MessageDeduplicationId, so it can serve as one."""
MAX_ATTRIBUTE_VALUE_CHARS = 1_024
"""Longer payload fields are left out of the attributes: they are for filtering, not content."""


@dataclass(frozen=True, slots=True)
class Event:
    """One producer payload on its way to SNS."""

    id: str
    body: str
    attributes: Mapping[str, str]
    received_at_s: float
    size_bytes: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if not self.size_bytes:
            object.__setattr__(self, "size_bytes", limits.message_bytes(self.body, self.attributes))

    @property
    def type(self) -> str | None:
        """The payload's `type` (e.g. `message.new`), when it has one."""
        return self.attributes.get("type")

    def to_wire(self) -> list[Any]:
        """The JSON-ready form carried in a bundle."""
        return [self.id, self.body, dict(self.attributes), self.received_at_s]

    @classmethod
    def from_wire(cls, wire: list[Any]) -> Event:
        """Inverse of `to_wire`; raises InvalidEvent on a malformed item."""
        try:
            event_id, body, attributes, received_at_s = wire
            attributes = dict(attributes)
            for name, value in attributes.items():  # a loop: half the CPU of all() over pairs
                if not (isinstance(name, str) and isinstance(value, str)):
                    raise TypeError("attribute names and values must be strings")
            if not isinstance(event_id, str) or not isinstance(body, str):
                raise TypeError("event id and body must be strings")
            # Checked again here, not only where events are made: an id reaches the workers'
            # log lines and SNS, and a newline in one written into Redis by other means could
            # forge a log line.
            if not limits.is_fifo_id(event_id):
                raise ValueError(
                    f"event id is not 1-{MAX_EVENT_ID_CHARS} printable ASCII characters "
                    "without spaces"
                )
            return cls(event_id, body, attributes, float(received_at_s))
        except (TypeError, ValueError) as exc:
            raise InvalidEvent(f"malformed bundle item: {exc}") from None


def new_event_id() -> str:
    """A fresh event id, for payloads that come without one: a random (version 4) UUID in hex."""
    return uuid4_hex()


def check_event_id(event_id: str) -> str:
    """Return `event_id` if it can serve as an attribute and a FIFO dedup id; else InvalidEvent."""
    if not isinstance(event_id, str):
        raise InvalidEvent(f"event id must be a str, not {type(event_id).__name__}")
    if not limits.is_fifo_id(event_id):
        raise InvalidEvent(
            f"event id must be 1-{MAX_EVENT_ID_CHARS} printable ASCII characters without spaces",
            # Named only when it is the id given: a cut or unprintable one would mislead.
            event_id=event_id
            if event_id.isprintable() and len(event_id) <= MAX_EVENT_ID_CHARS
            else None,
        )
    return event_id


def make_event(
    payload: bytes | str | Mapping[str, Any],
    *,
    event_id: str | None = None,
    received_at_s: float | None = None,
) -> Event:
    """Build an Event from raw JSON (bytes or str, kept exactly) or a mapping (serialized once).

    Raises InvalidEvent when the payload is not UTF-8, not JSON, or not a JSON object. Its
    message names the event only by an id the caller gave: a generated one was never stored.
    """
    given_id = check_event_id(event_id) if event_id is not None else None
    event_id = given_id or new_event_id()
    if not isinstance(payload, Mapping | bytes | bytearray | memoryview | str):
        raise InvalidEvent(
            f"payload must be JSON text (bytes or str) or a mapping, not {type(payload).__name__}",
            event_id=given_id,
        )
    if isinstance(payload, Mapping):
        try:
            body_bytes = orjson.dumps(dict(payload))
        except TypeError as exc:
            raise InvalidEvent(
                f"payload is not JSON-serializable: {exc}", event_id=given_id
            ) from None
        # orjson writes NaN and infinities as null: refuse them rather than change the data.
        # Only a body with a null in it can hold one, so most payloads skip the walk.
        if b"null" in body_bytes and _holds_non_finite(payload):
            raise InvalidEvent(
                "payload holds NaN or an infinity, which JSON cannot represent",
                event_id=given_id,
            )
        parsed: Mapping[str, Any] | None = payload
        body = body_bytes.decode("utf-8")
        body_bytes_count: int | None = len(body_bytes)
    else:
        if isinstance(payload, bytes | bytearray | memoryview):
            try:
                raw = bytes(payload)
                body = raw.decode("utf-8")
                body_bytes_count = len(raw)
            except UnicodeDecodeError as exc:
                raise InvalidEvent(
                    f"body is not UTF-8 (byte {exc.start})", event_id=given_id
                ) from None
        else:
            body = payload
            body_bytes_count = None  # counted once it is known to be valid text
        try:
            parsed = PAYLOAD_FIELDS.fields(body)
        except NotJson as exc:
            raise InvalidEvent(f"body is not valid JSON: {exc.reason}", event_id=given_id) from None
    if parsed is None:
        raise InvalidEvent("body must be a JSON object", event_id=given_id)
    attributes = attributes_for(parsed, event_id)
    return Event(
        id=event_id,
        body=body,
        attributes=attributes,
        received_at_s=time.time() if received_at_s is None else received_at_s,
        # The body's UTF-8 size is the byte count it arrived as: no second encode of it.
        size_bytes=limits.message_bytes(body, attributes, body_bytes=body_bytes_count),
    )


def _holds_non_finite(value: Any) -> bool:
    """Whether a NaN or an infinity sits anywhere orjson would serialize (dataclasses too)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, Mapping):
        return any(_holds_non_finite(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_non_finite(item) for item in value)
    if is_dataclass(value) and not isinstance(value, type):
        return any(_holds_non_finite(getattr(value, f.name)) for f in fields(value))
    return False


def attributes_for(payload: Mapping[str, Any], event_id: str) -> dict[str, str]:
    """The SNS String attributes of an event: the payload fields subscribers filter on, and its id.

    Only non-empty string fields are copied (SNS rejects empty values), so the count stays
    within SNS_MAX_ATTRIBUTES by construction.
    """
    attributes = {}
    for name in PAYLOAD_ATTRIBUTES:
        value = payload.get(name)
        if isinstance(value, str) and value and len(value) <= MAX_ATTRIBUTE_VALUE_CHARS:
            attributes[name] = value
    attributes[EVENT_ID_ATTRIBUTE] = event_id
    assert len(attributes) <= limits.SNS_MAX_ATTRIBUTES
    return attributes
