"""The memory backend: LRU by entries and by bytes, TTL on an injected clock, and its numbers."""

from __future__ import annotations

import pytest

from chatgate.cache import MemoryCache
from tests.cache.test_contract import make_entry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_lru_by_entries_evicts_the_least_recently_used() -> None:
    cache = MemoryCache(max_entries=3)
    for k in ("a", "b", "c"):
        await cache.set(k, make_entry(k))
    assert await cache.get("a") is not None  # a is now the most recent; b the least
    await cache.set("d", make_entry("d"))
    assert len(cache) == 3
    assert await cache.get("b") is None
    assert all([await cache.get(k) for k in ("a", "c", "d")])
    assert (await cache.stats()).evictions == 1


async def test_lru_by_bytes_keeps_the_total_under_the_bound() -> None:
    one = make_entry("x" * 1000)
    cache = MemoryCache(max_bytes=one.size * 2 + 10, max_entries=100)
    for k in ("a", "b", "c"):
        assert await cache.set(k, make_entry("x" * 1000))
        assert (await cache.stats()).bytes <= cache.max_bytes
    assert await cache.get("a") is None and await cache.get("b") is not None and await cache.get("c") is not None
    stats = await cache.stats()
    assert stats.total == 2 and stats.bytes == 2 * one.size and stats.evictions == 1
    # one entry larger than the whole bound is refused, and evicts nothing
    assert await cache.set("huge", make_entry("y" * 5000)) is False
    assert len(cache) == 2


async def test_replacing_a_key_accounts_its_bytes_once() -> None:
    cache = MemoryCache()
    await cache.set("k", make_entry("x" * 100))
    await cache.set("k", make_entry("y" * 10))
    assert (await cache.stats()).bytes == make_entry("y" * 10).size and len(cache) == 1


async def test_ttl_on_the_injected_clock_and_the_stats() -> None:
    clock = Clock()
    cache = MemoryCache(ttl=10, clock=clock)
    await cache.set("a", make_entry("a"))
    await cache.set("b", make_entry("b"), ttl=100)
    clock.now += 9.9
    assert await cache.get("a") is not None
    clock.now += 0.1  # exactly ttl after the store: expired
    stats = await cache.stats()
    assert (stats.total, stats.valid, stats.expired) == (2, 1, 1)
    assert await cache.get("a") is None  # read: dropped and counted
    assert cache.expired_dropped == 1 and len(cache) == 1
    assert await cache.get("b") is not None
    stats = await cache.stats()
    assert (stats.total, stats.valid, stats.expired, stats.hits, stats.misses) == (1, 1, 0, 2, 1)
    assert stats.hit_rate == pytest.approx(2 / 3)
    assert stats.bytes == make_entry("b").size and stats.backend == "memory"
    assert set(stats.as_dict()) >= {"total", "valid", "expired", "hits", "misses", "hit_rate", "bytes", "ttl"}


async def test_a_hit_does_not_extend_the_ttl() -> None:
    clock = Clock()
    cache = MemoryCache(ttl=10, clock=clock)
    await cache.set("a", make_entry())
    clock.now += 6
    assert await cache.get("a") is not None
    clock.now += 6
    assert await cache.get("a") is None


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        MemoryCache(max_entries=0)
    with pytest.raises(ValueError):
        MemoryCache(ttl=0)
