"""The little HTTP the hot path needs, on raw ASGI: headers, a bounded body read, a JSON answer.

The body bound is enforced twice: on `Content-Length` before a byte of the body is read (so
uvicorn never sends `100 Continue` and the sender never uploads it), and while reading, for
chunked bodies that announce no length.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_JSON = (b"content-type", b"application/json")
_CLOSE = (b"connection", b"close")


@dataclass(slots=True)  # not frozen: made per request (see relay.ingest.payload.Element)
class Answer:
    """A JSON response; `close` ends the connection (after a body left unread)."""

    status: int
    body: dict[str, Any]
    retry_after_s: int | None = None
    close: bool = False


class ClientGone(Exception):
    """The client disconnected before its body was read; there is nobody to answer."""


class HeaderReader:
    """Reads the first value of each of some headers (lowercase names) from a request's scope."""

    __slots__ = ("_count", "_index")

    def __init__(self, names: Sequence[bytes]) -> None:
        self._index = {name: index for index, name in enumerate(names)}
        self._count = len(names)

    def values(self, scope: Scope) -> list[bytes | None]:
        """Each header's first value, in the order of the names, or None where absent."""
        values: list[bytes | None] = [None] * self._count
        for name, value in scope["headers"]:
            index = self._index.get(name)
            if index is not None and values[index] is None:
                values[index] = value
        return values


async def read_body(receive: Receive, length: bytes | None, max_bytes: int) -> bytes | Answer:
    """The whole body, or a 413 Answer as soon as it is known to exceed `max_bytes`.

    Raises ClientGone when the client disconnects first.
    """
    if length is not None:
        try:
            announced = int(length)
        except ValueError:
            return Answer(400, {"error": "Content-Length is not a number"}, close=True)
        if announced > max_bytes:
            return _too_large(f"body of {announced} bytes is over the limit of {max_bytes}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > max_bytes:
                return _too_large(f"body is over the limit of {max_bytes} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def respond(send: Send, answer: Answer) -> None:
    """Send `answer` as JSON, with `Retry-After` and `Connection: close` when it asks for them."""
    payload = orjson.dumps(answer.body)
    headers = [_JSON, (b"content-length", str(len(payload)).encode())]
    if answer.retry_after_s is not None:
        headers.append((b"retry-after", str(answer.retry_after_s).encode()))
    if answer.close:
        headers.append(_CLOSE)
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _too_large(reason: str) -> Answer:
    return Answer(413, {"error": reason}, close=True)
