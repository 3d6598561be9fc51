"""Tests of workers.sns_transport: the lean path's keep-alive HTTP/1.1 against real sockets.

A scripted server answers each request with bytes written by hand, so every way an answer can be
framed, cut or refused is met on a real connection; the TLS tests use a certificate made here.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
    SSLError,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.helpers import free_port, poll_until
from workers.sns import ErrorKind, classify_error
from workers.sns_transport import HttpTransport

CLOSE = b""
"""In a script: close the connection instead of answering."""
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
HEADERS = {"Host": "sns.local", "Content-Type": "text/plain"}


class ScriptedServer:
    """Reads each request whole, then writes the next answer of its script (CLOSE: hangs up).

    `close_after_answer` hangs up after each answer, as a server whose keep-alive timed out.
    `tls` wraps every accepted connection.
    """

    def __init__(
        self,
        script: list[bytes],
        *,
        close_after_answer: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.script = list(script)
        self.close_after_answer = close_after_answer
        self.tls = tls
        self.connections = 0
        self.hung_up = 0
        """Connections this server has closed."""
        self.requests: list[bytes] = []
        self.errors: list[BaseException] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while self.script:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.connections += 1
            try:
                if self.tls is not None:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                self._answer(conn)
            except (OSError, ssl.SSLError) as exc:
                self.errors.append(exc)
            finally:
                conn.close()
                self.hung_up += 1

    def _answer(self, conn: socket.socket) -> None:
        buffer = b""
        while self.script:
            while b"\r\n\r\n" not in buffer:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(buffer) < length:
                buffer += conn.recv(65536)
            self.requests.append(head + b"\r\n\r\n" + buffer[:length])
            buffer = buffer[length:]
            answer = self.script.pop(0)
            if answer == CLOSE:
                return
            conn.sendall(answer)
            if self.close_after_answer:
                return

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the thread
        self.listener.close()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive()


class Rig:
    """The servers and transports of one test, all closed after it."""

    def __init__(self) -> None:
        self.servers: list[ScriptedServer] = []
        self.transports: list[HttpTransport] = []

    def serve(self, script: list[bytes], **options: Any) -> ScriptedServer:
        self.servers.append(ScriptedServer(script, **options))
        return self.servers[-1]

    def transport(self, url: str, **overrides: Any) -> HttpTransport:
        options: dict[str, Any] = {
            "max_idle_connections": 4,
            "connect_timeout_s": 2.0,
            "read_timeout_s": 2.0,
        }
        options.update(overrides)
        self.transports.append(HttpTransport(url, **options))
        return self.transports[-1]

    def close(self) -> None:
        for client in self.transports:
            client.close()
        for server in self.servers:
            server.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    made = Rig()
    yield made
    made.close()


def test_answers_are_read_and_the_connection_kept(rig: Rig) -> None:
    """Three requests travel over one connection; each answer's status, headers and body read."""
    answer = b"HTTP/1.1 200 OK\r\nX-Amzn-RequestId: r-1\r\nContent-Length: 5\r\n\r\nhello"
    server = rig.serve([answer] * 3)
    client = rig.transport(server.url)
    for _ in range(3):
        got = client.post("/", HEADERS, b"body")
        assert (got.status, got.body, got.headers["x-amzn-requestid"]) == (200, b"hello", "r-1")
    assert server.connections == 1
    request = server.requests[0]
    assert request.startswith(b"POST / HTTP/1.1\r\n")
    assert b"\r\nContent-Length: 4\r\n" in request
    assert b"\r\nAccept-Encoding: identity\r\n" in request
    assert request.endswith(b"\r\n\r\nbody")


def test_a_chunked_answer_is_read_whole(rig: Rig) -> None:
    """Transfer-Encoding: chunked, in several chunks, gives the joined body."""
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\n<a>\r\n4;ext=1\r\n</a>\r\n0\r\n\r\n"
    )
    server = rig.serve([answer, OK])
    client = rig.transport(server.url)
    assert client.post("/", HEADERS, b"x").body == b"<a></a>"
    assert client.post("/", HEADERS, b"x").body == b"ok"
    assert server.connections == 1


def test_an_interim_answer_is_passed_over(rig: Rig) -> None:
    """A 100 Continue before the answer is not taken for it."""
    server = rig.serve([b"HTTP/1.1 100 Continue\r\n\r\n" + OK])
    got = rig.transport(server.url).post("/", HEADERS, b"x")
    assert (got.status, got.body) == (200, b"ok")


def test_an_answer_ended_by_closing_is_read_and_not_reused(
    rig: Rig,
) -> None:
    """No length and not chunked: the body runs to the close, and the next request reconnects."""
    server = rig.serve([b"HTTP/1.1 500 Oops\r\n\r\n<html>down</html>", OK], close_after_answer=True)
    client = rig.transport(server.url)
    got = client.post("/", HEADERS, b"x")
    assert (got.status, got.body) == (500, b"<html>down</html>")
    assert client.post("/", HEADERS, b"x").body == b"ok"
    assert server.connections == 2


def test_connection_close_is_honoured(rig: Rig) -> None:
    """An answer saying Connection: close is read by its length; the connection is not reused."""
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    server = rig.serve([answer, OK], close_after_answer=True)
    client = rig.transport(server.url)
    assert client.post("/", HEADERS, b"x").body == b"ok"
    assert client.post("/", HEADERS, b"x").body == b"ok"
    assert server.connections == 2
    assert server.errors == []


def test_a_connection_closed_while_idle_is_replaced(rig: Rig) -> None:
    """A kept connection the server closed since (its keep-alive timed out) is never sent on."""
    server = rig.serve([OK, OK], close_after_answer=True)
    client = rig.transport(server.url)
    client.post("/", HEADERS, b"x")
    # Then the server hangs up while the connection is idle; the next request still succeeds.
    poll_until(lambda: server.hung_up == 1, 5, what="the server hanging up")
    assert client.post("/", HEADERS, b"x").body == b"ok"
    assert server.connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        CLOSE,
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: two\r\n\r\n",
    ],
    ids=["no-answer", "short-body", "short-chunk", "short-head", "not-http", "bad-length"],
)
def test_a_broken_answer_is_connection_closed(rig: Rig, answer: bytes) -> None:
    """An answer cut short or not HTTP raises ConnectionClosedError (TRANSIENT), as urllib3's
    ProtocolError becomes in botocore; the connection is not kept."""
    server = rig.serve([answer, OK], close_after_answer=True)
    client = rig.transport(server.url)
    with pytest.raises(ConnectionClosedError) as exc_info:
        client.post("/", HEADERS, b"x")
    assert classify_error(exc_info.value) is ErrorKind.TRANSIENT
    assert client.post("/", HEADERS, b"x").body == b"ok"
    assert server.connections == 2


def test_a_slow_answer_is_a_read_timeout(rig: Rig) -> None:
    """No answer within the read timeout raises ReadTimeoutError (TRANSIENT)."""
    server = rig.serve([OK])
    client = rig.transport(server.url, read_timeout_s=0.2)
    server.script.insert(0, b"HTTP/1.1 200 OK\r\n")  # a head that never ends
    with pytest.raises(ReadTimeoutError) as exc_info:
        client.post("/", HEADERS, b"x")
    assert classify_error(exc_info.value) is ErrorKind.TRANSIENT


def test_a_refused_connection_is_an_endpoint_error(rig: Rig) -> None:
    """Nothing listening: EndpointConnectionError (TRANSIENT)."""
    with pytest.raises(EndpointConnectionError) as exc_info:
        rig.transport(f"http://127.0.0.1:{free_port()}").post("/", HEADERS, b"x")
    assert classify_error(exc_info.value) is ErrorKind.TRANSIENT


def test_a_connection_not_accepted_in_time_is_a_connect_timeout(rig: Rig) -> None:
    """A listener whose backlog is full drops the SYN: ConnectTimeoutError (TRANSIENT)."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    held = socket.create_connection(listener.getsockname(), timeout=1)  # fills the backlog
    try:
        client = rig.transport(
            f"http://127.0.0.1:{listener.getsockname()[1]}", connect_timeout_s=0.2
        )
        with pytest.raises(ConnectTimeoutError) as exc_info:
            client.post("/", HEADERS, b"x")
    finally:
        held.close()
        listener.close()
    assert classify_error(exc_info.value) is ErrorKind.TRANSIENT


@pytest.mark.parametrize("name", ["X-Evil", "X-Ev\nil"])
def test_a_line_break_in_a_header_is_refused_before_sending(rig: Rig, name: str) -> None:
    """A header that would end the head early raises HTTPClientError; nothing is sent."""
    server = rig.serve([OK])
    value = "a\r\nInjected: yes" if name == "X-Evil" else "a"
    with pytest.raises(HTTPClientError):
        rig.transport(server.url).post("/", {**HEADERS, name: value}, b"x")
    assert server.requests == []


def test_idle_connections_are_capped_and_closed(rig: Rig) -> None:
    """At most max_idle_connections stay open between requests; close() closes them."""
    server = rig.serve([OK] * 3)
    client = rig.transport(server.url, max_idle_connections=1)
    client.post("/", HEADERS, b"x")
    client.post("/", HEADERS, b"x")
    assert len(client._idle) == 1
    client.close()
    assert len(client._idle) == 0
    client.post("/", HEADERS, b"x")  # a closed transport still works, keeping nothing
    assert len(client._idle) == 0
    assert server.connections == 2


# --- TLS -----------------------------------------------------------------------------------------


def certificate(directory: Path, names: list[str]) -> tuple[Path, Path]:
    """A self-signed certificate for `names` (host names or IP addresses), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    alternatives: list[x509.GeneralName] = []
    for name in names:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternatives.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{names[0]}.pem", directory / f"{names[0]}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def test_https_with_the_servers_ca_succeeds(rig: Rig, tmp_path: Path) -> None:
    """A certificate the CA bundle vouches for, naming the host: the request goes through."""
    cert, key = certificate(tmp_path, ["127.0.0.1"])
    server = rig.serve([OK, OK], tls=server_tls(cert, key))
    client = rig.transport(server.url, ca_bundle=str(cert))
    assert client.post("/", HEADERS, b"x").body == b"ok"
    assert client.post("/", HEADERS, b"x").body == b"ok"
    assert server.connections == 1


@pytest.mark.parametrize("case", ["unknown-ca", "wrong-host"])
def test_https_refuses_a_certificate_it_cannot_trust(rig: Rig, tmp_path: Path, case: str) -> None:
    """A certificate from another CA, or for another host, raises SSLError; nothing is sent."""
    served, trusted = (
        (["127.0.0.1"], ["127.0.0.2"]) if case == "unknown-ca" else (["sns.example"], None)
    )
    cert, key = certificate(tmp_path, served)
    bundle = certificate(tmp_path, trusted)[0] if trusted else cert
    server = rig.serve([OK], tls=server_tls(cert, key))
    with pytest.raises(SSLError) as exc_info:
        rig.transport(server.url, ca_bundle=str(bundle)).post("/", HEADERS, b"x")
    assert server.requests == []
    assert classify_error(exc_info.value) is ErrorKind.TRANSIENT
