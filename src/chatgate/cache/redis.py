"""The shared response cache on Redis: one ``GET`` per lookup, one ``SET ... PX`` per store.

Each entry is one string ``<prefix><key>`` holding ``Entry.encode()``; Redis expires it (so
``stats`` never sees an expired entry: ``expired`` is 0 and ``valid == total``). Hits and misses
are counted in this process. ``stats`` (entries and bytes) and ``clear`` walk the prefix with
``SCAN`` (plus ``STRLEN`` in pipelines, or ``UNLINK``): a few round trips per thousand entries,
for the admin routes only. Size Redis itself with ``maxmemory`` and an eviction policy
(``allkeys-lru``, or ``volatile-lru`` when it also holds the limiter's counters).

When Redis cannot be reached (refused, timeout) or holds something that is not an entry, a
lookup is a miss and a store is dropped: the request never fails because of the cache. Each
failed call is counted in ``errors``; the outage is logged once, and its end once.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from redis.asyncio import Redis

from chatgate.cache.base import CacheStats, Entry, hit_rate
from chatgate.redis_client import UNREACHABLE, fail_fast_client, glob_escape

log = logging.getLogger("chatgate.cache")


class RedisCache:
    """``ResponseCache`` on Redis: shared by every gateway process using the same Redis and prefix."""

    def __init__(
        self,
        client: Redis,
        *,
        ttl: float = 3600.0,
        prefix: str = "chatgate:cache:",
        max_entry_bytes: int = 1024 * 1024,
    ) -> None:
        if ttl <= 0 or not prefix:
            raise ValueError("ttl must be positive and prefix non-empty")
        self._redis = client
        self.ttl = ttl
        self.prefix = prefix
        self.max_entry_bytes = max_entry_bytes
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self._down = False

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 1.0, max_connections: int = 64, **kwargs: Any) -> RedisCache:
        """A cache with its own client: a blocking pool, no retries (a slow Redis is a miss, not a wait),
        ``timeout`` seconds to connect, to answer and to get a connection."""
        return cls(fail_fast_client(url, timeout=timeout, max_connections=max_connections), **kwargs)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if not self._down:
            self._down = True
            log.warning("response cache: Redis unreachable (%s); serving every request as a miss", exc)

    def _reached(self) -> None:
        if self._down:
            self._down = False
            log.info("response cache: Redis reachable again")

    async def get(self, key: str) -> Entry | None:
        try:
            data = await self._redis.get(self.prefix + key)
        except UNREACHABLE as exc:
            self._failed(exc)
            self.misses += 1
            return None
        self._reached()
        if data is None:
            self.misses += 1
            return None
        try:
            entry = Entry.decode(data.encode() if isinstance(data, str) else data)
        except ValueError:  # orjson.JSONDecodeError is a ValueError
            self.errors += 1
            self.misses += 1
            return None
        self.hits += 1
        return entry

    async def set(self, key: str, entry: Entry, ttl: float | None = None) -> bool:
        if entry.size > self.max_entry_bytes:
            return False
        ms = max(1, math.ceil((self.ttl if ttl is None else ttl) * 1000))
        try:
            await self._redis.set(self.prefix + key, entry.encode(), px=ms)
        except UNREACHABLE as exc:
            self._failed(exc)
            return False
        self._reached()
        return True

    async def _keys(self) -> list[list[bytes]]:
        batches: list[list[bytes]] = []
        batch: list[bytes] = []
        async for key in self._redis.scan_iter(match=glob_escape(self.prefix) + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                batches.append(batch)
                batch = []
        if batch:
            batches.append(batch)
        return batches

    async def clear(self) -> int:
        deleted = 0
        try:
            for batch in await self._keys():
                deleted += int(await self._redis.unlink(*batch))
        except UNREACHABLE as exc:
            self._failed(exc)
        return deleted

    async def stats(self) -> CacheStats:
        total = size = 0
        try:
            for batch in await self._keys():
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key in batch:
                        pipe.strlen(key)
                    lengths = await pipe.execute()
                live = [int(n) for n in lengths if n]  # 0: expired or deleted since the scan
                total += len(live)
                size += sum(live)
        except UNREACHABLE as exc:
            self._failed(exc)
        return CacheStats(
            backend="redis",
            total=total,
            valid=total,
            expired=0,
            hits=self.hits,
            misses=self.misses,
            hit_rate=hit_rate(self.hits, self.misses),
            bytes=size,
            ttl=self.ttl,
            errors=self.errors,
        )

    async def close(self) -> None:
        await self._redis.aclose()
