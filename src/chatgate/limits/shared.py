"""The machine-wide limiter: the slotted sliding window of ``base`` in one SQLite file every worker opens.

``chatgate serve --workers N`` without Redis: the N worker processes of one server share their limits
through ``<data_dir>/limits.sqlite`` (0600), so that N workers admit exactly what one would. Each
``acquire`` is one write transaction: every counter of the request is read, checked and, only if all
fit, charged, while holding an exclusive ``flock`` on ``limits.sqlite.lock``. The flock is what
serialises the workers, so SQLite's own busy handler, which sleeps in steps of milliseconds, never
runs. A worker that finds it taken tries again between its event loop's other work a few times (the
holder is usually done within tens of microseconds), then waits in the kernel, which wakes it the
moment the flock is released. The database is in WAL mode with
``synchronous=OFF``: nothing is flushed to disk per check, and a crashed process loses no committed
charge (the operating system still holds the pages), only a power loss would. A process killed inside a
transaction has it rolled back, and the kernel releases its flock.

Chosen by ``app.build_limiter`` when there are several workers and no Redis (and as Redis's fail-open
fallback then); one worker keeps ``MemoryLimiter``, which is faster. Why this one
(``bench/limits_check.py --alternatives``, ``docs/benchmarks.md``): it cost a third of asking another
process over a Unix socket (what the supervisor would serve) and a sixth of Redis; a hand-made table in
shared memory (``mmap``) was about 3x cheaper as a bare lower bound, but collisions, a full table,
deleting by prefix and a worker killed mid-write would be ours to get right. Here the arithmetic is the
other backends' in a few statements, with nothing to size, probe or evict: rows are swept once they
have left their window. Counts survive a restart: the clock
is the wall clock (``time.time``), as Redis's ``TIME`` is for the Redis backend.

Each row is one slot of one counter: ``(counter, slot, amount, expires)``, ``expires`` the time the
slot leaves the window (``(slot + SLOTS + 1) * width``). Nothing awaits inside a transaction: a check
holds the flock for tens of microseconds, less than a round trip to Redis takes.
"""

from __future__ import annotations

import asyncio
import fcntl
import math
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from chatgate.limits.base import (
    SLOTS,
    Charge,
    Decision,
    Limit,
    Reservation,
    free_after,
    refund_costs,
    slot_width,
)

FILE = "limits.sqlite"
SPINS = 16
"""Tries of the flock between the event loop's other work before waiting for it in the kernel."""

SCHEMA = """
create table if not exists slots (
  counter text not null,
  slot integer not null,
  amount integer not null,
  expires real not null,
  primary key (counter, slot)
) without rowid;
create index if not exists slots_expires on slots (expires);
"""

_ADD = (
    "insert into slots (counter, slot, amount, expires) values (?, ?, ?, ?) "
    "on conflict (counter, slot) do update set amount = amount + excluded.amount"
)

_ADJUST = "update slots set amount = max(0, amount + ?) where counter = ? and slot = ?"


def _expires(slot: int, width: float) -> float:
    return (slot + SLOTS + 1) * width


class SharedLimiter:
    """``Limiter`` in a SQLite file shared by the processes of one machine (exact across them)."""

    def __init__(
        self,
        path: Path,
        *,
        sweep_interval: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.sweep_interval = sweep_interval
        self._clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        with self._locked():  # one process creates the schema and switches to WAL
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("pragma journal_mode=wal")
            self._db.execute("pragma synchronous=off")
            self._db.executescript(SCHEMA)
        for name in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
            if name.exists():
                os.chmod(name, 0o600)
        self._next_sweep = clock() + sweep_interval

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    async def _lock(self) -> None:
        """The flock, without blocking the event loop while another worker briefly holds it: tried at once, then
        between the loop's other work (``SPINS`` times), then waited for in the kernel."""
        for _ in range(SPINS):
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                await asyncio.sleep(0)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[sqlite3.Connection]:
        """One write transaction under the flock: committed, or rolled back on any error. Nothing awaits
        inside it."""
        await self._lock()
        try:
            db = self._db
            db.execute("begin immediate")
            try:
                yield db
            except BaseException:
                db.execute("rollback")
                raise
            db.execute("commit")
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _slots(
        self, db: sqlite3.Connection, limits: Sequence[Limit], now: float
    ) -> list[tuple[int, float, list[tuple[int, int]]]]:
        """Per limit: (current slot, slot width, its counter's counted ``(slot, amount)`` oldest first); one query."""
        names = list(dict.fromkeys(limit.counter for limit in limits))
        if not names:
            return []
        rows: dict[str, list[tuple[int, int]]] = {name: [] for name in names}
        marks = ",".join("?" * len(names))
        for counter, slot, amount in db.execute(
            f"select counter, slot, amount from slots where counter in ({marks}) order by counter, slot", names
        ):
            rows[counter].append((slot, amount))
        out = []
        for limit in limits:
            width = slot_width(limit.window)
            cur = int(now // width)
            oldest = cur - SLOTS
            out.append((cur, width, [(slot, amount) for slot, amount in rows[limit.counter] if slot >= oldest]))
        return out

    def _sweep(self, db: sqlite3.Connection, now: float) -> int:
        """Delete every slot that has left its window (inside a write transaction); returns how many."""
        self._next_sweep = now + self.sweep_interval
        return db.execute("delete from slots where expires <= ?", (now,)).rowcount

    async def sweep(self, now: float | None = None) -> int:
        """Delete every slot that has left its window; returns how many."""
        async with self._write() as db:
            return self._sweep(db, self._clock() if now is None else now)

    async def acquire(self, limits: Sequence[Limit], costs: Mapping[str, int]) -> Decision:
        async with self._write() as db:
            now = self._clock()
            if now >= self._next_sweep:
                self._sweep(db, now)
            seen = []
            blocked: Limit | None = None
            retry_after = 0.0
            for limit, (cur, width, slots) in zip(limits, self._slots(db, limits, now), strict=True):
                total = sum(amount for _, amount in slots)
                seen.append((limit, cur, width, slots, total))
                over = total + costs.get(limit.unit, 0) - limit.limit
                if over > 0:
                    blocked = blocked or limit
                    wait = free_after(slots, width, now, over)
                    retry_after = max(retry_after, limit.window + width if math.isinf(wait) else wait)
            if blocked is None:
                db.executemany(
                    _ADD,
                    [
                        (limit.counter, cur, cost, _expires(cur, width))
                        for limit, cur, width, _, _ in seen
                        if (cost := costs.get(limit.unit, 0))
                    ],
                )
        remaining: dict[str, int] = {}
        reset_in: dict[str, float] = {}
        charges = []
        for limit, cur, width, slots, total in seen:
            cost = costs.get(limit.unit, 0) if blocked is None else 0
            oldest = slots[0][0] if slots else (cur if cost else None)
            remaining[limit.scope] = max(0, limit.limit - total - cost)
            reset_in[limit.scope] = 0.0 if oldest is None else max(0.0, _expires(oldest, width) - now)
            charges.append(Charge(limit.counter, limit.unit, limit.window, cur, cost))
        if blocked is not None:
            return Decision(False, None, blocked, remaining, reset_in, retry_after)
        return Decision(True, Reservation(dict(costs), tuple(charges), "shared"), None, remaining, reset_in, 0.0)

    async def reconcile(self, reservation: Reservation, actual: Mapping[str, int]) -> None:
        now = self._clock()
        changes = [
            (charge, delta)
            for charge in reservation.charges
            if charge.unit in actual and (delta := actual[charge.unit] - charge.amount)
        ]
        if not changes:
            return
        async with self._write() as db:
            for charge, delta in changes:
                width = slot_width(charge.window)
                cur = int(now // width)
                if charge.slot >= cur - SLOTS and (
                    # Exact: never take back more than this slot holds.
                    db.execute(_ADJUST, (delta, charge.counter, charge.slot)).rowcount
                ):
                    continue
                if delta > 0:  # the original slot has left the window (or was reset): charge the extra now
                    db.execute(_ADD, (charge.counter, cur, delta, _expires(cur, width)))

    async def refund(self, reservation: Reservation) -> None:
        await self.reconcile(reservation, refund_costs(reservation))

    async def usage(self, limits: Sequence[Limit]) -> dict[str, dict[str, float]]:
        now = self._clock()
        out: dict[str, dict[str, float]] = {}
        db = self._db  # a read: WAL readers see the last commit without the lock
        for limit, (_, width, slots) in zip(limits, self._slots(db, limits, now), strict=True):
            used = sum(amount for _, amount in slots)
            out[limit.scope] = {
                "used": used,
                "limit": limit.limit,
                "remaining": max(0, limit.limit - used),
                "reset_in": max(0.0, _expires(slots[0][0], width) - now) if slots else 0.0,
            }
        return out

    async def reset(self, key_prefix: str) -> int:
        """Delete the counters of ``key_prefix`` (``matches_prefix``: whole segments, by key range)."""
        ranges = (key_prefix + ":", key_prefix + ";", key_prefix + "|", key_prefix + "}")
        where = "(counter >= ? and counter < ?) or (counter >= ? and counter < ?)"
        async with self._write() as db:
            (count,) = db.execute(f"select count(distinct counter) from slots where {where}", ranges).fetchone()
            db.execute(f"delete from slots where {where}", ranges)
        return int(count)

    async def close(self) -> None:
        self._db.close()
        os.close(self._lock_fd)
