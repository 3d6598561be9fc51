"""The SNS circuit breaker (DESIGN tier 2): while SNS refuses us, hold bundles, never burn them.

Opened by a systemic failure (bad credentials, missing topic, access denied) or by a batch that
spent its whole retry budget. While open, worker threads hold their bundles and take no new ones,
so memory stays bounded by dramatiq's prefetch however long the outage lasts. After a cool-down
one thread publishes its bundle as the probe (half-open): success closes the breaker and every
thread resumes at full speed; failure re-opens it with a longer cool-down. Nothing here
dead-letters anything. One breaker per worker process.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable

import structlog

from relay import metrics

log = structlog.get_logger(__name__)

COOLDOWN_INITIAL_S = 1.0
COOLDOWN_MAX_S = 30.0
"""A re-opened breaker doubles its cool-down up to this, so a fixed credential or topic is
picked up within half a minute, without a restart."""


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Thread-safe breaker shared by the threads of one worker process."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[State, str], None] | None = None,
    ) -> None:
        self._clock = clock
        self._on_change = on_change
        self._cond = threading.Condition()
        self._state = State.CLOSED
        self._cooldown_s = COOLDOWN_INITIAL_S
        self._retry_at = 0.0
        self._prober: int | None = None
        self._stopping = False
        self.reason = ""

    @property
    def state(self) -> State:
        return self._state

    def acquire(self, timeout_s: float) -> bool:
        """Wait until this thread may publish: the breaker is closed, or it is this thread's turn
        to probe. False when `timeout_s` passed first or the worker is shutting down."""
        deadline = self._clock() + timeout_s
        with self._cond:
            while not self._stopping:
                now = self._clock()
                if self._state is State.CLOSED:
                    return True
                if self._state is State.OPEN and now >= self._retry_at:
                    self._set(State.HALF_OPEN, self.reason)
                    self._prober = threading.get_ident()
                    return True
                if now >= deadline:
                    return False
                wake = deadline if self._state is State.HALF_OPEN else min(deadline, self._retry_at)
                self._cond.wait(max(0.0, wake - now))
            return False

    def succeeded(self) -> None:
        """SNS accepted a request: close (if this was the probe, everyone resumes)."""
        with self._cond:
            if self._state is not State.CLOSED:
                self._cooldown_s = COOLDOWN_INITIAL_S
                self._prober = None
                self._set(State.CLOSED, "")
                self._cond.notify_all()

    def failed(self, reason: str) -> None:
        """SNS is unavailable: open, or re-open with a doubled cool-down after a failed probe."""
        with self._cond:
            if self._state is State.HALF_OPEN:
                self._cooldown_s = min(self._cooldown_s * 2, COOLDOWN_MAX_S)
            self._prober = None
            self._retry_at = self._clock() + self._cooldown_s
            self._set(State.OPEN, reason)
            self._cond.notify_all()

    def release(self) -> None:
        """A probe that ended without a verdict (an unexpected error) lets another thread probe."""
        with self._cond:
            if self._state is State.HALF_OPEN and self._prober == threading.get_ident():
                self._prober = None
                self._retry_at = self._clock()
                self._state = State.OPEN
                self._cond.notify_all()

    def stop(self) -> None:
        """The worker is shutting down: every waiting thread gives its bundle back now."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def _set(self, state: State, reason: str) -> None:
        """Enter `state`; `on_change` also hears every re-opening, so it can refresh a record."""
        previous, self._state = self._state, state
        self.reason = reason
        metrics.SNS_CIRCUIT_OPEN.set(0 if state is State.CLOSED else 1)
        if state is State.OPEN and previous is State.CLOSED:
            log.error("sns circuit opened", reason=reason, cooldown_s=self._cooldown_s)
        elif state is State.CLOSED:
            log.warning("sns circuit closed")
        if self._on_change is not None:
            self._on_change(state, reason)
