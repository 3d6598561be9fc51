"""The ingest's HTTP protocol: uvicorn's httptools protocol with each answer in one write.

Each case runs uvicorn's own protocol class and the relay's on a transport that records every
write, and checks that the bytes are the same while the relay's make one write per answer. So a
uvicorn upgrade that changes what relay.ingest.protocol relies on fails here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from relay.ingest.protocol import OneWriteHttpToolsProtocol

App = Callable[[Any, Any, Any], Awaitable[None]]
DEADLINE_S = 10.0

GET = b"GET /events HTTP/1.1\r\nHost: relay\r\n\r\n"


class RecordingTransport(asyncio.Transport):
    """What the socket would have been sent, one entry per write, and whether it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Connection:
    """One connection served by `protocol_class`, fed by hand."""

    def __init__(self, app: App, protocol_class: type[HttpToolsProtocol]) -> None:
        config = Config(app=app, http=protocol_class, lifespan="off", log_config=None)
        config.load()
        self.state = ServerState()
        self.transport = RecordingTransport()
        self.protocol = protocol_class(config=config, server_state=self.state, app_state={})
        self.protocol.connection_made(self.transport)

    def feed(self, data: bytes) -> None:
        self.protocol.data_received(data)

    async def until(self, condition: Callable[[], bool]) -> None:
        """Let the loop run until `condition` holds (a deadline, never a fixed sleep)."""
        async with asyncio.timeout(DEADLINE_S):
            while not condition():
                await asyncio.sleep(0)

    async def finish(self) -> None:
        """Wait until no request of this connection is still being answered."""
        await self.until(lambda: not self.state.tasks)


def both(scenario: Callable[[Connection], Awaitable[None]], app: App) -> tuple[Connection, ...]:
    """Run `scenario` on a connection served by uvicorn's protocol, then by the relay's."""

    async def run(protocol_class: type[HttpToolsProtocol]) -> Connection:
        connection = Connection(app, protocol_class)
        await scenario(connection)
        return connection

    return tuple(asyncio.run(run(cls)) for cls in (HttpToolsProtocol, OneWriteHttpToolsProtocol))


async def json_answer(scope: Any, receive: Any, send: Any) -> None:
    """Answers as the ingest's endpoint does: a head with Content-Length, then the body."""
    while (await receive()).get("more_body"):
        pass
    body = b'{"status":"enqueued"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def one_request(connection: Connection) -> None:
    connection.feed(GET)
    await connection.finish()


def test_an_answer_is_the_same_bytes_in_one_write() -> None:
    plain, relay = both(one_request, json_answer)

    assert len(plain.transport.writes) == 2  # uvicorn's own: the head, then the body
    assert relay.transport.writes == [b"".join(plain.transport.writes)]
    assert relay.transport.writes[0].endswith(b'\r\n\r\n{"status":"enqueued"}')


def test_pipelined_requests_are_answered_in_order_with_the_same_bytes() -> None:
    async def two_requests(connection: Connection) -> None:
        connection.feed(GET + GET)
        await connection.until(lambda: connection.protocol.server_state.total_requests == 2)
        await connection.finish()

    plain, relay = both(two_requests, json_answer)

    assert b"".join(relay.transport.writes) == b"".join(plain.transport.writes)
    # The first answer goes in uvicorn's two writes: while it is written, the protocol's cycle
    # is already the second request's, queued behind it. The second gets one write.
    assert relay.transport.writes[-1] == b"".join(plain.transport.writes[2:])


def test_a_head_request_gets_its_head_though_no_body_is_written() -> None:
    async def head(connection: Connection) -> None:
        connection.feed(b"HEAD /events HTTP/1.1\r\nHost: relay\r\n\r\n")
        await connection.finish()

    plain, relay = both(head, json_answer)

    assert relay.transport.writes == plain.transport.writes
    assert relay.transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")


def test_100_continue_goes_out_at_once_and_the_answer_after_the_body() -> None:
    body = b'{"type":"message.new"}'
    head = (
        b"POST /events HTTP/1.1\r\nHost: relay\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )

    async def expect_continue(connection: Connection) -> None:
        connection.feed(head)
        # The sender waits for the 100 before it sends the body: it must not be held.
        await connection.until(lambda: bool(connection.transport.writes))
        assert connection.transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
        connection.feed(body)
        await connection.finish()

    plain, relay = both(expect_continue, json_answer)

    continued, *answer = plain.transport.writes
    assert relay.transport.writes == [continued, b"".join(answer)]


def test_a_streamed_answer_sends_its_head_with_the_first_chunk_and_later_chunks_as_they_come() -> (
    None
):
    async def streamed(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b"second", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    plain, relay = both(one_request, streamed)

    assert len(plain.transport.writes) == 4  # head, then three chunks (chunked encoding)
    assert relay.transport.writes == [
        plain.transport.writes[0] + plain.transport.writes[1],
        *plain.transport.writes[2:],
    ]
    assert relay.transport.writes[0].endswith(b"\r\n\r\n5\r\nfirst\r\n")


def test_an_app_failing_after_its_head_sends_the_head_then_closes() -> None:
    async def fails_after_head(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("the app failed after starting its answer")

    plain, relay = both(one_request, fails_after_head)

    assert plain.transport.closed
    assert relay.transport.closed
    assert relay.transport.writes == plain.transport.writes
    assert relay.transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")


@pytest.mark.parametrize(
    "request_head", [b"Connection: close\r\n", b""], ids=["HTTP/1.1 Connection: close", "HTTP/1.0"]
)
def test_an_answer_that_ends_the_connection_is_written_before_the_close(
    request_head: bytes,
) -> None:
    async def closing(connection: Connection) -> None:
        version = b"HTTP/1.0" if not request_head else b"HTTP/1.1"
        connection.feed(b"GET /events " + version + b"\r\nHost: relay\r\n" + request_head + b"\r\n")
        await connection.finish()

    plain, relay = both(closing, json_answer)

    assert plain.transport.closed
    assert relay.transport.closed
    assert relay.transport.writes == [b"".join(plain.transport.writes)]
