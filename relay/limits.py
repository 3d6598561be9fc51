"""SNS's size and shape rules: the one home of every limit the relay enforces.

Sizes are UTF-8 bytes, never characters (FACTS §1.1), and attributes count: name, data type
and value of each. Limits are inclusive: a message of exactly the limit is accepted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

SNS_DEFAULT_MAX_MESSAGE_BYTES = 262_144
"""SNS's default per-message limit (256 KiB), and the PublishBatch aggregate limit."""

SNS_MIN_MAX_MESSAGE_BYTES = 1_024
SNS_MAX_MAX_MESSAGE_BYTES = 1_048_576
"""A topic's `MaximumMessageSize` may be set anywhere in this range (FACTS §1.2)."""

SNS_MAX_BATCH_ENTRIES = 10
SNS_MAX_ATTRIBUTES = 10
"""More than 10 attributes makes raw-delivery SQS subscriptions drop the message (FACTS §1.3)."""

SNS_MAX_ATTRIBUTE_NAME_CHARS = 256
SNS_MAX_BATCH_ENTRY_ID_CHARS = 80
SNS_MAX_SUBJECT_CHARS = 100
SNS_MAX_FIFO_ID_CHARS = 128

STRING_DATA_TYPE = "String"
_STRING_DATA_TYPE_BYTES = len(STRING_DATA_TYPE)

_ATTRIBUTE_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_BATCH_ENTRY_ID_RE = re.compile(r"^[A-Za-z0-9_\-]{1,80}$")
_RESERVED_ATTRIBUTE_PREFIXES = ("aws.", "amazon.")
# MessageGroupId and MessageDeduplicationId: a-z A-Z 0-9 and ASCII punctuation (FACTS §3.3).
_FIFO_ID_RE = re.compile(rf"^[!-~]{{1,{SNS_MAX_FIFO_ID_CHARS}}}$")


def utf8_len(text: str) -> int:
    """Bytes of `text` in UTF-8. ASCII text, the common case, skips the encode."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def attribute_bytes(name: str, data_type: str, value_bytes: int) -> int:
    """Bytes one attribute of any data type adds: its name, its data type and its value."""
    return utf8_len(name) + utf8_len(data_type) + value_bytes


def attributes_bytes(attributes: Mapping[str, str]) -> int:
    """Bytes that String attributes add to a message: name, data type and value of each."""
    # Joined, two size checks instead of two per attribute: the ingest does this for every event.
    names, values = "".join(attributes), "".join(attributes.values())
    return utf8_len(names) + utf8_len(values) + _STRING_DATA_TYPE_BYTES * len(attributes)


def message_bytes(body: str, attributes: Mapping[str, str], body_bytes: int | None = None) -> int:
    """The size SNS checks against the topic limit: UTF-8 body plus every attribute.

    `body_bytes`, when the caller already knows the body's UTF-8 size (it holds the bytes the
    text was decoded from), saves encoding a non-ASCII body again.
    """
    return (utf8_len(body) if body_bytes is None else body_bytes) + attributes_bytes(attributes)


def validate_max_message_bytes(value: int) -> int:
    """Return `value` if a topic could have it as `MaximumMessageSize`; raise ValueError if not."""
    if not SNS_MIN_MAX_MESSAGE_BYTES <= value <= SNS_MAX_MAX_MESSAGE_BYTES:
        raise ValueError(
            f"a message size limit must be between {SNS_MIN_MAX_MESSAGE_BYTES} and "
            f"{SNS_MAX_MAX_MESSAGE_BYTES} bytes, got {value}"
        )
    return value


def attribute_name_error(name: str) -> str | None:
    """Why SNS would reject `name` as a message attribute name, or None if it is valid."""
    if not name:
        return "attribute name is empty"
    if len(name) > SNS_MAX_ATTRIBUTE_NAME_CHARS:
        return f"attribute name is longer than {SNS_MAX_ATTRIBUTE_NAME_CHARS} characters"
    if not _ATTRIBUTE_NAME_RE.fullmatch(name):
        return f"attribute name {name!r} has characters outside A-Z a-z 0-9 _ - ."
    if name.startswith(".") or name.endswith(".") or ".." in name:
        return f"attribute name {name!r} starts or ends with '.' or contains '..'"
    if name.lower().startswith(_RESERVED_ATTRIBUTE_PREFIXES):
        return f"attribute name {name!r} uses a reserved prefix (AWS. or Amazon.)"
    return None


def batch_entry_id_error(entry_id: str) -> str | None:
    """Why SNS would reject `entry_id` as a PublishBatch entry id, or None if it is valid."""
    if not _BATCH_ENTRY_ID_RE.fullmatch(entry_id):
        return (
            f"batch entry id {entry_id!r} must be 1-{SNS_MAX_BATCH_ENTRY_ID_CHARS} characters "
            "of A-Z a-z 0-9 - _"
        )
    return None


def is_fifo_id(value: str) -> bool:
    """Whether SNS takes `value` as a MessageGroupId or MessageDeduplicationId."""
    return _FIFO_ID_RE.fullmatch(value) is not None


T = TypeVar("T")


def pack_batches(
    items: Sequence[T], size_of: Callable[[T], int], max_batch_bytes: int
) -> list[list[T]]:
    """Split `items`, in order, into PublishBatch-sized groups.

    Each group has at most SNS_MAX_BATCH_ENTRIES items and a total size (by `size_of`) of at
    most `max_batch_bytes`, the aggregate limit that SNS applies to a whole request (FACTS §2).
    Every item must fit on its own; one that does not raises ValueError, since the caller was
    meant to drop it first.
    """
    batches: list[list[T]] = []
    current: list[T] = []
    current_bytes = 0
    for item in items:
        size = size_of(item)
        if size > max_batch_bytes:
            raise ValueError(f"item of {size} bytes exceeds the limit of {max_batch_bytes}")
        if current and (
            len(current) == SNS_MAX_BATCH_ENTRIES or current_bytes + size > max_batch_bytes
        ):
            batches.append(current)
            current, current_bytes = [], 0
        current.append(item)
        current_bytes += size
    if current:
        batches.append(current)
    return batches
