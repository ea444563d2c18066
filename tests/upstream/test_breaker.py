from chatgate.upstream.breaker import CircuitBreaker, State


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_opens_after_consecutive_failures_only():
    clock = Clock()
    b = CircuitBreaker(threshold=3, reset_timeout=10, clock=clock)
    b.record_failure()
    b.record_failure()
    b.record_success()  # resets the run
    b.record_failure()
    b.record_failure()
    assert b.state is State.CLOSED and b.acquire()
    b.record_failure()
    assert b.state is State.OPEN
    assert not b.available() and not b.acquire()
    assert b.retry_in() == 10


def test_half_open_lets_one_probe_through():
    clock = Clock()
    b = CircuitBreaker(threshold=1, reset_timeout=10, clock=clock)
    b.record_failure()
    clock.t += 10
    assert b.state is State.HALF_OPEN
    assert b.acquire()
    assert not b.acquire()  # a second caller waits for the probe
    b.record_success()
    assert b.state is State.CLOSED and b.acquire()


def test_failed_probe_reopens_for_a_full_timeout():
    clock = Clock()
    b = CircuitBreaker(threshold=2, reset_timeout=10, clock=clock)
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


def test_released_probe_frees_the_slot():
    clock = Clock()
    b = CircuitBreaker(threshold=1, reset_timeout=1, clock=clock)
    b.record_failure()
    clock.t += 1
    assert b.acquire()
    b.release()
    assert b.acquire()
