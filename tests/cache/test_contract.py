"""The cache contract: every test here runs on the memory backend and on the real Redis.

Redis: ``CHATGATE_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``), a fresh key prefix per
test, its keys deleted afterwards. Unreachable: the Redis cases fail (a skipped test proves nothing).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import orjson
import pytest

from chatgate.cache import Entry, MemoryCache, RedisCache, ResponseCache
from tests.limits.test_contract import REDIS_URL, drop_prefix


def make_entry(text: str = "Paris.", model: str = "m") -> Entry:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }
    entry = Entry.from_response(orjson.dumps(body), created=1_700_000_001.5)
    assert entry is not None
    return entry


@pytest.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[ResponseCache]:
    if request.param == "memory":
        mem = MemoryCache(ttl=60)
        yield mem
        await mem.close()
        return
    prefix = f"cgtest:cache:{secrets.token_hex(6)}:"
    red = RedisCache.from_url(REDIS_URL, ttl=60, prefix=prefix, timeout=5)
    yield red
    await drop_prefix(red._redis, prefix)
    await red.close()


async def test_miss_then_hit_returns_the_exact_entry(cache: ResponseCache) -> None:
    entry = make_entry()
    assert await cache.get("k1") is None
    assert await cache.set("k1", entry) is True
    got = await cache.get("k1")
    assert got == entry and got is not None and got.body == entry.body
    assert got.usage == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    assert got.model == "m" and got.created == 1_700_000_001.5
    assert await cache.get("k2") is None
    stats = await cache.stats()
    assert (stats.hits, stats.misses, stats.total, stats.valid, stats.expired) == (1, 2, 1, 1, 0)
    assert stats.hit_rate == pytest.approx(1 / 3)
    assert stats.bytes >= entry.size and stats.ttl == 60


async def test_set_replaces_and_clear_drops_everything(cache: ResponseCache) -> None:
    await cache.set("k", make_entry("one"))
    await cache.set("k", make_entry("two"))
    await cache.set("other", make_entry("three"))
    got = await cache.get("k")
    assert got is not None and b"two" in got.body
    assert (await cache.stats()).total == 2
    assert await cache.clear() == 2
    assert await cache.get("k") is None and await cache.get("other") is None
    stats = await cache.stats()
    assert stats.total == 0 and stats.bytes == 0


async def test_a_short_ttl_expires(cache: ResponseCache) -> None:
    await cache.set("short", make_entry(), ttl=0.05)
    await cache.set("long", make_entry())
    assert await cache.get("short") is not None
    await asyncio.sleep(0.12)
    assert await cache.get("short") is None
    assert await cache.get("long") is not None


async def test_an_entry_over_the_size_cap_is_not_stored(cache: ResponseCache) -> None:
    big = make_entry("x" * 2 * 1024 * 1024)
    assert await cache.set("big", big) is False
    assert await cache.get("big") is None
