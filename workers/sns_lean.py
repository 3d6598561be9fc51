"""The lean PublishBatch path (`RELAY_SNS_CLIENT=lean`): the form body encoded once, signed with
botocore's SigV4, sent over a pooled keep-alive connection, and only what the relay needs parsed.

botocore keeps credentials (and their refresh), the endpoint and the signature; every other SNS
call goes through its client. The body is byte for byte what botocore's query serializer sends.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import http.client
import logging
import re
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import boto3
import botocore
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials
from botocore.exceptions import (
    ClientError,
    NoCredentialsError,
    ParamValidationError,
)
from botocore.httpsession import get_cert_path
from botocore.model import StructureShape
from botocore.parsers import ResponseParserError
from botocore.utils import get_environ_proxies, lowercase_dict

from relay import limits
from relay.settings import Settings
from workers.sns import (
    CONNECT_TIMEOUT_S,
    DEFAULT_MAX_POOL_CONNECTIONS,
    READ_TIMEOUT_S,
    BatchEntry,
    BatchResult,
    EntryFailure,
    SnsGateway,
    batch_result,
    make_client,
    make_session,
)
from workers.sns_transport import HttpTransport

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient

log = logging.getLogger(__name__)

OPERATION = "PublishBatch"
CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
USER_AGENT = f"sns-relay-lean botocore/{botocore.__version__}"

# --- the form body ------------------------------------------------------------------------------

# urllib (what botocore uses) escapes these; yarl's quoter leaves them alone. Escaped afterwards,
# on the whole body, so the bytes equal botocore's (the keys never contain them).
_SUB_DELIMS = tuple((c.encode(), f"%{ord(c):02X}".encode()) for c in "!$'()*,")


def _urllib_quote(value: str) -> str:
    return urllib.parse.quote_plus(value, safe="")


def _pick_quoter() -> tuple[str, Callable[[str], str]]:
    """yarl's C quoter when present and quoting exactly as urllib does; else urllib's."""
    try:
        from yarl._quoting import _Quoter  # private, so checked below before it is trusted
    except ImportError:  # pragma: no cover (yarl is installed with the relay)
        return "urllib", _urllib_quote
    quoter: Callable[[str], str] = _Quoter(qs=True, requote=False)
    probe = "".join(map(chr, range(128))) + " é中😀 %41%zz %%+ ~*"
    if _unescaped_sub_delims(quoter(probe).encode()) != _urllib_quote(probe).encode():
        return "urllib", _urllib_quote  # pragma: no cover (a yarl that quotes differently)
    return "yarl", quoter


def _unescaped_sub_delims(body: bytes) -> bytes:
    for char, escaped in _SUB_DELIMS:
        if char in body:
            body = body.replace(char, escaped)
    return body


QUOTER_NAME, _QUOTER = _pick_quoter()


def _quote(value: str) -> str:
    if not value.isascii():
        # yarl drops a lone surrogate silently; botocore raises UnicodeEncodeError, and so do we.
        value.encode("utf-8")
    return _QUOTER(value)


class _EntryKeys(NamedTuple):
    """The `&name=` prefixes of one batch entry's parameters, built once per entry number."""

    id: str
    message: str
    group_id: str
    dedup_id: str
    attributes: tuple[tuple[str, str], ...]


def _attribute_keys(prefix: str, number: int) -> tuple[str, str]:
    entry = f"{prefix}.MessageAttributes.entry.{number}"
    return (
        f"&{entry}.Name=",
        f"&{entry}.Value.DataType={limits.STRING_DATA_TYPE}&{entry}.Value.StringValue=",
    )


@functools.cache
def _entry_keys(number: int) -> _EntryKeys:
    prefix = f"PublishBatchRequestEntries.member.{number}"
    return _EntryKeys(
        f"&{prefix}.Id=",
        f"&{prefix}.Message=",
        f"&{prefix}.MessageGroupId=",
        f"&{prefix}.MessageDeduplicationId=",
        tuple(_attribute_keys(prefix, n) for n in range(1, limits.SNS_MAX_ATTRIBUTES + 1)),
    )


def encode_publish_batch(topic_arn: str, entries: Sequence[BatchEntry]) -> bytes:
    """The PublishBatch form body, exactly as botocore serializes SnsGateway's request.

    Raises UnicodeEncodeError for a lone surrogate, TypeError or AttributeError for a value that
    is not a str.
    """
    quote = _quote
    parts = ["Action=PublishBatch&Version=2010-03-31&TopicArn=", quote(topic_arn)]
    for number, entry in enumerate(entries, 1):
        keys = _entry_keys(number)
        parts += (keys.id, quote(entry.id), keys.message, quote(entry.body))
        for index, (name, value) in enumerate(entry.attributes.items()):
            name_key, value_key = (
                keys.attributes[index]
                if index < len(keys.attributes)  # more than SNS accepts: SNS says so, not us
                else _attribute_keys(f"PublishBatchRequestEntries.member.{number}", index + 1)
            )
            parts += (name_key, quote(name), value_key, quote(value))
        if entry.group_id is not None:
            parts += (keys.group_id, quote(entry.group_id))
        if entry.dedup_id is not None:
            parts += (keys.dedup_id, quote(entry.dedup_id))
    return _unescaped_sub_delims("".join(parts).encode("ascii"))


# --- the response -------------------------------------------------------------------------------


def _parse_xml(body: bytes) -> ET.Element:
    try:
        # SNS's own answer, read with the parser botocore uses; expat refuses entity bombs.
        return ET.fromstring(body)  # noqa: S314
    except ET.ParseError as exc:
        raise ResponseParserError(
            f"Unable to parse response ({exc}), invalid XML received. Further retries may "
            f"succeed:\n{body!r}"
        ) from None


def _namespace(root: ET.Element) -> str:
    return root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""


# The common answer, every entry accepted, read with three regular expressions: about a third of
# ElementTree's CPU. Only a document of exactly this shape matches: the SNS namespace, no failed
# entry, members of an Id and a MessageId only, and text of plain ASCII word characters (so no
# entity, CDATA, comment or CR to decode, and nothing expat would refuse). Anything else, FIFO
# answers with a SequenceNumber included, is ElementTree's, so the outcome is always the same.
_S = rb"[ \t\r\n]*"  # XML's white space
_ID = rb"<Id>([\w-]*)</Id>"
_MESSAGE_ID = rb"<MessageId>([\w.:-]*)</MessageId>"
_ID_RE = re.compile(_ID)
_MESSAGE_ID_RE = re.compile(_MESSAGE_ID)
_SUCCESS_ANSWER_RE = re.compile(
    (
        rb'(?:<\?xml version="1\.0"(?: encoding="[Uu][Tt][Ff]-8")?\?>)?{S}'
        rb'<PublishBatchResponse xmlns="http://sns\.amazonaws\.com/doc/2010-03-31/">{S}'
        rb"<PublishBatchResult>{S}<Successful>{S}"
        # group 1: the members, each of exactly one Id and one MessageId, in either order
        rb"((?:<member>{S}(?:{ID}{S}{MESSAGE_ID}|{MESSAGE_ID}{S}{ID}){S}</member>{S})*)"
        rb"</Successful>{S}(?:(?:<Failed/>|<Failed>{S}</Failed>){S})?</PublishBatchResult>{S}"
        rb"(?:<ResponseMetadata>{S}<RequestId>[\w-]*</RequestId>{S}</ResponseMetadata>{S})?"
        rb"</PublishBatchResponse>{S}"
    )
    .replace(b"{S}", _S)
    .replace(b"{ID}", _ID)
    .replace(b"{MESSAGE_ID}", _MESSAGE_ID)
)


def _all_successful(body: bytes) -> dict[str, str] | None:
    """Entry id to MessageId when `body` is an answer of that plain shape, with no failed entry;
    else None. A repeated Id counts its last member, as in ElementTree's reading."""
    match = _SUCCESS_ANSWER_RE.fullmatch(body)
    if match is None:
        return None
    members = match[1]
    # One Id and one MessageId per member: the n-th of each belong together.
    ids = _ID_RE.findall(members)
    message_ids = _MESSAGE_ID_RE.findall(members)
    return {
        id_.decode(): message_id.decode() for id_, message_id in zip(ids, message_ids, strict=True)
    }


def parse_publish_batch(body: bytes, entries: Sequence[BatchEntry]) -> BatchResult:
    """Each entry's outcome from a PublishBatch answer, as SnsGateway reports it.

    Raises ResponseParserError when the body is not XML.
    """
    successful = _all_successful(body)
    if successful is not None:
        return batch_result(entries, successful, {})
    return parse_publish_batch_xml(body, entries)


def parse_publish_batch_xml(body: bytes, entries: Sequence[BatchEntry]) -> BatchResult:
    """`parse_publish_batch` by ElementTree alone, whatever the answer (botocore's parser)."""
    root = _parse_xml(body)
    ns = _namespace(root)
    id_tag, code_tag, message_tag = f"{ns}Id", f"{ns}Code", f"{ns}Message"
    successful: dict[str, str] = {}
    rejected: list[dict[str, str]] = []
    for group in root.iterfind(f"{ns}PublishBatchResult/*"):
        members = [{field.tag: field.text or "" for field in member} for member in group]
        if group.tag == f"{ns}Successful":
            for fields in members:
                if id_tag in fields and f"{ns}MessageId" in fields:
                    successful[fields[id_tag]] = fields[f"{ns}MessageId"]
        elif group.tag == f"{ns}Failed":
            rejected += members
    failed = {
        fields[id_tag]: EntryFailure(
            fields.get(code_tag, ""),
            fields.get(message_tag, ""),
            fields.get(f"{ns}SenderFault") == "true",
        )
        for fields in rejected
        if id_tag in fields and fields[id_tag] not in successful
    }
    return batch_result(entries, successful, failed)


def _error_fields(node: ET.Element, ns_len: int) -> dict[str, Any]:
    return {
        child.tag[ns_len:]: _error_fields(child, ns_len) if len(child) else child.text
        for child in node
    }


def parse_error(status: int, body: bytes, headers: Any) -> dict[str, Any]:
    """The `response` of the ClientError botocore raises for this error answer (one attempt).

    Raises ResponseParserError when the body is neither XML nor a generic 5xx page.
    """
    stripped = body.strip()
    if status >= 500 and (not stripped or stripped.startswith(b"<html>")):
        # A load balancer's page, not SNS: botocore falls back on the HTTP status.
        parsed: dict[str, Any] = {
            "Error": {"Code": str(status), "Message": http.client.responses.get(status, "")}
        }
    else:
        root = _parse_xml(body)
        parsed = _error_fields(root, len(_namespace(root)))
        errors = parsed.pop("Errors", None)  # {"Errors": {"Error": ...}} -> {"Error": ...}
        if isinstance(errors, dict):
            parsed.update(errors)
        if "RequestId" in parsed:
            parsed["ResponseMetadata"] = {"RequestId": parsed.pop("RequestId")}
    metadata = parsed.setdefault("ResponseMetadata", {})
    metadata.update(
        HTTPStatusCode=status,
        HTTPHeaders=lowercase_dict(headers),
        MaxAttemptsReached=True,
        RetryAttempts=0,
    )
    return parsed


# --- the signature ------------------------------------------------------------------------------


class _BodyRequest(AWSRequest):
    """An AWSRequest whose body is its data as given: what `prepare()` makes of non-empty bytes.

    botocore's `body` prepares the whole request (URL, headers, body) on every read, and SigV4
    reads it to hash the payload; the form body here is always non-empty bytes.
    """

    @property
    def body(self) -> bytes:  # type: ignore[override]  # the stubs say str; botocore gives bytes
        data = self.data
        if isinstance(data, bytes) and data:
            return data
        prepared: bytes = super().body  # type: ignore[assignment]  # pragma: no cover
        return prepared  # pragma: no cover (the lean path always sends a form body)


def _hmac_sha256(key: bytes, text: str) -> bytes:
    # SigV4's HMAC, as botocore's SigV4Auth._sign computes it
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


class _SigningKeys:
    """The last SigV4 signing key derived, with what it was derived from; thread-safe.

    The key depends only on the secret, the day, the region and the service (AWS documents it
    as kept for the day), so its four HMACs are done once a day, not on every request.
    """

    def __init__(self) -> None:
        self._last: tuple[tuple[str, str, str, str], bytes] | None = None

    def __repr__(self) -> str:
        return "_SigningKeys()"  # never the secret

    def get(self, secret_key: str, day: str, region: str, service: str) -> bytes:
        scope = (secret_key, day, region, service)
        last = self._last  # read once: another thread may replace it meanwhile
        if last is not None and last[0] == scope:
            return last[1]
        key = _hmac_sha256(f"AWS4{secret_key}".encode(), day)  # as SigV4Auth.signature derives it
        for part in (region, service, "aws4_request"):
            key = _hmac_sha256(key, part)
        self._last = (scope, key)
        return key


class _SigV4Auth(SigV4Auth):
    """botocore's SigV4Auth (canonical request, string to sign, headers) with the day's signing
    key reused: the same signature, one HMAC instead of five."""

    def __init__(
        self,
        credentials: ReadOnlyCredentials,
        service_name: str,
        region_name: str,
        keys: _SigningKeys,
    ) -> None:
        super().__init__(credentials, service_name, region_name)
        self._scope = (region_name, service_name)
        self._keys = keys

    def signature(self, string_to_sign: str, request: AWSRequest) -> str:
        secret_key = self.credentials.secret_key
        if secret_key is None:  # pragma: no cover (frozen credentials always carry one)
            return super().signature(string_to_sign, request)
        day = request.context["timestamp"][0:8]
        key = self._keys.get(secret_key, day, *self._scope)
        return hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


# --- the gateway --------------------------------------------------------------------------------


def _host_header(url: urllib.parse.SplitResult) -> str:
    # As botocore derives it; signed and sent as one value, so the server checks what was signed.
    host = url.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if url.port is not None and url.port != {"http": 80, "https": 443}.get(url.scheme):
        host = f"{host}:{url.port}"
    return host


class LeanSnsGateway(SnsGateway):
    """SnsGateway whose publish_batch skips botocore's request pipeline; thread-safe.

    Publish, GetTopicAttributes and the rest stay on `client`, whose credentials, endpoint and
    region this gateway shares. Share one per process, like the client.
    """

    def __init__(
        self,
        client: SNSClient,
        credentials: Credentials | None,
        *,
        max_pool_connections: int = DEFAULT_MAX_POOL_CONNECTIONS,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
        ca_bundle: str | None = None,
    ) -> None:
        super().__init__(client)
        self._credentials = credentials
        self._region: str = client.meta.region_name
        url = urllib.parse.urlsplit(client.meta.endpoint_url)
        self.url = urllib.parse.urlunsplit(url._replace(path=url.path or "/"))
        self._target = urllib.parse.urlunsplit(("", "", url.path or "/", url.query, ""))
        self._host = _host_header(url)
        self._signing_keys = _SigningKeys()
        self.transport = HttpTransport(
            self.url,
            max_idle_connections=max_pool_connections,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            # botocore's CA bundle, as its own requests verify with, unless one is configured
            ca_bundle=get_cert_path(True) if ca_bundle is None else ca_bundle,
        )

    def __repr__(self) -> str:
        return f"LeanSnsGateway(url={self.url!r}, region={self._region!r})"

    def close(self) -> None:
        """Close the pooled connections (the client's are botocore's)."""
        self.transport.close()

    def publish_batch(self, topic_arn: str, entries: Sequence[BatchEntry]) -> BatchResult:
        """Publish up to 10 entries in one PublishBatch and report each entry's outcome.

        Raises what botocore's client would: ClientError (the modeled subclass where SNS has
        one) for an error answer, EndpointConnectionError, ConnectTimeoutError,
        ReadTimeoutError, ConnectionClosedError or HTTPClientError for the network, and
        NoCredentialsError or the STS ClientError of a failed refresh. Classify with
        `classify_error`. An empty `entries` makes no request.
        """
        if not entries:
            return BatchResult(successful={}, failed={})
        try:
            body = encode_publish_batch(topic_arn, entries)
        except (TypeError, AttributeError) as exc:
            raise ParamValidationError(report=f"a PublishBatch value is not a str: {exc}") from None
        status, data, headers = self._post(body)
        if status >= 300:
            raise self._client_error(parse_error(status, data, headers))
        return parse_publish_batch(data, entries)

    def _client_error(self, response: dict[str, Any]) -> ClientError:
        """The ClientError botocore's client raises for `response`: the modeled class if any."""
        error = response.get("Error", {})
        code = error.get("Code")
        shape = self.client.meta.service_model.shape_for_error_code(code) if code else None
        if isinstance(shape, StructureShape):
            # botocore copies the modeled members (ValidationException's Message) to the top.
            for name, member in shape.members.items():
                tag = member.serialization.get("name", name)
                if tag in error:
                    response[name] = error[tag] or ""
        # Typed as an instance in the stubs; it is the class, as the client raises it.
        error_class: type[ClientError] = self.client.exceptions.from_code(code)  # type: ignore[assignment]
        return error_class(response, OPERATION)  # type: ignore[arg-type]

    def _post(self, body: bytes) -> tuple[int, bytes, Any]:
        if self._credentials is None:
            raise NoCredentialsError()
        request = _BodyRequest(
            method="POST",
            url=self.url,
            data=body,
            headers={"Content-Type": CONTENT_TYPE, "Host": self._host},
        )
        # Frozen per request: a refreshable credential renews itself here when due.
        credentials = self._credentials.get_frozen_credentials()
        _SigV4Auth(credentials, "sns", self._region, self._signing_keys).add_auth(request)
        headers = dict(request.headers.items())
        headers["User-Agent"] = USER_AGENT
        # The signed request is never attached to an error: it carries the session token.
        answer = self.transport.post(self._target, headers, body)
        return answer.status, answer.body, answer.headers


def make_lean_gateway(
    settings: Settings,
    *,
    max_pool_connections: int = DEFAULT_MAX_POOL_CONNECTIONS,
    session: boto3.Session | None = None,
) -> SnsGateway:
    """A LeanSnsGateway over `make_client(settings)`, sharing its session's credentials.

    Behind an HTTP proxy (botocore's `proxies` or the environment's) it returns the plain
    SnsGateway instead, with a warning: the lean path sends directly.
    """
    if session is None:
        session = make_session(settings)
    client = make_client(settings, max_pool_connections=max_pool_connections, session=session)
    proxies = getattr(client.meta.config, "proxies", None)  # missing from botocore's stubs
    if proxies or get_environ_proxies(client.meta.endpoint_url):
        log.warning("an HTTP proxy is configured for SNS: publishing through boto3, not lean")
        return SnsGateway(client)
    # boto3 keeps the botocore session private; it is where `ca_bundle` (AWS_CA_BUNDLE) lives.
    ca_bundle = session._session.get_config_variable("ca_bundle")
    return LeanSnsGateway(
        client,
        session.get_credentials(),
        max_pool_connections=max_pool_connections,
        ca_bundle=ca_bundle,
    )
