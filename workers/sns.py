"""The relay's one door to AWS: boto3 sessions and the SNS client, the calls the workers make,
and the single classification of SNS errors into transient, systemic, permanent or relay bug.

Retries belong to the relay's tenacity layer, so botocore makes exactly one attempt (FACTS §5.1).
"""

from __future__ import annotations

import enum
import functools
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
import botocore.session
import urllib3.exceptions
from botocore.config import Config
from botocore.credentials import (
    AssumeRoleCredentialFetcher,
    CredentialProvider,
    CredentialResolver,
    Credentials,
    DeferredRefreshableCredentials,
)
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    UnknownClientMethodError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import ValidationError as BotoValidationError
from botocore.parsers import ResponseParserError

from relay import limits
from relay.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sns.type_defs import (
        MessageAttributeValueTypeDef,
        PublishBatchRequestEntryTypeDef,
        PublishInputTypeDef,
    )

CONNECT_TIMEOUT_S = 2.0
"""botocore's default is 60 s; a short one keeps each attempt inside the actor's time budget."""
READ_TIMEOUT_S = 5.0
DEFAULT_MAX_POOL_CONNECTIONS = 10
"""Keep it at least the threads per process, or urllib3 discards connections (FACTS §5.2)."""
BOTOCORE_TOTAL_MAX_ATTEMPTS = 1
"""One attempt: tenacity owns retries, so botocore must not multiply them (FACTS §5.1)."""

ROLE_SESSION_NAME = "sns-relay"
ROLE_DURATION_S = 3600
MISSING_FROM_RESPONSE = "MissingFromResponse"
"""Synthetic per-entry code for an entry SNS reported neither as successful nor failed."""


class ErrorKind(enum.Enum):
    """What a failed SNS call means for the relay (DESIGN "Failures, in three tiers")."""

    TRANSIENT = "transient"
    """Throttling, 5xx, timeouts, connection errors: retry with backoff."""
    SYSTEMIC = "systemic"
    """Credentials, permissions, topic or KMS key wrong: open the breaker, keep the events."""
    PERMANENT = "permanent"
    """SNS rejects this request's content: dead-letter the event."""
    RELAY_BUG = "relay_bug"
    """The relay built an invalid request (batch too big, bad entry ids)."""


# Wire codes (FACTS §2.1). Throttling and 5xx are also recognised by HTTP status below.
_TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "Throttled",
        "ThrottledException",
        "KMSThrottling",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeoutException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "PriorRequestNotComplete",
    }
)
_CREDENTIAL_CODES = frozenset(
    {
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "ExpiredToken",
        "ExpiredTokenException",
        "UnrecognizedClientException",
    }
)
"""SNS refusing the credentials themselves (not their permissions): new ones may mend it."""
_SYSTEMIC_CODES = _CREDENTIAL_CODES | frozenset(
    {
        "NotFound",
        "AuthorizationError",
        "KMSDisabled",
        "KMSNotFound",
        "KMSAccessDenied",
        "KMSOptInRequired",
        "AccessDenied",
        "AccessDeniedException",
        "OptInRequired",
    }
)
_PERMANENT_CODES = frozenset(
    {
        "InvalidParameter",
        "ParameterValueInvalid",
        "InvalidParameterValue",
        "ValidationException",
        "ValidationError",
        "MissingParameter",
        "InvalidSecurity",
        "KMSInvalidState",
        "EndpointDisabled",
        "PlatformApplicationDisabled",
    }
)
_RELAY_BUG_CODES = frozenset(
    {
        "BatchRequestTooLong",
        "TooManyEntriesInBatchRequest",
        "EmptyBatchRequest",
        "InvalidBatchEntryId",
        "BatchEntryIdsNotDistinct",
    }
)
_ENTRY_RETRY_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "Throttled",
        "KMSThrottling",
        "InternalError",
        "ServiceUnavailable",
    }
)
"""Per-entry codes retried whatever their SenderFault says (FACTS §2)."""

# The STS calls a credential refresh makes; their errors surface from the SNS call that
# triggered the refresh, and mean the credentials, not the message, are wrong.
_CREDENTIAL_OPERATIONS = frozenset({"AssumeRole"})
_THROTTLING_CODES = frozenset({"TooManyRequestsException", "RequestLimitExceeded"})
"""Throttling answers whose code does not say "throttl"."""


def throttled(exc: BaseException) -> bool:
    """Whether SNS (or AWS in front of it) refused the request for its rate: a 429, or a
    throttling code. Counted apart, as the fix (a higher quota) differs from an error's."""
    if not isinstance(exc, ClientError):
        return False
    code, status = _code_and_status(exc)
    return status == 429 or "hrottl" in code or code in _THROTTLING_CODES


def credentials_refused(exc: BaseException) -> bool:
    """Whether `exc` says the credentials are missing or refused, so that credentials resolved
    again (a credentials file written or fixed since, instance metadata answering now) may
    succeed where the ones a client resolved when it was made fail."""
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return True
    if isinstance(exc, ClientError):
        code, _status = _code_and_status(exc)
        return code in _CREDENTIAL_CODES or exc.operation_name in _CREDENTIAL_OPERATIONS
    return False


def classify_error(exc: BaseException) -> ErrorKind:
    """Classify an exception raised by a whole SNS request (Publish, PublishBatch, ...)."""
    if isinstance(exc, ClientError):
        return _classify_client_error(exc)
    if isinstance(exc, HTTPClientError | BotoConnectionError | IncompleteReadError):
        # Timeouts, refused or reset connections, truncated responses.
        return ErrorKind.TRANSIENT
    if isinstance(exc, ResponseParserError):
        # An answer that is not SNS's XML: a proxy's or load balancer's error page.
        return ErrorKind.TRANSIENT
    if isinstance(exc, ParamValidationError | BotoValidationError | UnknownClientMethodError):
        return ErrorKind.RELAY_BUG
    if isinstance(exc, BotoCoreError):
        # Missing or unrefreshable credentials, no region, bad endpoint configuration:
        # the deployment is wrong, not the event.
        return ErrorKind.SYSTEMIC
    if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
        return ErrorKind.TRANSIENT
    return ErrorKind.RELAY_BUG


def _classify_client_error(exc: ClientError) -> ErrorKind:
    code, status = _code_and_status(exc)
    if code in _RELAY_BUG_CODES:
        return ErrorKind.RELAY_BUG
    if code in _TRANSIENT_CODES or status >= 500 or status == 429:
        return ErrorKind.TRANSIENT
    if exc.operation_name in _CREDENTIAL_OPERATIONS or code in _SYSTEMIC_CODES:
        return ErrorKind.SYSTEMIC
    if code in _PERMANENT_CODES:
        return ErrorKind.PERMANENT
    # An unlisted 4xx: authentication and missing resources stop everything, the rest is
    # about this request.
    if status in (401, 403, 404):
        return ErrorKind.SYSTEMIC
    return ErrorKind.PERMANENT


def _code_and_status(exc: ClientError) -> tuple[str, int]:
    """A ClientError's AWS error code ("" if none) and HTTP status (0 if none)."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def classify_entry_failure(code: str, sender_fault: bool) -> ErrorKind:
    """Classify one failed PublishBatch entry: retry unless the sender is at fault (FACTS §2).

    A code that says the topic, its KMS key, the permissions or the credentials are wrong is
    SYSTEMIC here as it is for a whole request, whatever SenderFault says: AWS does not list
    the per-entry codes, and should SNS ever report a disabled key entry by entry, dead-lettering
    every event until someone noticed would turn an outage into a replay job. Kept behind the
    breaker instead, they are published once the key or the policy is fixed.
    """
    if code in _SYSTEMIC_CODES:
        return ErrorKind.SYSTEMIC
    if not sender_fault or code in _ENTRY_RETRY_CODES:
        return ErrorKind.TRANSIENT
    return ErrorKind.PERMANENT


@dataclass(frozen=True, slots=True)
class BatchEntry:
    """One SNS message: its batch entry id, the raw body and String attributes.

    `group_id` and `dedup_id` are for FIFO topics only (MessageGroupId, MessageDeduplicationId).
    """

    id: str
    body: str
    attributes: Mapping[str, str]
    group_id: str | None = None
    dedup_id: str | None = None


@dataclass(frozen=True, slots=True)
class EntryFailure:
    """A PublishBatch entry that SNS did not accept."""

    code: str
    message: str
    sender_fault: bool

    @property
    def kind(self) -> ErrorKind:
        """TRANSIENT (send it again), SYSTEMIC (hold it behind the breaker) or PERMANENT
        (dead-letter it)."""
        return classify_entry_failure(self.code, self.sender_fault)


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The outcome of one PublishBatch: every entry id is in exactly one of the two maps."""

    successful: dict[str, str]
    """Entry id to SNS MessageId."""
    failed: dict[str, EntryFailure]


def batch_result(
    entries: Sequence[BatchEntry], successful: dict[str, str], failed: dict[str, EntryFailure]
) -> BatchResult:
    """The outcome of every entry: an entry SNS listed in neither list (moto can do that, FACTS
    §6.1) counts as a transient failure, so it is re-sent rather than forgotten."""
    for entry in entries:
        if entry.id not in successful and entry.id not in failed:
            failed[entry.id] = EntryFailure(
                MISSING_FROM_RESPONSE,
                "SNS listed this entry neither as successful nor as failed",
                sender_fault=False,
            )
    return BatchResult(successful=successful, failed=failed)


def botocore_config(max_pool_connections: int = DEFAULT_MAX_POOL_CONNECTIONS) -> Config:
    """The botocore settings of every client the relay makes: one attempt, short timeouts."""
    return Config(
        retries={"mode": "standard", "total_max_attempts": BOTOCORE_TOTAL_MAX_ATTEMPTS},
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        max_pool_connections=max_pool_connections,
    )


def make_session(settings: Settings) -> boto3.Session:
    """A boto3 session for the topic's region with the configured credentials.

    Static keys when set; else, when `sns_role_arn` is set, that role assumed (with the external
    id) on top of the static keys or the default chain, refreshed before it expires; else the
    default chain. Nothing is fetched here: AssumeRole runs on first use.
    """
    region = settings.topic_region
    static = _static_keys(settings)
    if settings.sns_role_arn is None:
        if static is None:
            return boto3.Session(region_name=region)
        return boto3.Session(
            aws_access_key_id=static[0], aws_secret_access_key=static[1], region_name=region
        )
    base = botocore.session.Session()
    if static is not None:
        base.set_credentials(static[0], static[1])
    credentials = _assumed_role_credentials(settings, base, settings.sns_role_arn)
    session = botocore.session.Session()
    session.register_component(
        "credential_provider", CredentialResolver([_FixedCredentialProvider(credentials)])
    )
    return boto3.Session(botocore_session=session, region_name=region)


def _static_keys(settings: Settings) -> tuple[str, str] | None:
    if settings.sns_key is None or settings.sns_secret is None:
        return None
    return settings.sns_key.get_secret_value(), settings.sns_secret.get_secret_value()


def _assumed_role_credentials(
    settings: Settings, base: botocore.session.Session, role_arn: str
) -> DeferredRefreshableCredentials:
    # The fetcher makes its STS client with this creator: same region and, for moto or a local
    # endpoint (which serve STS too), the same endpoint override.
    create_sts_client = functools.partial(
        base.create_client,
        region_name=settings.topic_region,
        endpoint_url=settings.sns_endpoint_url,
        config=botocore_config(),
    )
    extra_args: dict[str, Any] = {
        "RoleSessionName": ROLE_SESSION_NAME,
        "DurationSeconds": ROLE_DURATION_S,
    }
    if settings.sns_external_id is not None:
        extra_args["ExternalId"] = settings.sns_external_id.get_secret_value()
    source = base.get_credentials()
    refresh: Callable[[], Any]
    if source is None:
        refresh = _no_source_credentials
    else:
        fetcher = AssumeRoleCredentialFetcher(
            client_creator=create_sts_client,
            source_credentials=source,
            role_arn=role_arn,
            extra_args=extra_args,
        )
        refresh = fetcher.fetch_credentials
    return DeferredRefreshableCredentials(refresh_using=refresh, method="assume-role")


def _no_source_credentials() -> Any:
    raise NoCredentialsError()


class _FixedCredentialProvider(CredentialProvider):
    """Hands the session one credentials object: the public way to give a session our own."""

    METHOD = "assume-role"
    CANONICAL_NAME = "sns-relay-assume-role"

    def __init__(self, credentials: Credentials) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self) -> Credentials:
        return self._credentials


def make_client(
    settings: Settings,
    *,
    max_pool_connections: int = DEFAULT_MAX_POOL_CONNECTIONS,
    session: boto3.Session | None = None,
) -> SNSClient:
    """An SNS client for the topic's region (one attempt, short timeouts, sized pool).

    `session` defaults to `make_session(settings)`. Share the client across one process's
    threads; never across processes.
    """
    if session is None:
        session = make_session(settings)
    return session.client(
        "sns",
        endpoint_url=settings.sns_endpoint_url,
        config=botocore_config(max_pool_connections),
    )


def _message_attributes(
    attributes: Mapping[str, str],
) -> dict[str, MessageAttributeValueTypeDef]:
    return {
        name: {"DataType": limits.STRING_DATA_TYPE, "StringValue": value}
        for name, value in attributes.items()
    }


class SnsGateway:
    """The SNS calls the relay makes, over one client. Thread-safe: it holds no state of its own."""

    def __init__(self, client: SNSClient) -> None:
        self.client = client

    def publish_batch(self, topic_arn: str, entries: Sequence[BatchEntry]) -> BatchResult:
        """Publish up to 10 entries in one PublishBatch and report each entry's outcome.

        Raises botocore's ClientError or BotoCoreError when the whole request fails; classify
        them with `classify_error`. An empty `entries` makes no request.
        """
        if not entries:
            return BatchResult(successful={}, failed={})
        request: list[PublishBatchRequestEntryTypeDef] = []
        for entry in entries:
            item: PublishBatchRequestEntryTypeDef = {"Id": entry.id, "Message": entry.body}
            if entry.attributes:
                item["MessageAttributes"] = _message_attributes(entry.attributes)
            if entry.group_id is not None:
                item["MessageGroupId"] = entry.group_id
            if entry.dedup_id is not None:
                item["MessageDeduplicationId"] = entry.dedup_id
            request.append(item)
        response = self.client.publish_batch(TopicArn=topic_arn, PublishBatchRequestEntries=request)
        successful: dict[str, str] = {}
        for ok in response.get("Successful", []):
            if "Id" in ok and "MessageId" in ok:
                successful[ok["Id"]] = ok["MessageId"]
        failed = {
            # Code and SenderFault are required by SNS's model; an answer without one is read as
            # the lean client reads it: no code, and not the sender's fault (so retried).
            bad["Id"]: EntryFailure(
                bad.get("Code", ""), bad.get("Message", ""), bad.get("SenderFault", False)
            )
            for bad in response.get("Failed", [])
            if bad["Id"] not in successful
        }
        return batch_result(entries, successful, failed)

    def publish_one(self, topic_arn: str, entry: BatchEntry) -> str:
        """Publish one message with Publish and return its MessageId (`entry.id` is not sent).

        Raises botocore's ClientError or BotoCoreError on failure.
        """
        request: PublishInputTypeDef = {"TopicArn": topic_arn, "Message": entry.body}
        if entry.attributes:
            request["MessageAttributes"] = _message_attributes(entry.attributes)
        if entry.group_id is not None:
            request["MessageGroupId"] = entry.group_id
        if entry.dedup_id is not None:
            request["MessageDeduplicationId"] = entry.dedup_id
        return self.client.publish(**request)["MessageId"]

    def topic_attributes(self, topic_arn: str) -> dict[str, str]:
        """The topic's attributes (GetTopicAttributes). Raises ClientError NotFound and friends."""
        return self.client.get_topic_attributes(TopicArn=topic_arn)["Attributes"]

    def max_message_bytes(self, topic_arn: str) -> int | None:
        """The topic's `MaximumMessageSize`, or None when SNS does not report one (FACTS §1.2).

        Raises botocore's ClientError or BotoCoreError when the topic cannot be read.
        """
        raw = self.topic_attributes(topic_arn).get("MaximumMessageSize")
        return int(raw) if raw is not None and raw.strip().isdigit() else None


_gateways: dict[tuple[int, Settings, int], SnsGateway] = {}
_gateways_lock = threading.Lock()


def gateway_for(
    settings: Settings, *, max_pool_connections: int = DEFAULT_MAX_POOL_CONNECTIONS
) -> SnsGateway:
    """This process's gateway for `settings`, made on first use and shared by its threads.

    `settings.sns_client` "lean" gives a `workers.sns_lean.LeanSnsGateway` (PublishBatch sent
    by the relay itself), "boto3" a plain SnsGateway. Clients and connections must not cross a
    fork, so the cache is per process id and emptied in a forked child.
    """
    pid = os.getpid()
    key = (pid, settings, max_pool_connections)
    gateway = _gateways.get(key)
    if gateway is not None:
        return gateway
    # Client creation is not thread-safe (FACTS §5.3): one thread makes it, the others wait.
    with _gateways_lock:
        gateway = _gateways.get(key)
        if gateway is None:
            for stale in [k for k in _gateways if k[0] != pid]:
                del _gateways[stale]
            if settings.sns_client == "lean":
                # Imported here: sns_lean builds on this module.
                from workers.sns_lean import make_lean_gateway

                gateway = make_lean_gateway(settings, max_pool_connections=max_pool_connections)
            else:
                gateway = SnsGateway(
                    make_client(settings, max_pool_connections=max_pool_connections)
                )
            _gateways[key] = gateway
        return gateway


def renew_gateway(settings: Settings, stale: SnsGateway) -> SnsGateway:
    """This process's gateway for `settings`, made anew (its credentials resolved again) if the
    cached one is still `stale`: the first thread to ask replaces it, the others get that one."""
    with _gateways_lock:
        for key in [key for key, cached in _gateways.items() if cached is stale]:
            del _gateways[key]
    return gateway_for(settings)


def _reset_after_fork() -> None:
    # A lock held by another parent thread at fork time would stay locked forever in the child.
    global _gateways_lock
    _gateways_lock = threading.Lock()
    _gateways.clear()


os.register_at_fork(after_in_child=_reset_after_fork)
