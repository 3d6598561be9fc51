"""The lean path's HTTP/1.1: a pool of keep-alive connections to one SNS endpoint, each request
written at once and its answer read by httptools (llhttp, the parser uvicorn serves with).

urllib3 over http.client cost the workers 210 to 230 µs of CPU per 10-entry PublishBatch of
Stream events on the benchmark's machine, much of it the email package parsing the answer's
headers; this costs 60 to 70, and a bare socket 45 to 55 (the kernel copying the 50 KB body).
Failures are raised as botocore's URLLib3Session raises them (httpsession.py), so they classify
alike.
"""

from __future__ import annotations

import collections
import select
import socket
import ssl
import threading
import urllib.parse
import weakref
from collections.abc import Mapping
from dataclasses import dataclass

import httptools
from botocore.exceptions import (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
    SSLError,
)

RECV_BYTES = 64 * 1024
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    """Lower-case names; a repeated header's values joined with ", ", as http.client does."""
    body: bytes


class _Reading:
    """httptools' callbacks for one answer; a 1xx answer before it is read and forgotten."""

    __slots__ = ("chunks", "complete", "headers", "headers_done", "keep_alive", "parser", "status")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.status = 0

    def on_message_begin(self) -> None:
        self.headers, self.chunks = {}, []
        self.headers_done = self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.complete = not 100 <= self.status < 200  # the final answer follows an interim one
        # Read here: llhttp forgets it once the message is over.
        self.keep_alive = self.parser.should_keep_alive()

    def ends_at_eof(self) -> bool:
        """Whether the answer's body is delimited by the server closing (no length, not chunked):
        llhttp completes it only when told of the end, which httptools cannot tell it."""
        return (
            self.headers_done
            and "content-length" not in self.headers
            and "chunked" not in self.headers.get("transfer-encoding", "").lower()
        )


def _has_data_or_eof(sock: socket.socket) -> bool:
    """An idle keep-alive connection has nothing to read: readable means the server closed it
    (or broke the protocol), and a request sent on it would fail. poll, not select: no fd limit."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _close_all(idle: collections.deque[socket.socket]) -> None:
    while idle:
        idle.pop().close()


class HttpTransport:
    """Keep-alive connections to the endpoint at `url`; thread-safe, one request per connection
    at a time. At most `max_idle_connections` are kept between requests; more are opened when
    more threads send at once, and closed after."""

    def __init__(
        self,
        url: str,
        *,
        max_idle_connections: int,
        connect_timeout_s: float,
        read_timeout_s: float,
        ca_bundle: str | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"not an http or https URL: {url!r}")
        self.url = url
        self.address = (parts.hostname, parts.port or DEFAULT_PORTS[parts.scheme])
        self.max_idle_connections = max_idle_connections
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.tls: ssl.SSLContext | None = None
        if parts.scheme == "https":
            # Certificates and host names checked, against botocore's CA bundle unless another
            # is configured: what urllib3 does for botocore with CERT_REQUIRED.
            self.tls = ssl.create_default_context(cafile=ca_bundle)
        self._idle: collections.deque[socket.socket] = collections.deque()
        self._lock = threading.Lock()
        self._closed = False
        # A gateway replaced (new credentials) or dropped closes its connections with it.
        weakref.finalize(self, _close_all, self._idle)

    def __repr__(self) -> str:
        return f"HttpTransport(url={self.url!r})"

    def post(self, target: str, headers: Mapping[str, str], body: bytes) -> Answer:
        """POST `body` to `target` (path and query) with `headers`, and read the whole answer.

        Raises botocore's EndpointConnectionError, ConnectTimeoutError or SSLError when no
        connection can be made, ReadTimeoutError when the server is slower than the read
        timeout, ConnectionClosedError when the connection breaks or the answer is not HTTP,
        HTTPClientError for a header that would break the request.
        """
        head = self._head(target, headers, len(body))
        sock = self._connection()
        try:
            self._send(sock, head + body)
            answer, reusable = self._read(sock)
        except BaseException:
            sock.close()
            raise
        if reusable:
            self._release(sock)
        else:
            sock.close()
        return answer

    def close(self) -> None:
        """Close the idle connections, and each busy one when its request ends."""
        with self._lock:
            self._closed = True
            _close_all(self._idle)

    def _head(self, target: str, headers: Mapping[str, str], length: int) -> bytes:
        lines = [f"POST {target} HTTP/1.1\r\n"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
                # As http.client refuses it: a line break would end the header early.
                raise HTTPClientError(error=ValueError(f"invalid header {name!r}"))
            lines.append(f"{name}: {value}\r\n")
        # identity: what http.client asks for, so no answer comes compressed.
        lines.append(f"Accept-Encoding: identity\r\nContent-Length: {length}\r\n\r\n")
        return "".join(lines).encode("latin-1")

    def _connection(self) -> socket.socket:
        with self._lock:
            while self._idle:
                sock = self._idle.pop()  # the newest: the least likely to have timed out
                if not _has_data_or_eof(sock):
                    return sock
                sock.close()
        return self._connect()

    def _release(self, sock: socket.socket) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.max_idle_connections:
                self._idle.append(sock)
                return
        sock.close()

    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection(self.address, timeout=self.connect_timeout_s)
        except TimeoutError as exc:
            raise ConnectTimeoutError(endpoint_url=self.url, error=exc) from None
        except OSError as exc:  # refused, unreachable, no such host
            raise EndpointConnectionError(endpoint_url=self.url, error=exc) from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.address[0])
        except ssl.SSLError as exc:
            sock.close()
            raise SSLError(endpoint_url=self.url, error=exc) from None
        except TimeoutError as exc:
            sock.close()
            raise ConnectTimeoutError(endpoint_url=self.url, error=exc) from None
        except OSError as exc:
            sock.close()
            raise EndpointConnectionError(endpoint_url=self.url, error=exc) from None
        sock.settimeout(self.read_timeout_s)
        return sock

    def _send(self, sock: socket.socket, data: bytes) -> None:
        try:
            sock.sendall(data)
        except TimeoutError as exc:
            raise ReadTimeoutError(endpoint_url=self.url, error=exc) from None
        except OSError as exc:  # reset, broken pipe: the server closed it meanwhile
            raise ConnectionClosedError(endpoint_url=self.url, error=exc) from None

    def _read(self, sock: socket.socket) -> tuple[Answer, bool]:
        """The answer, and whether the connection can carry another request."""
        reading = _Reading()
        while not reading.complete:
            try:
                data = sock.recv(RECV_BYTES)
            except TimeoutError as exc:
                raise ReadTimeoutError(endpoint_url=self.url, error=exc) from None
            except OSError as exc:
                raise ConnectionClosedError(endpoint_url=self.url, error=exc) from None
            if not data:
                if reading.ends_at_eof():
                    answer = Answer(reading.status, reading.headers, b"".join(reading.chunks))
                    return answer, False
                raise ConnectionClosedError(
                    endpoint_url=self.url,
                    error=ConnectionError("the server closed the connection before its answer"),
                )
            try:
                reading.parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise ConnectionClosedError(endpoint_url=self.url, error=exc) from None
        answer = Answer(reading.status, reading.headers, b"".join(reading.chunks))
        return answer, reading.keep_alive
