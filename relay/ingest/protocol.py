"""The HTTP protocol the ingest serves with: uvicorn's httptools protocol, each answer in one write.

uvicorn writes an answer's status line and headers to the socket when the app sends
`http.response.start`, and its body with a second write at `http.response.body`: two send(2)
calls and two TCP segments per answer, and the sender's side wakes for each. Under a wrk flood
the two writes were 16 % of the ingest's py-spy samples. Here the head is held until the
body's first write and goes out with it. Measured with both ingests flooded at once (so the
VM's drift hits both alike): 9 % less CPU per request, 13 % more requests/s (medians of six
rounds), and wrk used 20 against 25 µs per request reading the answers.

What this takes from uvicorn's internals, and where it degrades rather than breaks:

- the protocol's `cycle` (the request being answered) and the cycle's `response_started` and
  `response_complete` flags: the head is the first write a cycle makes once its response has
  started. Without them every write passes straight through, as uvicorn's own. (With pipelined
  requests, the protocol's cycle is the last one read, so an answer written while another
  request waits behind it passes through too: the same bytes in the same order, in two writes.)
- `on_response_complete`, called when an answer is complete: it sends a head still held. Only
  an answer without a body write needs it, and HEAD, the one such answer uvicorn makes, is
  never held.

tests/ingest/test_protocol.py runs uvicorn's protocol against both, byte for byte, so an
upgrade that changes them fails there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeadHoldingTransport:
    """A connection's transport that holds each answer's head until the answer's next write.

    Every other write passes through at once: a `100 Continue` (written before the answer
    starts), a streamed answer's later chunks, uvicorn's own error answers.
    """

    __slots__ = ("_headed", "_held", "_protocol", "_transport")

    def __init__(self, transport: asyncio.Transport, protocol: HttpToolsProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._held: bytes | None = None
        self._headed: object = None
        """The cycle whose head was held last: its later writes are body."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
            return
        cycle = self._protocol.cycle
        if (
            cycle is not self._headed
            and getattr(cycle, "response_started", False)
            and not getattr(cycle, "response_complete", True)
            and cycle.scope["method"] != "HEAD"  # no body write follows a HEAD answer's head
        ):
            self._headed = cycle
            self._held = bytes(data)
            return
        self._transport.write(data)

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(chunks))

    def flush(self) -> None:
        """Send a held head now."""
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()  # an app that failed after its head: the head goes, as uvicorn sends it
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        # The rest of asyncio.Transport (reading flow control, extra info, abort) as it is.
        return getattr(self._transport, name)


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a HeadHoldingTransport (uvicorn.Config's `http`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadHoldingTransport(transport, self))  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()
