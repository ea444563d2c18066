import pytest

from chatgate.settings import BreakerSettings
from chatgate.upstream.breaker import CircuitBreaker, State


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def breaker(clock: Clock, **kw: float) -> CircuitBreaker:
    options = {"window": 10, "minimum_calls": 4, "failure_rate": 0.5, "reset_timeout": 10} | kw
    return CircuitBreaker(clock=clock, **options)  # type: ignore[arg-type]


def test_a_handful_of_failures_never_opens_it():
    clock = Clock()
    b = breaker(clock, minimum_calls=20)
    for _ in range(19):  # every call failed, but fewer than minimum_calls were made
        b.record_failure()
    assert b.state is State.CLOSED and b.acquire()
    assert b.counts() == (19, 19)


def test_opens_on_the_failure_rate_over_minimum_calls():
    clock = Clock()
    b = breaker(clock, minimum_calls=4, failure_rate=0.5)
    b.record_success()
    b.record_success()
    b.record_failure()
    assert b.state is State.CLOSED  # 1 of 3: too few calls, and under the rate
    b.record_success()
    b.record_success()
    b.record_failure()
    assert b.state is State.CLOSED  # 2 of 6 failed: under 50 %
    b.record_failure()
    assert b.state is State.CLOSED  # 3 of 7
    b.record_failure()
    assert b.state is State.OPEN  # 4 of 8: at the rate
    assert not b.available() and not b.acquire()
    assert b.retry_in() == 10


def test_failures_from_the_window_ago_are_forgotten():
    clock = Clock()
    b = breaker(clock, window=10, minimum_calls=4, failure_rate=0.5)
    for _ in range(3):
        b.record_failure()
    clock.t += 10  # those three have left the window
    assert b.counts() == (0, 0)
    b.record_failure()
    assert b.state is State.CLOSED and b.counts() == (1, 1)
    clock.t += 5
    for _ in range(3):
        b.record_failure()
    assert b.state is State.OPEN  # four failures within ten seconds


def test_the_window_slides_second_by_second():
    clock = Clock()
    b = breaker(clock, window=3, minimum_calls=100)
    for _ in range(3):
        b.record_success()
        b.record_failure()
        clock.t += 1
    assert b.counts() == (4, 2)  # the calls of the first of the three seconds dropped out
    clock.t += 1
    assert b.counts() == (2, 1)


def test_half_open_lets_one_probe_through_and_its_success_closes_with_a_fresh_window():
    clock = Clock()
    b = breaker(clock, minimum_calls=1)
    b.record_failure()
    assert b.state is State.OPEN
    clock.t += 10
    assert b.state is State.HALF_OPEN
    assert b.acquire()
    assert not b.acquire()  # a second caller waits for the probe
    b.record_success()
    assert b.state is State.CLOSED and b.acquire()
    assert b.counts() == (1, 0)  # the failures that opened it are forgotten


def test_failed_probe_reopens_for_a_full_timeout():
    clock = Clock()
    b = breaker(clock, minimum_calls=2, failure_rate=1.0)
    b.record_failure()
    b.record_failure()
    clock.t += 11
    assert b.acquire()
    b.record_failure()
    assert b.state is State.OPEN
    clock.t += 9
    assert b.state is State.OPEN
    clock.t += 1
    assert b.state is State.HALF_OPEN


def test_a_late_success_does_not_close_an_open_circuit():
    clock = Clock()
    b = breaker(clock, minimum_calls=2, failure_rate=1.0)
    b.record_failure()
    b.record_failure()
    b.record_success()  # a call let through before it opened, answering now
    assert b.state is State.OPEN


def test_released_probe_frees_the_slot():
    clock = Clock()
    b = breaker(clock, minimum_calls=1, reset_timeout=1)
    b.record_failure()
    clock.t += 1
    assert b.acquire()
    b.release()
    assert b.acquire()


def test_from_settings_and_the_replaced_setting():
    b = CircuitBreaker.from_settings(BreakerSettings(window=5, minimum_calls=3, failure_rate=0.25, reset_timeout=7))
    assert (b.window, b.minimum_calls, b.failure_rate, b.reset_timeout) == (5, 3, 0.25, 7)
    with pytest.raises(ValueError, match="failure_rate"):
        BreakerSettings(failure_threshold=5)  # type: ignore[call-arg]
