"""Tests of workers.sns_lean: the lean PublishBatch path proven equivalent to boto3's.

Differential throughout: the same entries or the same fault go through boto3's SnsGateway and the
LeanSnsGateway, against botocore's serializer, moto's server (which checks SigV4 signatures when
IAM authentication is on), the local SNS and a canned HTTP server, and the outcomes must agree.
"""

from __future__ import annotations

import functools
import http.server
import itertools
import json
import os
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from unittest import mock

import boto3
import pytest
import yarl
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.credentials import (
    AssumeRoleCredentialFetcher,
    DeferredRefreshableCredentials,
    ReadOnlyCredentials,
)
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)
from botocore.parsers import ResponseParserError
from hypothesis import given, settings
from hypothesis import strategies as st
from moto.core.authorization import enable_iam_authentication
from moto.sts.models import sts_backends

from relay import demo_events
from relay.dead_letters import DeadLetters
from relay.errors import SnsUnavailable
from relay.event import make_event
from relay.keys import Keys
from relay.local_sns import LocalSnsServer
from relay.settings import Settings
from relay.store import RelayStore
from tests.helpers import MotoAws, free_port, moto_server
from tests.workers.test_sns import ERROR_TABLE, error_body
from workers import sns, sns_lean
from workers.publisher import Publisher, error_code
from workers.sns import (
    MISSING_FROM_RESPONSE,
    BatchEntry,
    ErrorKind,
    SnsGateway,
    classify_error,
    gateway_for,
    make_client,
    make_session,
)
from workers.sns_lean import LeanSnsGateway, encode_publish_batch, make_lean_gateway
from workers.sns_transport import HttpTransport

REGION = "us-east-1"
ACCOUNT = "123456789012"
TOPIC_ARN = f"arn:aws:sns:{REGION}:{ACCOUNT}:relay-events"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/relay-publisher"
SNS_KEY = "AKIALEANLEAKCHECK7F3A"
SNS_SECRET = "lean-leak-check-secret-9b1c"
EXTERNAL_ID = "lean-leak-check-external-id"
SECRETS = (SNS_KEY, SNS_SECRET, EXTERNAL_ID)

# Characters with a meaning in a form, a URL or JSON, and text beyond ASCII.
FORM_SPECIALS = "&=+%;/?:@~*!$'(),# \n\r\t\"\\[]{}<>^`|\x00"
WIDE = ["é", "ß", "中文", "日本語", "😀", "🇺🇳", "\u00a0", "\u2028", "\ufeff", "%41", "%zz", "+%2B"]


@pytest.fixture(autouse=True)
def clean_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """No RELAY_* or AWS_* variables, no config files, no instance metadata: nothing leaks in."""
    for name in list(os.environ):
        if name.startswith(("RELAY_", "AWS_")) or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "missing-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "missing-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def make_settings(**overrides: Any) -> Settings:
    """Settings from arguments only (static keys by default), never from `.env`."""
    values: dict[str, Any] = {
        "sns_topic_arn": TOPIC_ARN,
        "sns_key": SNS_KEY,
        "sns_secret": SNS_SECRET,
        "sns_client": "lean",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def both_gateways(**overrides: Any) -> tuple[SnsGateway, LeanSnsGateway]:
    """boto3's gateway and the lean one for the same settings."""
    settings = make_settings(**overrides)
    lean = make_lean_gateway(settings)
    assert isinstance(lean, LeanSnsGateway)
    return SnsGateway(make_client(settings)), lean


# --- strategies ----------------------------------------------------------------------------------


def text_from(characters: st.SearchStrategy[str], specials: str) -> st.SearchStrategy[str]:
    """Unicode text mixing `characters` with form specials and wide text (emoji, CJK, escapes)."""
    fragment = st.one_of(
        st.sampled_from(list(specials)), st.sampled_from(WIDE), st.text(characters, max_size=20)
    )
    return st.lists(fragment, max_size=20).map("".join)


texts = text_from(st.characters(codec="utf-8"), FORM_SPECIALS)
entry_ids = st.from_regex(r"[A-Za-z0-9_-]{1,80}", fullmatch=True)
attribute_names = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,30}", fullmatch=True)


def batches(body: st.SearchStrategy[str], *, fifo: bool) -> st.SearchStrategy[list[BatchEntry]]:
    """1 to 10 entries with distinct ids, 0 to 5 String attributes, and FIFO ids if `fifo`."""
    optional_id = st.none() | entry_ids if fifo else st.none()
    entry = st.builds(
        BatchEntry,
        id=entry_ids,
        body=body,
        attributes=st.dictionaries(attribute_names, body, max_size=5),
        group_id=optional_id,
        dedup_id=optional_id,
    )
    return st.lists(entry, min_size=1, max_size=10, unique_by=lambda e: e.id)


# --- the body, against botocore's serializer -----------------------------------------------------

EMPTY_RESULT = (
    '<PublishBatchResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/"><PublishBatchResult>'
    "<Successful/><Failed/></PublishBatchResult></PublishBatchResponse>"
)


class _Body:
    def __init__(self, content: bytes) -> None:
        self._content = content

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._content


@functools.cache
def capturing_client() -> tuple[Any, list[str]]:
    """A boto3 client that records each request body and answers without the network."""
    client = boto3.client(
        "sns",
        region_name=REGION,
        aws_access_key_id=SNS_KEY,
        aws_secret_access_key=SNS_SECRET,
        config=sns.botocore_config(),
    )
    bodies: list[str] = []

    def capture(request: Any, **_: Any) -> AWSResponse:
        bodies.append(request.body)
        return AWSResponse(request.url, 200, {}, _Body(EMPTY_RESULT.encode()))

    client.meta.events.register("before-send.sns.PublishBatch", capture)
    return client, bodies


def botocore_body(topic_arn: str, entries: list[BatchEntry]) -> str:
    """The body boto3's SnsGateway sends for these entries (botocore's query serializer)."""
    client, bodies = capturing_client()
    SnsGateway(client).publish_batch(topic_arn, entries)
    return bodies.pop()


def form(body: str) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(body, keep_blank_values=True, strict_parsing=True)


@given(entries=batches(texts, fifo=True), topic_suffix=texts)
def test_body_parses_to_the_parameters_botocore_sends(
    entries: list[BatchEntry], topic_suffix: str
) -> None:
    """For any entries the lean body parses back to botocore's parameters, and is its bytes."""
    topic_arn = TOPIC_ARN + topic_suffix
    expected = botocore_body(topic_arn, entries)
    lean = encode_publish_batch(topic_arn, entries).decode("ascii")
    assert form(lean) == form(expected)
    assert lean == expected


def test_the_encoder_is_yarls_c_quoter() -> None:
    """The quoter in use is yarl's compiled one, which passed the import-time self-check."""
    assert sns_lean.QUOTER_NAME == "yarl"
    assert type(sns_lean._QUOTER).__module__ == "yarl._quoting_c"


@pytest.mark.parametrize("char", list("&=+;%/?:@#!$'()*,~ "))
def test_form_characters_inside_values_cannot_corrupt_the_form(char: str) -> None:
    """A value holding `&`, `=`, `+`, `;`, `%`, `/`, `?`, `:`, `@`... parses back exactly."""
    value = f"a{char}b=c&d+e;f%41"
    body = encode_publish_batch(TOPIC_ARN, [BatchEntry("e", value, {"n": value})]).decode()
    parsed = form(body)
    assert parsed["PublishBatchRequestEntries.member.1.Message"] == [value]
    value_key = "PublishBatchRequestEntries.member.1.MessageAttributes.entry.1.Value.StringValue"
    assert parsed[value_key] == [value]
    assert len(parsed) == 8  # Action, Version, TopicArn, Id, Message, Name, DataType, Value
    # Only unreserved characters stay literal, as urllib (botocore) has them.
    escaped = body.split("Message=")[1].split("&")[0]
    assert escaped == urllib.parse.quote_plus(value, safe="")
    if char not in "~%":  # "~" is unreserved; "%" starts every escape
        assert char not in escaped


def test_unescaped_values_would_corrupt_the_form() -> None:
    """Why values are escaped: a literal `&`, `=` or `+` changes what the server parses."""
    value = "a&TopicArn=arn:x+y"
    naive = form(f"Message={value}")
    assert naive != {"Message": [value]}  # two parameters, and "+" read as a space
    # yarl's public query builder leaves `/?:@` literal; harmless in a form, but not botocore's.
    public = yarl.URL.build(query={"Message": "a/b?c:d@e"}).raw_query_string
    assert public == "Message=a/b?c:d@e"
    ours = encode_publish_batch(TOPIC_ARN, [BatchEntry("e", "a/b?c:d@e", {})]).decode()
    assert "Message=a%2Fb%3Fc%3Ad%40e" in ours


def test_a_lone_surrogate_is_refused_as_botocore_refuses_it() -> None:
    """A lone surrogate raises UnicodeEncodeError in both paths, rather than being dropped."""
    entries = [BatchEntry("e", "a\ud800b", {})]
    with pytest.raises(UnicodeEncodeError):
        botocore_body(TOPIC_ARN, entries)
    with pytest.raises(UnicodeEncodeError):
        encode_publish_batch(TOPIC_ARN, entries)


def test_a_value_that_is_not_a_str_is_a_relay_bug_in_both_paths() -> None:
    """A non-str attribute value raises ParamValidationError, classified RELAY_BUG, as boto3's."""
    boto, lean = both_gateways()
    entries = [BatchEntry("e", "{}", {"type": 1})]  # type: ignore[dict-item]
    for gateway in (boto, lean):
        with pytest.raises(ParamValidationError) as exc_info:
            gateway.publish_batch(TOPIC_ARN, entries)
        assert classify_error(exc_info.value) is ErrorKind.RELAY_BUG


def test_more_than_ten_entries_and_attributes_are_sent_for_sns_to_refuse() -> None:
    """Past SNS's counts the body still matches botocore's, so SNS gives the same error."""
    attributes = {f"a{n}": str(n) for n in range(12)}
    entries = [BatchEntry(f"e{n}", "x", attributes) for n in range(12)]
    assert encode_publish_batch(TOPIC_ARN, entries).decode() == botocore_body(TOPIC_ARN, entries)


# --- moto: both accepted, same result ------------------------------------------------------------


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoAws]:
    """moto's server for the module (it checks signatures once IAM authentication is on)."""
    with moto_server() as aws:
        yield aws


_names = itertools.count()
# SNS and SQS carry only XML characters, so no controls here: moto would drop such a message.
moto_texts = text_from(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Co", "Cn")),
    FORM_SPECIALS.replace("\x00", ""),
).filter(bool)


def moto_gateways(aws: MotoAws) -> tuple[SnsGateway, LeanSnsGateway]:
    return both_gateways(sns_key="testing", sns_secret="testing", sns_endpoint_url=aws.url)


def received(aws: MotoAws, queue_url: str, count: int) -> list[tuple[str, str]]:
    """What a raw-delivery queue got: (body, attributes as JSON), sorted."""
    messages = aws.receive(queue_url, count, timeout_s=10, key=lambda m: m["MessageId"])
    assert len(messages) == count
    return sorted(
        (m["Body"], json.dumps(m.get("MessageAttributes", {}), sort_keys=True))
        for m in messages.values()
    )


@settings(max_examples=8, deadline=None)
@given(entries=batches(moto_texts, fifo=False))
def test_moto_gives_both_paths_the_same_result(moto: MotoAws, entries: list[BatchEntry]) -> None:
    """Published through boto3 and through the lean path, moto's subscribers get the same."""
    # Given two topics, each with a raw-delivery SQS subscriber
    boto, lean = moto_gateways(moto)
    outcomes = []
    for gateway in (boto, lean):
        n = next(_names)
        topic_arn = moto.create_topic(f"lean-diff-{n}")
        queue_url = moto.subscribe_queue(topic_arn, f"lean-diff-{n}", raw=True)
        # When the same entries are published through each path
        result = gateway.publish_batch(topic_arn, entries)
        failed = {id_: (f.code, f.sender_fault) for id_, f in result.failed.items()}
        outcomes.append(
            (sorted(result.successful), failed, received(moto, queue_url, len(result.successful)))
        )
    # Then the outcome per entry and what the subscriber received are identical
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0]  # moto accepted at least one entry: the comparison saw messages


# --- the local SNS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_server() -> Iterator[LocalSnsServer]:
    with LocalSnsServer() as server:
        yield server


@pytest.fixture
def local_sns(local_server: LocalSnsServer) -> LocalSnsServer:
    """The module's local SNS, emptied and without a fault."""
    local_server.reset(topics=True)
    return local_server


@pytest.mark.parametrize("client", ["lean", "boto3"])
def test_credentials_put_in_place_after_the_worker_started_are_used_without_a_restart(
    local_sns: LocalSnsServer,
    redis_client: Any,
    namespace: str,
    tmp_path: Any,
    client: str,
) -> None:
    """No credentials anywhere when the worker made its gateway (the default chain, resolved
    then): once a credentials file is written, the next attempt, the breaker's probe, resolves
    the chain again and publishes."""
    topic_arn = local_sns.create_topic("relay-events")
    settings = make_settings(
        sns_client=client,
        sns_topic_arn=topic_arn,
        sns_endpoint_url=local_sns.url,
        sns_key=None,
        sns_secret=None,
    )
    keys = Keys(namespace)
    publisher = Publisher(
        settings,
        sns.gateway_for(settings),
        RelayStore(redis_client, keys),
        DeadLetters(redis_client, keys),
        sleep=lambda _s: None,
        renew_gateway=functools.partial(sns.renew_gateway, settings),
    )
    event = make_event(b'{"type":"message.new"}', event_id="e1")
    with pytest.raises(SnsUnavailable, match="NoCredentialsError"):
        publisher.publish([event])
    (tmp_path / "missing-credentials").write_text(
        "[default]\naws_access_key_id = AKIDLATER\naws_secret_access_key = written-later\n"
    )
    assert publisher.publish([event]).published == 1
    assert [
        m["attributes"]["event_id"]["StringValue"] for m in local_sns.messages(topic_arn=topic_arn)
    ] == ["e1"]


def stream_entries(count: int = 10) -> list[BatchEntry]:
    """Stream-shaped events, as the publisher turns them into entries."""
    events = [make_event(body) for body in demo_events.generate(count, oversize_every=None)]
    return [BatchEntry(str(n), event.body, event.attributes) for n, event in enumerate(events)]


def test_local_sns_records_identical_messages(local_sns: LocalSnsServer) -> None:
    """Stream events and awkward text go through both paths to byte-identical records."""
    # Given a topic and entries of every kind
    topic_arn = local_sns.create_topic("relay-events")
    special = "".join([FORM_SPECIALS.replace("\x00", ""), *WIDE])
    entries = [*stream_entries(9), BatchEntry("x", special, {"type": special, "k.v": "é"})]
    boto, lean = both_gateways(sns_endpoint_url=local_sns.url)
    # When each path publishes them
    boto_result = boto.publish_batch(topic_arn, entries)
    lean_result = lean.publish_batch(topic_arn, entries)
    # Then both were accepted whole and recorded the same bodies and attributes
    assert list(boto_result.successful) == list(lean_result.successful) == [e.id for e in entries]
    assert boto_result.failed == lean_result.failed == {}
    records = [(m["body"], m["attributes"]) for m in local_sns.messages()]
    assert records[:10] == records[10:]
    assert [body for body, _ in records[:10]] == [e.body for e in entries]


@pytest.mark.parametrize(
    ("code", "sender_fault"),
    [("InternalError", False), ("InvalidParameter", True), ("KMSThrottling", True)],
)
def test_entry_failures_are_reported_as_boto3_reports_them(
    local_sns: LocalSnsServer, code: str, sender_fault: bool
) -> None:
    """Entries the local SNS fails come back in BatchResult.failed with code and sender fault."""
    topic_arn = local_sns.create_topic("relay-events")
    entries = stream_entries(5)
    results = []
    for gateway in both_gateways(sns_endpoint_url=local_sns.url):
        local_sns.set_fault("entry_failure", code=code, sender_fault=sender_fault, count=1)
        results.append(gateway.publish_batch(topic_arn, entries))
    boto_result, lean_result = results
    assert lean_result.failed == boto_result.failed
    assert sorted(lean_result.failed) == ["0", "2", "4"]
    assert lean_result.failed["0"].code == code
    assert lean_result.failed["0"].sender_fault is sender_fault
    assert sorted(lean_result.successful) == sorted(boto_result.successful) == ["1", "3"]


def comparable(exc: ClientError) -> dict[str, Any]:
    """An error's response without what differs between two requests (id, date, length)."""
    response = json.loads(json.dumps(exc.response))
    metadata = response["ResponseMetadata"]
    metadata.pop("RequestId", None)
    metadata["HTTPHeaders"] = sorted(set(metadata["HTTPHeaders"]) - {"date", "x-amzn-requestid"})
    return {"type": type(exc).__name__, "text": str(exc), "response": response}


@pytest.mark.parametrize("mode", ["throttle", "error500", "unavailable503", "auth"])
def test_whole_request_faults_raise_what_boto3_raises(local_sns: LocalSnsServer, mode: str) -> None:
    """Each whole-request fault raises the same ClientError class, response and classification."""
    topic_arn = local_sns.create_topic("relay-events")
    errors = []
    for gateway in both_gateways(sns_endpoint_url=local_sns.url):
        local_sns.set_fault(mode, count=1)
        with pytest.raises(ClientError) as exc_info:
            gateway.publish_batch(topic_arn, stream_entries(2))
        errors.append(exc_info.value)
    boto_error, lean_error = errors
    assert comparable(lean_error) == comparable(boto_error)
    assert classify_error(lean_error) is classify_error(boto_error)
    assert error_code(lean_error) == error_code(boto_error)
    assert local_sns.stats()["requests"] == 2  # one attempt each


def test_read_timeout_is_transient(local_sns: LocalSnsServer) -> None:
    """An answer slower than the read timeout raises ReadTimeoutError, TRANSIENT."""
    topic_arn = local_sns.create_topic("relay-events")
    _, lean = both_gateways(sns_endpoint_url=local_sns.url)
    quick = LeanSnsGateway(lean.client, lean._credentials, read_timeout_s=0.2)
    local_sns.set_fault("slow", delay_s=1.0, count=1)
    with pytest.raises(ReadTimeoutError) as exc_info:
        quick.publish_batch(topic_arn, stream_entries(1))
    assert classify_error(exc_info.value) is ErrorKind.TRANSIENT
    # The server still publishes once its delay is over (hence at-least-once on a retry).
    local_sns.wait_for_published(1)


@pytest.fixture
def new_connections() -> Iterator[mock.MagicMock]:
    """Counts the TCP connections the lean path opens (botocore's are not its)."""
    original = HttpTransport._connect
    with mock.patch.object(HttpTransport, "_connect", autospec=True, side_effect=original) as spy:
        yield spy


def test_requests_reuse_one_keep_alive_connection(
    local_sns: LocalSnsServer, new_connections: mock.MagicMock
) -> None:
    """Sequential batches travel over one pooled connection."""
    topic_arn = local_sns.create_topic("relay-events")
    _, lean = both_gateways(sns_endpoint_url=local_sns.url)
    for _ in range(5):
        assert not lean.publish_batch(topic_arn, stream_entries(3)).failed
    assert new_connections.call_count == 1
    assert local_sns.stats()["published"] == 15


def test_threads_share_a_pool_of_max_pool_connections(
    local_sns: LocalSnsServer, new_connections: mock.MagicMock
) -> None:
    """Eight threads publishing at once share at most 8 pooled connections, none discarded."""
    topic_arn = local_sns.create_topic("relay-events")
    lean = make_lean_gateway(make_settings(sns_endpoint_url=local_sns.url), max_pool_connections=8)
    assert isinstance(lean, LeanSnsGateway)
    entries = stream_entries(2)
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            for _ in range(5):
                assert not lean.publish_batch(topic_arn, entries).failed
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=publish) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == [], [repr(e) for e in errors]
    assert local_sns.stats()["published"] == 80
    assert lean.transport.max_idle_connections == 8
    assert 1 <= new_connections.call_count <= 8
    assert len(lean.transport._idle) == new_connections.call_count  # every one kept


def test_connection_refused_is_transient_after_one_attempt(new_connections: mock.MagicMock) -> None:
    """A closed port raises EndpointConnectionError at once: TRANSIENT, one attempt."""
    _, lean = both_gateways(sns_endpoint_url=f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(EndpointConnectionError) as exc_info:
        lean.publish_batch(TOPIC_ARN, stream_entries(1))
    assert classify_error(exc_info.value) is ErrorKind.TRANSIENT
    assert new_connections.call_count == 1
    assert time.monotonic() - started < sns.CONNECT_TIMEOUT_S


def test_connection_closed_by_server_is_transient() -> None:
    """A server that closes the connection without answering gives ConnectionClosedError."""
    server = socket.create_server(("127.0.0.1", 0))

    def accept_and_close() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        conn.close()

    thread = threading.Thread(target=accept_and_close, daemon=True)
    thread.start()
    _, lean = both_gateways(sns_endpoint_url=f"http://127.0.0.1:{server.getsockname()[1]}")
    try:
        with pytest.raises(ConnectionClosedError) as exc_info:
            lean.publish_batch(TOPIC_ARN, stream_entries(1))
    finally:
        thread.join(timeout=5)
        server.close()
    assert classify_error(exc_info.value) is ErrorKind.TRANSIENT
    assert exc_info.value.kwargs.get("request") is None  # the signed request holds the token


# --- canned answers ------------------------------------------------------------------------------


class CannedSns:
    """An HTTP server answering every request with `status` and `body`; it records requests."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b""
        self.requests: list[tuple[dict[str, str], bytes]] = []
        canned = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                canned.requests.append((dict(self.headers), body))
                self.send_response(canned.status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(canned.body)))
                self.end_headers()
                self.wfile.write(canned.body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def canned() -> Iterator[CannedSns]:
    server = CannedSns()
    yield server
    server.close()


def raised(gateway: SnsGateway, entries: list[BatchEntry]) -> BaseException:
    with pytest.raises(Exception) as exc_info:  # noqa: PT011 (compared, whatever it is)
        gateway.publish_batch(TOPIC_ARN, entries)
    return exc_info.value


@pytest.mark.parametrize(("code", "status", "kind"), ERROR_TABLE)
def test_every_sns_error_code_raises_what_boto3_raises(
    canned: CannedSns, code: str, status: int, kind: ErrorKind
) -> None:
    """Each SNS error code of FACTS §2.1 raises the same ClientError, with the same kind."""
    canned.status, canned.body = status, error_body(code).encode()
    boto, lean = both_gateways(sns_endpoint_url=canned.url)
    boto_error, lean_error = (raised(g, stream_entries(1)) for g in (boto, lean))
    assert isinstance(lean_error, ClientError)
    assert isinstance(boto_error, ClientError)
    assert comparable(lean_error) == comparable(boto_error)
    assert classify_error(lean_error) is classify_error(boto_error) is kind


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (502, b"<html><body>Bad Gateway</body></html>"),
        (503, b""),
        (500, b"<!doctype html><title>oops</title>"),
        (200, b"not xml"),
        (400, b"<ErrorResponse><Error><Code>Throttling</Code></Error></ErrorResponse>"),
    ],
    ids=["html-502", "empty-503", "doctype-500", "bad-200", "no-namespace-400"],
)
def test_answers_that_are_not_sns_xml_fail_as_in_boto3(
    canned: CannedSns, status: int, body: bytes
) -> None:
    """Pages from a proxy, empty bodies and broken XML raise what boto3 raises for them."""
    canned.status, canned.body = status, body
    boto, lean = both_gateways(sns_endpoint_url=canned.url)
    boto_error, lean_error = (raised(g, stream_entries(1)) for g in (boto, lean))
    assert type(lean_error) is type(boto_error)
    assert classify_error(lean_error) is classify_error(boto_error)
    if isinstance(lean_error, ClientError):
        assert isinstance(boto_error, ClientError)
        assert comparable(lean_error) == comparable(boto_error)
    else:
        assert isinstance(lean_error, ResponseParserError)


def test_entries_missing_from_the_answer_are_failed_transient(canned: CannedSns) -> None:
    """An entry SNS lists neither as successful nor failed is MISSING_FROM_RESPONSE, TRANSIENT."""
    canned.body = (
        b'<PublishBatchResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
        b"<PublishBatchResult><Successful><member><Id>a</Id><MessageId>m-a</MessageId>"
        b"<SequenceNumber>1</SequenceNumber></member></Successful><Failed><member><Id>b</Id>"
        b"<Code>InternalError</Code><SenderFault>false</SenderFault></member></Failed>"
        b"</PublishBatchResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata>"
        b"</PublishBatchResponse>"
    )
    entries = [BatchEntry(id_, "{}", {}) for id_ in "abc"]
    boto, lean = both_gateways(sns_endpoint_url=canned.url)
    result = lean.publish_batch(TOPIC_ARN, entries)
    assert result == boto.publish_batch(TOPIC_ARN, entries)
    assert result.successful == {"a": "m-a"}
    assert result.failed["b"] == sns.EntryFailure("InternalError", "", False)
    assert result.failed["c"].code == MISSING_FROM_RESPONSE
    assert result.failed["c"].kind is ErrorKind.TRANSIENT


@pytest.mark.parametrize(
    "member",
    [b"<Code>InvalidParameter</Code>", b"<SenderFault>true</SenderFault>"],
    ids=["no SenderFault", "no Code"],
)
def test_a_failed_entry_missing_a_field_reads_the_same_in_both_clients(
    canned: CannedSns, member: bytes
) -> None:
    """SNS's model requires Code and SenderFault; should an answer lack one, both clients read
    the entry alike (boto3's used to raise KeyError, a relay bug to dramatiq)."""
    canned.body = (
        b'<PublishBatchResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
        b"<PublishBatchResult><Successful/><Failed><member><Id>a</Id>"
        + member
        + b"</member></Failed></PublishBatchResult></PublishBatchResponse>"
    )
    entries = [BatchEntry("a", "{}", {})]
    boto, lean = both_gateways(sns_endpoint_url=canned.url)
    result = lean.publish_batch(TOPIC_ARN, entries)
    assert boto.publish_batch(TOPIC_ARN, entries) == result
    assert result.successful == {}
    assert set(result.failed) == {"a"}


def test_request_is_signed_like_botocores(canned: CannedSns) -> None:
    """Both paths send the same body, content type, host and SigV4 scope and signed headers."""
    canned.body = EMPTY_RESULT.encode()
    entries = stream_entries(2)
    for gateway in both_gateways(sns_endpoint_url=canned.url):
        gateway.publish_batch(TOPIC_ARN, entries)
    (boto_headers, boto_body), (lean_headers, lean_body) = canned.requests
    assert lean_body == boto_body
    for name in ("Content-Type", "Host"):
        assert lean_headers[name] == boto_headers[name]

    def scope(headers: dict[str, str]) -> list[str]:
        credential, signed, _ = headers["Authorization"].split(", ")
        return [credential, signed]

    assert scope(lean_headers) == scope(boto_headers)
    assert f"Credential={SNS_KEY}/" in lean_headers["Authorization"]


def test_empty_batch_makes_no_request(canned: CannedSns) -> None:
    """Publishing no entries returns an empty result without calling SNS."""
    _, lean = both_gateways(sns_endpoint_url=canned.url)
    result = lean.publish_batch(TOPIC_ARN, [])
    assert (result.successful, result.failed, canned.requests) == ({}, {}, [])


# --- credentials, endpoint, settings -------------------------------------------------------------


def test_signs_with_the_sessions_credentials() -> None:
    """The lean path signs with the session's credentials object, the client's own."""
    settings = make_settings()
    session = make_session(settings)
    lean = make_lean_gateway(settings, session=session)
    assert isinstance(lean, LeanSnsGateway)
    assert lean._credentials is session.get_credentials()
    # botocore keeps the signer's credentials private; this is the one way to see them.
    assert lean._credentials is lean.client._request_signer._credentials  # type: ignore[attr-defined]


def allow_everything(aws: MotoAws) -> tuple[str, str]:
    """An IAM user and a role that may publish in moto; returns the user's (key, secret)."""
    iam = boto3.client(
        "iam",
        endpoint_url=aws.url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    policy = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        }
    )
    trust = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}
            ],
        }
    )
    name = f"relay-{next(_names)}"
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="all", PolicyDocument=policy)
    with_role = {r["RoleName"] for r in iam.list_roles()["Roles"]}
    if "relay-publisher" not in with_role:
        iam.create_role(RoleName="relay-publisher", AssumeRolePolicyDocument=trust)
        iam.put_role_policy(RoleName="relay-publisher", PolicyName="all", PolicyDocument=policy)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def test_moto_verifies_the_lean_signature(moto: MotoAws) -> None:
    """With IAM authentication on, moto accepts the lean signature and refuses a wrong secret."""
    key, secret = allow_everything(moto)
    topic_arn = moto.create_topic(f"signed-{next(_names)}")
    with enable_iam_authentication():
        boto, lean = both_gateways(sns_key=key, sns_secret=secret, sns_endpoint_url=moto.url)
        assert lean.publish_batch(topic_arn, stream_entries(3)).successful
        assert boto.publish_batch(topic_arn, stream_entries(3)).successful
        errors = [
            raised(g, stream_entries(1))
            for g in both_gateways(sns_key=key, sns_secret="wrong", sns_endpoint_url=moto.url)
        ]
    boto_error, lean_error = errors
    assert isinstance(lean_error, ClientError)
    assert isinstance(boto_error, ClientError)
    assert error_code(lean_error) == error_code(boto_error) == "SignatureDoesNotMatch"
    assert classify_error(lean_error) is ErrorKind.SYSTEMIC


def test_assumed_role_credentials_sign_and_are_refreshed(moto: MotoAws) -> None:
    """The lean path signs with AssumeRole credentials, and with new ones after a refresh."""
    # Given role settings and moto checking every signature
    key, secret = allow_everything(moto)
    topic_arn = moto.create_topic(f"role-{next(_names)}")
    settings = make_settings(
        sns_key=key,
        sns_secret=secret,
        sns_role_arn=ROLE_ARN,
        sns_external_id=EXTERNAL_ID,
        sns_endpoint_url=moto.url,
    )
    lean = make_lean_gateway(settings)
    assert isinstance(lean, LeanSnsGateway)
    credentials = lean._credentials
    assert isinstance(credentials, DeferredRefreshableCredentials)
    signed_with: list[str] = []
    original = lean.transport.post

    def spy(target: str, headers: dict[str, str], body: bytes) -> Any:
        signed_with.append(headers["Authorization"].split("/")[0].split("=")[1])
        return original(target, headers, body)

    sts = sts_backends[ACCOUNT]["aws"]
    before = len(sts.assumed_roles)
    with enable_iam_authentication(), mock.patch.object(lean.transport, "post", side_effect=spy):
        # When it publishes, the credentials expire, and it publishes again
        assert lean.publish_batch(topic_arn, stream_entries(1)).successful
        first = credentials.get_frozen_credentials()
        fetcher = credentials._refresh_using.__self__  # type: ignore[attr-defined]
        assert isinstance(fetcher, AssumeRoleCredentialFetcher)
        fetcher._cache.clear()
        credentials._expiry_time = credentials._time_fetcher()  # type: ignore[attr-defined]
        assert lean.publish_batch(topic_arn, stream_entries(1)).successful
    second = credentials.get_frozen_credentials()
    # Then each request was signed (and accepted) with the role credentials current at the time
    assert first.access_key.startswith("ASIA")
    assert first.token
    assert signed_with == [first.access_key, second.access_key]
    assert second.access_key != first.access_key
    assert len(sts.assumed_roles) - before == 2
    for hidden in (first.secret_key, first.token, EXTERNAL_ID, secret):
        assert hidden not in repr(lean)


def test_no_credentials_is_systemic() -> None:
    """With no credentials anywhere, a publish raises NoCredentialsError, classified SYSTEMIC."""
    lean = make_lean_gateway(make_settings(sns_key=None, sns_secret=None))
    with pytest.raises(NoCredentialsError) as exc_info:
        lean.publish_batch(TOPIC_ARN, stream_entries(1))
    assert classify_error(exc_info.value) is ErrorKind.SYSTEMIC


@pytest.mark.parametrize(
    ("region", "variable", "host"),
    [
        ("us-east-1", None, "sns.us-east-1.amazonaws.com"),
        ("eu-west-1", None, "sns.eu-west-1.amazonaws.com"),
        ("us-east-1", "AWS_USE_FIPS_ENDPOINT", "sns-fips.us-east-1.amazonaws.com"),
        ("ap-southeast-2", "AWS_USE_DUALSTACK_ENDPOINT", "sns.ap-southeast-2.api.aws"),
    ],
)
def test_endpoint_and_region_are_the_ones_botocore_sends_to(
    monkeypatch: pytest.MonkeyPatch, region: str, variable: str | None, host: str
) -> None:
    """Without an override the lean URL and region are those of boto3's own request."""
    if variable is not None:
        monkeypatch.setenv(variable, "true")
    settings = make_settings(sns_region=region)
    client = make_client(settings)
    urls: list[str] = []

    def capture(request: Any, **_: Any) -> AWSResponse:
        urls.append(request.url)
        return AWSResponse(request.url, 200, {}, _Body(EMPTY_RESULT.encode()))

    client.meta.events.register("before-send.sns", capture)
    SnsGateway(client).publish_batch(TOPIC_ARN, stream_entries(1))
    lean = make_lean_gateway(settings)
    assert isinstance(lean, LeanSnsGateway)
    assert urls == [lean.url] == [f"https://{host}/"]
    assert lean._region == region
    # TLS with certificate checks, as botocore does it
    tls = lean.transport.tls
    assert tls is not None
    assert (tls.verify_mode, tls.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert tls.cert_store_stats()["x509_ca"] > 0  # botocore's bundle


def test_a_proxy_falls_back_to_boto3(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With HTTPS_PROXY set the lean path is not used (it sends directly): boto3's gateway is."""
    monkeypatch.setenv("HTTPS_PROXY", "http://user:proxy-password@127.0.0.1:3128")
    gateway = make_lean_gateway(make_settings())
    assert type(gateway) is SnsGateway
    assert "proxy" in caplog.text
    assert "proxy-password" not in caplog.text


def test_gateway_for_follows_the_sns_client_setting() -> None:
    """`sns_client` lean gives this process one LeanSnsGateway; boto3 a plain SnsGateway."""
    lean = gateway_for(make_settings())
    assert isinstance(lean, LeanSnsGateway)
    assert gateway_for(make_settings()) is lean
    boto = gateway_for(make_settings(sns_client="boto3"))
    assert type(boto) is SnsGateway


def test_other_calls_go_through_the_client(local_sns: LocalSnsServer) -> None:
    """Publish and the topic's attributes are botocore's calls, inherited unchanged."""
    topic_arn = local_sns.create_topic("relay-events", attributes={"MaximumMessageSize": "65536"})
    _, lean = both_gateways(sns_endpoint_url=local_sns.url)
    assert lean.publish_one(topic_arn, stream_entries(1)[0])
    assert lean.max_message_bytes(topic_arn) == 65_536
    assert local_sns.stats()["requests_by_action"] == {"Publish": 1, "GetTopicAttributes": 1}


def test_secrets_never_in_reprs_or_errors(canned: CannedSns) -> None:
    """The key and secret appear in no repr and no error text of the lean path."""
    settings = make_settings(sns_endpoint_url=canned.url)
    lean = make_lean_gateway(settings)
    texts = [repr(lean), str(lean), repr(lean.transport)]
    canned.status, canned.body = 403, error_body("SignatureDoesNotMatch").encode()
    error = raised(lean, stream_entries(1))
    texts += [str(error), repr(error), json.dumps(getattr(error, "response", {}))]
    closed = make_lean_gateway(make_settings(sns_endpoint_url=f"http://127.0.0.1:{free_port()}"))
    error = raised(closed, stream_entries(1))
    texts += [str(error), repr(error), repr(getattr(error, "kwargs", {}))]
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


# --- the answer's fast path ----------------------------------------------------------------------


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, list[BatchEntry]]]:
    """Every PublishBatch answer the lean path parses, with its entries, as they come."""
    seen: list[tuple[bytes, list[BatchEntry]]] = []
    parse = sns_lean.parse_publish_batch

    def record(body: bytes, entries: list[BatchEntry]) -> sns.BatchResult:
        seen.append((body, list(entries)))
        return parse(body, entries)

    monkeypatch.setattr(sns_lean, "parse_publish_batch", record)
    return seen


def outcome(parse: Any, body: bytes, entries: list[BatchEntry]) -> Any:
    """What a parser returns, or the type and text of what it raises."""
    try:
        return parse(body, entries)
    except Exception as exc:  # compared: both parsers must fail alike
        return type(exc), str(exc)


# Taken before the `answers` fixture wraps it.
parse_publish_batch = sns_lean.parse_publish_batch


def assert_parsers_agree(body: bytes, entries: list[BatchEntry]) -> None:
    fast = outcome(parse_publish_batch, body, entries)
    assert fast == outcome(sns_lean.parse_publish_batch_xml, body, entries)


def fast_path_taken(body: bytes) -> bool:
    return sns_lean._all_successful(body) is not None


def test_fast_answer_reading_agrees_with_elementtree_on_moto_answers(
    moto: MotoAws, answers: list[tuple[bytes, list[BatchEntry]]]
) -> None:
    """moto's answers (all accepted, partly failed, FIFO) read the same both ways."""
    _, lean = moto_gateways(moto)
    standard = moto.create_topic(f"fast-{next(_names)}")
    fifo_name = f"fast-{next(_names)}.fifo"
    fifo = moto.sns.create_topic(Name=fifo_name, Attributes={"FifoTopic": "true"})["TopicArn"]
    entries = stream_entries(10)
    # a dedup id on a standard topic: moto fails those entries alone, InvalidParameter
    mixed = [e if n % 3 else replace(e, dedup_id=f"d{n}") for n, e in enumerate(entries)]
    fifo_entries = [replace(e, group_id="g", dedup_id=f"d{n}") for n, e in enumerate(entries)]
    assert set(lean.publish_batch(standard, entries).successful) == {e.id for e in entries}
    assert lean.publish_batch(standard, mixed).failed.keys() == {"0", "3", "6", "9"}
    assert len(lean.publish_batch(fifo, fifo_entries).successful) == 10
    assert len(answers) == 3
    assert fast_path_taken(answers[0][0])
    assert not fast_path_taken(answers[1][0])
    for body, sent in answers:
        assert_parsers_agree(body, sent)


def test_fast_answer_reading_agrees_with_elementtree_on_local_sns_answers(
    local_sns: LocalSnsServer, answers: list[tuple[bytes, list[BatchEntry]]]
) -> None:
    """The local SNS's answers, with failures whose code and message need XML escapes."""
    topic_arn = local_sns.create_topic("relay-events")
    _, lean = both_gateways(sns_endpoint_url=local_sns.url)
    assert not lean.publish_batch(topic_arn, stream_entries(10)).failed
    local_sns.set_fault("entry_failure", code="Bad<&>'\"Code", sender_fault=True, count=1)
    failed = lean.publish_batch(topic_arn, stream_entries(4)).failed
    assert failed["0"].code == "Bad<&>'\"Code"
    assert b"&lt;" in answers[1][0]
    assert b"&amp;" in answers[1][0]
    assert [fast_path_taken(body) for body, _ in answers] == [True, False]
    for body, sent in answers:
        assert_parsers_agree(body, sent)


_NS = b'xmlns="http://sns.amazonaws.com/doc/2010-03-31/"'
_OK = b"<member><Id>0</Id><MessageId>m-0</MessageId></member>"


def answer(successful: bytes = _OK, failed: bytes = b"<Failed/>", *, head: bytes = b"") -> bytes:
    return (
        head + b"<PublishBatchResponse " + _NS + b"><PublishBatchResult><Successful>" + successful
        + b"</Successful>" + failed + b"</PublishBatchResult><ResponseMetadata><RequestId>r-1"
        b"</RequestId></ResponseMetadata></PublishBatchResponse>"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("body", "fast"),
    [
        (answer(), True),
        (answer(failed=b""), True),
        (answer(failed=b"<Failed>\n</Failed>"), True),
        (answer(head=b'<?xml version="1.0" encoding="UTF-8"?>\n'), True),
        (
            answer(
                b"\n  <member>\n    <MessageId>m-0</MessageId>\r\n    <Id>0</Id>\n  </member>\n"
            ),
            True,
        ),
        (answer(_OK + b"<member><Id>0</Id><MessageId>m-again</MessageId></member>"), True),
        (answer(_OK.replace(b"m-0", b"")), True),
        (answer(b""), True),
        (answer(_OK + _OK.replace(b"0", b"1")), True),
        (answer(_OK.replace(b"m-0", b"m&amp;0")), False),
        (answer(_OK.replace(b"m-0", b"<![CDATA[m-0]]>")), False),
        (answer(_OK.replace(b"m-0", b"m-\r0")), False),
        (answer(_OK.replace(b"<Id>", b"<!-- c --><Id>")), False),
        (
            answer(_OK.replace(b"</MessageId>", b"</MessageId><SequenceNumber>1</SequenceNumber>")),
            False,
        ),
        (answer(_OK.replace(b"<Id>0</Id>", b"")), False),
        (answer(_OK.replace(b"</Id>", b"</MessageId>")), False),
        (answer(_OK.replace(b"</member>", b"")), False),
        (answer(failed=b"<Failed><member><Id>1</Id><Code>X</Code></member></Failed>"), False),
        (answer(head=b' <?xml version="1.0"?>'), False),
        (answer().replace(_NS, b'xmlns="urn:other"'), False),
        (answer().replace(b"r-1", b"r\x001"), False),
        (answer() + b"<extra/>", False),
        (b"not xml", False),
    ],
)
def test_fast_answer_reading_agrees_with_elementtree_on_edge_cases(body: bytes, fast: bool) -> None:
    """Answers of every shape read the same both ways; the fast path takes only plain ones."""
    entries = [BatchEntry(id_, "{}", {}) for id_ in "012"]
    assert fast_path_taken(body) is fast
    assert_parsers_agree(body, entries)


# --- the signature -------------------------------------------------------------------------------


def test_the_reused_signing_key_signs_as_botocore_does() -> None:
    """The lean signer's signatures equal botocore's as secret, day, region and service change."""
    keys = sns_lean._SigningKeys()
    cases = [
        ("secret-a", "20260101T000000Z", "us-east-1", "sns"),
        ("secret-a", "20260101T235959Z", "us-east-1", "sns"),  # same day: the kept key
        ("secret-a", "20260102T000000Z", "us-east-1", "sns"),  # a new day: a new key
        ("secret-b", "20260102T000000Z", "us-east-1", "sns"),  # a refreshed credential
        ("secret-b", "20260102T000000Z", "eu-west-3", "sns"),
        ("secret-b", "20260102T000000Z", "eu-west-3", "sqs"),
        ("secret-a", "20260101T000000Z", "us-east-1", "sns"),  # back to the first
    ]
    for secret, timestamp, region, service in cases:
        credentials = ReadOnlyCredentials(SNS_KEY, secret, None)
        request = AWSRequest(method="POST", url="https://sns.example/", data=b"x")
        request.context["timestamp"] = timestamp
        ours = sns_lean._SigV4Auth(credentials, service, region, keys)
        theirs = SigV4Auth(credentials, service, region)
        for text in ("string to sign", "another"):
            assert ours.signature(text, request) == theirs.signature(text, request)
    assert secret not in repr(keys)


def test_the_request_body_is_what_prepare_makes_of_it() -> None:
    """The signed request's body reads as botocore's prepared body, without preparing."""
    for data in (b"Action=PublishBatch&x=%2C", b"\xff"):
        ours = sns_lean._BodyRequest(method="POST", url="https://sns.example/", data=data)
        theirs = AWSRequest(method="POST", url="https://sns.example/", data=data)
        assert ours.body == theirs.body == data
