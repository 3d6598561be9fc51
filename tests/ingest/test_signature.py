"""Tests of relay.ingest.signature: Stream's HMAC scheme, rotation, and secrets kept hidden."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from pydantic import SecretStr

from relay.errors import ConfigError
from relay.ingest.signature import SignatureVerifier, parse_secrets, sign

BODY = b'{"type":"message.new","cid":"messaging:general"}'


def test_sign_is_streams_hex_hmac_sha256_of_the_raw_body() -> None:
    """`sign` computes what stream-chat-python's verify_webhook expects."""
    expected = hmac.new(b"secret", msg=BODY, digestmod=hashlib.sha256).hexdigest()

    assert sign(BODY, "secret") == expected


def test_any_configured_secret_verifies_during_a_rotation() -> None:
    """Both the new and the old secret are accepted while both are configured."""
    verifier = SignatureVerifier(parse_secrets(SecretStr("new, old")))

    assert verifier.verify(BODY, sign(BODY, "new").encode())
    assert verifier.verify(BODY, sign(BODY, "old").encode())
    assert not verifier.verify(BODY, sign(BODY, "older").encode())


@pytest.mark.parametrize(
    "header",
    [
        None,
        b"",
        b"not-hex",
        sign(BODY, "secret")[:-1].encode(),
        sign(BODY + b" ", "secret").encode(),
    ],
)
def test_missing_truncated_or_other_body_signatures_fail(header: bytes | None) -> None:
    """A signature that is absent, cut short or for another body never verifies."""
    assert not SignatureVerifier([b"secret"]).verify(BODY, header)


def test_hex_case_and_surrounding_spaces_do_not_matter() -> None:
    """An uppercase hex digest with stray spaces still verifies: it names the same bytes."""
    header = f"  {sign(BODY, 'secret').upper()} ".encode()

    assert SignatureVerifier([b"secret"]).verify(BODY, header)


def test_blank_entries_are_ignored_and_no_secret_is_a_config_error() -> None:
    """Empty items of the comma-separated list are dropped; none at all cannot verify anything."""
    assert parse_secrets(SecretStr(" a ,, b ,")) == [b"a", b"b"]
    assert parse_secrets(None) == []
    with pytest.raises(ConfigError, match="RELAY_WEBHOOK_SECRET"):
        SignatureVerifier(parse_secrets(SecretStr(" , ")))


def test_the_verifier_never_shows_its_secrets() -> None:
    """repr names how many secrets there are, not what they are."""
    text = repr(SignatureVerifier([b"leak-check-5e6f"]))

    assert "leak-check" not in text
    assert "1 secrets" in text
