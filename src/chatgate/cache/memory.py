"""The in-process response cache: an LRU bounded by entries and by bytes, with a TTL checked on read.

Every operation is O(1) (a dict kept in recency order: a hit moves its key to the end, eviction
takes from the front), except ``stats`` (O(entries), admin only). An entry past its TTL is
dropped when it is read (a miss, counted in ``expired_dropped``) or when it reaches the front of
the LRU; until then it counts as ``expired`` in ``stats``. Not thread-safe: use it from one loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from chatgate.cache.base import CacheStats, Entry, hit_rate


class MemoryCache:
    """``ResponseCache`` in process memory (per worker)."""

    def __init__(
        self,
        *,
        ttl: float = 3600.0,
        max_entries: int = 10_000,
        max_bytes: int = 128 * 1024 * 1024,
        max_entry_bytes: int = 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0 or max_entries < 1 or max_bytes < 1:
            raise ValueError("ttl, max_entries and max_bytes must be positive")
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_bytes, max_entry_bytes)
        self._clock = clock
        self._items: dict[str, tuple[Entry, float]] = {}  # key -> (entry, expires at), least recent first
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.expired_dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    async def get(self, key: str) -> Entry | None:
        item = self._items.pop(key, None)
        if item is None:
            self.misses += 1
            return None
        entry, expires = item
        if self._clock() >= expires:
            self._bytes -= entry.size
            self.expired_dropped += 1
            self.misses += 1
            return None
        self._items[key] = item  # most recent now
        self.hits += 1
        return entry

    async def set(self, key: str, entry: Entry, ttl: float | None = None) -> bool:
        if entry.size > self.max_entry_bytes:
            return False
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= old[0].size
        while self._items and (len(self._items) >= self.max_entries or self._bytes + entry.size > self.max_bytes):
            oldest = next(iter(self._items))
            dropped, expires = self._items.pop(oldest)
            self._bytes -= dropped.size
            if self._clock() >= expires:
                self.expired_dropped += 1
            else:
                self.evictions += 1
        self._items[key] = (entry, self._clock() + (self.ttl if ttl is None else ttl))
        self._bytes += entry.size
        return True

    async def clear(self) -> int:
        n = len(self._items)
        self._items.clear()
        self._bytes = 0
        return n

    async def stats(self) -> CacheStats:
        now = self._clock()
        expired = sum(1 for _, expires in self._items.values() if now >= expires)
        total = len(self._items)
        return CacheStats(
            backend="memory",
            total=total,
            valid=total - expired,
            expired=expired,
            hits=self.hits,
            misses=self.misses,
            hit_rate=hit_rate(self.hits, self.misses),
            bytes=self._bytes,
            ttl=self.ttl,
            evictions=self.evictions,
        )

    async def close(self) -> None:
        await self.clear()
