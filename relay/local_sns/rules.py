"""What SNS accepts as one message (a Publish, or one PublishBatch entry).

Body, subject, structure, attributes, size and FIFO ids. Sizes are UTF-8 bytes with every
attribute's name, type and value counted, against an inclusive limit (FACTS §1.1-1.3); error
codes are SNS's wire codes (FACTS §2.1).
"""

from __future__ import annotations

import base64
import binascii
import re
from decimal import Decimal, InvalidOperation
from typing import NamedTuple

import orjson

from relay.limits import SNS_MAX_SUBJECT_CHARS, attribute_bytes, attribute_name_error, utf8_len
from relay.local_sns.protocol import Params, SnsError, group

INVALID_PARAMETER = "InvalidParameter"
PARAMETER_VALUE_INVALID = "ParameterValueInvalid"
"""InvalidParameterValueException's wire code: SNS's code for a bad message attribute."""

MAX_DATA_TYPE_BYTES = 256
MAX_NUMBER_ATTRIBUTE = Decimal(10) ** 9
_DATA_TYPE_RE = re.compile(r"^(String|Number|Binary)(\.[\x21-\x7e]+)?$")
# MessageGroupId and MessageDeduplicationId: 1-128 printable ASCII, no space (FACTS §3.3).
_FIFO_ID_RE = re.compile(r"^[\x21-\x7e]{1,128}$")

# Attribute names and data types already found valid: the same few come in every message, and
# checking each again cost a quarter of a PublishBatch's checks. Bounded: they are the client's.
_VALID_NAMES: set[str] = set()
_VALID_DATA_TYPES: set[str] = set()
_MAX_REMEMBERED = 4096

Attributes = dict[str, dict[str, str]]
"""As recorded: {name: {"DataType": ..., "StringValue" or "BinaryValue" (base64): ...}}."""


# NamedTuples rather than frozen dataclasses: built for every message, at a fifth of the cost.
class Message(NamedTuple):
    """A message SNS would accept, exactly as it was sent."""

    body: str
    attributes: Attributes
    size_bytes: int
    subject: str | None = None
    group_id: str | None = None
    dedup_id: str | None = None


class Draft(NamedTuple):
    """A message as sent, before any check: its parameters, attributes and size."""

    fields: Params
    attributes: list[Params]
    size_bytes: int


def read_message(fields: Params) -> Draft:
    """Group the attributes and count the size SNS checks, leniently: nothing is checked yet.

    Body bytes plus, for each attribute, its name, DataType and value bytes; a BinaryValue counts
    its decoded bytes, as the AWS extended client does ([uncertain] in FACTS §1.1).
    """
    attributes = group(fields, "MessageAttributes.entry")
    size = utf8_len(fields.get("Message", ""))
    for attribute in attributes:
        string_value = attribute.get("Value.StringValue")
        if string_value is not None:
            value_bytes = utf8_len(string_value)
        else:
            encoded = attribute.get("Value.BinaryValue", "")
            value_bytes = len(encoded) * 3 // 4 - encoded[-2:].count("=")
        size += attribute_bytes(
            attribute.get("Name", ""), attribute.get("Value.DataType", ""), value_bytes
        )
    return Draft(fields, attributes, size)


def check_message(draft: Draft, *, limit_bytes: int, fifo: bool, content_dedup: bool) -> Message:
    """The message if SNS would accept it on a topic with these settings.

    Raises SnsError with the code SNS answers.
    """
    fields, size_bytes = draft.fields, draft.size_bytes
    body = fields.get("Message")
    if not body:
        raise SnsError(INVALID_PARAMETER, "Invalid parameter: Empty message")
    _check_structure(body, fields.get("MessageStructure"))
    subject = fields.get("Subject")
    if subject is not None and not (
        0 < len(subject) <= SNS_MAX_SUBJECT_CHARS and subject.isascii() and subject.isprintable()
    ):
        raise SnsError(INVALID_PARAMETER, "Invalid parameter: Subject")
    attributes = _check_attributes(draft.attributes)
    if size_bytes > limit_bytes:
        raise SnsError(
            INVALID_PARAMETER,
            f"Invalid parameter: Message too long: {size_bytes} bytes with attributes, "
            f"over the topic's limit of {limit_bytes} bytes",
        )
    group_id, dedup_id = _check_fifo_ids(fields, fifo, content_dedup)
    return Message(body, attributes, size_bytes, subject, group_id, dedup_id)


def _check_structure(body: str, structure: str | None) -> None:
    if structure is None:
        return
    if structure != "json":
        raise SnsError(INVALID_PARAMETER, "Invalid parameter: MessageStructure")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise SnsError(
            INVALID_PARAMETER,
            "Invalid parameter: Message Structure - JSON message body failed to parse",
        ) from None
    if not isinstance(document, dict) or not isinstance(document.get("default"), str):
        raise SnsError(
            INVALID_PARAMETER,
            "Invalid parameter: Message Structure - No default entry in JSON message body",
        )


def _check_attributes(entries: list[Params]) -> Attributes:
    attributes: Attributes = {}
    for entry in entries:
        name = entry.get("Name", "")
        if name not in _VALID_NAMES:
            reason = attribute_name_error(name)
            if reason is not None:
                raise SnsError(
                    PARAMETER_VALUE_INVALID, f"Invalid message attribute name: {reason}."
                )
            _remember(_VALID_NAMES, name)
        if name in attributes:
            raise SnsError(PARAMETER_VALUE_INVALID, f"Message attribute name '{name}' is repeated.")
        data_type = entry.get("Value.DataType", "")
        if data_type not in _VALID_DATA_TYPES:
            _check_data_type(name, data_type)
            _remember(_VALID_DATA_TYPES, data_type)
        field = "BinaryValue" if data_type.startswith("Binary") else "StringValue"
        raw = entry.get(f"Value.{field}")
        if raw is None:
            raise SnsError(
                PARAMETER_VALUE_INVALID,
                f"The message attribute '{name}' with type '{data_type}' must use field '{field}'.",
            )
        if not raw or (field == "BinaryValue" and not _decode_binary(name, raw)):
            raise SnsError(
                PARAMETER_VALUE_INVALID,
                f"The message attribute '{name}' must contain non-empty message attribute "
                f"value for message attribute type '{data_type}'.",
            )
        if data_type.startswith("Number"):
            _check_number(name, raw)
        attributes[name] = {"DataType": data_type, field: raw}
    return attributes


def _check_data_type(name: str, data_type: str) -> None:
    if not data_type:
        raise SnsError(
            PARAMETER_VALUE_INVALID,
            f"The message attribute '{name}' must contain non-empty message attribute type.",
        )
    if utf8_len(data_type) > MAX_DATA_TYPE_BYTES or not _DATA_TYPE_RE.match(data_type):
        raise SnsError(
            PARAMETER_VALUE_INVALID,
            f"The message attribute '{name}' has an invalid message attribute type, the set "
            "of supported type prefixes is Binary, Number, and String.",
        )


def _remember(valid: set[str], value: str) -> None:
    if len(valid) < _MAX_REMEMBERED:
        valid.add(value)


def _decode_binary(name: str, encoded: str) -> bytes:
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise SnsError(
            PARAMETER_VALUE_INVALID, f"The message attribute '{name}' has an invalid binary value."
        ) from None


def _check_number(name: str, raw: str) -> None:
    try:
        number = Decimal(raw)
    except InvalidOperation:
        raise SnsError(
            PARAMETER_VALUE_INVALID, f"Could not cast message attribute '{name}' value to number."
        ) from None
    if not number.is_finite() or abs(number) > MAX_NUMBER_ATTRIBUTE:
        raise SnsError(
            PARAMETER_VALUE_INVALID,
            f"The message attribute '{name}' has a number outside -10^9 to 10^9.",
        )


def _check_fifo_ids(
    fields: Params, fifo: bool, content_dedup: bool
) -> tuple[str | None, str | None]:
    group_id = fields.get("MessageGroupId")
    dedup_id = fields.get("MessageDeduplicationId")
    for name, value in (("MessageGroupId", group_id), ("MessageDeduplicationId", dedup_id)):
        if value is not None and not _FIFO_ID_RE.match(value):
            raise SnsError(
                INVALID_PARAMETER,
                f"Invalid parameter: {name} Reason: must be 1-128 printable ASCII characters "
                "without spaces",
            )
    if not fifo:
        if dedup_id is not None:
            raise SnsError(
                INVALID_PARAMETER,
                "Invalid parameter: MessageDeduplicationId Reason: The request includes "
                "MessageDeduplicationId parameter that is not valid for this topic type",
            )
        return group_id, None  # a standard topic passes the group on for SQS fair queues
    if group_id is None:
        raise SnsError(
            INVALID_PARAMETER,
            "Invalid parameter: The MessageGroupId parameter is required for FIFO topics",
        )
    if dedup_id is None and not content_dedup:
        raise SnsError(
            INVALID_PARAMETER,
            "Invalid parameter: The topic should either have ContentBasedDeduplication enabled "
            "or MessageDeduplicationId provided explicitly",
        )
    return group_id, dedup_id
