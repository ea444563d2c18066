"""The in-process limiter: the slotted sliding window of ``base`` over plain dicts.

Atomic on one event loop: ``acquire`` never awaits between checking and charging, so no lock is
needed (it is not thread-safe; use it from one loop). Bounded: counters whose charges have all
left their window are dropped by a sweep every ``sweep_interval`` seconds and whenever a new
counter would exceed ``max_keys``; if every counter is live, the least recently used is evicted
(which forgets that subject's usage: size ``max_keys`` above the number of active subjects).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

from chatgate.limits.base import (
    SLOTS,
    Charge,
    Decision,
    Limit,
    Reservation,
    free_after,
    matches_prefix,
    refund_costs,
    slot_width,
)


class _Counter:
    __slots__ = ("slots", "total", "width")

    def __init__(self, width: float) -> None:
        self.width = width
        self.slots: dict[int, int] = {}  # slot number -> units, in insertion (= time) order
        self.total = 0

    def prune(self, cur: int) -> None:
        oldest = cur - SLOTS
        slots = self.slots
        while slots:
            first = next(iter(slots))
            if first >= oldest:
                return
            self.total -= slots.pop(first)

    def add(self, slot: int, amount: int) -> None:
        self.slots[slot] = self.slots.get(slot, 0) + amount
        self.total += amount

    def reset_in(self, now: float) -> float:
        if not self.slots:
            return 0.0
        return max(0.0, (next(iter(self.slots)) + SLOTS + 1) * self.width - now)


class MemoryLimiter:
    """``Limiter`` in process memory."""

    def __init__(
        self,
        *,
        max_keys: int = 100_000,
        sweep_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_keys = max_keys
        self.sweep_interval = sweep_interval
        self._clock = clock
        self._counters: dict[str, _Counter] = {}
        self._next_sweep = clock() + sweep_interval
        self.evicted = 0  # live counters dropped because max_keys was reached

    def __len__(self) -> int:
        return len(self._counters)

    def _get(self, limit: Limit, now: float) -> tuple[_Counter, int]:
        """The counter for ``limit`` (created if missing), pruned to the window; and the current slot."""
        name = limit.counter
        counter = self._counters.pop(name, None)  # re-inserted below: the dict stays in LRU order
        if counter is None:
            if len(self._counters) >= self.max_keys:
                self._make_room(now)
            counter = _Counter(slot_width(limit.window))
        self._counters[name] = counter
        cur = int(now // counter.width)
        counter.prune(cur)
        return counter, cur

    def _make_room(self, now: float) -> None:
        self.sweep(now)
        while len(self._counters) >= self.max_keys:
            del self._counters[next(iter(self._counters))]
            self.evicted += 1

    def sweep(self, now: float | None = None) -> int:
        """Drop every counter with nothing left in its window; returns how many."""
        now = self._clock() if now is None else now
        self._next_sweep = now + self.sweep_interval
        stale = [
            name
            for name, c in self._counters.items()
            if not c.slots or next(reversed(c.slots)) < int(now // c.width) - SLOTS
        ]
        for name in stale:
            del self._counters[name]
        return len(stale)

    async def acquire(self, limits: Sequence[Limit], costs: Mapping[str, int]) -> Decision:
        now = self._clock()
        if now >= self._next_sweep:
            self.sweep(now)
        seen = [(limit, *self._get(limit, now)) for limit in limits]
        blocked: Limit | None = None
        retry_after = 0.0
        for limit, counter, _ in seen:
            cost = costs.get(limit.unit, 0)
            over = counter.total + cost - limit.limit
            if over > 0:
                blocked = blocked or limit
                wait = free_after(list(counter.slots.items()), counter.width, now, over)
                retry_after = max(retry_after, limit.window + counter.width if math.isinf(wait) else wait)
        if blocked is not None:
            return Decision(
                allowed=False,
                reservation=None,
                blocked=blocked,
                remaining={lim.scope: max(0, lim.limit - c.total) for lim, c, _ in seen},
                reset_in={lim.scope: c.reset_in(now) for lim, c, _ in seen},
                retry_after=retry_after,
            )
        charges = []
        for limit, counter, cur in seen:
            cost = costs.get(limit.unit, 0)
            if cost:
                counter.add(cur, cost)
            charges.append(Charge(limit.counter, limit.unit, limit.window, cur, cost))
        return Decision(
            allowed=True,
            reservation=Reservation(dict(costs), tuple(charges), "memory"),
            blocked=None,
            remaining={lim.scope: max(0, lim.limit - c.total) for lim, c, _ in seen},
            reset_in={lim.scope: c.reset_in(now) for lim, c, _ in seen},
            retry_after=0.0,
        )

    async def reconcile(self, reservation: Reservation, actual: Mapping[str, int]) -> None:
        now = self._clock()
        for charge in reservation.charges:
            if charge.unit not in actual:
                continue
            delta = actual[charge.unit] - charge.amount
            counter = self._counters.get(charge.counter)
            if delta == 0 or (counter is None and delta < 0):
                continue
            if counter is None:
                counter = self._counters[charge.counter] = _Counter(slot_width(charge.window))
            cur = int(now // counter.width)
            counter.prune(cur)
            if charge.slot in counter.slots:
                # Exact: never take back more than this slot holds.
                counter.add(charge.slot, max(delta, -counter.slots[charge.slot]))
            elif delta > 0:
                counter.add(cur, delta)  # the original slot has left the window: charge the extra now

    async def refund(self, reservation: Reservation) -> None:
        await self.reconcile(reservation, refund_costs(reservation))

    async def usage(self, limits: Sequence[Limit]) -> dict[str, dict[str, float]]:
        now = self._clock()
        out: dict[str, dict[str, float]] = {}
        for limit in limits:
            counter = self._counters.get(limit.counter)
            used = 0
            reset_in = 0.0
            if counter is not None:
                counter.prune(int(now // counter.width))
                used, reset_in = counter.total, counter.reset_in(now)
            out[limit.scope] = {
                "used": used,
                "limit": limit.limit,
                "remaining": max(0, limit.limit - used),
                "reset_in": reset_in,
            }
        return out

    async def reset(self, key_prefix: str) -> int:
        names = [name for name in self._counters if matches_prefix(name, key_prefix)]
        for name in names:
            del self._counters[name]
        return len(names)

    async def close(self) -> None:
        self._counters.clear()
