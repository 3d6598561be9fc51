"""Webhook signatures: `X-Signature` is the hex HMAC-SHA256 of the raw body (Stream's scheme).

Checked on the raw bytes before anything parses them (FACTS §7.2), in constant time, against
every configured secret, so a rotation can run with the old and the new secret side by side.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from pydantic import SecretStr

from relay.errors import ConfigError
from relay.settings import ENV_PREFIX


def parse_secrets(value: SecretStr | None) -> list[bytes]:
    """The secrets of a comma-separated `RELAY_WEBHOOK_SECRET`, blanks dropped; [] when unset."""
    if value is None:
        return []
    return [part.strip().encode() for part in value.get_secret_value().split(",") if part.strip()]


def sign(body: bytes, secret: bytes | str) -> str:
    """The `X-Signature` value a sender computes for `body`: lowercase hex HMAC-SHA256."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.digest(key, body, hashlib.sha256).hex()


class SignatureVerifier:
    """Checks `X-Signature` against each configured secret; holds the secrets, never shows them."""

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Sequence[bytes]) -> None:
        if not secrets:
            raise ConfigError(f"{ENV_PREFIX}WEBHOOK_SECRET is not set: no key to check X-Signature")
        self._secrets = tuple(secrets)

    def __repr__(self) -> str:
        return f"SignatureVerifier(<{len(self._secrets)} secrets>)"

    def verify(self, body: bytes, signature: bytes | None) -> bool:
        """True when `signature` (the header's raw bytes) matches `body` under any secret.

        Every secret is tried even after a match, so the time taken does not tell which one
        matched; the comparison itself is `hmac.compare_digest`. Hex case is ignored (the
        header is normalized, never the computed digest).
        """
        if not signature:
            return False
        presented = signature.strip().lower()
        matched = False
        for secret in self._secrets:
            expected = hmac.digest(secret, body, hashlib.sha256).hex().encode()
            matched |= hmac.compare_digest(expected, presented)
        return matched
