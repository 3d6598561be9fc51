"""`relay check-sns`, the relay's "Test SNS": settings, credentials, topic and publish permission,
each step saying exactly what is wrong. Details never contain a secret.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import botocore.session
from botocore.credentials import Credentials
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from relay import limits
from relay.settings import ENV_PREFIX, Settings
from workers.sns import (
    BatchEntry,
    ErrorKind,
    SnsGateway,
    classify_error,
    make_client,
    make_session,
)

CHECK_EVENT_TYPE = "relay.check_sns"
CHECK_GROUP_ID = "relay-check-sns"
"""MessageGroupId of the test message on a FIFO topic."""

NO_CREDENTIALS = (
    f"no AWS credentials found: set {ENV_PREFIX}SNS_KEY and {ENV_PREFIX}SNS_SECRET, "
    f"or {ENV_PREFIX}SNS_ROLE_ARN, or configure the default chain"
)
_WRONG_KEY_CODES = frozenset(
    {"InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException"}
)
_EXPIRED_CODES = frozenset({"ExpiredToken", "ExpiredTokenException"})
_REDACTED = "***"


@dataclass(frozen=True, slots=True)
class CheckStep:
    """One step of the check: what was checked, whether it passed, and what was found."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class CheckReport:
    """Every step run, in order; the check passed when there are steps and all of them passed."""

    steps: list[CheckStep] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(step.ok for step in self.steps)


def check_sns(settings: Settings, *, publish: bool = False) -> CheckReport:
    """Check that the relay can reach its topic; with `publish`, also publish a test message.

    Stops at the first step the next ones depend on. Never raises for an AWS or configuration
    problem: the failing step's detail says what is wrong.
    """
    report = CheckReport()
    _Check(settings, report.steps.append, _redactor(settings)).run(publish=publish)
    return report


def render(report: CheckReport) -> str:
    """The report as plain text, one line per step and a verdict."""
    width = max((len(step.name) for step in report.steps), default=0)
    lines = [
        f"{'ok' if step.ok else 'FAIL':<4}  {step.name:<{width}}  {step.detail}"
        for step in report.steps
    ]
    if report.ok:
        lines.append("SNS check passed")
        if not any(step.name == "publish" for step in report.steps):
            lines.append("publish permission not tested: run with --publish to send a test message")
    else:
        failed = ", ".join(step.name for step in report.steps if not step.ok) or "nothing checked"
        lines.append(f"SNS check failed: {failed}")
    return "\n".join(lines)


class _Check:
    def __init__(
        self, settings: Settings, add: Callable[[CheckStep], None], redact: Callable[[str], str]
    ) -> None:
        self.settings = settings
        self._add = add
        self._redact = redact
        self.topic_arn = settings.sns_topic_arn or ""
        self.arn_region = self.topic_arn.split(":")[3] if self.topic_arn.count(":") >= 5 else ""
        self.region = settings.topic_region or self.arn_region
        self.region_mismatch = bool(settings.sns_region) and settings.sns_region != self.arn_region

    def step(self, name: str, ok: bool, detail: str) -> bool:
        self._add(CheckStep(name, ok, self._redact(detail)))
        return ok

    def run(self, *, publish: bool) -> None:
        if not self.check_settings():
            return
        try:
            session = make_session(self.settings)
            credentials = session.get_credentials()
        except BotoCoreError as exc:
            self.step("credentials", False, f"the AWS credential configuration is broken: {exc}")
            return
        if not self.check_credentials(credentials):
            return
        assert credentials is not None
        if self.settings.sns_role_arn is not None and not self.check_assume_role(credentials):
            return
        try:
            gateway = SnsGateway(make_client(self.settings, session=session))
        except (BotoCoreError, ValueError) as exc:  # botocore says ValueError for a bad endpoint
            self.step("client", False, f"could not make an SNS client: {exc}")
            return
        fifo = self.check_topic(gateway)
        if fifo is not None and publish:
            self.check_publish(gateway, fifo=fifo)

    def check_settings(self) -> bool:
        if not self.topic_arn:
            return self.step(
                "settings",
                False,
                f"{ENV_PREFIX}SNS_TOPIC_ARN is not set: which SNS topic to publish to",
            )
        endpoint = self.settings.sns_endpoint_url
        where = f", endpoint {endpoint}" if endpoint else ""
        self.step("settings", True, f"topic {self.topic_arn}, region {self.region}{where}")
        if self.region_mismatch:
            # Not fatal to the next steps: they show what the mismatch does.
            self.step("region", False, self._mismatch())
        return True

    def check_credentials(self, credentials: Credentials | None) -> bool:
        role_arn = self.settings.sns_role_arn
        if role_arn is None:
            if credentials is None:
                return self.step("credentials", False, NO_CREDENTIALS)
            if self.settings.sns_key is not None:
                source = f"static keys ({ENV_PREFIX}SNS_KEY, {ENV_PREFIX}SNS_SECRET)"
            else:
                source = f"default chain ({credentials.method})"
            return self.step("credentials", True, source)
        if self.settings.sns_key is not None:
            base = "static keys"
        else:
            chain = botocore.session.Session().get_credentials()
            if chain is None:
                return self.step(
                    "credentials",
                    False,
                    f"no AWS credentials found to assume role {role_arn} with: set "
                    f"{ENV_PREFIX}SNS_KEY and {ENV_PREFIX}SNS_SECRET, or configure the default "
                    "chain",
                )
            base = f"the default chain ({chain.method})"
        external = "with an external id" if self.settings.sns_external_id else "no external id"
        return self.step("credentials", True, f"assumed role {role_arn} ({external}), from {base}")

    def check_assume_role(self, credentials: Credentials) -> bool:
        role_arn = self.settings.sns_role_arn
        try:
            credentials.get_frozen_credentials()
        except Exception as exc:
            return self.step("assume role", False, self._explain(exc, "sts:AssumeRole"))
        return self.step("assume role", True, f"assumed {role_arn} as session sns-relay")

    def check_topic(self, gateway: SnsGateway) -> bool | None:
        """Run the topic steps; return whether the topic is FIFO, or None if it failed."""
        try:
            attributes = gateway.topic_attributes(self.topic_arn)
        except Exception as exc:
            self.step("topic", False, self._explain(exc, "sns:GetTopicAttributes"))
            return None
        fifo = attributes.get("FifoTopic") == "true" or self.topic_arn.endswith(".fifo")
        kind = "FIFO" if fifo else "standard"
        self.step("topic", True, f"topic {self.topic_arn} exists ({kind})")
        raw = attributes.get("MaximumMessageSize")
        if raw is not None and raw.strip().isdigit():
            size = f"{int(raw)} bytes (the topic's MaximumMessageSize)"
        else:
            size = f"{limits.SNS_DEFAULT_MAX_MESSAGE_BYTES} bytes (the SNS default)"
        self.step("size limit", True, f"{size}, body plus attributes")
        return fifo

    def check_publish(self, gateway: SnsGateway, *, fifo: bool) -> bool:
        event_id = f"check-sns-{uuid.uuid4().hex}"
        body = json.dumps(
            {
                "type": CHECK_EVENT_TYPE,
                "event_id": event_id,
                "created_at": datetime.datetime.now(datetime.UTC).isoformat(),
                "text": "test message from relay check-sns",
            }
        )
        entry = BatchEntry(
            id=event_id,
            body=body,
            attributes={"type": CHECK_EVENT_TYPE, "event_id": event_id},
            group_id=CHECK_GROUP_ID if fifo else None,
            dedup_id=event_id if fifo else None,
        )
        try:
            message_id = gateway.publish_one(self.topic_arn, entry)
        except Exception as exc:
            return self.step("publish", False, self._explain(exc, "sns:Publish"))
        return self.step(
            "publish", True, f"published a test message: MessageId {message_id}, {event_id}"
        )

    def _mismatch(self) -> str:
        return (
            f"{ENV_PREFIX}SNS_REGION is {self.settings.sns_region} but the topic ARN is in "
            f"{self.arn_region}; SNS serves a topic only in its own region: unset "
            f"{ENV_PREFIX}SNS_REGION or set it to {self.arn_region}"
        )

    def _explain(self, exc: Exception, action: str) -> str:
        detail = self._explain_error(exc, action)
        if self.region_mismatch and action != "sts:AssumeRole":
            detail += f" ({self._mismatch()})"
        return detail

    def _explain_error(self, exc: Exception, action: str) -> str:
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            if self.settings.sns_role_arn is not None:
                return f"no AWS credentials found to assume role {self.settings.sns_role_arn} with"
            return NO_CREDENTIALS
        if isinstance(exc, BotoConnectionError):
            target = self.settings.sns_endpoint_url or f"AWS region {self.region}"
            return f"could not connect to {target}: {exc}"
        if not isinstance(exc, ClientError):
            return f"{type(exc).__name__}: {exc}"
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        message = str(error.get("Message", ""))
        if exc.operation_name == "AssumeRole":
            return self._explain_assume_role(code, message)
        if code == "NotFound":
            return f"topic {self.topic_arn} not found in region {self.region}"
        if code == "AuthorizationError":
            return f"access denied: the credentials lack {action} on {self.topic_arn}"
        if code in _WRONG_KEY_CODES:
            return f"the key or secret is wrong (AWS answered {code})"
        if code in _EXPIRED_CODES:
            return f"the credentials have expired ({code})"
        if code.startswith("KMS"):
            return f"the topic's KMS key refused the request ({code}): {message}"
        if classify_error(exc) is ErrorKind.TRANSIENT:
            return f"SNS is throttling or unavailable ({code}): try again later"
        return f"SNS refused {action} ({code}): {message}"

    def _explain_assume_role(self, code: str, message: str) -> str:
        role_arn = self.settings.sns_role_arn
        if code == "AccessDenied":
            if self.settings.sns_external_id is not None:
                external = (
                    f", and its sts:ExternalId condition must equal {ENV_PREFIX}SNS_EXTERNAL_ID"
                )
            else:
                external = (
                    f"; if the trust policy requires an external id, set "
                    f"{ENV_PREFIX}SNS_EXTERNAL_ID"
                )
            return (
                f"access denied assuming role {role_arn}: the role's trust policy must allow "
                f"these credentials to call sts:AssumeRole{external}"
            )
        if code in _WRONG_KEY_CODES:
            return f"the key or secret for assuming role {role_arn} is wrong (AWS answered {code})"
        if code in _EXPIRED_CODES:
            return f"the credentials used to assume role {role_arn} have expired ({code})"
        return f"could not assume role {role_arn} ({code}): {message}"


def _redactor(settings: Settings) -> Callable[[str], str]:
    """Blank out every configured secret in a text, whatever produced it."""
    secrets = [
        secret.get_secret_value()
        for secret in (settings.sns_key, settings.sns_secret, settings.sns_external_id)
        if secret is not None and secret.get_secret_value()
    ]

    def redact(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, _REDACTED)
        return text

    return redact
