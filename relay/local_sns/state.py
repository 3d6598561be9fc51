"""The local SNS's memory: topics, every accepted message in order, counters, the fault in force.

The server's event loop writes it while a test or demo thread reads it, so every access holds one
lock (a Condition, so that readers can wait for messages instead of sleeping).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import threading
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, Any

import orjson

from relay.limits import (
    SNS_DEFAULT_MAX_MESSAGE_BYTES,
    SNS_MAX_ATTRIBUTES,
    validate_max_message_bytes,
)
from relay.local_sns.faults import Fault
from relay.local_sns.protocol import ACCOUNT_ID, SnsError
from relay.local_sns.rules import INVALID_PARAMETER, Message

FIFO_DEDUP_WINDOW_S = 300.0
"""SNS FIFO topics drop a repeated deduplication id for 5 minutes (FACTS §3.3)."""

_TOPIC_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_FIFO_TOPIC_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,251}\.fifo$")
_DEFAULT_POLICY = (
    '{"Version":"2008-10-17","Id":"__default_policy_ID","Statement":[{"Sid":"__default_statement_ID",'
    '"Effect":"Allow","Principal":{"AWS":"*"},"Action":["SNS:Publish","SNS:GetTopicAttributes"],'
    '"Resource":"%s","Condition":{"StringEquals":{"AWS:SourceOwner":"' + ACCOUNT_ID + '"}}}]}'
)


@dataclass(slots=True)
class Topic:
    """One topic: its attributes as set, its FIFO sequence and deduplication memory."""

    arn: str
    attributes: dict[str, str]
    sequence: int = 10**19
    seen: OrderedDict[str, tuple[str, str, float]] = field(default_factory=OrderedDict)

    @property
    def fifo(self) -> bool:
        return self.attributes.get("FifoTopic", "false").lower() == "true"

    @property
    def content_dedup(self) -> bool:
        return self.attributes.get("ContentBasedDeduplication", "false").lower() == "true"

    @property
    def max_message_bytes(self) -> int:
        return int(self.attributes.get("MaximumMessageSize", SNS_DEFAULT_MAX_MESSAGE_BYTES))

    def describe(self) -> dict[str, str]:
        """GetTopicAttributes: the usual read-only attributes, then every attribute set."""
        described = {
            "TopicArn": self.arn,
            "Owner": ACCOUNT_ID,
            "DisplayName": "",
            "Policy": _DEFAULT_POLICY % self.arn,
            "SubscriptionsConfirmed": "0",
            "SubscriptionsPending": "0",
            "SubscriptionsDeleted": "0",
        }
        if self.fifo:
            described["ContentBasedDeduplication"] = "false"
        return described | self.attributes


class LocalSnsState:
    """Topics, recorded messages and counters of one local SNS; safe to share across threads."""

    def __init__(
        self,
        *,
        record_file: str | os.PathLike[str] | None = None,
        max_recorded_messages: int | None = None,
    ) -> None:
        self._cond = threading.Condition()
        self._topics: dict[str, Topic] = {}
        self._messages: deque[dict[str, Any]] = deque(maxlen=max_recorded_messages)
        self._record: IO[bytes] | None = open(record_file, "ab") if record_file else None  # noqa: SIM115 (open for the server's life)
        self._fault = Fault()
        # UUID-shaped ids from a random prefix and a counter: unique for the server's life, and
        # uuid4() for every message would cost more than the rest of a Publish.
        self._id_prefix = str(uuid.uuid4())[:24]
        self._id_counter = itertools.count(1)
        self._reset_counters()

    def new_id(self) -> str:
        """A fresh message or request id, shaped like a UUID."""
        return f"{self._id_prefix}{next(self._id_counter):012x}"

    def _reset_counters(self) -> None:
        self._published = 0
        self._requests: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self._deduplicated = 0
        self._over_attribute_cap = 0

    # Topics ------------------------------------------------------------------------------------

    def create_topic(self, name: str, region: str, attributes: Mapping[str, str]) -> Topic:
        """The topic `name`, created if new; raises SnsError as CreateTopic does."""
        fifo = attributes.get("FifoTopic", "false").lower() == "true"
        if not (_FIFO_TOPIC_NAME_RE if fifo else _TOPIC_NAME_RE).match(name):
            raise SnsError(INVALID_PARAMETER, "Invalid parameter: Topic Name")
        arn = f"arn:aws:sns:{region}:{ACCOUNT_ID}:{name}"
        with self._cond:
            existing = self._topics.get(arn)
            if existing is not None:
                if any(existing.attributes.get(k) != v for k, v in attributes.items()):
                    raise SnsError(
                        INVALID_PARAMETER,
                        "Invalid parameter: Attributes Reason: Topic already exists with "
                        "different attributes",
                    )
                return existing
            topic = Topic(arn, {})
            # FifoTopic first: the FIFO-only attributes are checked against it.
            for key in sorted(attributes, key=lambda key: key != "FifoTopic"):
                _set_attribute(topic, key, attributes[key], creating=True)
            self._topics[arn] = topic
            return topic

    def topic(self, arn: str) -> Topic:
        """The topic with this ARN; raises SnsError `NotFound` (404) if there is none."""
        with self._cond:
            topic = self._topics.get(arn)
        if topic is None:
            raise SnsError("NotFound", "Topic does not exist", 404)
        return topic

    def set_topic_attribute(self, arn: str, name: str, value: str) -> None:
        """SetTopicAttributes; raises SnsError `NotFound` or `InvalidParameter`."""
        topic = self.topic(arn)
        with self._cond:
            _set_attribute(topic, name, value, creating=False)

    def delete_topic(self, arn: str) -> None:
        """Delete a topic; deleting one that does not exist is not an error, as on SNS."""
        with self._cond:
            self._topics.pop(arn, None)

    def topic_arns(self, region: str) -> list[str]:
        """The ARNs of this region's topics, in creation order."""
        with self._cond:
            return [arn for arn in self._topics if arn.split(":")[3] == region]

    # Requests ----------------------------------------------------------------------------------

    def count_request(self, action: str) -> None:
        with self._cond:
            self._requests[action] += 1

    def count_rejected(self, code: str) -> None:
        """Count a rejected request or a failed batch entry under its error code."""
        with self._cond:
            self._rejected[code] += 1

    def take_fault(self, action: str) -> Fault | None:
        """The fault this request suffers, if any, spending one of the fault's count."""
        with self._cond:
            fault = self._fault
            if fault.mode == "none" or action not in fault.actions:
                return None
            self._fault = fault.spent()
            return fault

    def record(self, topic: Topic, messages: Sequence[Message]) -> list[tuple[str, str | None]]:
        """Record accepted messages; (message id, FIFO sequence number or None) for each.

        On a FIFO topic a deduplication id seen in the last 5 minutes gets the first message's
        id and sequence number back and is not recorded again, as SNS answers a duplicate.
        """
        results: list[tuple[str, str | None]] = []
        lines: list[bytes] = []
        now = time.time()
        with self._cond:
            fifo = topic.fifo
            if fifo:
                _forget_expired(topic.seen, time.monotonic())
            for message in messages:
                message_id = self.new_id()
                sequence: str | None = None
                if fifo:
                    key = _dedup_key(topic, message)
                    first = topic.seen.get(key)
                    if first is not None:
                        self._deduplicated += 1
                        results.append((first[0], first[1]))
                        continue
                    topic.sequence += 1
                    sequence = str(topic.sequence)
                    topic.seen[key] = (message_id, sequence, time.monotonic() + FIFO_DEDUP_WINDOW_S)
                if len(message.attributes) > SNS_MAX_ATTRIBUTES:
                    self._over_attribute_cap += 1
                entry = _as_record(self._published, topic.arn, message_id, message, now, sequence)
                self._published += 1
                self._messages.append(entry)
                if self._record is not None:
                    lines.append(orjson.dumps(entry) + b"\n")
                results.append((message_id, sequence))
            if lines and self._record is not None:
                self._record.write(b"".join(lines))
                self._record.flush()  # other processes read the file as it grows
            self._cond.notify_all()
        return results

    # Inspection and control --------------------------------------------------------------------

    def page(
        self, offset: int = 0, limit: int | None = None, topic_arn: str | None = None
    ) -> dict[str, Any]:
        """Recorded messages from sequence number `offset` on: {"offset", "total", "messages"}.

        With `max_recorded_messages` set the oldest are forgotten; `offset` still counts from the
        first message recorded since the last reset.
        """
        with self._cond:
            first = self._published - len(self._messages)
            selected = list(itertools.islice(self._messages, max(offset - first, 0), None))
            total = self._published
        if topic_arn is not None:
            selected = [m for m in selected if m["topic_arn"] == topic_arn]
        if limit is not None:
            selected = selected[:limit]
        return {"offset": offset, "total": total, "messages": selected}

    def wait_published(self, count: int, timeout_s: float) -> bool:
        """Wait until `count` messages have been recorded; False if `timeout_s` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._published >= count, timeout_s)

    def stats(self) -> dict[str, Any]:
        """Counters since the last reset, and the fault in force."""
        with self._cond:
            return {
                "published": self._published,
                "requests": sum(self._requests.values()),
                "requests_by_action": dict(self._requests),
                "rejected": dict(self._rejected),
                "deduplicated": self._deduplicated,
                "over_attribute_cap": self._over_attribute_cap,
                "topics": len(self._topics),
                "fault": asdict(self._fault),
            }

    def set_fault(self, spec: Mapping[str, Any]) -> Fault:
        """Put a fault in force (mode "none" clears it); raises ValueError for a bad spec."""
        fault = Fault.from_spec(spec)
        with self._cond:
            self._fault = fault
        return fault

    def reset(self, *, topics: bool = False) -> None:
        """Forget recorded messages, counters and the fault; with `topics`, the topics too."""
        with self._cond:
            self._messages.clear()
            self._reset_counters()
            self._fault = Fault()
            for topic in self._topics.values():
                topic.seen.clear()
            if topics:
                self._topics.clear()
            if self._record is not None:
                self._record.truncate(0)

    def close(self) -> None:
        """Close the record file, if any; the in-memory record stays readable."""
        with self._cond:
            if self._record is not None:
                self._record.close()
                self._record = None


def _set_attribute(topic: Topic, name: str, value: str, *, creating: bool) -> None:
    if name == "MaximumMessageSize":
        try:
            validate_max_message_bytes(int(value))
        except ValueError:
            raise SnsError(INVALID_PARAMETER, "Invalid parameter: MaximumMessageSize") from None
    elif name == "FifoTopic":
        if not creating:
            raise SnsError(INVALID_PARAMETER, "Invalid parameter: AttributeName")  # fixed for life
    elif name in ("ContentBasedDeduplication", "FifoThroughputScope") and not topic.fifo:
        raise SnsError(INVALID_PARAMETER, f"Invalid parameter: {name} is for FIFO topics only")
    topic.attributes[name] = value


def _dedup_key(topic: Topic, message: Message) -> str:
    dedup_id = message.dedup_id or hashlib.sha256(message.body.encode()).hexdigest()
    if topic.attributes.get("FifoThroughputScope") == "MessageGroup":
        return f"{message.group_id}\0{dedup_id}"  # high-throughput mode dedups per group
    return dedup_id


def _forget_expired(seen: OrderedDict[str, tuple[str, str, float]], now: float) -> None:
    # Entries go in with a constant window, so the oldest expire first.
    while seen and next(iter(seen.values()))[2] <= now:
        seen.popitem(last=False)


def _as_record(
    seq: int, arn: str, message_id: str, message: Message, now: float, sequence: str | None
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "seq": seq,
        "topic_arn": arn,
        "message_id": message_id,
        "body": message.body,
        "attributes": message.attributes,
        "received_at": now,
    }
    optional = (
        ("subject", message.subject),
        ("message_group_id", message.group_id),
        ("message_deduplication_id", message.dedup_id),
        ("sequence_number", sequence),
    )
    entry.update((key, value) for key, value in optional if value is not None)
    return entry
