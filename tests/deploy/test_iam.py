"""deploy/iam/: least privilege for both auth modes, matched against the calls the workers make.

Static checks: IAM policies can't be evaluated offline (moto's IAM enforcement does not scope
SNS actions to a topic), so these tests pin what each document allows and to whom.
"""

from __future__ import annotations

import re
from typing import Any

import boto3
import pytest

from relay.settings import Settings
from tests.deploy import IAM_DIR, REPO_ROOT, load_json

PUBLISH_ACTIONS = frozenset({"sns:Publish", "sns:GetTopicAttributes"})
# PublishBatch has no IAM action of its own: AWS authorizes it with sns:Publish.
ACTION_OF_OPERATION = {"PublishBatch": "sns:Publish"}
POLICY_FILES = (
    "key-secret-policy.json",
    "role-permissions-policy.json",
    "role-trust-policy.json",
    "role-assumer-policy.json",
    "topic-policy.json",
)
_ROLE_ARN_RE = re.compile(r"^arn:aws:iam::[0-9]{12}:role/[\w+=,.@-]+$")


def policy(name: str) -> dict[str, Any]:
    document: dict[str, Any] = load_json(IAM_DIR / name)
    return document


def statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = document["Statement"]
    return found


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def allowed_actions(document: dict[str, Any]) -> set[str]:
    return {action for statement in statements(document) for action in as_list(statement["Action"])}


def sns_operations_the_workers_call() -> set[str]:
    """SNS API operations (PublishBatch, ...) called through a boto3 client anywhere in workers/."""
    client = boto3.client(
        "sns", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    operations = client.meta.method_to_api_mapping
    called = set()
    for path in (REPO_ROOT / "workers").glob("*.py"):
        for method in re.findall(r"client\.([a-z_]+)\(", path.read_text()):
            if method in operations:
                called.add(operations[method])
    return called


@pytest.mark.parametrize("name", POLICY_FILES)
def test_each_policy_is_a_2012_10_17_document_that_only_allows(name: str) -> None:
    """Valid policy grammar: version, statements with a Sid, Allow only, no wildcard action."""
    document = policy(name)
    assert document["Version"] == "2012-10-17"
    for statement in statements(document):
        assert statement["Sid"]
        assert statement["Effect"] == "Allow"
        assert all("*" not in action for action in as_list(statement["Action"])), name
        assert all("*" not in resource for resource in as_list(statement.get("Resource", []))), name


def test_the_policies_allow_every_sns_call_the_workers_make() -> None:
    """Each SNS operation called in workers/ maps to an action the permission policies allow."""
    called = sns_operations_the_workers_call()
    assert {"PublishBatch", "Publish", "GetTopicAttributes"} <= called
    needed = {ACTION_OF_OPERATION.get(operation, f"sns:{operation}") for operation in called}
    for name in ("key-secret-policy.json", "role-permissions-policy.json", "topic-policy.json"):
        assert needed <= allowed_actions(policy(name)), name


@pytest.mark.parametrize("name", ["key-secret-policy.json", "role-permissions-policy.json"])
def test_the_permission_policies_allow_publishing_to_the_one_topic_and_nothing_else(
    name: str,
) -> None:
    """sns:Publish and sns:GetTopicAttributes, on one topic ARN, and no other action."""
    document = policy(name)
    assert allowed_actions(document) == PUBLISH_ACTIONS
    resources = {
        resource
        for statement in statements(document)
        for resource in as_list(statement["Resource"])
    }
    (topic,) = resources
    assert Settings.load(sns_topic_arn=topic).sns_topic_arn == topic  # a topic ARN the relay takes


def test_the_role_trust_policy_requires_the_external_id() -> None:
    """Only sts:AssumeRole, by one named principal, on condition of an exact sts:ExternalId."""
    (statement,) = statements(policy("role-trust-policy.json"))
    assert as_list(statement["Action"]) == ["sts:AssumeRole"]
    principal = statement["Principal"]["AWS"]
    assert isinstance(principal, str)
    assert principal.startswith("arn:aws:iam::")
    external_id = statement["Condition"]["StringEquals"]["sts:ExternalId"]
    assert isinstance(external_id, str)
    assert external_id


def test_the_relay_identity_may_assume_exactly_the_role_the_topic_trusts() -> None:
    """The assumer policy's role is the topic policy's principal, and both name the same topic."""
    (assume,) = statements(policy("role-assumer-policy.json"))
    assert as_list(assume["Action"]) == ["sts:AssumeRole"]
    role_arn = assume["Resource"]
    assert _ROLE_ARN_RE.fullmatch(role_arn), role_arn
    (grant,) = statements(policy("topic-policy.json"))
    assert grant["Principal"] == {"AWS": role_arn}
    assert set(as_list(grant["Action"])) == PUBLISH_ACTIONS
    (permissions_topic,) = {
        resource
        for statement in statements(policy("role-permissions-policy.json"))
        for resource in as_list(statement["Resource"])
    }
    assert grant["Resource"] == permissions_topic


def test_the_role_lives_in_the_topics_account() -> None:
    """The publisher role and the topic share an account; the relay's own may differ."""
    topic_account = policy("topic-policy.json")["Statement"][0]["Resource"].split(":")[4]
    role_account = policy("role-assumer-policy.json")["Statement"][0]["Resource"].split(":")[4]
    assert topic_account == role_account
