"""Tests of workers.sns: credentials, client settings, error classification and batch results.

Errors are real botocore errors, produced by the client from canned HTTP responses (a
`before-send` hook, FACTS §6.5) or by moto; nothing is constructed by hand unless said so.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import boto3
import pytest
import urllib3.exceptions
from botocore.awsrequest import AWSResponse
from botocore.credentials import AssumeRoleCredentialFetcher, DeferredRefreshableCredentials
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.stub import Stubber
from moto.sts.exceptions import STSClientError
from moto.sts.models import STSBackend, sts_backends

from relay.settings import Settings
from tests.helpers import free_port
from workers import sns
from workers.sns import (
    MISSING_FROM_RESPONSE,
    BatchEntry,
    ErrorKind,
    SnsGateway,
    classify_entry_failure,
    classify_error,
    gateway_for,
    make_client,
    make_session,
)

REGION = "us-east-1"
ACCOUNT = "123456789012"
TOPIC_NAME = "relay-events"
TOPIC_ARN = f"arn:aws:sns:{REGION}:{ACCOUNT}:{TOPIC_NAME}"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/relay-publisher"

# Distinctive values, so a leak anywhere is found by a substring search.
SNS_KEY = "AKIALEAKCHECKKEY7F3A"
SNS_SECRET = "leak-check-secret-9b1c"
EXTERNAL_ID = "leak-check-external-id-2d4e"
SECRETS = (SNS_KEY, SNS_SECRET, EXTERNAL_ID)


pytestmark = pytest.mark.usefixtures("clean_aws_env")


def make_settings(**overrides: Any) -> Settings:
    """Settings from arguments only (static keys by default), never from `.env`."""
    values: dict[str, Any] = {
        "sns_topic_arn": TOPIC_ARN,
        "sns_key": SNS_KEY,
        "sns_secret": SNS_SECRET,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def create_topic(name: str = TOPIC_NAME, **attributes: str) -> str:
    """Create a topic in moto with static keys and return its ARN."""
    client = make_client(make_settings())
    return client.create_topic(Name=name, Attributes=attributes)["TopicArn"]


def subscribed_queue(topic_arn: str) -> tuple[Any, str]:
    """An SQS queue subscribed to the topic with raw delivery: (sqs client, queue url)."""
    sqs = boto3.client(
        "sqs", region_name=REGION, aws_access_key_id=SNS_KEY, aws_secret_access_key=SNS_SECRET
    )
    url = sqs.create_queue(QueueName="subscriber")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    make_client(make_settings()).subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=queue_arn,
        Attributes={"RawMessageDelivery": "true"},
    )
    return sqs, url


class _Body:
    def __init__(self, content: bytes) -> None:
        self._content = content

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._content


def canned_response(
    status: int, body: str, counter: list[str] | None = None
) -> Callable[..., AWSResponse]:
    """A `before-send` handler answering every request with this HTTP response."""

    def handler(request: Any, **_: Any) -> AWSResponse:
        if counter is not None:
            counter.append(request.url)
        return AWSResponse(request.url, status, {}, _Body(body.encode()))

    return handler


def error_body(code: str, message: str = "canned error") -> str:
    """An SNS (query protocol) error document."""
    return (
        '<ErrorResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
        f"<Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
        "<RequestId>canned-request</RequestId></ErrorResponse>"
    )


ENTRIES = [BatchEntry("e-1", '{"type":"message.new"}', {"type": "message.new"})]


# --- credentials ---------------------------------------------------------------------------------


def test_static_keys_client_publishes_through_moto(aws: None) -> None:
    """With RELAY_SNS_KEY/SECRET the client signs with them and a message reaches a subscriber."""
    # Given a topic with a raw-delivery SQS subscriber
    topic_arn = create_topic()
    sqs, url = subscribed_queue(topic_arn)
    settings = make_settings()
    # When the gateway publishes one message with static keys
    session = make_session(settings)
    message_id = SnsGateway(make_client(settings, session=session)).publish_one(
        topic_arn, BatchEntry("e-1", '{"type":"message.new","n":1}', {"type": "message.new"})
    )
    # Then the session used the static keys and the subscriber got the body and attribute
    credentials = session.get_credentials()
    assert credentials is not None
    assert credentials.get_frozen_credentials().access_key == SNS_KEY
    assert message_id
    received = sqs.receive_message(QueueUrl=url, MessageAttributeNames=["All"])["Messages"]
    assert [m["Body"] for m in received] == ['{"type":"message.new","n":1}']
    assert received[0]["MessageAttributes"]["type"]["StringValue"] == "message.new"


def test_client_has_one_attempt_short_timeouts_and_sized_pool() -> None:
    """The client makes one attempt, with 2 s/5 s timeouts, the given pool and endpoint."""
    settings = make_settings(sns_endpoint_url="http://127.0.0.1:4566")
    client = make_client(settings, max_pool_connections=32)
    config = client.meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 1}
    assert config.connect_timeout == sns.CONNECT_TIMEOUT_S == 2.0
    assert config.read_timeout == sns.READ_TIMEOUT_S == 5.0
    assert config.max_pool_connections == 32
    assert client.meta.endpoint_url == "http://127.0.0.1:4566"
    assert client.meta.region_name == REGION


def test_region_setting_overrides_the_arns_region() -> None:
    """RELAY_SNS_REGION, when set, is the client's region."""
    client = make_client(make_settings(sns_region="eu-west-1"))
    assert client.meta.region_name == "eu-west-1"


def test_assumed_role_with_external_id_gets_role_credentials(aws: None) -> None:
    """With a role, the client signs with STS credentials fetched with the external id."""
    # Given a topic and settings with static keys, a role and an external id
    topic_arn = create_topic()
    settings = make_settings(sns_role_arn=ROLE_ARN, sns_external_id=EXTERNAL_ID)
    session = make_session(settings)
    client = make_client(settings, session=session)
    credentials = session.get_credentials()
    # When the client publishes
    SnsGateway(client).publish_one(topic_arn, ENTRIES[0])
    # Then it signed with temporary credentials from AssumeRole, not the base keys
    assert isinstance(credentials, DeferredRefreshableCredentials)
    frozen = credentials.get_frozen_credentials()
    assert frozen.access_key.startswith("ASIA")
    assert frozen.access_key != SNS_KEY
    assert frozen.token
    # botocore keeps the signer's credentials private; this is the one way to see them.
    assert client._request_signer._credentials is credentials
    # And STS saw the role, the external id and the relay's session name
    (assumed,) = sts_backends[ACCOUNT]["aws"].assumed_roles
    assert (assumed.role_arn, assumed.external_id, assumed.session_name) == (
        ROLE_ARN,
        EXTERNAL_ID,
        "sns-relay",
    )


def test_assumed_role_credentials_refresh_through_sts(aws: None) -> None:
    """Expired role credentials are refreshed by calling AssumeRole again."""
    # Given role credentials already fetched once
    credentials = make_session(make_settings(sns_role_arn=ROLE_ARN)).get_credentials()
    assert isinstance(credentials, DeferredRefreshableCredentials)
    first = credentials.get_frozen_credentials().access_key
    # The refresh callable is the AssumeRole fetcher (private attributes: no public accessor).
    fetcher = credentials._refresh_using.__self__
    assert isinstance(fetcher, AssumeRoleCredentialFetcher)
    # When they expire (and the fetcher's in-memory cache with them)
    fetcher._cache.clear()
    credentials._expiry_time = credentials._time_fetcher()
    second = credentials.get_frozen_credentials().access_key
    # Then new credentials came from a second AssumeRole call
    assert second != first
    assert len(sts_backends[ACCOUNT]["aws"].assumed_roles) == 2


def test_assumed_role_uses_the_endpoint_override_for_sts() -> None:
    """With RELAY_SNS_ENDPOINT_URL, AssumeRole goes to that endpoint, not to AWS."""
    # Given a role and an endpoint where nothing listens
    endpoint = f"http://127.0.0.1:{free_port()}"
    settings = make_settings(sns_role_arn=ROLE_ARN, sns_endpoint_url=endpoint)
    credentials = make_session(settings).get_credentials()
    assert credentials is not None
    # When the credentials are first used, Then the STS call fails on that endpoint
    with pytest.raises(EndpointConnectionError) as exc_info:
        credentials.get_frozen_credentials()
    assert endpoint in str(exc_info.value)


def test_default_chain_uses_environment_keys(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without static keys or a role, the AWS default chain (here: environment keys) is used."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIADEFAULTCHAIN0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "default-chain-secret")
    topic_arn = create_topic()
    settings = make_settings(sns_key=None, sns_secret=None)
    session = make_session(settings)
    credentials = session.get_credentials()
    assert credentials is not None
    assert credentials.method == "env"
    assert credentials.get_frozen_credentials().access_key == "AKIADEFAULTCHAIN0001"
    assert SnsGateway(make_client(settings, session=session)).publish_one(topic_arn, ENTRIES[0])


def test_no_credentials_is_systemic() -> None:
    """With no credentials anywhere, a publish raises NoCredentialsError, classified SYSTEMIC."""
    gateway = SnsGateway(make_client(make_settings(sns_key=None, sns_secret=None)))
    with pytest.raises(NoCredentialsError) as exc_info:
        gateway.publish_batch(TOPIC_ARN, ENTRIES)
    assert classify_error(exc_info.value) is ErrorKind.SYSTEMIC


def test_role_without_source_credentials_is_systemic() -> None:
    """A role with nothing to assume it with raises NoCredentialsError, classified SYSTEMIC."""
    settings = make_settings(sns_key=None, sns_secret=None, sns_role_arn=ROLE_ARN)
    gateway = SnsGateway(make_client(settings))
    with pytest.raises(NoCredentialsError) as exc_info:
        gateway.publish_batch(TOPIC_ARN, ENTRIES)
    assert classify_error(exc_info.value) is ErrorKind.SYSTEMIC


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("AccessDenied", "User is not authorized to perform: sts:AssumeRole"),
        # A 4xx that would be PERMANENT on SNS: on the refresh it is about credentials.
        ("ValidationError", "1 validation error detected"),
    ],
)
def test_sts_error_during_refresh_is_systemic(aws: None, code: str, message: str) -> None:
    """An STS error while fetching role credentials surfaces from publish and is SYSTEMIC."""
    # Given STS refusing AssumeRole
    topic_arn = create_topic()
    gateway = SnsGateway(make_client(make_settings(sns_role_arn=ROLE_ARN)))
    with (
        mock.patch.object(STSBackend, "assume_role", side_effect=STSClientError(code, message)),
        pytest.raises(ClientError) as exc_info,
    ):
        # When the gateway publishes
        gateway.publish_batch(topic_arn, ENTRIES)
    # Then the error is the AssumeRole one, and it stops the fleet rather than the event
    assert exc_info.value.operation_name == "AssumeRole"
    assert exc_info.value.response["Error"]["Code"] == code
    assert classify_error(exc_info.value) is ErrorKind.SYSTEMIC


# --- whole-request errors (FACTS §2.1) -----------------------------------------------------------

ERROR_TABLE = [
    ("InvalidParameter", 400, ErrorKind.PERMANENT),
    ("ParameterValueInvalid", 400, ErrorKind.PERMANENT),
    ("ValidationException", 400, ErrorKind.PERMANENT),
    ("NotFound", 404, ErrorKind.SYSTEMIC),
    ("AuthorizationError", 403, ErrorKind.SYSTEMIC),
    ("InvalidSecurity", 403, ErrorKind.PERMANENT),
    ("EndpointDisabled", 400, ErrorKind.PERMANENT),
    ("PlatformApplicationDisabled", 400, ErrorKind.PERMANENT),
    ("KMSDisabled", 400, ErrorKind.SYSTEMIC),
    ("KMSNotFound", 400, ErrorKind.SYSTEMIC),
    ("KMSAccessDenied", 400, ErrorKind.SYSTEMIC),
    ("KMSInvalidState", 400, ErrorKind.PERMANENT),
    ("KMSOptInRequired", 403, ErrorKind.SYSTEMIC),
    ("KMSThrottling", 400, ErrorKind.TRANSIENT),
    ("InternalError", 500, ErrorKind.TRANSIENT),
    ("BatchRequestTooLong", 400, ErrorKind.RELAY_BUG),
    ("TooManyEntriesInBatchRequest", 400, ErrorKind.RELAY_BUG),
    ("EmptyBatchRequest", 400, ErrorKind.RELAY_BUG),
    ("InvalidBatchEntryId", 400, ErrorKind.RELAY_BUG),
    ("BatchEntryIdsNotDistinct", 400, ErrorKind.RELAY_BUG),
    ("Throttled", 429, ErrorKind.TRANSIENT),
    ("Throttling", 400, ErrorKind.TRANSIENT),
    ("ThrottlingException", 400, ErrorKind.TRANSIENT),
    ("ServiceUnavailable", 503, ErrorKind.TRANSIENT),
    # Credentials: AWS-wide codes.
    ("InvalidClientTokenId", 403, ErrorKind.SYSTEMIC),
    ("SignatureDoesNotMatch", 403, ErrorKind.SYSTEMIC),
    ("ExpiredToken", 403, ErrorKind.SYSTEMIC),
    ("AccessDenied", 403, ErrorKind.SYSTEMIC),
    ("UnrecognizedClientException", 400, ErrorKind.SYSTEMIC),
    # Codes the table does not list fall back on the HTTP status.
    ("BadGateway", 502, ErrorKind.TRANSIENT),
    ("SomethingForbidden", 403, ErrorKind.SYSTEMIC),
    ("SomethingNew", 400, ErrorKind.PERMANENT),
]


@pytest.mark.parametrize(("code", "status", "kind"), ERROR_TABLE)
def test_client_error_classification(code: str, status: int, kind: ErrorKind) -> None:
    """Each SNS error code, as botocore raises it from a real response, has its FACTS §2.1 kind."""
    # Given SNS answering every request with this error
    client = make_client(make_settings())
    sends: list[str] = []
    client.meta.events.register("before-send.sns", canned_response(status, error_body(code), sends))
    # When the gateway publishes a batch
    with pytest.raises(ClientError) as exc_info:
        SnsGateway(client).publish_batch(TOPIC_ARN, ENTRIES)
    # Then botocore made one attempt (no retries of its own) and the kind matches the table
    error = exc_info.value
    assert error.response["Error"]["Code"] == code
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert len(sends) == 1
    assert error.response["ResponseMetadata"]["RetryAttempts"] == 0
    assert classify_error(error) is kind


def test_connection_refused_is_transient_and_fails_fast() -> None:
    """A refused connection raises EndpointConnectionError at once: TRANSIENT, one attempt."""
    # Given an endpoint where nothing listens
    client = make_client(make_settings(sns_endpoint_url=f"http://127.0.0.1:{free_port()}"))
    sends: list[str] = []
    client.meta.events.register("before-send.sns", lambda request, **_: sends.append(request.url))
    # When the gateway publishes
    started = time.monotonic()
    with pytest.raises(EndpointConnectionError) as exc_info:
        SnsGateway(client).publish_batch(TOPIC_ARN, ENTRIES)
    elapsed_s = time.monotonic() - started
    # Then it failed after one attempt, well within the connect timeout
    assert classify_error(exc_info.value) is ErrorKind.TRANSIENT
    assert len(sends) == 1
    assert elapsed_s < sns.CONNECT_TIMEOUT_S


def test_connection_closed_by_server_is_transient() -> None:
    """A server that closes the connection without answering gives a TRANSIENT error."""
    # Given a server that accepts one connection and closes it
    server = socket.create_server(("127.0.0.1", 0))

    def accept_and_close() -> None:
        conn, _ = server.accept()
        conn.close()

    thread = threading.Thread(target=accept_and_close, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
    client = make_client(make_settings(sns_endpoint_url=endpoint))
    try:
        # When the gateway publishes
        with pytest.raises(ConnectionClosedError) as exc_info:
            SnsGateway(client).publish_batch(TOPIC_ARN, ENTRIES)
    finally:
        thread.join(timeout=5)
        server.close()
    # Then botocore reports the closed connection, classified TRANSIENT
    assert classify_error(exc_info.value) is ErrorKind.TRANSIENT


@pytest.mark.parametrize(
    "error",
    [
        ReadTimeoutError(endpoint_url="https://sns.us-east-1.amazonaws.com/"),
        ConnectTimeoutError(endpoint_url="https://sns.us-east-1.amazonaws.com/"),
    ],
    ids=["read-timeout", "connect-timeout"],
)
def test_timeouts_are_transient_after_one_attempt(error: Exception) -> None:
    """Read and connect timeouts, raised where the HTTP send happens, are TRANSIENT, not retried."""
    client = make_client(make_settings())
    sends: list[str] = []

    def time_out(request: Any, **_: Any) -> None:
        sends.append(request.url)
        raise error

    client.meta.events.register("before-send.sns", time_out)
    with pytest.raises(type(error)) as exc_info:
        SnsGateway(client).publish_batch(TOPIC_ARN, ENTRIES)
    assert classify_error(exc_info.value) is ErrorKind.TRANSIENT
    assert len(sends) == 1


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (urllib3.exceptions.ProtocolError("Connection aborted."), ErrorKind.TRANSIENT),
        (ConnectionResetError(104, "Connection reset by peer"), ErrorKind.TRANSIENT),
        (
            PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"),
            ErrorKind.SYSTEMIC,
        ),
        (ParamValidationError(report="Missing required parameter"), ErrorKind.RELAY_BUG),
        (KeyError("Id"), ErrorKind.RELAY_BUG),
    ],
    ids=["urllib3-protocol", "socket-reset", "partial-credentials", "param-validation", "other"],
)
def test_non_http_errors_classification(error: BaseException, kind: ErrorKind) -> None:
    """Errors below or beside HTTP (constructed here) are classified by their type."""
    assert classify_error(error) is kind


def test_invalid_entry_id_is_a_relay_bug_caught_by_botocore() -> None:
    """A request botocore refuses before sending (an empty entry id) is a RELAY_BUG."""
    with pytest.raises(ParamValidationError) as exc_info:
        SnsGateway(make_client(make_settings())).publish_batch(
            TOPIC_ARN,
            [BatchEntry("e-1", "", {"type": 1})],  # type: ignore[dict-item]
        )
    assert classify_error(exc_info.value) is ErrorKind.RELAY_BUG


# --- per-entry results (FACTS §2) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "sender_fault", "kind"),
    [
        ("InvalidParameter", True, ErrorKind.PERMANENT),
        ("InvalidParameterValue", True, ErrorKind.PERMANENT),
        ("InvalidParameter", False, ErrorKind.TRANSIENT),
        ("Throttling", True, ErrorKind.TRANSIENT),
        ("ThrottlingException", True, ErrorKind.TRANSIENT),
        ("Throttled", True, ErrorKind.TRANSIENT),
        ("KMSThrottling", True, ErrorKind.TRANSIENT),
        ("InternalError", True, ErrorKind.TRANSIENT),
        ("ServiceUnavailable", True, ErrorKind.TRANSIENT),
        ("SomethingNew", False, ErrorKind.TRANSIENT),
        (MISSING_FROM_RESPONSE, False, ErrorKind.TRANSIENT),
        ("KMSDisabled", True, ErrorKind.SYSTEMIC),
        ("KMSAccessDenied", False, ErrorKind.SYSTEMIC),
        ("KMSNotFound", True, ErrorKind.SYSTEMIC),
        ("AuthorizationError", True, ErrorKind.SYSTEMIC),
        ("NotFound", True, ErrorKind.SYSTEMIC),
        ("KMSInvalidState", True, ErrorKind.PERMANENT),
    ],
)
def test_entry_failure_classification(code: str, sender_fault: bool, kind: ErrorKind) -> None:
    """An entry is retried when SNS is at fault or the code is throttling/internal; a code that
    says the topic, key or permissions are wrong is systemic, as for a whole request; the rest
    are permanent."""
    assert classify_entry_failure(code, sender_fault) is kind


def test_publish_batch_reports_an_entry_moto_rejects(aws: None) -> None:
    """A batch with one oversize entry reports it failed (PERMANENT) and the other successful."""
    topic_arn = create_topic()
    gateway = SnsGateway(make_client(make_settings()))
    entries = [
        BatchEntry("fits", '{"type":"message.new"}', {"type": "message.new"}),
        BatchEntry("too-big", "x" * 262_145, {}),
    ]
    result = gateway.publish_batch(topic_arn, entries)
    assert list(result.successful) == ["fits"]
    assert result.successful["fits"]
    assert list(result.failed) == ["too-big"]
    failure = result.failed["too-big"]
    assert (failure.code, failure.sender_fault) == ("InvalidParameter", True)
    assert failure.kind is ErrorKind.PERMANENT


def test_publish_batch_parses_a_server_side_entry_failure() -> None:
    """A Failed entry with SenderFault false comes back as a TRANSIENT EntryFailure."""
    client = make_client(make_settings())
    body = (
        '<PublishBatchResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
        "<PublishBatchResult><Successful><member><Id>a</Id><MessageId>m-a</MessageId></member>"
        "</Successful><Failed><member><Id>b</Id><Code>InternalError</Code>"
        "<Message>try again</Message><SenderFault>false</SenderFault></member></Failed>"
        "</PublishBatchResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata>"
        "</PublishBatchResponse>"
    )
    client.meta.events.register("before-send.sns", canned_response(200, body))
    entries = [BatchEntry("a", "{}", {}), BatchEntry("b", "{}", {})]
    result = SnsGateway(client).publish_batch(TOPIC_ARN, entries)
    assert result.successful == {"a": "m-a"}
    assert result.failed["b"] == sns.EntryFailure("InternalError", "try again", False)
    assert result.failed["b"].kind is ErrorKind.TRANSIENT


def test_entry_missing_from_both_lists_is_reported_failed_transient() -> None:
    """An entry SNS lists neither as successful nor failed is reported failed, TRANSIENT."""
    client = make_client(make_settings())
    entries = [BatchEntry("a", "{}", {}), BatchEntry("b", "{}", {})]
    with Stubber(client) as stubber:
        stubber.add_response(
            "publish_batch", {"Successful": [{"Id": "a", "MessageId": "m-a"}], "Failed": []}
        )
        result = SnsGateway(client).publish_batch(TOPIC_ARN, entries)
    assert result.successful == {"a": "m-a"}
    assert list(result.failed) == ["b"]
    assert result.failed["b"].code == MISSING_FROM_RESPONSE
    assert result.failed["b"].sender_fault is False
    assert result.failed["b"].kind is ErrorKind.TRANSIENT


def test_publish_batch_sends_attributes_and_fifo_ids() -> None:
    """Entries become PublishBatch entries with String attributes and, when set, FIFO ids."""
    client = make_client(make_settings())
    entries = [
        BatchEntry("a", '{"x":1}', {"type": "message.new", "cid": "messaging:1"}, "g", "d-a"),
        BatchEntry("b", '{"x":2}', {}),
    ]
    expected = {
        "TopicArn": TOPIC_ARN,
        "PublishBatchRequestEntries": [
            {
                "Id": "a",
                "Message": '{"x":1}',
                "MessageAttributes": {
                    "type": {"DataType": "String", "StringValue": "message.new"},
                    "cid": {"DataType": "String", "StringValue": "messaging:1"},
                },
                "MessageGroupId": "g",
                "MessageDeduplicationId": "d-a",
            },
            {"Id": "b", "Message": '{"x":2}'},
        ],
    }
    response = {"Successful": [{"Id": "a", "MessageId": "1"}, {"Id": "b", "MessageId": "2"}]}
    with Stubber(client) as stubber:
        stubber.add_response("publish_batch", {**response, "Failed": []}, expected)
        result = SnsGateway(client).publish_batch(TOPIC_ARN, entries)
        stubber.assert_no_pending_responses()
    assert result.successful == {"a": "1", "b": "2"}
    assert result.failed == {}


def test_empty_batch_makes_no_request() -> None:
    """Publishing no entries returns an empty result without calling SNS."""
    client = make_client(make_settings())
    with Stubber(client):  # any call would raise UnStubbedResponseError
        result = SnsGateway(client).publish_batch(TOPIC_ARN, [])
    assert (result.successful, result.failed) == ({}, {})


# --- topic attributes ----------------------------------------------------------------------------


def test_max_message_bytes_is_none_on_moto(aws: None) -> None:
    """moto does not model MaximumMessageSize, so the gateway reports None."""
    topic_arn = create_topic()
    assert SnsGateway(make_client(make_settings())).max_message_bytes(topic_arn) is None


def test_max_message_bytes_reads_the_topic_attribute() -> None:
    """A topic reporting MaximumMessageSize gives that number of bytes."""
    client = make_client(make_settings())
    with Stubber(client) as stubber:
        stubber.add_response(
            "get_topic_attributes",
            {"Attributes": {"MaximumMessageSize": "1048576"}},
            {"TopicArn": TOPIC_ARN},
        )
        assert SnsGateway(client).max_message_bytes(TOPIC_ARN) == 1_048_576


def test_max_message_bytes_of_a_missing_topic_raises_not_found(aws: None) -> None:
    """Reading a topic that does not exist raises ClientError NotFound, classified SYSTEMIC."""
    with pytest.raises(ClientError) as exc_info:
        SnsGateway(make_client(make_settings())).max_message_bytes(TOPIC_ARN)
    assert exc_info.value.response["Error"]["Code"] == "NotFound"
    assert classify_error(exc_info.value) is ErrorKind.SYSTEMIC


# --- one gateway per process ---------------------------------------------------------------------


def test_gateway_for_is_shared_within_a_process() -> None:
    """The same settings give the same gateway, from any thread; other settings another one."""
    settings = make_settings()
    results: list[SnsGateway] = []
    threads = [
        threading.Thread(target=lambda: results.append(gateway_for(settings))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(results) == 8
    assert all(gateway is results[0] for gateway in results)
    assert gateway_for(make_settings()) is results[0]
    assert gateway_for(make_settings(sns_region="eu-west-1")) is not results[0]


def test_gateway_for_makes_a_new_gateway_after_fork() -> None:
    """A forked child never reuses its parent's client: it gets its own gateway."""
    settings = make_settings()
    parent = gateway_for(settings)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running pytest's teardown
        try:
            os.write(write_end, b"new" if gateway_for(settings) is not parent else b"same")
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        answer = reader.read()
    os.waitpid(pid, 0)
    assert answer == b"new"
    assert gateway_for(settings) is parent


# --- secrets -------------------------------------------------------------------------------------


def test_secrets_never_in_reprs_or_errors(aws: None) -> None:
    """Keys, secret and external id appear in no repr and no error text the module produces."""
    settings = make_settings(sns_role_arn=ROLE_ARN, sns_external_id=EXTERNAL_ID)
    session = make_session(settings)
    client = make_client(settings, session=session)
    texts = [repr(settings), str(settings), repr(session), repr(client)]
    # Errors: a refused AssumeRole, a wrong-key answer from SNS and a missing topic.
    with (
        mock.patch.object(
            STSBackend, "assume_role", side_effect=STSClientError("AccessDenied", "denied")
        ),
        pytest.raises(ClientError) as sts_error,
    ):
        SnsGateway(make_client(settings)).publish_batch(TOPIC_ARN, ENTRIES)
    texts += [str(sts_error.value), repr(sts_error.value), json.dumps(sts_error.value.response)]
    static = make_client(make_settings())
    static.meta.events.register(
        "before-send.sns", canned_response(403, error_body("SignatureDoesNotMatch"))
    )
    with pytest.raises(ClientError) as sns_error:
        SnsGateway(static).publish_batch(TOPIC_ARN, ENTRIES)
    texts += [str(sns_error.value), repr(sns_error.value)]
    with pytest.raises(ClientError) as not_found:
        SnsGateway(client).max_message_bytes(TOPIC_ARN)
    texts += [str(not_found.value), repr(not_found.value)]
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def test_an_answer_that_is_not_sns_xml_is_transient() -> None:
    """A proxy's HTML error page (ResponseParserError) is retried, never dead-lettered."""
    from botocore.parsers import ResponseParserError

    assert classify_error(ResponseParserError("Unable to parse response")) is ErrorKind.TRANSIENT
