"""Tests of the SNS circuit breaker: opening, holding, probing, closing, shutdown."""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY

from workers.breaker import COOLDOWN_INITIAL_S, COOLDOWN_MAX_S, CircuitBreaker, State


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_closed_breaker_lets_every_thread_publish() -> None:
    """Closed: acquire returns at once."""
    breaker = CircuitBreaker()
    assert breaker.acquire(timeout_s=0) is True
    assert breaker.state is State.CLOSED


def test_a_failure_opens_it_and_holds_callers_until_the_cooldown() -> None:
    """Open: callers are refused until the cool-down has passed, then one caller probes."""
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    breaker.failed("AuthorizationError")
    assert breaker.state is State.OPEN
    assert breaker.acquire(timeout_s=0) is False
    clock.now += COOLDOWN_INITIAL_S
    assert breaker.acquire(timeout_s=0) is True
    assert breaker.state is State.HALF_OPEN


def test_while_probing_other_threads_wait() -> None:
    """Half-open: only the probe publishes; others are held."""
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    breaker.failed("NotFound")
    clock.now += COOLDOWN_INITIAL_S
    assert breaker.acquire(timeout_s=0) is True
    result: list[bool] = []
    other = threading.Thread(target=lambda: result.append(breaker.acquire(timeout_s=0)))
    other.start()
    other.join()
    assert result == [False]


def test_a_successful_probe_closes_it_and_wakes_the_waiters() -> None:
    """A probe's success closes the breaker and a waiting thread is let through."""
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    breaker.failed("Throttling")
    clock.now += COOLDOWN_INITIAL_S
    assert breaker.acquire(timeout_s=0) is True
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(breaker.acquire(timeout_s=30)))
    waiter.start()
    breaker.succeeded()
    waiter.join(timeout=10)
    assert result == [True]
    assert breaker.state is State.CLOSED


def test_a_failed_probe_doubles_the_cooldown_up_to_the_cap() -> None:
    """Each failed probe re-opens it with twice the cool-down, never more than the cap."""
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    breaker.failed("AuthorizationError")
    cooldown = COOLDOWN_INITIAL_S
    for _ in range(10):
        clock.now += cooldown
        assert breaker.acquire(timeout_s=0) is True
        breaker.failed("AuthorizationError")
        cooldown = min(cooldown * 2, COOLDOWN_MAX_S)
        clock.now += cooldown - 0.001
        assert breaker.acquire(timeout_s=0) is False
        clock.now += 0.001
    assert cooldown == COOLDOWN_MAX_S


def test_a_probe_that_ends_without_a_verdict_lets_another_thread_probe() -> None:
    """release() after an unexpected error hands the probe to the next caller."""
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    breaker.failed("x")
    clock.now += COOLDOWN_INITIAL_S
    assert breaker.acquire(timeout_s=0) is True
    breaker.release()
    result: list[bool] = []
    other = threading.Thread(target=lambda: result.append(breaker.acquire(timeout_s=0)))
    other.start()
    other.join()
    assert result == [True]


def test_stop_releases_every_holder_with_a_refusal() -> None:
    """On shutdown, held threads are told to give their bundles back."""
    breaker = CircuitBreaker()
    breaker.failed("AuthorizationError")
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(breaker.acquire(timeout_s=60)))
    waiter.start()
    breaker.stop()
    waiter.join(timeout=10)
    assert result == [False]


def test_the_circuit_gauge_follows_the_state() -> None:
    """relay_sns_circuit_open is 1 while open or probing and 0 once closed."""
    breaker = CircuitBreaker()
    breaker.failed("AuthorizationError")
    assert REGISTRY.get_sample_value("relay_sns_circuit_open") == 1
    breaker.succeeded()
    assert REGISTRY.get_sample_value("relay_sns_circuit_open") == 0


def test_state_changes_reach_the_callback() -> None:
    """on_change hears opening (with the reason) and closing."""
    heard: list[tuple[State, str]] = []
    breaker = CircuitBreaker(on_change=lambda state, reason: heard.append((state, reason)))
    breaker.failed("NotFound")
    breaker.succeeded()
    assert heard == [(State.OPEN, "NotFound"), (State.CLOSED, "")]
