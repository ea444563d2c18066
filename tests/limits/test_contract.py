"""The limiter contract: every test here runs on the memory backend, the machine-wide SQLite one (two
limiters on one file, as two workers hold it, taking turns) and on the real Redis.

Redis: ``CHATGATE_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``), a fresh key prefix per
test, its keys deleted afterwards. Unreachable: the Redis cases fail (a skipped test proves nothing).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from chatgate.limits import SLOTS, Limit, Limiter, MemoryLimiter, RedisLimiter, SharedLimiter

REDIS_URL = os.environ.get("CHATGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def drop_prefix(client: Redis, prefix: str) -> None:
    keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
    if keys:
        await client.unlink(*keys)


class TwoWorkers:
    """Two ``SharedLimiter`` on one file, as two worker processes hold it: calls alternate between them."""

    def __init__(self, path: Path) -> None:
        self.workers = [SharedLimiter(path), SharedLimiter(path)]
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        self.calls += 1
        return getattr(self.workers[self.calls % 2], name)


@pytest.fixture(params=["memory", "shared", "redis"])
async def limiter(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Limiter]:
    if request.param == "memory":
        mem = MemoryLimiter()
        yield mem
        await mem.close()
        return
    if request.param == "shared":
        pair = TwoWorkers(tmp_path / "limits.sqlite")
        yield pair  # type: ignore[misc]
        for worker in pair.workers:
            await worker.close()
        return
    prefix = f"cgtest:{secrets.token_hex(6)}:"
    red = RedisLimiter.from_url(REDIS_URL, prefix=prefix, fail_open=False, timeout=5)
    yield red
    await drop_prefix(red._redis, prefix)
    await red.close()


def req(limit: int, window: float = 60.0, key: str = "u:t", scope: str = "user:requests_per_minute") -> Limit:
    return Limit(scope, key, limit, window, "requests")


def tok(limit: int, window: float = 3600.0, key: str = "u:t", scope: str = "user:tokens_per_hour") -> Limit:
    return Limit(scope, key, limit, window, "tokens")


async def test_200_concurrent_acquires_admit_exactly_the_limit(limiter: Limiter) -> None:
    limits = [req(60)]
    decisions = await asyncio.gather(*(limiter.acquire(limits, {"requests": 1}) for _ in range(200)))
    assert sum(d.allowed for d in decisions) == 60
    refused = [d for d in decisions if not d.allowed]
    assert all(d.blocked == limits[0] and d.reservation is None and d.retry_after > 0 for d in refused)
    assert (await limiter.usage(limits))["user:requests_per_minute"]["used"] == 60


async def test_a_refusing_limit_charges_nothing(limiter: Limiter) -> None:
    limits = [req(10), tok(1000)]
    first = await limiter.acquire(limits, {"requests": 1, "tokens": 900})
    assert first.allowed and first.remaining == {"user:requests_per_minute": 9, "user:tokens_per_hour": 100}
    second = await limiter.acquire(limits, {"requests": 1, "tokens": 200})
    assert not second.allowed and second.blocked == limits[1]
    assert second.remaining == {"user:requests_per_minute": 9, "user:tokens_per_hour": 100}
    usage = await limiter.usage(limits)
    assert usage["user:requests_per_minute"]["used"] == 1 and usage["user:tokens_per_hour"]["used"] == 900
    # It fits exactly: admitted ("only if it fits"), nothing over.
    third = await limiter.acquire(limits, {"requests": 1, "tokens": 100})
    assert third.allowed and third.remaining["user:tokens_per_hour"] == 0


async def test_a_cost_larger_than_the_limit_never_fits(limiter: Limiter) -> None:
    d = await limiter.acquire([tok(1000, window=60)], {"tokens": 1001})
    assert not d.allowed and d.remaining == {"user:tokens_per_hour": 1000}
    assert 60 <= d.retry_after <= 60 * (SLOTS + 1) / SLOTS + 0.01


async def test_reconcile_down_and_up_and_the_overshoot_bound(limiter: Limiter) -> None:
    limits = [req(10), tok(1000)]
    d = await limiter.acquire(limits, {"requests": 1, "tokens": 600})
    assert d.reservation is not None
    await limiter.reconcile(d.reservation, {"tokens": 250})  # used fewer than reserved: refund 350
    usage = await limiter.usage(limits)
    assert usage["user:tokens_per_hour"]["used"] == 250 and usage["user:requests_per_minute"]["used"] == 1

    d2 = await limiter.acquire(limits, {"requests": 1, "tokens": 700})  # 950: fits
    assert d2.reservation is not None
    await limiter.reconcile(d2.reservation, {"tokens": 1000})  # 300 more than reserved: never refused
    used = (await limiter.usage(limits))["user:tokens_per_hour"]
    assert used["used"] == 1250 and used["remaining"] == 0
    # The overshoot is exactly actual - reserved of the one request reconciled upward.
    assert used["used"] - 1000 <= 1000 - 700
    refused = await limiter.acquire(limits, {"requests": 1, "tokens": 1})
    assert not refused.allowed and refused.blocked == limits[1]


async def test_refund_gives_tokens_back_and_keeps_the_request(limiter: Limiter) -> None:
    limits = [req(10), tok(1000)]
    d = await limiter.acquire(limits, {"requests": 1, "tokens": 800})
    assert d.reservation is not None
    await limiter.refund(d.reservation)
    usage = await limiter.usage(limits)
    assert usage["user:tokens_per_hour"]["used"] == 0 and usage["user:requests_per_minute"]["used"] == 1
    assert (await limiter.acquire(limits, {"requests": 1, "tokens": 1000})).allowed


async def test_refund_never_takes_back_more_than_was_charged(limiter: Limiter) -> None:
    limits = [tok(1000)]
    a = await limiter.acquire(limits, {"tokens": 300})
    b = await limiter.acquire(limits, {"tokens": 200})
    assert a.reservation and b.reservation
    await limiter.reset("u:t")  # an admin reset between charge and refund
    c = await limiter.acquire(limits, {"tokens": 100})
    assert c.allowed
    await limiter.refund(a.reservation)  # 300 back from a slot holding 100: clamped at 0
    assert (await limiter.usage(limits))["user:tokens_per_hour"]["used"] == 0


async def test_the_window_slides(limiter: Limiter) -> None:
    limits = [req(2, window=1.0)]
    assert (await limiter.acquire(limits, {"requests": 2})).allowed  # one charge: one slot
    refused = await limiter.acquire(limits, {"requests": 1})
    assert not refused.allowed
    # Capacity frees between W and W + W/SLOTS after the charge.
    assert 0 < refused.retry_after <= 1.0 + 1.0 / SLOTS + 0.01
    assert refused.reset_in["user:requests_per_minute"] == pytest.approx(refused.retry_after, abs=0.01)
    await asyncio.sleep(refused.retry_after + 0.02)
    d = await limiter.acquire(limits, {"requests": 1})
    assert d.allowed and d.remaining == {"user:requests_per_minute": 1}


async def test_remaining_and_reset_in(limiter: Limiter) -> None:
    limits = [req(5), tok(10_000)]
    d = await limiter.acquire(limits, {"requests": 1, "tokens": 1534})
    assert d.allowed and d.blocked is None and d.retry_after == 0
    assert d.remaining == {"user:requests_per_minute": 4, "user:tokens_per_hour": 8466}
    assert 60 - 60 / SLOTS <= d.reset_in["user:requests_per_minute"] <= 60 + 60 / SLOTS
    assert 3600 - 3600 / SLOTS <= d.reset_in["user:tokens_per_hour"] <= 3600 + 3600 / SLOTS
    usage = await limiter.usage(limits)
    assert usage["user:tokens_per_hour"] == {
        "used": 1534,
        "limit": 10_000,
        "remaining": 8466,
        "reset_in": pytest.approx(d.reset_in["user:tokens_per_hour"], abs=0.1),
    }
    assert (await limiter.usage([req(5, key="u:nobody")]))["user:requests_per_minute"] == {
        "used": 0,
        "limit": 5,
        "remaining": 5,
        "reset_in": 0.0,
    }


async def test_reset_clears_one_subject_only(limiter: Limiter) -> None:
    alice = [req(5, key="u:alice"), tok(1000, key="u:alice"), req(5, key="u:alice:r:%2Fx", scope="route")]
    alice2 = [req(5, key="u:alice2")]
    assert (await limiter.acquire(alice, {"requests": 1, "tokens": 10})).allowed
    assert (await limiter.acquire(alice2, {"requests": 1})).allowed
    assert await limiter.reset("u:alice") == 3
    assert all(v["used"] == 0 for v in (await limiter.usage(alice)).values())
    assert (await limiter.usage(alice2))["user:requests_per_minute"]["used"] == 1
    assert await limiter.reset("u:alice") == 0


async def test_the_same_subject_has_separate_windows_and_units(limiter: Limiter) -> None:
    limits = [tok(100, window=3600, scope="h"), tok(150, window=86400, scope="d"), req(3)]
    assert (await limiter.acquire(limits, {"tokens": 100, "requests": 1})).allowed
    d = await limiter.acquire(limits, {"tokens": 1, "requests": 1})
    assert not d.allowed and d.blocked == limits[0]
    assert d.remaining == {"h": 0, "d": 50, "user:requests_per_minute": 2}


async def test_no_limits_always_admits(limiter: Limiter) -> None:
    d = await limiter.acquire([], {"requests": 1})
    assert d.allowed and d.remaining == {} and d.reservation is not None
    await limiter.refund(d.reservation)
