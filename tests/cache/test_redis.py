"""The Redis backend's own promises: stored with a Redis TTL under its prefix, one GET per lookup,
clear and stats limited to its prefix, and Redis unreachable or garbage = a miss, never an error."""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from chatgate.cache import Entry, RedisCache
from tests.cache.test_contract import make_entry
from tests.limits.test_contract import REDIS_URL, drop_prefix


@pytest.fixture
async def raw() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def pair(raw: Redis) -> AsyncIterator[tuple[RedisCache, RedisCache, str]]:
    """Two caches (two gateway processes) on one prefix."""
    prefix = f"cgtest:cache:{secrets.token_hex(6)}:"
    a = RedisCache.from_url(REDIS_URL, ttl=30, prefix=prefix, timeout=5)
    b = RedisCache.from_url(REDIS_URL, ttl=30, prefix=prefix, timeout=5)
    yield a, b, prefix
    await drop_prefix(raw, prefix)
    await a.close()
    await b.close()


async def test_entries_are_shared_and_stored_with_a_redis_ttl(
    pair: tuple[RedisCache, RedisCache, str], raw: Redis
) -> None:
    a, b, prefix = pair
    entry = make_entry("shared")
    await a.set("k", entry)
    got = await b.get("k")
    assert got == entry
    ttl_ms = await raw.pttl(prefix + "k")
    assert 29_000 < ttl_ms <= 30_000
    assert Entry.decode(await raw.get(prefix + "k")) == entry
    # hits and misses are per process
    assert (a.hits, a.misses, b.hits, b.misses) == (0, 0, 1, 0)


async def test_stats_and_clear_touch_only_the_prefix(pair: tuple[RedisCache, RedisCache, str], raw: Redis) -> None:
    a, _, prefix = pair
    neighbour = prefix[:-1] + "x:"  # shares the text but not the prefix
    await raw.set(neighbour + "k", b"not ours")
    try:
        e1, e2 = make_entry("one"), make_entry("two two")
        await a.set("k1", e1)
        await a.set("k2", e2)
        stats = await a.stats()
        assert (stats.total, stats.valid, stats.expired, stats.backend) == (2, 2, 0, "redis")
        assert stats.bytes == len(e1.encode()) + len(e2.encode())
        assert await a.clear() == 2
        assert (await a.stats()).total == 0
        assert await raw.get(neighbour + "k") == b"not ours"
    finally:
        await raw.delete(neighbour + "k")


async def test_a_prefix_with_glob_characters_is_matched_literally(raw: Redis) -> None:
    tag = secrets.token_hex(4)
    star = RedisCache.from_url(REDIS_URL, prefix=f"cgtest:[{tag}]*:", timeout=5)
    other = f"cgtest:{tag}x:k"  # would match the unescaped glob cgtest:[tag]*:*
    await raw.set(other, b"keep")
    try:
        await star.set("k", make_entry())
        assert (await star.stats()).total == 1
        assert await star.clear() == 1
        assert await raw.get(other) == b"keep"
    finally:
        await raw.delete(other)
        await drop_prefix(raw, f"cgtest:\\[{tag}\\]\\*:")
        await star.close()


async def test_garbage_under_a_key_is_a_miss(pair: tuple[RedisCache, RedisCache, str], raw: Redis) -> None:
    a, _, prefix = pair
    await raw.set(prefix + "bad", b"\xff\x00 not an entry")
    assert await a.get("bad") is None
    assert a.misses == 1 and a.errors == 1


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_redis_unreachable_is_a_miss_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    cache = RedisCache.from_url(f"redis://127.0.0.1:{closed_port()}/0", timeout=0.2)
    caplog.set_level(logging.WARNING, logger="chatgate.cache")
    try:
        assert await cache.get("k") is None
        assert await cache.set("k", make_entry()) is False
        assert await cache.get("k") is None
        assert await cache.clear() == 0
        stats = await cache.stats()
        assert (stats.total, stats.misses, stats.hits) == (0, 2, 0)
        assert cache.errors == stats.errors == 5  # every call, the stats one included
        warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        await cache.close()
