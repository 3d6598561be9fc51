"""Fault injection: what the local SNS answers instead of success, for the relay's fault tests.

Whole-request faults answer as SNS does under throttling, outage or a revoked credential (FACTS
§2.1); `slow` delays answers past a client's read timeout; `entry_failure` fails batch entries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from relay.local_sns.protocol import SnsError

PUBLISH_ACTIONS = ("Publish", "PublishBatch")
FAULT_MODES = ("none", "throttle", "error500", "unavailable503", "auth", "slow", "entry_failure")
# Whole-request faults: mode -> (wire code, message, HTTP status), as SNS answers them (FACTS §2.1).
_FAULT_ERRORS = {
    "throttle": ("Throttling", "Rate exceeded", 400),
    "error500": ("InternalError", "Internal Error (injected by the local SNS)", 500),
    "unavailable503": (
        "ServiceUnavailable",
        "Service Unavailable (injected by the local SNS)",
        503,
    ),
    "auth": (
        "AuthorizationError",
        "User is not authorized to perform: SNS:Publish (injected)",
        403,
    ),
}


@dataclass(frozen=True, slots=True)
class Fault:
    """What the next matching requests should suffer; `count` None means until changed."""

    mode: str = "none"
    count: int | None = None
    actions: tuple[str, ...] = PUBLISH_ACTIONS
    delay_s: float = 0.0
    code: str = "InternalError"
    sender_fault: bool = False

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Fault:
        """Build a fault from its JSON form; raises ValueError naming the bad key."""
        unknown = set(spec) - {"mode", "count", "actions", "delay_s", "code", "sender_fault"}
        mode = spec.get("mode", "none")
        if unknown or mode not in FAULT_MODES:
            raise ValueError(
                f"unknown fault keys {sorted(unknown)} or mode {mode!r}: {FAULT_MODES}"
            )
        count = spec.get("count")
        if count is not None and (type(count) is not int or count < 1):
            raise ValueError(f"fault count must be a positive integer or absent, got {count!r}")
        # Per-entry failures only exist in PublishBatch responses.
        actions = (
            ("PublishBatch",) if mode == "entry_failure" else spec.get("actions", PUBLISH_ACTIONS)
        )
        if not isinstance(actions, list | tuple) or not all(isinstance(a, str) for a in actions):
            raise ValueError(f"fault actions must be a list of action names, got {actions!r}")
        delay_s = spec.get("delay_s", 1.0 if mode == "slow" else 0.0)
        if not isinstance(delay_s, int | float) or delay_s < 0:
            raise ValueError(f"fault delay_s must be a number of seconds >= 0, got {delay_s!r}")
        return cls(
            mode=mode,
            count=count,
            actions=tuple(actions),
            delay_s=float(delay_s),
            code=str(spec.get("code", "InternalError")),
            sender_fault=bool(spec.get("sender_fault", False)),
        )

    def spent(self) -> Fault:
        """The fault in force after this one has hit one more request."""
        if self.count is None:
            return self
        return Fault() if self.count == 1 else replace(self, count=self.count - 1)

    def error(self) -> SnsError | None:
        """The whole-request error this fault answers with, None for slow and entry faults."""
        spec = _FAULT_ERRORS.get(self.mode)
        return None if spec is None else SnsError(*spec)


def fault_spec(
    mode: str,
    *,
    count: int | None = None,
    actions: Sequence[str] | None = None,
    delay_s: float | None = None,
    code: str | None = None,
    sender_fault: bool | None = None,
) -> dict[str, Any]:
    """The JSON body of `POST /_local/faults`.

    Modes: "throttle" (400 Throttling), "error500" (500 InternalError), "unavailable503"
    (503 ServiceUnavailable), "auth" (403 AuthorizationError), "slow" (answer after `delay_s`),
    "entry_failure" (PublishBatch entries 1, 3, 5... fail with `code` and `sender_fault`), "none".
    `count` limits it to the next N matching requests; `actions` defaults to Publish and
    PublishBatch.
    """
    options = {
        "count": count,
        "actions": None if actions is None else list(actions),
        "delay_s": delay_s,
        "code": code,
        "sender_fault": sender_fault,
    }
    return {"mode": mode} | {key: value for key, value in options.items() if value is not None}
