"""CircuitBreaker state machine, with an injected clock."""

from __future__ import annotations

import threading

import pytest

from supervisor.delivery.breaker import STATE_VALUES, CircuitBreaker

pytestmark = pytest.mark.timeout(300)


def _state(b: CircuitBreaker) -> str:
    """The state as a plain str (mypy would otherwise narrow the property between calls)."""
    return b.state


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_consecutive_failures() -> None:
    clock = Clock()
    b = CircuitBreaker(3, 10, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert _state(b) == "closed"
    b.record_success()  # resets the count: failures must be consecutive
    for _ in range(2):
        b.record_failure()
    assert _state(b) == "closed"
    b.record_failure()
    assert _state(b) == "open"
    assert not b.allow()
    assert b.seconds_until_retry() == pytest.approx(10)
    clock.now += 4
    assert b.seconds_until_retry() == pytest.approx(6)


def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = Clock()
    b = CircuitBreaker(1, 10, clock=clock)
    b.record_failure()
    assert _state(b) == "open"
    clock.now += 10
    assert _state(b) == "half_open"
    assert b.seconds_until_retry() == 0
    assert b.allow()  # the probe
    assert not b.allow()  # a second caller waits
    assert not b.allow()
    b.record_success()
    assert _state(b) == "closed"
    assert b.allow() and b.allow()


def test_failed_probe_reopens_for_a_full_cooldown() -> None:
    clock = Clock()
    b = CircuitBreaker(2, 10, clock=clock)
    b.record_failure()
    b.record_failure()
    clock.now += 11
    assert b.allow()
    b.record_failure()
    assert _state(b) == "open"
    assert not b.allow()
    assert b.seconds_until_retry() == pytest.approx(10)
    clock.now += 10
    assert b.allow()


def test_neutral_outcome_frees_the_probe_slot() -> None:
    clock = Clock()
    b = CircuitBreaker(1, 10, clock=clock)
    b.record_failure()
    clock.now += 10
    assert b.allow()
    b.record_neutral()
    assert _state(b) == "half_open"
    assert b.allow()


def test_a_lost_probe_is_given_up_after_a_cooldown() -> None:
    clock = Clock()
    b = CircuitBreaker(1, 10, clock=clock)
    b.record_failure()
    clock.now += 10
    assert b.allow()
    clock.now += 5
    assert not b.allow()
    clock.now += 5
    assert b.allow()


def test_disabled_always_allows() -> None:
    b = CircuitBreaker(1, 10, clock=Clock(), enabled=False)
    for _ in range(5):
        b.record_failure()
    assert b.allow()
    assert _state(b) == "closed"
    assert b.seconds_until_retry() == 0


def test_state_change_callback_and_gauge_values() -> None:
    clock = Clock()
    seen: list[str] = []
    b = CircuitBreaker(1, 10, clock=clock, on_state_change=seen.append)
    b.record_failure()
    clock.now += 10
    assert b.allow()
    b.record_success()
    assert seen == ["open", "half_open", "closed"]
    assert STATE_VALUES == {"closed": 0, "half_open": 1, "open": 2}


def test_only_one_probe_across_threads() -> None:
    clock = Clock()
    b = CircuitBreaker(1, 10, clock=clock)
    b.record_failure()
    clock.now += 10
    allowed: list[bool] = []
    start = threading.Barrier(16)

    def worker() -> None:
        start.wait()
        allowed.append(b.allow())

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert allowed.count(True) == 1


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(0, 10)
    with pytest.raises(ValueError):
        CircuitBreaker(1, 0)
