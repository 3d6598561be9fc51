"""The SNS Query protocol as botocore speaks it: form-encoded parameters in, XML documents out.

Only the wire format lives here; what SNS accepts is in `rules`, what it does in `app`.
"""

from __future__ import annotations

import binascii
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

# Form encoding to quoted-printable: both separators become NUL, `%` the escape `=`, `+` a space.
_FORM_TO_QP = bytes.maketrans(b"&=%+", b"\0\0= ")
_NOT_SEPARATORS = bytes(sorted(set(range(256)) - set(b"&=")))
# group(): prefix -> parameter name -> (index, field) or None; bounded, as names are the client's.
_SPLIT_NAMES: dict[str, dict[str, tuple[int, str] | None]] = {}
_MAX_SPLIT_NAMES = 4096
_UNSEEN: tuple[int, str] = (-1, "")
"""Not yet in `_SPLIT_NAMES` (a sentinel: None there means "not an item")."""
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

    Decodes as `urllib.parse.parse_qsl(..., keep_blank_values=True)` does, but raises SnsError
    (`MalformedQueryString`) when the parameters are not UTF-8.
    """
    params: Params = {}
    for part in (query, body):
        if part and not _parse_whole(part, params):
            _parse_pairs(part, params)
    return params


def _parse_whole(part: bytes, params: Params) -> bool:
    """Decode all of `part` in a few passes of C code; False (`params` untouched) if it cannot be.

    The per-pair decoding of `_parse_pairs` costs about 270 µs for a 10-entry PublishBatch of
    Stream events (47 KB, an eighth of it `%XX` escapes); this costs about 170 µs, most of it in
    passes over all the bytes, about 20 µs each.
    `%XX` becomes quoted-printable `=XX` for binascii's decoder once the separators are NULs,
    which needs every pair to hold exactly one `=`. Anything else (an empty pair, a bare `=` in
    a value, a `%` without two hex digits, a `%00`, bytes that are not UTF-8) is left to
    `_parse_pairs`, which decodes it, or fails it, as before.
    """
    separators = part.translate(None, _NOT_SEPARATORS)
    pairs = (len(separators) + 1) // 2
    if (
        separators != b"=&" * (pairs - 1) + b"="
        or b"\n" in part  # a2b_qp takes `=` and a line break as a soft line break
        or b"\r" in part
        or part.endswith(b"%")  # and drops an `=` at the very end
    ):
        return False
    decoded = binascii.a2b_qp(part.translate(_FORM_TO_QP))
    # Each `%XX` takes 3 bytes to 1; a `%` not followed by two hex digits, which a2b_qp keeps as
    # an `=`, takes fewer. Only an `=` out can be one (or a `%3D`): counting is the slower test.
    if b"=" in decoded and len(decoded) != len(part) - 2 * part.count(b"%"):
        return False
    try:
        # One decode, then one split: 3x cheaper than decoding each name and value.
        tokens = decoded.decode("utf-8").split("\0")
    except UnicodeDecodeError:
        return False
    if len(tokens) != 2 * pairs:
        return False  # a `%00` (or a raw NUL) in a name or value
    names_values = iter(tokens)
    params.update(zip(names_values, names_values, strict=True))
    return True


def _parse_pairs(part: bytes, params: Params) -> None:
    try:
        for pair in part.split(b"&"):
            if pair:
                key, _, value = pair.partition(b"=")
                params[_unquote(key)] = _unquote(value)
    except UnicodeDecodeError as exc:
        raise SnsError("MalformedQueryString", f"the parameters are not UTF-8: {exc}") from exc


def group(params: Mapping[str, str], prefix: str) -> list[Params]:
    """The items of a query list or map, in order, each as flat parameters of its own.

    `prefix` names the items: "PublishBatchRequestEntries.member" turns
    `PublishBatchRequestEntries.member.2.Id=b` into the second item's {"Id": "b"}. Absent or
    empty (botocore sends an empty list as a bare `name=`): [].
    """
    # A PublishBatch groups about 200 names, the same ones request after request: splitting each
    # once and remembering it halves the cost.
    split = _SPLIT_NAMES.get(prefix)
    if split is None:
        split = _SPLIT_NAMES[prefix] = {}
    numbered: dict[int, Params] = {}
    for key, value in params.items():
        item = split.get(key, _UNSEEN)
        if item is _UNSEEN:
            item = _split_name(key, prefix + ".")
            if len(split) < _MAX_SPLIT_NAMES:
                split[key] = item
        if item is not None:
            index, field = item
            fields = numbered.get(index)
            if fields is None:
                fields = numbered[index] = {}
            fields[field] = value
    return [numbered[index] for index in sorted(numbered)]


def _split_name(key: str, dotted: str) -> tuple[int, str] | None:
    """(index, field) of an item's parameter name, None for a name outside the list or map."""
    if not key.startswith(dotted):
        return None
    index, _, field = key[len(dotted) :].partition(".")
    return (int(index), field) if index.isdigit() else None


def _unquote(raw: bytes) -> str:
    """Form-decode one key or value (`+` is a space, `%XX` a byte) as UTF-8."""
    raw = raw.replace(b"+", b" ")
    if b"%" in raw:
        try:
            raw = _percent_decoded(raw)
        except ValueError:  # a stray `%` not followed by two hex digits: urllib keeps it as is
            raw = unquote_to_bytes(raw)
    return raw.decode("utf-8")


def _percent_decoded(raw: bytes) -> bytes:
    """`raw` with each `%XX` made the byte XX; raises ValueError at a `%` without two hex digits.

    The percent escapes of a 1 KB JSON body cost 4x more through urllib than through the C
    escape decoder; backslashes are doubled first so that only our `\\x` escapes apply.
    """
    if b"%" not in raw:
        return raw
    return codecs.escape_decode(raw.replace(b"\\", b"\\\\").replace(b"%", b"\\x"))[0]


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
