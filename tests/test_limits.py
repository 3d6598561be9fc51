"""Tests of relay.limits: SNS's size rule in UTF-8 bytes, name and id rules, batch packing."""

from __future__ import annotations

import itertools
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay import limits

DEFAULT_LIMIT = limits.SNS_DEFAULT_MAX_MESSAGE_BYTES

# Attributes as an event carries them, with multibyte values: their bytes count, not characters.
ATTRIBUTES = {
    "type": "message.new",
    "cid": "messaging:café-☕",
    "team": "équipe",
    "event_id": "0f8e1d2c3b4a59687766554433221100",
}


def reference_size(body: str, attributes: dict[str, str]) -> int:
    """FACTS §1.1's formula, spelled out independently of the module under test."""
    return len(body.encode("utf-8")) + sum(
        len(name.encode("utf-8")) + len(b"String") + len(value.encode("utf-8"))
        for name, value in attributes.items()
    )


def body_of_total_size(total_bytes: int, attributes: dict[str, str]) -> str:
    """A JSON body that, with `attributes`, makes an SNS message of exactly `total_bytes`."""
    head, tail = '{"type":"message.new","text":"é🎉', '"}'
    filler = total_bytes - reference_size(head + tail, attributes)
    assert filler >= 0, "limit too small for the fixture attributes"
    euros, ascii_rest = divmod(filler, 3)
    body = head + "€" * euros + "a" * ascii_rest + tail
    assert reference_size(body, attributes) == total_bytes
    return body


# --- message_bytes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected_bytes"),
    [
        ("", 0),
        ("hello", 5),
        ("é", 2),
        ("€", 3),
        ("😀", 4),
        ('{"text":"café €5 😀"}', 26),
    ],
)
def test_message_bytes_counts_utf8_bytes_of_the_body_not_characters(
    body: str, expected_bytes: int
) -> None:
    """A body's size is its UTF-8 byte length: 1 byte ASCII, 2 "é", 3 "€", 4 an emoji."""
    assert limits.message_bytes(body, {}) == expected_bytes


def test_message_bytes_of_multibyte_text_exceeds_its_character_count() -> None:
    """A body of 1,000 euro signs is 3,000 bytes, not 1,000."""
    body = "€" * 1_000
    assert len(body) == 1_000
    assert limits.message_bytes(body, {}) == 3_000


def test_message_bytes_counts_each_attribute_name_data_type_and_value() -> None:
    """Each String attribute adds its name, "String" and its value to the size."""
    # Given a body of 2 bytes and two attributes
    attributes = {"type": "message.new", "event_id": "abc"}
    # When the size is computed
    size = limits.message_bytes("{}", attributes)
    # Then it is 2 + (4 + 6 + 11) + (8 + 6 + 3)
    assert size == 2 + (4 + 6 + 11) + (8 + 6 + 3)


def test_attribute_names_and_values_count_in_utf8_bytes() -> None:
    """Multibyte attribute names and values count their UTF-8 bytes."""
    assert limits.attributes_bytes({"é": "€"}) == 2 + 6 + 3
    assert limits.attributes_bytes({"team": "équipe😀"}) == 4 + 6 + 7 + 4


def test_no_attributes_add_nothing() -> None:
    """An empty attribute map adds zero bytes."""
    assert limits.attributes_bytes({}) == 0
    assert limits.message_bytes("abc", {}) == 3


@given(
    body=st.text(),
    attributes=st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=50), max_size=10),
)
def test_message_bytes_matches_the_sns_formula_for_any_text(
    body: str, attributes: dict[str, str]
) -> None:
    """For any text, the size is UTF-8 body plus name, type and value bytes of each attribute."""
    assert limits.message_bytes(body, attributes) == reference_size(body, attributes)


# --- the inclusive limit at its boundaries ---------------------------------------------------


@pytest.mark.parametrize(
    "limit_bytes",
    [limits.SNS_MIN_MAX_MESSAGE_BYTES, DEFAULT_LIMIT, limits.SNS_MAX_MAX_MESSAGE_BYTES],
)
@pytest.mark.parametrize("delta_bytes", [-1, 0, 1])
def test_a_real_message_fits_up_to_exactly_the_limit_and_not_one_byte_more(
    limit_bytes: int, delta_bytes: int
) -> None:
    """A message of limit-1 or limit bytes (body plus attributes) fits; limit+1 does not."""
    # Given a real JSON body with multibyte text and attributes, sized to limit + delta bytes
    total_bytes = limit_bytes + delta_bytes
    body = body_of_total_size(total_bytes, ATTRIBUTES)
    # When the relay measures it and packs it for a topic with that limit
    size = limits.message_bytes(body, ATTRIBUTES)
    # Then the size is exact and the limit is inclusive
    assert size == total_bytes
    if delta_bytes <= 0:
        assert limits.pack_batches([size], lambda s: s, limit_bytes) == [[size]]
    else:
        with pytest.raises(ValueError, match=str(limit_bytes)):
            limits.pack_batches([size], lambda s: s, limit_bytes)


# --- validate_max_message_bytes --------------------------------------------------------------


@pytest.mark.parametrize("value", [1_024, 262_144, 1_048_576])
def test_max_message_bytes_in_the_topic_range_is_accepted(value: int) -> None:
    """Any MaximumMessageSize from 1,024 to 1,048,576 bytes is returned unchanged."""
    assert limits.validate_max_message_bytes(value) == value


@pytest.mark.parametrize("value", [1_023, 1_048_577, 0, -1])
def test_max_message_bytes_outside_the_topic_range_raises_value_error(value: int) -> None:
    """A limit below 1,024 or above 1,048,576 bytes raises ValueError naming the range."""
    with pytest.raises(ValueError, match=r"1024 and 1048576") as exc_info:
        limits.validate_max_message_bytes(value)
    assert str(value) in str(exc_info.value)


# --- attribute_name_error --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "type",
        "event_id",
        "channel_type",
        "a.b",
        "A-b_9.z",
        "x" * 256,
        "AWSome",
        "amazonian",
        "aws_x",
        "my.AWS.x",
    ],
)
def test_valid_attribute_names_have_no_error(name: str) -> None:
    """Names of A-Z a-z 0-9 _ - . up to 256 characters, no reserved prefix, are valid."""
    assert limits.attribute_name_error(name) is None


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("a b", id="space"),
        pytest.param("a/b", id="slash"),
        pytest.param("a:b", id="colon"),
        pytest.param("café", id="non-ascii"),
        pytest.param(".a", id="leading-dot"),
        pytest.param("a.", id="trailing-dot"),
        pytest.param("a..b", id="double-dot"),
        pytest.param("AWS.x", id="AWS."),
        pytest.param("aws.x", id="aws."),
        pytest.param("Aws.x", id="Aws."),
        pytest.param("Amazon.x", id="Amazon."),
        pytest.param("AMAZON.x", id="AMAZON."),
        pytest.param("aMaZoN.x", id="aMaZoN."),
        pytest.param("x" * 257, id="257-chars"),
    ],
)
def test_invalid_attribute_names_are_explained(name: str) -> None:
    """Empty, bad characters, edge or double dots, AWS./Amazon. prefixes, or 257 chars: an error."""
    error = limits.attribute_name_error(name)
    assert isinstance(error, str)
    assert error


def test_attribute_name_with_a_trailing_newline_is_invalid() -> None:
    """A name ending in a newline is rejected (a regex `$` would let it through)."""
    assert limits.attribute_name_error("type\n") is not None


# --- batch_entry_id_error --------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry_id",
    [
        "0",
        "a" * 80,
        "A-z_09",
        str(uuid.UUID("12345678-1234-5678-1234-567812345678")),
        uuid.uuid4().hex,
    ],
)
def test_valid_batch_entry_ids_have_no_error(entry_id: str) -> None:
    """1 to 80 alphanumerics, hyphens and underscores, a hyphenated UUID included, are valid."""
    assert limits.batch_entry_id_error(entry_id) is None


@pytest.mark.parametrize(
    "entry_id",
    [
        pytest.param("", id="empty"),
        pytest.param("a" * 81, id="81-chars"),
        pytest.param("a:b", id="colon"),
        pytest.param("a.b", id="dot"),
        pytest.param("a b", id="space"),
        pytest.param("é", id="non-ascii"),
    ],
)
def test_invalid_batch_entry_ids_are_explained(entry_id: str) -> None:
    """Empty, longer than 80, or with ':' '.' or other characters: an error naming the rule."""
    error = limits.batch_entry_id_error(entry_id)
    assert error is not None
    assert "80" in error


def test_batch_entry_id_with_a_trailing_newline_is_invalid() -> None:
    """An id ending in a newline is rejected (a regex `$` would let it through)."""
    assert limits.batch_entry_id_error("abc\n") is not None


# --- pack_batches ----------------------------------------------------------------------------


def sizes(items: list[tuple[int, int]]) -> list[int]:
    return [size for _, size in items]


def size_of(item: tuple[int, int]) -> int:
    return item[1]


def indexed(item_sizes: list[int]) -> list[tuple[int, int]]:
    """Items as (position, size), so identity and order are visible in the batches."""
    return list(enumerate(item_sizes))


def test_no_items_make_no_batches() -> None:
    """Packing nothing gives no batches, not one empty batch."""
    assert limits.pack_batches([], size_of, DEFAULT_LIMIT) == []


def test_batches_never_hold_more_than_ten_entries() -> None:
    """25 small items pack as 10, 10 and 5, in order."""
    items = indexed([1] * 25)
    batches = limits.pack_batches(items, size_of, DEFAULT_LIMIT)
    assert [len(batch) for batch in batches] == [10, 10, 5]
    assert [item for batch in batches for item in batch] == items


def test_eleven_tiny_items_split_ten_and_one() -> None:
    """The eleventh entry opens a new batch even though bytes remain."""
    batches = limits.pack_batches(indexed([1] * 11), size_of, DEFAULT_LIMIT)
    assert [len(batch) for batch in batches] == [10, 1]


def test_a_batch_totalling_exactly_the_limit_stays_one_batch() -> None:
    """Items whose sizes add up to exactly the limit go in one batch (the limit is inclusive)."""
    # Given ten items whose sizes sum to exactly 262,144 bytes
    item_sizes = [26_214] * 9 + [DEFAULT_LIMIT - 9 * 26_214]
    assert sum(item_sizes) == DEFAULT_LIMIT
    # When they are packed
    batches = limits.pack_batches(indexed(item_sizes), size_of, DEFAULT_LIMIT)
    # Then they make one batch
    assert len(batches) == 1
    assert sizes(batches[0]) == item_sizes


def test_a_batch_one_byte_over_the_limit_splits() -> None:
    """Items whose sizes add up to limit+1 bytes split into two batches."""
    half = DEFAULT_LIMIT // 2
    batches = limits.pack_batches(indexed([half, half + 1]), size_of, DEFAULT_LIMIT)
    assert [sizes(batch) for batch in batches] == [[half], [half + 1]]


def test_an_item_of_exactly_the_limit_fits_alone() -> None:
    """An item of exactly the limit is packed, in a batch of its own."""
    batches = limits.pack_batches(indexed([1, DEFAULT_LIMIT, 1]), size_of, DEFAULT_LIMIT)
    assert [sizes(batch) for batch in batches] == [[1], [DEFAULT_LIMIT], [1]]


@pytest.mark.parametrize("position", [0, 5, 9])
def test_an_item_over_the_limit_raises_value_error(position: int) -> None:
    """An item larger than the limit, wherever it is, raises ValueError naming size and limit."""
    item_sizes = [10] * 10
    item_sizes[position] = DEFAULT_LIMIT + 1
    with pytest.raises(ValueError, match=rf"{DEFAULT_LIMIT + 1} bytes.*{DEFAULT_LIMIT}"):
        limits.pack_batches(indexed(item_sizes), size_of, DEFAULT_LIMIT)


@given(
    limit_bytes=st.integers(min_value=1, max_value=1_000),
    fractions=st.lists(st.floats(min_value=0.0, max_value=1.0), max_size=60),
)
def test_packing_invariants_hold_for_any_sizes(limit_bytes: int, fractions: list[float]) -> None:
    """Any sizes within the limit: ≤10 per batch, total ≤ limit, order kept, each item once."""
    # Given items of any size from 0 up to the limit
    items = indexed([int(f * limit_bytes) for f in fractions])
    # When they are packed
    batches = limits.pack_batches(items, size_of, limit_bytes)
    # Then every batch is a valid PublishBatch and the items come out once each, in order
    for batch in batches:
        assert 1 <= len(batch) <= limits.SNS_MAX_BATCH_ENTRIES
        assert sum(sizes(batch)) <= limit_bytes
    assert [item for batch in batches for item in batch] == items


@given(
    limit_bytes=st.integers(min_value=1, max_value=1_000),
    fractions=st.lists(st.floats(min_value=0.0, max_value=1.0), max_size=60),
)
def test_a_batch_is_closed_only_when_full_or_the_next_item_would_not_fit(
    limit_bytes: int, fractions: list[float]
) -> None:
    """Greedy packing: each batch but the last has 10 entries or no room for the next item."""
    items = indexed([int(f * limit_bytes) for f in fractions])
    batches = limits.pack_batches(items, size_of, limit_bytes)
    for batch, following in itertools.pairwise(batches):
        full = len(batch) == limits.SNS_MAX_BATCH_ENTRIES
        next_would_overflow = sum(sizes(batch)) + size_of(following[0]) > limit_bytes
        assert full or next_would_overflow


@given(
    limit_bytes=st.integers(min_value=1, max_value=1_000),
    item_sizes=st.lists(st.integers(min_value=0, max_value=2_000), min_size=1, max_size=30),
)
def test_packing_raises_exactly_when_some_item_exceeds_the_limit(
    limit_bytes: int, item_sizes: list[int]
) -> None:
    """ValueError if and only if one item alone is larger than the limit."""
    if max(item_sizes) > limit_bytes:
        with pytest.raises(ValueError, match="exceeds the limit"):
            limits.pack_batches(indexed(item_sizes), size_of, limit_bytes)
    else:
        assert limits.pack_batches(indexed(item_sizes), size_of, limit_bytes)
