"""A circuit breaker per upstream: closed -> open after N consecutive failures -> half-open probe."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    __slots__ = ("_clock", "_failures", "_opened_at", "_probing", "reset_timeout", "threshold")

    def __init__(self, threshold: int = 5, reset_timeout: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.threshold = threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

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

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self.threshold:
            self._opened_at = self._clock()
        self._probing = False

    def release(self) -> None:
        """The call ended without telling us anything about health (e.g. the client left)."""
        self._probing = False
