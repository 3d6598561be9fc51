"""Tests of workers.check (`relay check-sns`): each failure is named exactly, never with a secret.

SNS is moto; the errors moto cannot produce are canned HTTP answers given to the check's own
client through a `before-send` hook (FACTS §6.5), so botocore parses them for real.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any
from unittest import mock

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from moto.sts.exceptions import STSClientError
from moto.sts.models import STSBackend

from relay.settings import Settings
from workers import check
from workers.check import NO_CREDENTIALS, CheckReport, CheckStep, check_sns, render
from workers.sns import make_client

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

Answer = tuple[int, str, str]


pytestmark = pytest.mark.usefixtures("clean_aws_env")


@pytest.fixture
def sns_answers(monkeypatch: pytest.MonkeyPatch) -> dict[str, Answer]:
    """Operation name -> (HTTP status, error code, message) that the check's SNS client receives
    instead of a real answer; operations not listed go to SNS (moto) as usual."""
    answers: dict[str, Answer] = {}
    real_make_client = check.make_client

    def make_client_with_answers(*args: Any, **kwargs: Any) -> Any:
        client = real_make_client(*args, **kwargs)

        def answer(request: Any, event_name: str, **_: Any) -> AWSResponse | None:
            operation = event_name.rsplit(".", 1)[-1]
            if operation not in answers:
                return None
            status, code, message = answers[operation]
            body = error_body(code, message).encode()
            return AWSResponse(request.url, status, {}, _Body(body))

        client.meta.events.register("before-send.sns", answer)
        return client

    monkeypatch.setattr(check, "make_client", make_client_with_answers)
    return answers


class _Body:
    def __init__(self, content: bytes) -> None:
        self._content = content

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._content


def error_body(code: str, message: str) -> str:
    """An SNS (query protocol) error document."""
    return (
        '<ErrorResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
        f"<Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
        "<RequestId>canned-request</RequestId></ErrorResponse>"
    )


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
    """Create a topic in moto and return its ARN."""
    return make_client(make_settings()).create_topic(Name=name, Attributes=attributes)["TopicArn"]


def step(report: CheckReport, name: str) -> CheckStep:
    """The report's step called `name` (there must be exactly one)."""
    (found,) = [s for s in report.steps if s.name == name]
    return found


def names(report: CheckReport) -> list[str]:
    return [s.name for s in report.steps]


def assert_no_secrets(report: CheckReport) -> None:
    text = render(report)
    for secret in SECRETS:
        assert secret not in text


# --- passing -------------------------------------------------------------------------------------


def test_check_passes_on_a_real_topic(aws: None) -> None:
    """With static keys and an existing topic every step passes, with the topic's facts."""
    create_topic()
    report = check_sns(make_settings())
    assert report.ok
    assert names(report) == ["settings", "credentials", "topic", "size limit"]
    assert "static keys" in step(report, "credentials").detail
    assert step(report, "topic").detail == f"topic {TOPIC_ARN} exists (standard)"
    assert "262144 bytes (the SNS default)" in step(report, "size limit").detail
    assert_no_secrets(report)


def test_check_publishes_a_test_message_when_asked(aws: None) -> None:
    """With publish=True a relay.check_sns JSON message with an event_id attribute is published."""
    # Given a topic with a raw-delivery SQS subscriber
    topic_arn = create_topic()
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
    # When the check runs with publish
    report = check_sns(make_settings(), publish=True)
    # Then the publish step passed and the subscriber got the test message
    assert report.ok
    assert names(report)[-1] == "publish"
    (message,) = sqs.receive_message(QueueUrl=url, MessageAttributeNames=["All"])["Messages"]
    body = json.loads(message["Body"])
    assert body["type"] == "relay.check_sns"
    event_id = message["MessageAttributes"]["event_id"]["StringValue"]
    assert body["event_id"] == event_id
    assert event_id in step(report, "publish").detail


def test_check_publishes_to_a_fifo_topic(aws: None) -> None:
    """On a FIFO topic the check says so and its test message carries group and dedup ids."""
    fifo_arn = create_topic("relay-events.fifo", FifoTopic="true")
    report = check_sns(make_settings(sns_topic_arn=fifo_arn), publish=True)
    assert report.ok, render(report)
    assert step(report, "topic").detail.endswith("(FIFO)")
    assert step(report, "publish").ok


def test_check_passes_with_an_assumed_role(aws: None) -> None:
    """With a role and external id the check assumes it and names the role, not the id."""
    create_topic()
    report = check_sns(make_settings(sns_role_arn=ROLE_ARN, sns_external_id=EXTERNAL_ID))
    assert report.ok, render(report)
    assert names(report) == ["settings", "credentials", "assume role", "topic", "size limit"]
    assert step(report, "credentials").detail == (
        f"assumed role {ROLE_ARN} (with an external id), from static keys"
    )
    assert_no_secrets(report)


def test_check_names_the_default_chain_provider(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without static keys the credentials step names the default chain and its source."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIADEFAULTCHAIN0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "default-chain-secret")
    create_topic()
    report = check_sns(make_settings(sns_key=None, sns_secret=None))
    assert report.ok
    assert step(report, "credentials").detail == "default chain (env)"


# --- failing -------------------------------------------------------------------------------------


def test_missing_topic_arn_fails_the_settings_step() -> None:
    """Without RELAY_SNS_TOPIC_ARN the check stops at the settings step and names the variable."""
    report = check_sns(make_settings(sns_topic_arn=None))
    assert not report.ok
    assert names(report) == ["settings"]
    assert "RELAY_SNS_TOPIC_ARN is not set" in step(report, "settings").detail


def test_topic_not_found(aws: None) -> None:
    """A topic that does not exist is reported as not found in its region."""
    report = check_sns(make_settings())
    assert not report.ok
    assert step(report, "topic") == CheckStep(
        "topic", False, f"topic {TOPIC_ARN} not found in region {REGION}"
    )


def test_no_credentials() -> None:
    """With no credentials anywhere the credentials step says how to provide them."""
    report = check_sns(make_settings(sns_key=None, sns_secret=None))
    assert not report.ok
    assert names(report) == ["settings", "credentials"]
    assert step(report, "credentials").detail == NO_CREDENTIALS
    assert NO_CREDENTIALS == (
        "no AWS credentials found: set RELAY_SNS_KEY and RELAY_SNS_SECRET, or "
        "RELAY_SNS_ROLE_ARN, or configure the default chain"
    )


def test_role_without_credentials_to_assume_it() -> None:
    """A role with no static keys and an empty default chain fails the credentials step."""
    report = check_sns(make_settings(sns_key=None, sns_secret=None, sns_role_arn=ROLE_ARN))
    assert not report.ok
    assert step(report, "credentials").detail.startswith(
        f"no AWS credentials found to assume role {ROLE_ARN} with"
    )


@pytest.mark.parametrize(
    ("external_id", "advice"),
    [
        (EXTERNAL_ID, "its sts:ExternalId condition must equal RELAY_SNS_EXTERNAL_ID"),
        (None, "if the trust policy requires an external id, set RELAY_SNS_EXTERNAL_ID"),
    ],
    ids=["with-external-id", "without-external-id"],
)
def test_assume_role_access_denied(aws: None, external_id: str | None, advice: str) -> None:
    """STS refusing AssumeRole is explained through the trust policy and the external id."""
    create_topic()
    settings = make_settings(sns_role_arn=ROLE_ARN, sns_external_id=external_id)
    denied = STSClientError("AccessDenied", f"not authorized; ExternalId {EXTERNAL_ID}")
    with mock.patch.object(STSBackend, "assume_role", side_effect=denied):
        report = check_sns(settings)
    assert not report.ok
    assert names(report)[-1] == "assume role"
    detail = step(report, "assume role").detail
    assert detail.startswith(f"access denied assuming role {ROLE_ARN}: the role's trust policy")
    assert advice in detail
    assert_no_secrets(report)


def test_access_denied_on_the_topic(aws: None, sns_answers: dict[str, Answer]) -> None:
    """AuthorizationError on GetTopicAttributes names the missing permission and the topic."""
    create_topic()
    sns_answers["GetTopicAttributes"] = (403, "AuthorizationError", "canned error")
    report = check_sns(make_settings())
    assert not report.ok
    assert step(report, "topic").detail == (
        f"access denied: the credentials lack sns:GetTopicAttributes on {TOPIC_ARN}"
    )


@pytest.mark.parametrize("code", ["InvalidClientTokenId", "SignatureDoesNotMatch"])
def test_wrong_key_or_secret(aws: None, sns_answers: dict[str, Answer], code: str) -> None:
    """A key SNS does not know, or a secret that does not match it, is reported as wrong."""
    sns_answers["GetTopicAttributes"] = (403, code, "canned error")
    report = check_sns(make_settings())
    assert not report.ok
    assert step(report, "topic").detail.startswith("the key or secret is wrong")
    assert_no_secrets(report)


def test_region_mismatch_is_said_explicitly(aws: None) -> None:
    """RELAY_SNS_REGION different from the ARN's region fails, naming both regions."""
    create_topic()
    report = check_sns(make_settings(sns_region="eu-west-1"))
    assert not report.ok
    region = step(report, "region")
    assert not region.ok
    assert region.detail.startswith(
        "RELAY_SNS_REGION is eu-west-1 but the topic ARN is in us-east-1"
    )
    topic = step(report, "topic")
    assert not topic.ok
    assert topic.detail.startswith(f"topic {TOPIC_ARN} not found in region eu-west-1")
    assert "RELAY_SNS_REGION is eu-west-1" in topic.detail


def test_publish_permission_denied(aws: None, sns_answers: dict[str, Answer]) -> None:
    """AuthorizationError on Publish names sns:Publish, after the topic step passed."""
    create_topic()
    sns_answers["Publish"] = (403, "AuthorizationError", "canned error")
    report = check_sns(make_settings(), publish=True)
    assert not report.ok
    assert step(report, "topic").ok
    assert step(report, "publish") == CheckStep(
        "publish", False, f"access denied: the credentials lack sns:Publish on {TOPIC_ARN}"
    )


def test_unreachable_endpoint() -> None:
    """An endpoint where nothing listens is reported as a connection failure to that endpoint."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    report = check_sns(make_settings(sns_endpoint_url=endpoint))
    assert not report.ok
    assert step(report, "topic").detail.startswith(f"could not connect to {endpoint}")


def test_malformed_endpoint_url() -> None:
    """An endpoint URL botocore cannot use fails the check instead of raising. (Settings refuse
    such a URL at load; model_copy skips validation, as settings built in code could.)"""
    settings = make_settings().model_copy(update={"sns_endpoint_url": "not a url"})
    report = check_sns(settings)
    assert not report.ok
    assert step(report, "client").detail.startswith("could not make an SNS client: ")
    assert "not a url" in step(report, "client").detail


def test_missing_aws_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS_PROFILE naming a profile that does not exist fails the credentials step, naming it."""
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    report = check_sns(make_settings(sns_key=None, sns_secret=None))
    assert not report.ok
    assert names(report) == ["settings", "credentials"]
    detail = step(report, "credentials").detail
    assert detail.startswith("the AWS credential configuration is broken: ")
    assert "no-such-profile" in detail


def test_secrets_in_an_aws_message_are_blanked(aws: None, sns_answers: dict[str, Answer]) -> None:
    """Even an AWS error message quoting a secret reaches the report with the secret blanked."""
    sns_answers["GetTopicAttributes"] = (400, "SomethingNew", f"bad key {SNS_KEY} / {SNS_SECRET}")
    report = check_sns(make_settings())
    detail = step(report, "topic").detail
    assert detail == "SNS refused sns:GetTopicAttributes (SomethingNew): bad key *** / ***"
    assert_no_secrets(report)


# --- rendering -----------------------------------------------------------------------------------


def test_render_passing_report() -> None:
    """A passing report renders one `ok` line per step, a verdict, and the untested publish."""
    report = CheckReport(
        [CheckStep("settings", True, "topic t"), CheckStep("topic", True, "exists")]
    )
    assert render(report).splitlines() == [
        "ok    settings  topic t",
        "ok    topic     exists",
        "SNS check passed",
        "publish permission not tested: run with --publish to send a test message",
    ]


def test_render_failing_report() -> None:
    """A failing report marks the failed step FAIL and names it in the verdict."""
    report = CheckReport(
        [CheckStep("settings", True, "topic t"), CheckStep("topic", False, "not found")]
    )
    assert render(report).splitlines() == [
        "ok    settings  topic t",
        "FAIL  topic     not found",
        "SNS check failed: topic",
    ]
    assert not CheckReport().ok
