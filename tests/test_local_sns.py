"""Tests of relay.local_sns: the SNS query API as boto3 sees it, SNS's real limits, the recording.

Every call goes through a real boto3 client to a real server on a loopback port, so the wire
format (form parameters in, XML out) is checked by botocore's own serializer and parser.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ReadTimeoutError
from hypothesis import example, given
from hypothesis import strategies as st

from relay import limits
from relay.local_sns import LocalSnsClient, LocalSnsServer, serve
from relay.local_sns.protocol import SNS_XMLNS, SnsError, parse_params
from workers.sns import BatchEntry
from workers.sns_lean import encode_publish_batch

DEFAULT_LIMIT = limits.SNS_DEFAULT_MAX_MESSAGE_BYTES
# 4 + 6 + 11 bytes: name, DataType and value all count toward the size (FACTS §1.1).
TYPE_ATTRIBUTE = {"type": {"DataType": "String", "StringValue": "message.new"}}
TYPE_ATTRIBUTE_BYTES = len("type") + len("String") + len("message.new")
UNICODE_BODY = '{"text":"héllo wörld ☕ 🎉","sym":"+%&<>=;\\\\ \\"q\\"","crlf":"a\r\nb\tc"}'


def make_client(url: str, region: str = "us-east-1", **config: Any) -> Any:
    """A boto3 SNS client for the local endpoint, with no retries so each call is one request."""
    return boto3.client(
        "sns",
        region_name=region,
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}, **config),
    )


def error_of(call: Callable[[], object]) -> tuple[str, int]:
    """The SNS error code and HTTP status that `call` fails with, as botocore parsed them."""
    with pytest.raises(ClientError) as caught:
        call()
    response = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def raw_request(url: str, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    """Send one plain HTTP request to the server, for what boto3 cannot send; (status, body)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request(method, path, body=body)
        reply = connection.getresponse()
        return reply.status, reply.read()
    finally:
        connection.close()


def body_of_bytes(size_bytes: int) -> str:
    """A body of exactly `size_bytes` UTF-8 bytes, mostly two-byte characters."""
    return "é" * (size_bytes // 2) + "a" * (size_bytes % 2)


@pytest.fixture(scope="module")
def server() -> Iterator[LocalSnsServer]:
    with LocalSnsServer() as running:
        yield running


@pytest.fixture(autouse=True)
def _clean(server: LocalSnsServer) -> None:
    """Each test starts with no topics, no messages and no fault."""
    server.reset(topics=True)


@pytest.fixture(scope="module")
def sns(server: LocalSnsServer) -> Iterator[Any]:
    client = make_client(server.url)
    yield client
    client.close()


@pytest.fixture
def topic_arn(sns: Any) -> str:
    arn: str = sns.create_topic(Name="events")["TopicArn"]
    return arn


def publish_with_size(sns: Any, arn: str, size_bytes: int) -> Any:
    """Publish a message of exactly `size_bytes` SNS bytes: a multibyte body plus one attribute."""
    body = body_of_bytes(size_bytes - TYPE_ATTRIBUTE_BYTES)
    assert limits.message_bytes(body, {"type": "message.new"}) == size_bytes
    return sns.publish(TopicArn=arn, Message=body, MessageAttributes=TYPE_ATTRIBUTE)


# Topics --------------------------------------------------------------------------------------


def test_create_topic_is_idempotent_and_takes_its_region_from_the_signature(
    server: LocalSnsServer, sns: Any
) -> None:
    """CreateTopic returns the same ARN twice, in the region of the request's credential scope."""
    eu = make_client(server.url, region="eu-west-2")
    try:
        first = sns.create_topic(Name="events")["TopicArn"]
        again = sns.create_topic(Name="events")["TopicArn"]
        in_eu = eu.create_topic(Name="events")["TopicArn"]
        listed = [t["TopicArn"] for t in eu.list_topics()["Topics"]]
    finally:
        eu.close()
    assert first == again == "arn:aws:sns:us-east-1:123456789012:events"
    assert in_eu == "arn:aws:sns:eu-west-2:123456789012:events"
    assert listed == [in_eu]


def test_create_topic_again_with_other_attributes_is_rejected(sns: Any) -> None:
    """Re-creating a topic with different attributes fails as on SNS, instead of changing it."""
    sns.create_topic(Name="events", Attributes={"MaximumMessageSize": "2048"})
    code = error_of(
        lambda: sns.create_topic(Name="events", Attributes={"MaximumMessageSize": "4096"})
    )
    assert code == ("InvalidParameter", 400)


def test_get_topic_attributes_reports_the_arn_and_the_size_limit(sns: Any) -> None:
    """GetTopicAttributes gives TopicArn and Owner, and MaximumMessageSize once it is set."""
    plain = sns.create_topic(Name="plain")["TopicArn"]
    large = sns.create_topic(Name="large", Attributes={"MaximumMessageSize": "1048576"})["TopicArn"]
    plain_attributes = sns.get_topic_attributes(TopicArn=plain)["Attributes"]
    large_attributes = sns.get_topic_attributes(TopicArn=large)["Attributes"]
    assert plain_attributes["TopicArn"] == plain
    assert plain_attributes["Owner"] == "123456789012"
    assert "MaximumMessageSize" not in plain_attributes
    assert large_attributes["MaximumMessageSize"] == "1048576"


@pytest.mark.parametrize("size", ["1023", "1048577", "big"])
def test_maximum_message_size_outside_its_range_is_rejected(sns: Any, size: str) -> None:
    """MaximumMessageSize accepts 1,024 to 1,048,576 only (FACTS §1.2)."""
    code = error_of(lambda: sns.create_topic(Name="t", Attributes={"MaximumMessageSize": size}))
    assert code == ("InvalidParameter", 400)


def test_set_topic_attributes_changes_the_limit_that_publish_enforces(
    sns: Any, topic_arn: str
) -> None:
    """Lowering MaximumMessageSize with SetTopicAttributes takes effect on the next Publish."""
    publish_with_size(sns, topic_arn, 2048)
    sns.set_topic_attributes(
        TopicArn=topic_arn, AttributeName="MaximumMessageSize", AttributeValue="2047"
    )
    assert error_of(lambda: publish_with_size(sns, topic_arn, 2048)) == ("InvalidParameter", 400)


def test_unknown_and_deleted_topics_are_not_found(sns: Any, topic_arn: str) -> None:
    """Every action on a topic that does not exist answers NotFound with HTTP 404."""
    sns.delete_topic(TopicArn=topic_arn)
    sns.delete_topic(TopicArn=topic_arn)  # deleting twice is not an error, as on SNS
    entry = [{"Id": "a", "Message": "x"}]
    assert error_of(lambda: sns.publish(TopicArn=topic_arn, Message="x")) == ("NotFound", 404)
    assert error_of(
        lambda: sns.publish_batch(TopicArn=topic_arn, PublishBatchRequestEntries=entry)
    ) == ("NotFound", 404)
    assert error_of(lambda: sns.get_topic_attributes(TopicArn=topic_arn)) == ("NotFound", 404)
    assert sns.list_topics()["Topics"] == []


@pytest.mark.parametrize(
    ("name", "attributes"),
    [("orders.fifo", {}), ("orders", {"FifoTopic": "true"}), ("bad name", {}), ("", {})],
)
def test_topic_names_follow_the_standard_and_fifo_rules(
    sns: Any, name: str, attributes: dict[str, str]
) -> None:
    """A FIFO topic needs both the .fifo suffix and FifoTopic=true; names are A-Z a-z 0-9 _ -."""
    code = error_of(lambda: sns.create_topic(Name=name, Attributes=attributes))
    assert code == ("InvalidParameter", 400)


def test_an_unknown_action_is_invalid_action(server: LocalSnsServer) -> None:
    """A query action the endpoint does not serve answers 400 InvalidAction in SNS's XML."""
    status, body = raw_request(server.url, "POST", "/", b"Action=Subscribe&Version=2010-03-31")
    document = ET.fromstring(body)  # noqa: S314 (our own server's reply)
    assert status == 400
    assert document.findtext(f"{{{SNS_XMLNS}}}Error/{{{SNS_XMLNS}}}Code") == "InvalidAction"
    assert document.findtext(f"{{{SNS_XMLNS}}}RequestId")


# Publish: the body, the size rule, attributes -------------------------------------------------


def test_publish_records_the_body_byte_for_byte(
    server: LocalSnsServer, sns: Any, topic_arn: str
) -> None:
    """The recorded body and attributes are exactly what boto3 sent, unicode and escapes too."""
    reply = sns.publish(
        TopicArn=topic_arn,
        Message=UNICODE_BODY,
        MessageAttributes={
            "cid": {"DataType": "String", "StringValue": "messaging:café ☕"},
            "n": {"DataType": "Number", "StringValue": "-12.5"},
        },
    )
    [recorded] = server.messages()
    assert recorded["body"].encode("utf-8") == UNICODE_BODY.encode("utf-8")
    assert recorded["message_id"] == reply["MessageId"]
    assert recorded["topic_arn"] == topic_arn
    assert recorded["attributes"] == {
        "cid": {"DataType": "String", "StringValue": "messaging:café ☕"},
        "n": {"DataType": "Number", "StringValue": "-12.5"},
    }
    assert abs(recorded["received_at"] - time.time()) < 60


@pytest.mark.parametrize(("delta", "accepted"), [(-1, True), (0, True), (1, False)])
def test_publish_size_limit_counts_utf8_bytes_and_attributes(
    sns: Any, topic_arn: str, delta: int, accepted: bool
) -> None:
    """A message of exactly 262,144 bytes (body plus attribute) passes; one byte more does not."""
    if accepted:
        publish_with_size(sns, topic_arn, DEFAULT_LIMIT + delta)
    else:
        code = error_of(lambda: publish_with_size(sns, topic_arn, DEFAULT_LIMIT + delta))
        assert code == ("InvalidParameter", 400)


def test_a_body_under_the_limit_in_characters_but_over_it_in_bytes_is_rejected(
    sns: Any, topic_arn: str
) -> None:
    """131,073 two-byte characters are 262,146 bytes: too long, though moto would accept them."""
    code = error_of(lambda: sns.publish(TopicArn=topic_arn, Message="é" * 131_073))
    assert code == ("InvalidParameter", 400)


@pytest.mark.parametrize("limit", [1_024, 1_048_576])
def test_the_topic_maximum_message_size_is_the_limit(sns: Any, limit: int) -> None:
    """A topic's MaximumMessageSize replaces 262,144 as the inclusive limit, down or up."""
    arn = sns.create_topic(Name=f"max-{limit}", Attributes={"MaximumMessageSize": str(limit)})[
        "TopicArn"
    ]
    publish_with_size(sns, arn, limit)
    assert error_of(lambda: publish_with_size(sns, arn, limit + 1)) == ("InvalidParameter", 400)


def test_a_binary_attribute_counts_its_decoded_bytes(sns: Any) -> None:
    """A BinaryValue counts as its raw bytes (the extended client's rule), not its base64 text."""
    arn = sns.create_topic(Name="small", Attributes={"MaximumMessageSize": "1024"})["TopicArn"]
    blob = bytes(range(256)) * 2  # 512 bytes, 684 in base64
    attributes = {"blob": {"DataType": "Binary", "BinaryValue": blob}}
    fixed = len("blob") + len("Binary") + len(blob)
    sns.publish(TopicArn=arn, Message="a" * (1024 - fixed), MessageAttributes=attributes)
    code = error_of(
        lambda: sns.publish(
            TopicArn=arn, Message="a" * (1025 - fixed), MessageAttributes=attributes
        )
    )
    assert code == ("InvalidParameter", 400)


def test_an_empty_body_is_rejected(sns: Any, topic_arn: str) -> None:
    """An empty Message is InvalidParameter, as on SNS."""
    assert error_of(lambda: sns.publish(TopicArn=topic_arn, Message="")) == (
        "InvalidParameter",
        400,
    )


@pytest.mark.parametrize(
    "name", [".a", "a.", "a..b", "AWS.x", "amazon.y", "a b", "é", "a/b", "x" * 257, "a<b&"]
)
def test_attribute_names_outside_the_rules_are_rejected(
    sns: Any, topic_arn: str, name: str
) -> None:
    """Attribute names follow FACTS §1.3 (charset, dots, reserved prefixes, 256 characters)."""
    attributes = {name: {"DataType": "String", "StringValue": "v"}}
    code = error_of(
        lambda: sns.publish(TopicArn=topic_arn, Message="x", MessageAttributes=attributes)
    )
    assert code == ("ParameterValueInvalid", 400)


@pytest.mark.parametrize(
    "value",
    [
        {"DataType": "Strin", "StringValue": "v"},
        {"DataType": "String", "StringValue": ""},
        {"DataType": "String", "BinaryValue": b"v"},
        {"DataType": "Binary", "BinaryValue": b""},
        {"DataType": "Number", "StringValue": "ten"},
        {"DataType": "Number", "StringValue": "1000000001"},
        {"DataType": "", "StringValue": "v"},
    ],
)
def test_attribute_types_and_values_outside_the_rules_are_rejected(
    sns: Any, topic_arn: str, value: dict[str, Any]
) -> None:
    """DataType is String, Number or Binary (with a label); the value is present and fits it."""
    code = error_of(
        lambda: sns.publish(TopicArn=topic_arn, Message="x", MessageAttributes={"a": value})
    )
    assert code == ("ParameterValueInvalid", 400)


def test_valid_attribute_names_and_types_are_accepted(
    server: LocalSnsServer, sns: Any, topic_arn: str
) -> None:
    """Dots inside names, custom type labels, String.Array, Number and Binary all pass."""
    attributes = {
        "a.b": {"DataType": "String", "StringValue": "v"},
        "A-b_c": {"DataType": "String.Array", "StringValue": '["x", 1, null]'},
        "x" * 256: {"DataType": "Number.float", "StringValue": "1e3"},
        "bin": {"DataType": "Binary.gif", "BinaryValue": b"\x00\x01"},
    }
    sns.publish(TopicArn=topic_arn, Message="x", MessageAttributes=attributes)
    [recorded] = server.messages()
    assert recorded["attributes"]["bin"] == {"DataType": "Binary.gif", "BinaryValue": "AAE="}
    assert set(recorded["attributes"]) == set(attributes)


def test_more_than_ten_attributes_are_accepted_and_counted(
    server: LocalSnsServer, sns: Any, topic_arn: str
) -> None:
    """SNS documents no per-Publish cap, so 11 attributes pass; the stats count such messages."""
    attributes = {f"a{i}": {"DataType": "String", "StringValue": "v"} for i in range(11)}
    sns.publish(TopicArn=topic_arn, Message="x", MessageAttributes=attributes)
    assert server.stats()["over_attribute_cap"] == 1


@pytest.mark.parametrize(
    ("extra", "accepted"),
    [
        ({"Subject": "s" * 100}, True),
        ({"Subject": "s" * 101}, False),
        ({"Subject": "two\nlines"}, False),
        ({"MessageStructure": "json", "Message": '{"default": "x"}'}, True),
        ({"MessageStructure": "json", "Message": '{"sqs": "x"}'}, False),
        ({"MessageStructure": "json", "Message": "not json"}, False),
    ],
)
def test_subject_and_message_structure_rules(
    sns: Any, topic_arn: str, extra: dict[str, str], accepted: bool
) -> None:
    """Subject is at most 100 printable characters; a json structure needs a "default" key."""
    params = {"TopicArn": topic_arn, "Message": "x"} | extra
    if accepted:
        sns.publish(**params)
    else:
        assert error_of(lambda: sns.publish(**params)) == ("InvalidParameter", 400)


# PublishBatch --------------------------------------------------------------------------------


def test_publish_batch_reports_failed_entries_beside_successful_ones(
    server: LocalSnsServer, sns: Any, topic_arn: str
) -> None:
    """Invalid entries come back in Failed with SenderFault; the others are published in order."""
    bad_name = {"AWS.x": {"DataType": "String", "StringValue": "v"}}
    entries = [
        {"Id": "first", "Message": "one"},
        {"Id": "bad-name", "Message": "x", "MessageAttributes": bad_name},
        {"Id": "empty", "Message": ""},
        {"Id": "last", "Message": "two ☕"},
    ]
    reply = sns.publish_batch(TopicArn=topic_arn, PublishBatchRequestEntries=entries)
    assert [s["Id"] for s in reply["Successful"]] == ["first", "last"]
    assert {f["Id"]: (f["Code"], f["SenderFault"]) for f in reply["Failed"]} == {
        "bad-name": ("ParameterValueInvalid", True),
        "empty": ("InvalidParameter", True),
    }
    assert [m["body"] for m in server.messages()] == ["one", "two ☕"]
    assert [m["message_id"] for m in server.messages()] == [
        s["MessageId"] for s in reply["Successful"]
    ]
    assert server.stats()["rejected"] == {"ParameterValueInvalid": 1, "InvalidParameter": 1}


@pytest.mark.parametrize(("delta", "accepted"), [(0, True), (1, False)])
def test_publish_batch_aggregate_counts_every_entry_and_attribute(
    sns: Any, topic_arn: str, delta: int, accepted: bool
) -> None:
    """Ten entries totalling exactly 262,144 bytes pass; one byte more fails the whole batch."""
    share = (DEFAULT_LIMIT + delta) // 10
    sizes = [share] * 9 + [DEFAULT_LIMIT + delta - 9 * share]
    entries = [
        {
            "Id": f"e{i}",
            "Message": body_of_bytes(size - TYPE_ATTRIBUTE_BYTES),
            "MessageAttributes": TYPE_ATTRIBUTE,
        }
        for i, size in enumerate(sizes)
    ]

    def publish() -> Any:
        return sns.publish_batch(TopicArn=topic_arn, PublishBatchRequestEntries=entries)

    if accepted:
        assert len(publish()["Successful"]) == 10
    else:
        assert error_of(publish) == ("BatchRequestTooLong", 400)


def test_publish_batch_aggregate_follows_the_topic_maximum_message_size(sns: Any) -> None:
    """On a 1 MiB topic, a batch of four 256 KiB messages fits."""
    arn = sns.create_topic(Name="large", Attributes={"MaximumMessageSize": "1048576"})["TopicArn"]
    entries = [{"Id": f"e{i}", "Message": "a" * DEFAULT_LIMIT} for i in range(4)]
    reply = sns.publish_batch(TopicArn=arn, PublishBatchRequestEntries=entries)
    assert len(reply["Successful"]) == 4


def test_a_batch_entry_over_the_limit_fails_the_whole_request(sns: Any, topic_arn: str) -> None:
    """One entry over the limit is over the aggregate too, so the request is BatchRequestTooLong."""
    entries = [{"Id": "big", "Message": "a" * (DEFAULT_LIMIT + 1)}]
    code = error_of(
        lambda: sns.publish_batch(TopicArn=topic_arn, PublishBatchRequestEntries=entries)
    )
    assert code == ("BatchRequestTooLong", 400)


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([{"Id": f"e{i}", "Message": "x"} for i in range(11)], "TooManyEntriesInBatchRequest"),
        ([], "EmptyBatchRequest"),
        (
            [{"Id": "same", "Message": "x"}, {"Id": "same", "Message": "y"}],
            "BatchEntryIdsNotDistinct",
        ),
        ([{"Id": "a.b", "Message": "x"}], "InvalidBatchEntryId"),
        ([{"Id": "a:b", "Message": "x"}], "InvalidBatchEntryId"),
        ([{"Id": "x" * 81, "Message": "x"}], "InvalidBatchEntryId"),
        ([{"Id": "", "Message": "x"}], "InvalidBatchEntryId"),
    ],
    ids=["11-entries", "empty", "duplicate-ids", "dot-id", "colon-id", "81-char-id", "blank-id"],
)
def test_publish_batch_shape_errors_fail_the_whole_request(
    server: LocalSnsServer, sns: Any, topic_arn: str, entries: list[dict[str, str]], expected: str
) -> None:
    """Entry count, distinct ids and the id charset are checked before any entry is published."""
    code = error_of(
        lambda: sns.publish_batch(TopicArn=topic_arn, PublishBatchRequestEntries=entries)
    )
    assert code == (expected, 400)
    assert server.stats()["published"] == 0


def test_publish_batch_accepts_ten_entries_with_uuid_and_80_character_ids(
    sns: Any, topic_arn: str
) -> None:
    """Ten entries is the maximum, and UUIDs and 80-character ids are valid entry ids."""
    ids = ["0f8e1d2c-3b4a-5968-7766-554433221100", "x" * 80] + [f"e_{i}" for i in range(8)]
    entries = [{"Id": entry_id, "Message": "x"} for entry_id in ids]
    reply = sns.publish_batch(TopicArn=topic_arn, PublishBatchRequestEntries=entries)
    assert [s["Id"] for s in reply["Successful"]] == ids
    assert reply["Failed"] == []


# FIFO ----------------------------------------------------------------------------------------


@pytest.fixture
def fifo_arn(sns: Any) -> str:
    arn: str = sns.create_topic(Name="orders.fifo", Attributes={"FifoTopic": "true"})["TopicArn"]
    return arn


def test_a_fifo_topic_requires_a_group_and_a_deduplication_id(sns: Any, fifo_arn: str) -> None:
    """Without MessageGroupId, or without a dedup id and content dedup, Publish is rejected."""
    no_group = {"MessageDeduplicationId": "d"}
    no_dedup = {"MessageGroupId": "g"}
    for missing in (no_group, no_dedup):
        code = error_of(lambda ids=missing: sns.publish(TopicArn=fifo_arn, Message="x", **ids))
        assert code == ("InvalidParameter", 400)
    reply = sns.publish(
        TopicArn=fifo_arn, Message="x", MessageGroupId="g", MessageDeduplicationId="d"
    )
    assert reply["SequenceNumber"].isdigit()


def test_a_fifo_topic_drops_a_repeated_deduplication_id(
    server: LocalSnsServer, sns: Any, fifo_arn: str
) -> None:
    """A repeated dedup id gets the first message's id back and is not recorded again."""
    ids = {"TopicArn": fifo_arn, "MessageGroupId": "g", "MessageDeduplicationId": "evt-1"}
    first = sns.publish(Message="one", **ids)
    second = sns.publish(Message="one again", **ids)
    third = sns.publish(Message="two", **(ids | {"MessageDeduplicationId": "evt-2"}))
    assert second["MessageId"] == first["MessageId"] != third["MessageId"]
    assert int(third["SequenceNumber"]) > int(first["SequenceNumber"])
    assert [m["body"] for m in server.messages()] == ["one", "two"]
    assert server.stats()["deduplicated"] == 1


def test_content_based_deduplication_needs_only_a_group(server: LocalSnsServer, sns: Any) -> None:
    """With ContentBasedDeduplication the body's hash is the dedup id, so equal bodies collapse."""
    arn = sns.create_topic(
        Name="content.fifo",
        Attributes={"FifoTopic": "true", "ContentBasedDeduplication": "true"},
    )["TopicArn"]
    entries = [{"Id": f"e{i}", "Message": "same", "MessageGroupId": "g"} for i in range(2)]
    reply = sns.publish_batch(TopicArn=arn, PublishBatchRequestEntries=entries)
    assert len(reply["Successful"]) == 2
    assert len(server.messages()) == 1


def test_a_deduplication_id_on_a_standard_topic_is_rejected(sns: Any, topic_arn: str) -> None:
    """MessageDeduplicationId is for FIFO topics only; a standard topic rejects it."""
    code = error_of(
        lambda: sns.publish(TopicArn=topic_arn, Message="x", MessageDeduplicationId="d")
    )
    assert code == ("InvalidParameter", 400)


# Faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("throttle", ("Throttling", 400)),
        ("error500", ("InternalError", 500)),
        ("unavailable503", ("ServiceUnavailable", 503)),
        ("auth", ("AuthorizationError", 403)),
    ],
)
def test_fault_modes_answer_with_sns_error_codes(
    server: LocalSnsServer, sns: Any, topic_arn: str, mode: str, expected: tuple[str, int]
) -> None:
    """A fault with a count fails that many publish requests with its code, then clears."""
    server.set_fault(mode, count=2)
    entries = [{"Id": "a", "Message": "x"}]
    assert error_of(lambda: sns.publish(TopicArn=topic_arn, Message="x")) == expected
    assert (
        error_of(lambda: sns.publish_batch(TopicArn=topic_arn, PublishBatchRequestEntries=entries))
        == expected
    )
    sns.publish(TopicArn=topic_arn, Message="x")
    assert server.stats()["published"] == 1
    assert server.stats()["rejected"] == {expected[0]: 2}


def test_a_fault_without_a_count_lasts_until_cleared(
    server: LocalSnsServer, sns: Any, topic_arn: str
) -> None:
    """Without a count a fault stays in force; mode "none" clears it; other actions still work."""
    server.set_fault("unavailable503")
    for _ in range(3):
        assert error_of(lambda: sns.publish(TopicArn=topic_arn, Message="x"))[0] == (
            "ServiceUnavailable"
        )
    sns.get_topic_attributes(TopicArn=topic_arn)  # only Publish and PublishBatch by default
    server.set_fault("none")
    sns.publish(TopicArn=topic_arn, Message="x")


def test_a_fault_can_cover_other_actions(server: LocalSnsServer, sns: Any, topic_arn: str) -> None:
    """With `actions`, a fault also fails GetTopicAttributes, as an outage would."""
    server.set_fault("auth", actions=["GetTopicAttributes"])
    assert error_of(lambda: sns.get_topic_attributes(TopicArn=topic_arn)) == (
        "AuthorizationError",
        403,
    )
    sns.publish(TopicArn=topic_arn, Message="x")


def test_an_entry_failure_fault_fails_alternate_batch_entries(
    server: LocalSnsServer, sns: Any, topic_arn: str
) -> None:
    """entry_failure fails entries 1 and 3 of a batch with the given code and sender fault."""
    server.set_fault("entry_failure", code="Throttling", sender_fault=False, count=1)
    entries = [{"Id": f"e{i}", "Message": f"m{i}"} for i in range(3)]
    reply = sns.publish_batch(TopicArn=topic_arn, PublishBatchRequestEntries=entries)
    assert [s["Id"] for s in reply["Successful"]] == ["e1"]
    assert [(f["Id"], f["Code"], f["SenderFault"]) for f in reply["Failed"]] == [
        ("e0", "Throttling", False),
        ("e2", "Throttling", False),
    ]
    retry = sns.publish_batch(TopicArn=topic_arn, PublishBatchRequestEntries=entries[::2])
    assert len(retry["Successful"]) == 2
    assert [m["body"] for m in server.messages()] == ["m1", "m0", "m2"]


def test_a_slow_fault_makes_a_short_read_timeout_expire(
    server: LocalSnsServer, topic_arn: str
) -> None:
    """A slow answer trips botocore's read timeout, the way a stalled SNS would."""
    server.set_fault("slow", delay_s=0.5, count=1)
    impatient = make_client(server.url, read_timeout=0.1, connect_timeout=1)
    try:
        with pytest.raises(ReadTimeoutError):
            impatient.publish(TopicArn=topic_arn, Message="late")
    finally:
        impatient.close()
    # The publish the client gave up on is still accepted: a timeout is no proof of failure.
    assert [m["body"] for m in server.wait_for_published(1, timeout_s=5)] == ["late"]


# Inspection and running ----------------------------------------------------------------------


def test_the_http_control_endpoints_page_count_reset_and_inject(
    server: LocalSnsServer, sns: Any, topic_arn: str
) -> None:
    """LocalSnsClient reads messages by offset, stats, sets faults and resets over HTTP."""
    control = LocalSnsClient(server.url)
    assert control.healthy()
    assert control.create_topic("events") == topic_arn  # idempotent, as CreateTopic is
    for i in range(5):
        sns.publish(TopicArn=topic_arn, Message=f"m{i} ☕")
    assert [m["body"] for m in control.messages(offset=2, limit=2)] == ["m2 ☕", "m3 ☕"]
    assert [m["seq"] for m in control.messages(offset=3)] == [3, 4]
    assert control.stats()["published"] == 5
    control.set_fault("throttle", count=1)
    assert error_of(lambda: sns.publish(TopicArn=topic_arn, Message="x"))[0] == "Throttling"
    control.reset()
    assert control.stats()["published"] == 0
    assert control.messages() == []


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/_local/nothing", None, 404),
        ("POST", "/_local/faults", b'{"mode": "explode"}', 400),
        ("POST", "/_local/faults", b'{"mode": "throttle", "count": 0}', 400),
        ("POST", "/_local/faults", b"not json", 400),
        ("GET", "/_local/messages?offset=x", None, 400),
    ],
)
def test_bad_control_requests_get_json_errors(
    server: LocalSnsServer, method: str, path: str, body: bytes | None, status: int
) -> None:
    """Unknown control paths are 404 and malformed ones 400, each with a JSON error."""
    reply_status, reply = raw_request(server.url, method, path, body)
    assert reply_status == status
    assert json.loads(reply)["error"]


def test_topics_can_be_created_without_an_sns_client(server: LocalSnsServer, sns: Any) -> None:
    """create_topic, in memory or over HTTP, makes topics that boto3 then sees with attributes."""
    small = server.create_topic("small", attributes={"MaximumMessageSize": "1024"})
    fifo = LocalSnsClient(server.url).create_topic(
        "orders.fifo", region="eu-west-1", attributes={"FifoTopic": "true"}
    )
    assert small == "arn:aws:sns:us-east-1:123456789012:small"
    assert fifo == "arn:aws:sns:eu-west-1:123456789012:orders.fifo"
    assert sns.get_topic_attributes(TopicArn=small)["Attributes"]["MaximumMessageSize"] == "1024"
    with pytest.raises(urllib.error.HTTPError):
        LocalSnsClient(server.url).create_topic("bad name")


def test_wait_for_published_returns_the_messages_or_times_out(
    server: LocalSnsServer, sns: Any, topic_arn: str
) -> None:
    """wait_for_published returns once enough messages are in, and raises TimeoutError if not."""
    sns.publish(TopicArn=topic_arn, Message="x")
    assert len(server.wait_for_published(1, timeout_s=5)) == 1
    with pytest.raises(TimeoutError):
        server.wait_for_published(2, timeout_s=0.05)


def test_record_file_gets_one_json_line_per_accepted_message(tmp_path: Path) -> None:
    """With record_file, each accepted message is appended as a JSON line other processes read."""
    path = tmp_path / "sns.jsonl"
    with LocalSnsServer(record_file=path) as server:
        client = make_client(server.url)
        try:
            arn = client.create_topic(Name="events")["TopicArn"]
            client.publish(TopicArn=arn, Message=UNICODE_BODY)
            client.publish_batch(
                TopicArn=arn,
                PublishBatchRequestEntries=[
                    {"Id": "a", "Message": "a"},
                    {"Id": "b", "Message": ""},  # rejected: not recorded
                ],
            )
        finally:
            client.close()
        lines = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
        assert lines == server.messages()
    assert [line["body"] for line in lines] == [UNICODE_BODY, "a"]


def test_max_recorded_messages_keeps_the_newest() -> None:
    """With a cap the oldest messages are forgotten, and offsets still count from the first."""
    with LocalSnsServer(max_recorded_messages=3) as server:
        client = make_client(server.url)
        try:
            arn = client.create_topic(Name="events")["TopicArn"]
            for i in range(5):
                client.publish(TopicArn=arn, Message=f"m{i}")
        finally:
            client.close()
        assert [m["seq"] for m in server.messages()] == [2, 3, 4]
        assert [m["body"] for m in server.messages(offset=3)] == ["m3", "m4"]
        assert server.stats()["published"] == 5


def test_serve_raises_when_its_port_is_taken(server: LocalSnsServer) -> None:
    """serve() on a port already in use raises OSError instead of exiting the process."""
    port = int(server.url.rsplit(":", 1)[1])
    with pytest.raises(OSError, match="in use"):
        serve(port=port)


@pytest.mark.slow
def test_serve_runs_in_the_foreground_and_exits_zero_on_sigterm(tmp_path: Path) -> None:
    """`serve()` answers on its port, records to its file, and SIGTERM ends it with status 0."""
    with LocalSnsServer() as probe:  # a free port: bound and released by a throwaway server
        port = int(probe.url.rsplit(":", 1)[1])
    record = tmp_path / "sns.jsonl"
    code = f"from relay.local_sns import serve; serve(port={port}, record_file={str(record)!r})"
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=Path(__file__).parents[1], env=dict(os.environ)
    )
    try:
        url = f"http://127.0.0.1:{port}"
        control = LocalSnsClient(url, timeout_s=1)
        deadline = time.monotonic() + 20
        while not control.healthy():
            assert process.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "the server did not answer within 20 s"
            time.sleep(0.05)
        client = make_client(url)
        try:
            arn = client.create_topic(Name="events")["TopicArn"]
            client.publish(TopicArn=arn, Message="hello")
        finally:
            client.close()
        assert control.stats()["published"] == 1
        assert json.loads(record.read_text("utf-8"))["body"] == "hello"
    finally:
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=20)
    assert status == 0


def test_binary_values_round_trip_as_base64(
    server: LocalSnsServer, sns: Any, topic_arn: str
) -> None:
    """A Binary attribute is recorded as the base64 text botocore sent for its bytes."""
    blob = os.urandom(32)
    sns.publish(
        TopicArn=topic_arn,
        Message="x",
        MessageAttributes={"b": {"DataType": "Binary", "BinaryValue": blob}},
    )
    [recorded] = server.messages()
    assert base64.b64decode(recorded["attributes"]["b"]["BinaryValue"]) == blob


# The form parser -------------------------------------------------------------------------------

# Text that urllib and the lean encoder can encode: anything but lone surrogates.
ENCODABLE_TEXT = st.text(st.characters(blacklist_categories=("Cs",)))
# Pieces of raw bodies, valid and not: separators, escapes good and bad, `+`, NUL, line breaks,
# backslashes (the old decoder's escape character), UTF-8 and bytes that are not UTF-8.
RAW_PIECES = st.sampled_from(
    (
        *(b"a", b"Z9", b".", b"&", b"=", b"+", b"%", b"%4", b"%41", b"%e9", b"%C3%A9", b"%C3"),
        *(b"%3D", b"%3d", b"%26", b"%25", b"%2B", b"%00", b"%zz", b"%%", b"\\", b"\\x41"),
        *(b"\x00", b"\n", b"\r\n", b"\xc3\xa9", b"\xff", b"%F0%9F%8E%89", b"=%3D=", b"&&"),
    )
)


def parse_qsl_strictly(body: bytes) -> dict[str, str]:
    """What urllib.parse.parse_qsl(keep_blank_values=True) does, on bytes, failing on non-UTF-8.

    Split on `&`, skip empty pairs, split each at its first `=`, `+` to space, then percent-decode
    (a `%` without two hex digits kept) and decode as UTF-8.
    """

    def decode(raw: bytes) -> str:
        return urllib.parse.unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")

    pairs = (pair.partition(b"=") for pair in body.split(b"&") if pair)
    return {decode(name): decode(value) for name, _, value in pairs}


@given(st.lists(st.tuples(ENCODABLE_TEXT, ENCODABLE_TEXT)))
def test_the_form_parser_decodes_what_urlencode_encodes_as_parse_qsl_does(
    pairs: list[tuple[str, str]],
) -> None:
    body = urllib.parse.urlencode(pairs)
    expected = dict(urllib.parse.parse_qsl(body, keep_blank_values=True))
    assert parse_params(b"", body.encode("ascii")) == expected
    assert parse_params(body.encode("ascii"), b"") == expected


@given(
    st.lists(
        st.builds(
            BatchEntry,
            id=st.from_regex(r"[A-Za-z0-9_-]{1,80}", fullmatch=True),
            body=ENCODABLE_TEXT,
            attributes=st.dictionaries(ENCODABLE_TEXT, ENCODABLE_TEXT, max_size=3),
            group_id=st.none() | ENCODABLE_TEXT,
        ),
        max_size=10,
    )
)
def test_the_form_parser_decodes_the_lean_publish_batch_body_as_parse_qsl_does(
    entries: list[BatchEntry],
) -> None:
    body = encode_publish_batch("arn:aws:sns:us-east-1:123456789012:events", entries)
    expected = dict(urllib.parse.parse_qsl(body.decode("ascii"), keep_blank_values=True))
    assert parse_params(b"", body) == expected


@given(st.lists(RAW_PIECES).map(b"".join), st.lists(RAW_PIECES).map(b"".join))
@example(query=b"", body=b"a=%")  # a2b_qp drops an escape character at the very end
def test_the_form_parser_decodes_any_body_pair_by_pair_or_fails_as_not_utf8(
    query: bytes, body: bytes
) -> None:
    """Malformed bodies too: a stray `%` is kept, a `%00` decoded, non-UTF-8 a SnsError."""
    try:
        expected = parse_qsl_strictly(query) | parse_qsl_strictly(body)
    except UnicodeDecodeError:
        with pytest.raises(SnsError) as caught:
            parse_params(query, body)
        assert caught.value.code == "MalformedQueryString"
    else:
        assert parse_params(query, body) == expected
