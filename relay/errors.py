"""The relay's exception tree: one base, names that state the fact.

Messages name the offending setting, event id or limit, and never a secret.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.event import Event


class RelayError(Exception):
    """Base of every error the relay raises on purpose."""


class ConfigError(RelayError):
    """A setting is missing or invalid; the message names the environment variable."""


class InvalidEvent(RelayError):
    """A payload is not an event the relay can forward (not UTF-8 JSON, not an object, ...).

    The caller's fault: never retried.
    """

    def __init__(self, reason: str, *, event_id: str | None = None) -> None:
        self.reason = reason
        self.event_id = event_id
        where = f"event {event_id}: " if event_id else ""
        super().__init__(f"{where}{reason}")


class EventTooLarge(RelayError):
    """An event's SNS message (body plus attributes) is over the topic's size limit.

    The caller's fault: never retried. The event was counted and recorded as dropped.
    """

    def __init__(self, event_id: str, size_bytes: int, limit_bytes: int) -> None:
        self.event_id = event_id
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes
        super().__init__(
            f"event {event_id} is {size_bytes} bytes as an SNS message (body plus attributes), "
            f"over the limit of {limit_bytes} bytes"
        )


class QueueUnavailable(RelayError):
    """Redis was unreachable, too slow to answer, or refused the write or the relay's access.

    `maybe_stored` is True when the failed write may still have been applied (a timeout, or a
    connection broken after it was sent); else nothing of it was stored. `report`, when set by
    `Producer.send_many`, says which events were stored before the failure.
    """

    report: object = None

    def __init__(self, message: str, *, maybe_stored: bool = False) -> None:
        super().__init__(message)
        self.maybe_stored = maybe_stored


class PublishError(RelayError):
    """Publishing to SNS failed in a way that may succeed later (throttling, 5xx, network)."""


class SnsUnavailable(PublishError):
    """SNS cannot take messages now: retries are spent, or credentials or the topic are wrong.

    Events are kept for a later attempt, never dead-lettered for this. `remaining` holds the
    events of the failed bundle that SNS has not yet accepted.
    """

    def __init__(self, message: str, remaining: Sequence[Event] = ()) -> None:
        super().__init__(message)
        self.remaining = list(remaining)
