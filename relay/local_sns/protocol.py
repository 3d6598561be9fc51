"""The SNS Query protocol as botocore speaks it: form-encoded parameters in, XML documents out.

Only the wire format lives here; what SNS accepts is in `rules`, what it does in `app`.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Mapping
from urllib.parse import unquote_to_bytes

SNS_XMLNS = "http://sns.amazonaws.com/doc/2010-03-31/"
ACCOUNT_ID = "123456789012"
"""The account every local ARN names (moto's default, so ARNs look the same under both)."""
DEFAULT_REGION = "us-east-1"

Params = dict[str, str]
"""Query parameters by name, flat: `PublishBatchRequestEntries.member.1.Id` is one name."""

_REGION_RE = re.compile(rb"Credential=[^/,]+/\d{8}/([a-z0-9-]+)/")
# Characters XML 1.0 cannot carry at all; botocore's parser would fail on the whole document.
_NOT_XML_RE = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class SnsError(Exception):
    """An SNS error response: its wire `Code`, message and HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def parse_params(query: bytes, body: bytes) -> Params:
    """Decode a query string and a form body into flat parameters; a later duplicate wins.

    Raises SnsError (`MalformedQueryString`) when the parameters are not UTF-8.
    """
    params: Params = {}
    try:
        for part in (query, body):
            for pair in part.split(b"&") if part else ():
                if pair:
                    key, _, value = pair.partition(b"=")
                    params[_unquote(key)] = _unquote(value)
    except UnicodeDecodeError as exc:
        raise SnsError("MalformedQueryString", f"the parameters are not UTF-8: {exc}") from exc
    return params


def group(params: Mapping[str, str], prefix: str) -> list[Params]:
    """The items of a query list or map, in order, each as flat parameters of its own.

    `prefix` names the items: "PublishBatchRequestEntries.member" turns
    `PublishBatchRequestEntries.member.2.Id=b` into the second item's {"Id": "b"}. Absent or
    empty (botocore sends an empty list as a bare `name=`): [].
    """
    dotted = prefix + "."
    start = len(dotted)
    numbered: dict[int, Params] = {}
    for key, value in params.items():
        if key.startswith(dotted):
            index, _, field = key[start:].partition(".")
            if index.isdigit():
                numbered.setdefault(int(index), {})[field] = value
    return [numbered[index] for index in sorted(numbered)]


def _unquote(raw: bytes) -> str:
    """Form-decode one key or value (`+` is a space, `%XX` a byte) as UTF-8."""
    raw = raw.replace(b"+", b" ")
    if b"%" in raw:
        # The percent escapes of a 1 KB JSON body cost 4x more through urllib than through the
        # C escape decoder; backslashes are doubled first so that only our `\x` escapes apply.
        try:
            raw = codecs.escape_decode(raw.replace(b"\\", b"\\\\").replace(b"%", b"\\x"))[0]
        except ValueError:  # a stray `%` not followed by two hex digits: urllib keeps it as is
            raw = unquote_to_bytes(raw)
    return raw.decode("utf-8")


def region_of(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The region in a SigV4 Authorization header's credential scope, else us-east-1."""
    for name, value in headers:
        if name == b"authorization":
            match = _REGION_RE.search(value)
            if match:
                return match.group(1).decode("ascii")
    return DEFAULT_REGION


def escape(value: str) -> str:
    """`value` as XML text; characters XML cannot carry become U+FFFD."""
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    # A raw CR would be read back as LF by any XML parser.
    value = value.replace("\r", "&#13;")
    return value if value.isascii() and value.isprintable() else _NOT_XML_RE.sub("\ufffd", value)


def response(action: str, request_id: str, result: str | None) -> bytes:
    """A success document; `result` is the inner XML of `<{action}Result>`, None for no result."""
    inner = "" if result is None else f"<{action}Result>{result}</{action}Result>"
    return (
        f'<{action}Response xmlns="{SNS_XMLNS}">{inner}'
        f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
        f"</{action}Response>"
    ).encode()


def error_response(error: SnsError, request_id: str) -> bytes:
    """An error document in the shape botocore's query parser reads into `ClientError`."""
    fault = "Receiver" if error.status >= 500 else "Sender"
    return (
        f'<ErrorResponse xmlns="{SNS_XMLNS}"><Error><Type>{fault}</Type>'
        f"<Code>{escape(error.code)}</Code><Message>{escape(error.message)}</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    ).encode()


def map_xml(entries: Mapping[str, str]) -> str:
    """A query map (`<entry><key/><value/></entry>`...), as in GetTopicAttributes."""
    return "".join(
        f"<entry><key>{escape(key)}</key><value>{escape(value)}</value></entry>"
        for key, value in entries.items()
    )
