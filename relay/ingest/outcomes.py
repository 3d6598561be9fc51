"""From a parsed body to events, and from what happened to them to the HTTP answer.

Each element becomes an event (its id from `X-Webhook-Id`, `<id>-<index>` in an array), is
dropped when over the SNS limit, or is refused when it is not a JSON object. The answer is 200
when every event was stored, 413 when every one was too large, and otherwise, for an array,
202 with each element's outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from relay.errors import InvalidEvent
from relay.event import (
    MAX_EVENT_ID_CHARS,
    Event,
    attributes_for,
    check_event_id,
    new_event_id,
)
from relay.ingest.http import Answer
from relay.ingest.payload import Body
from relay.limits import message_bytes


@dataclass(slots=True)
class Split:
    """A body's events by fate; `outcomes` (arrays only) lists each element's, in order."""

    limit_bytes: int
    events: list[Event] = field(default_factory=list)
    dropped: list[Event] = field(default_factory=list)
    invalid: int = 0
    outcomes: list[dict[str, Any]] | None = None


def event_ids(webhook_id: bytes | None, count: int, is_array: bool) -> list[str]:
    """Ids from `X-Webhook-Id` (`<id>-<index>` per array element), else fresh ones.

    Raises InvalidEvent when the header cannot make valid event ids.
    """
    if webhook_id is None:
        return [new_event_id() for _ in range(count)]
    if not webhook_id.isascii():
        raise InvalidEvent("must be printable ASCII")
    base = check_event_id(webhook_id.decode("ascii"))
    if not is_array:
        return [base]
    if count == 0:
        return []
    longest = len(f"{base}-{count - 1}")
    if longest > MAX_EVENT_ID_CHARS:
        raise InvalidEvent(
            f"as `<id>-<index>` for an array of {count} events it makes ids of up to {longest} "
            f"characters, over {MAX_EVENT_ID_CHARS}"
        )
    return [f"{base}-{index}" for index in range(count)]


def split(body: Body, ids: list[str], limit_bytes: int, received_at_s: float) -> Split:
    """Sort the body's elements into stored-to-be, dropped (too large) and invalid."""
    result = Split(limit_bytes, outcomes=[] if body.is_array else None)
    for index, (element, event_id) in enumerate(zip(body.elements, ids, strict=True)):
        if element.fields is None:
            result.invalid += 1
            _note(result, index, event_id, "invalid", f"not a JSON object but {element.kind}")
            continue
        attributes = attributes_for(element.fields, event_id)
        size_bytes = message_bytes(element.text, attributes, element.size_bytes)
        event = Event(event_id, element.text, attributes, received_at_s, size_bytes)
        if event.size_bytes > limit_bytes:
            result.dropped.append(event)
            _note(result, index, event_id, "dropped", _too_large(event, limit_bytes))
        else:
            result.events.append(event)
            _note(result, index, event_id, "enqueued")
    return result


def answer_for(result: Split) -> Answer:
    """The answer once `result`'s events (and drop records) are stored."""
    if result.outcomes is None:  # a single event, never invalid by the time it gets here
        if result.dropped:
            (event,) = result.dropped
            detail = _too_large(event, result.limit_bytes)
            return Answer(413, {"status": "dropped", "event_id": event.id, "detail": detail})
        return Answer(200, {"status": "enqueued", "event_id": result.events[0].id})
    if not result.dropped and not result.invalid:
        return Answer(200, {"status": "enqueued", "outcomes": result.outcomes})
    if not result.events and not result.invalid:
        return Answer(413, {"status": "dropped", "outcomes": result.outcomes})
    return Answer(202, {"status": "mixed", "outcomes": result.outcomes})


def _note(result: Split, index: int, event_id: str, status: str, detail: str = "") -> None:
    if result.outcomes is not None:
        outcome: dict[str, Any] = {"index": index, "event_id": event_id, "status": status}
        if detail:
            outcome["detail"] = detail
        result.outcomes.append(outcome)


def _too_large(event: Event, limit_bytes: int) -> str:
    return f"too_large: {event.size_bytes} > {limit_bytes} bytes"
