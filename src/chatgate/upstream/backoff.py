"""Retry policy: which failures are retried, and how long to wait before the next attempt."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from time import time

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: sleep ``uniform(0, min(cap, base * 2**attempt))``."""

    base: float = 0.5
    cap: float = 8.0
    rand: Callable[[], float] = random.random

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based).

        A ``Retry-After`` from the upstream is honoured up to ``cap``: we never wait less than it
        asked, nor longer than ``cap``.
        """
        ceiling = min(self.cap, self.base * 2.0**attempt)
        jittered = self.rand() * ceiling
        if retry_after is not None:
            return min(self.cap, max(jittered, retry_after))
        return jittered


def parse_retry_after(value: str | None, now: Callable[[], float] = time) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date. None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now()
        except (TypeError, ValueError, IndexError):
            return None
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)
