"""The "floor" baseline: what this machine allows for the work, with nothing but the work.

Producers RPUSH `event_id SP body` items in pipelines; each consumer process pops up to a
hundred at a time (BLMPOP), reads the attributes the relay would add (one orjson parse), builds
PublishBatch form bodies by hand with yarl's quoter and POSTs them over one raw keep-alive
HTTP/1.1 connection, encoding the next batch while SNS answers the last. No dramatiq, no
botocore, no http.client, no signing, no retries: a failure stops the run.

Consumer: `python -m benchmarks.floor --redis URL --sns URL --topic ARN`.
"""

from __future__ import annotations

import argparse
import functools
import re
import socket
import urllib.parse
from collections.abc import Sequence

import orjson
import redis
import yarl

from relay.event import PAYLOAD_ATTRIBUTES

QUEUE_KEY = "floor:events"
POP_MAX_ITEMS = 100
BATCH_ENTRIES = 10
POP_TIMEOUT_S = 1.0
CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
_CONTENT_LENGTH_RE = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


@functools.cache
def _keys(number: int) -> tuple[str, str, tuple[tuple[str, str, str], ...]]:
    prefix = f"PublishBatchRequestEntries.member.{number}"
    attributes = tuple(
        (f"{entry}.Name", f"{entry}.Value.DataType", f"{entry}.Value.StringValue")
        for entry in (f"{prefix}.MessageAttributes.entry.{n}" for n in range(1, 11))
    )
    return f"{prefix}.Id", f"{prefix}.Message", attributes


def entry_pairs(number: int, event_id: str, body: str) -> list[tuple[str, str]]:
    """One PublishBatch entry's parameters, with the attributes the relay would set."""
    id_key, message_key, attribute_keys = _keys(number)
    pairs = [(id_key, str(number)), (message_key, body)]
    payload = orjson.loads(body)
    values = [(name, payload.get(name)) for name in PAYLOAD_ATTRIBUTES]
    values.append(("event_id", event_id))
    keys = iter(attribute_keys)
    for name, value in values:
        if isinstance(value, str) and value:
            name_key, type_key, value_key = next(keys)
            pairs += [(name_key, name), (type_key, "String"), (value_key, value)]
    return pairs


def encode_batch(topic_arn: str, items: Sequence[bytes]) -> bytes:
    """The form body of a PublishBatch of `items` (each `event_id SP body`)."""
    pairs = [("Action", "PublishBatch"), ("Version", "2010-03-31"), ("TopicArn", topic_arn)]
    for number, item in enumerate(items, 1):
        event_id, _, body = item.partition(b" ")
        pairs += entry_pairs(number, event_id.decode(), body.decode())
    return yarl.URL.build(query=pairs).raw_query_string.encode()


class Connection:
    """One keep-alive HTTP/1.1 connection, with one request in flight at most.

    Writing a request and reading its answer are separate steps, so the next batch is encoded
    while SNS works on the last one.
    """

    def __init__(self, url: str) -> None:
        where = urllib.parse.urlsplit(url)
        self.host = f"{where.hostname}:{where.port}"
        self.sock = socket.create_connection((where.hostname, where.port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.in_flight = False

    def send(self, body: bytes) -> None:
        if self.in_flight:
            self.finish()
        head = (
            f"POST / HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: {CONTENT_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.sock.sendall(head.encode() + body)
        self.in_flight = True

    def finish(self) -> None:
        """Read the answer to the request in flight; SystemExit unless SNS took every entry."""
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        found = _CONTENT_LENGTH_RE.search(head)
        length = int(found.group(1)) if found else 0
        while len(self.buffer) < length:
            self._read()
        answer, self.buffer = self.buffer[:length], self.buffer[length:]
        self.in_flight = False
        if not head.startswith(b"HTTP/1.1 200") or b"<Failed></Failed>" not in answer:
            raise SystemExit(f"SNS refused a batch: {head[:40]!r} {answer[:300]!r}")

    def _read(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise SystemExit("SNS closed the connection")
        self.buffer += chunk


def consume(redis_url: str, sns_url: str, topic_arn: str) -> None:
    """Move events from the list to SNS until terminated."""
    client = redis.Redis.from_url(redis_url)
    connection = Connection(sns_url)
    while True:
        items: list[bytes]
        if connection.in_flight:  # don't block with a request unanswered
            items = client.lpop(QUEUE_KEY, POP_MAX_ITEMS)  # type: ignore[assignment]
            if not items:
                connection.finish()
                continue
        else:
            popped = client.blmpop(
                POP_TIMEOUT_S, 1, QUEUE_KEY, direction="LEFT", count=POP_MAX_ITEMS
            )
            if not popped:
                continue
            items = popped[1]  # type: ignore[assignment]
        for start in range(0, len(items), BATCH_ENTRIES):
            connection.send(encode_batch(topic_arn, items[start : start + BATCH_ENTRIES]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--sns", required=True)
    parser.add_argument("--topic", required=True)
    args = parser.parse_args()
    consume(args.redis, args.sns, args.topic)


if __name__ == "__main__":
    main()
