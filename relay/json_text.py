"""Reading event JSON without building it: check the text, and take only the fields we need.

Events travel as the exact text they arrived as, so the relay never needs their parsed value:
only that the text is JSON, whether it is an object, and the few top-level string fields copied
into SNS attributes. msgspec checks the whole text and builds only the fields it is asked for:
a typical 1.4 KB Stream event in 1.6 µs, where orjson.loads took 10 µs building every dict and
string in it (benchmarks/README.md, Results, 2026-11-29).

What counts as JSON is RFC 8259's grammar, strictly: no NaN, trailing commas, comments or byte
order mark, no lone surrogate escapes, no nesting deeper than Python's recursion limit. Numbers
are not converted, so their magnitude is not limited (`1e400` is JSON by the grammar; orjson,
which converts it to a float, refused it).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

_MALFORMED_PREFIX = "JSON is malformed: "
_KINDS = {"{": "an object", "[": "an array", '"': "a string", "t": "a boolean", "f": "a boolean"}
_WHITESPACE = " \t\n\r"
_ABSENT = msgspec.Raw()

_NOT_JSON = (msgspec.DecodeError, RecursionError, UnicodeEncodeError)
"""What msgspec raises for text that is not JSON: malformed, nested too deeply, or a str holding a
lone surrogate (which it must encode to UTF-8 first)."""

_check = msgspec.json.Decoder(msgspec.Raw).decode
_read_elements = msgspec.json.Decoder(list[msgspec.Raw]).decode
_read_string = msgspec.json.Decoder(str).decode


class NotJson(ValueError):
    """The text is not JSON; `reason` says where (in UTF-8 bytes) and what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FieldReader:
    """Checks JSON text and reads the named top-level fields of an object, and nothing else."""

    def __init__(self, names: Sequence[str]) -> None:
        strings = msgspec.defstruct("StringFields", [(name, str | None, None) for name in names])
        raws = msgspec.defstruct("RawFields", [(name, msgspec.Raw, _ABSENT) for name in names])
        self._read_strings = msgspec.json.Decoder(strings).decode
        self._read_raws = msgspec.json.Decoder(raws).decode

    def fields(self, text: bytes | str) -> dict[str, str | None] | None:
        """Each named field of the JSON object `text`: its value when a string, else None
        (absent, null or another kind). None when `text` is JSON but not an object.

        Raises NotJson when `text` is not JSON.
        """
        try:
            found: dict[str, str | None] = msgspec.structs.asdict(self._read_strings(text))
            return found
        except msgspec.ValidationError:
            pass  # not an object (maybe not JSON at all), or a named field not a string
        except _NOT_JSON as exc:
            raise _not_json(exc) from None
        try:
            raws = self._read_raws(text)
        except msgspec.ValidationError:
            check(text)  # raises NotJson when it is not JSON either
            return None
        except _NOT_JSON as exc:
            raise _not_json(exc) from None
        return {
            name: _read_string(raw) if bytes(raw).startswith(b'"') else None
            for name, raw in msgspec.structs.asdict(raws).items()
        }


def array_elements(raw: bytes) -> list[bytes]:
    """The exact text of each element of the JSON array `raw`, surrounding whitespace left out.

    Raises NotJson when `raw` is not JSON; ValueError when it is JSON but not an array.
    """
    try:
        return [bytes(element) for element in _read_elements(raw)]
    except msgspec.ValidationError:
        check(raw)  # raises NotJson when it is not JSON either
        raise ValueError(f"not an array but {kind_of(raw)}") from None
    except _NOT_JSON as exc:
        raise _not_json(exc) from None


def check(text: bytes | str) -> None:
    """Raise NotJson, saying what is wrong, unless `text` is JSON."""
    try:
        _check(text)
    except _NOT_JSON as exc:
        raise _not_json(exc) from None


def kind_of(text: bytes | str) -> str:
    """How an error message names the JSON type of the (valid) JSON `text`."""
    stripped = text.decode() if isinstance(text, bytes) else text
    first = stripped.lstrip(_WHITESPACE)[:1]
    if first == "n":
        return "null"
    return _KINDS.get(first, "a number")


def _not_json(exc: msgspec.DecodeError | RecursionError | UnicodeEncodeError) -> NotJson:
    if isinstance(exc, RecursionError):
        return NotJson("nested too deeply")
    if isinstance(exc, UnicodeEncodeError):  # a str holding a lone surrogate: no UTF-8 for it
        return NotJson(
            f"the character at offset {exc.start} is a lone surrogate, which UTF-8 cannot encode"
        )
    return NotJson(str(exc).removeprefix(_MALFORMED_PREFIX))
