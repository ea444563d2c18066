"""The limiter interface, its data types, and the sliding-window arithmetic both backends share.

Algorithm: a *slotted sliding window*. Each counter (one per limit line: a key, a unit and a
window ``W``) keeps its charges in ``SLOTS`` slots of width ``w = W / SLOTS``, indexed by the
absolute slot number ``floor(now / w)``. The usage seen at time ``t`` is the sum of the slots
``cur - SLOTS .. cur`` (``SLOTS + 1`` of them), which covers ``[t - W - w, t]``: a superset of the
true window ``(t - W, t]``.

Why this one:

- variable costs (a request of 1,534 tokens) are one addition to one slot;
- refunds are exact: a reservation remembers the slot it charged and gives back exactly what it
  took, as long as that slot is still counted (once it has left the window there is nothing to
  give back);
- several limits are checked and charged in one step without a log of every request
  (a moving-window log of a month of tokens would hold millions of entries per user);
- it is O(SLOTS) memory per counter and O(SLOTS) work per check, in Lua and in Python alike.

Bounds (``L`` the limit):

- **Admission is exact and never over-admits**: a charge is admitted only if it *fits*
  (``used + cost <= L``), and ``used`` over-counts the true window, so the units charged in any
  interval of length ``W`` never exceed ``L`` at admission time. 200 concurrent calls of cost 1
  against ``L = 60`` admit exactly 60.
- **The price is lateness, not overshoot**: a charge stops counting between ``W`` and ``W + w``
  after it was made (``w = W / 20``: 3 s for a minute, 3 min for an hour, 72 min for a day).
- **Reconcile may overshoot**: ``reconcile`` does not refuse (the tokens are already spent), so a
  token counter can exceed ``L`` by at most ``actual - reserved`` of the requests reconciled
  upward; the next acquire then waits until usage falls back under the limit. While the upstream
  honours ``max_tokens`` (the reserved completion), ``actual - reserved`` is at most the prompt's
  miscount, so the overshoot is within one reservation. An upstream that ignores it is bounded
  differently: a stream is stopped once past its reservation with a limit spent (``cap.py``: within
  ``CHECK_EVERY`` chunks of that), but a non-streamed answer is charged whole, so the bound is one
  answer's tokens past its reservation per such request in flight.

Backends: ``memory.MemoryLimiter`` (one process), ``shared.SharedLimiter`` (the workers of one server,
a SQLite file), ``redis.RedisLimiter`` (every instance); the same arithmetic and the same contract
(``tests/limits/test_contract.py`` runs on all three).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from chatgate.errors import ChatgateError

SLOTS = 20
"""Slots per window: capacity frees at most ``W / SLOTS`` late."""


@dataclass(frozen=True, slots=True)
class Limit:
    """One budget line: at most ``limit`` ``unit`` per ``window`` seconds for ``key``."""

    scope: str  # e.g. "user:requests_per_minute", "key:tokens_per_day": names it in headers and errors
    key: str  # the counter's subject, e.g. "u:alice" (the limiter adds its own prefix)
    limit: int
    window: float  # seconds
    unit: str  # "requests" | "tokens"
    counter: str = field(init=False, compare=False, repr=False)
    """The counter's id: the same subject may have several windows and units."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "counter", f"{self.key}|{self.unit}|{round(self.window * 1000)}")


@dataclass(slots=True)  # not frozen: built per request, and frozen init is slow
class Charge:
    """What one acquire put into one counter: ``amount`` units in slot number ``slot``."""

    counter: str
    unit: str
    window: float
    slot: int
    amount: int


@dataclass(slots=True)  # not frozen: built per request, and frozen init is slow
class Reservation:
    """What an admitted request was charged, for ``reconcile`` or ``refund`` (settle it once)."""

    costs: Mapping[str, int]  # unit -> amount reserved
    charges: tuple[Charge, ...]
    origin: str = "memory"  # "memory" | "shared" | "redis": which backend holds the charge


@dataclass(slots=True)  # not frozen: built per request, and frozen init is slow
class Decision:
    allowed: bool
    reservation: Reservation | None  # present when allowed
    blocked: Limit | None  # the first limit that refused
    remaining: dict[str, int]  # scope -> remaining after this charge (before it, when refused)
    reset_in: dict[str, float]  # scope -> seconds until the oldest counted charge leaves the window
    retry_after: float  # seconds until every refusing limit fits this cost (0 when allowed)


class LimiterUnavailable(ChatgateError):
    """The shared limiter storage is unreachable and the limiter is configured to fail closed."""

    status = 503
    code = "LIMITER_UNAVAILABLE"
    type = "api_error"


class Limiter(Protocol):
    async def acquire(self, limits: Sequence[Limit], costs: Mapping[str, int]) -> Decision:
        """Check every limit and charge ``costs[limit.unit]`` to each, in one atomic step.

        Nothing is charged when any limit refuses. A unit missing from ``costs`` costs 0.
        """
        ...

    async def reconcile(self, reservation: Reservation, actual: Mapping[str, int]) -> None:
        """Replace the reserved cost of each unit in ``actual`` by the actual one (refund or charge more).

        Never refuses: the units are already spent (see the overshoot bound above).
        """
        ...

    async def refund(self, reservation: Reservation) -> None:
        """Give back everything but the request itself: a failed or cancelled call still counts as a request."""
        ...

    async def usage(self, limits: Sequence[Limit]) -> dict[str, dict[str, float]]:
        """scope -> {"used", "limit", "remaining", "reset_in"}, without charging."""
        ...

    async def reset(self, key_prefix: str) -> int:
        """Delete the counters whose key is ``key_prefix`` or starts with ``key_prefix + ":"``; returns how many."""
        ...

    async def close(self) -> None: ...


def slot_width(window: float) -> float:
    return window / SLOTS


def refund_costs(reservation: Reservation) -> dict[str, int]:
    """``actual`` for a refund: every unit back to 0 except requests, which stay counted."""
    return {unit: (amount if unit == "requests" else 0) for unit, amount in reservation.costs.items()}


def free_after(slots: Sequence[tuple[int, int]], width: float, now: float, need: int) -> float:
    """Seconds until ``need`` units have left the window, given ``(slot, amount)`` oldest first.

    ``math.inf`` when not enough is counted to ever free ``need``.
    """
    if need <= 0:
        return 0.0
    freed = 0
    for slot, amount in slots:
        freed += amount
        if freed >= need:
            return max(0.0, (slot + SLOTS + 1) * width - now)
    return math.inf


def matches_prefix(counter: str, key_prefix: str) -> bool:
    """Whether a counter id belongs to ``key_prefix`` (whole ``:``-separated segments only)."""
    return counter.startswith(key_prefix) and counter[len(key_prefix) : len(key_prefix) + 1] in ("|", ":")
