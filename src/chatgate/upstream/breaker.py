"""A circuit breaker per upstream, tripped by a failure rate (as resilience4j's and Envoy's outlier detection).

Closed: calls go through, and their outcomes are counted in a sliding window of ``window`` seconds
(one-second buckets). The circuit opens when, with at least ``minimum_calls`` outcomes in the window,
``failure_rate`` of them or more are failures: a handful of failures, one caller's bad requests
among them, never opens it on their own. Open: no call goes through for ``reset_timeout`` seconds.
Half-open: one probe is let through; its success closes the circuit (with a fresh window), its
failure opens it again for a full ``reset_timeout``.

Outcomes that say nothing about the upstream's health (the client left, a 429) are ``release``d,
not counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from enum import StrEnum

from chatgate.settings import BreakerSettings


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    __slots__ = (
        "_calls",
        "_clock",
        "_failures",
        "_opened_at",
        "_probing",
        "_seconds",
        "failure_rate",
        "minimum_calls",
        "reset_timeout",
        "window",
    )

    def __init__(
        self,
        *,
        window: float = 30.0,
        minimum_calls: int = 20,
        failure_rate: float = 0.5,
        reset_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < failure_rate <= 1:
            raise ValueError("failure_rate must be in (0, 1]")
        self.window = window
        self.minimum_calls = minimum_calls
        self.failure_rate = failure_rate
        self.reset_timeout = reset_timeout
        self._clock = clock
        buckets = max(1, math.ceil(window))
        self._seconds = [-1] * buckets  # the whole second each bucket counts, -1: never used
        self._calls = [0] * buckets
        self._failures = [0] * buckets
        self._opened_at: float | None = None
        self._probing = False

    @classmethod
    def from_settings(cls, settings: BreakerSettings) -> CircuitBreaker:
        return cls(
            window=settings.window,
            minimum_calls=settings.minimum_calls,
            failure_rate=settings.failure_rate,
            reset_timeout=settings.reset_timeout,
        )

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return State.CLOSED
        if self._clock() - self._opened_at >= self.reset_timeout:
            return State.HALF_OPEN
        return State.OPEN

    def available(self) -> bool:
        """Whether a call may be routed here now (without claiming the half-open probe)."""
        if self._opened_at is None:
            return True
        state = self.state
        return state is State.CLOSED or (state is State.HALF_OPEN and not self._probing)

    def acquire(self) -> bool:
        """Claim permission for one call. In half-open, only one probe at a time is let through."""
        if self._opened_at is None:
            return True
        state = self.state
        if state is State.CLOSED:
            return True
        if state is State.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def retry_in(self) -> float:
        """Seconds until an open circuit lets a probe through (0 when not open)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self.reset_timeout - (self._clock() - self._opened_at))

    def counts(self) -> tuple[int, int]:
        """(calls, failures) in the current window."""
        oldest = int(self._clock()) - len(self._seconds) + 1
        calls = failures = 0
        for i, second in enumerate(self._seconds):
            if second >= oldest:
                calls += self._calls[i]
                failures += self._failures[i]
        return calls, failures

    def _count(self, failed: bool) -> None:
        second = int(self._clock())
        i = second % len(self._seconds)
        if self._seconds[i] != second:  # a bucket from an earlier turn of the ring: start it afresh
            self._seconds[i], self._calls[i], self._failures[i] = second, 0, 0
        self._calls[i] += 1
        if failed:
            self._failures[i] += 1

    def _forget(self) -> None:
        for i in range(len(self._seconds)):
            self._seconds[i], self._calls[i], self._failures[i] = -1, 0, 0

    def record_success(self) -> None:
        if self._opened_at is not None:
            if not self._probing and self.state is State.OPEN:
                return  # a call let through before the circuit opened: the circuit stays open
            self._opened_at = None  # the probe worked: closed, with a fresh window
            self._forget()
        self._probing = False
        self._count(False)

    def record_failure(self) -> None:
        if self._probing:  # the probe failed: open again for a full timeout
            self._probing = False
            self._opened_at = self._clock()
            return
        if self._opened_at is not None:  # a call let through before the circuit opened
            return
        self._count(True)
        calls, failures = self.counts()
        if calls >= self.minimum_calls and failures >= self.failure_rate * calls:
            self._opened_at = self._clock()

    def release(self) -> None:
        """The call ended without telling us anything about health (e.g. the client left)."""
        self._probing = False
