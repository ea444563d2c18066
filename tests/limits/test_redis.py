"""The Redis backend's own promises: exact across processes, one round trip, expiry, and Redis down."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError

from chatgate.limits import SLOTS, Limit, LimiterUnavailable, RedisLimiter
from tests.limits.test_contract import REDIS_URL, drop_prefix

WORKER = r"""
import asyncio, sys, time
from chatgate.limits import Limit, RedisLimiter

async def main(url, prefix, start, n):
    lim = RedisLimiter.from_url(url, prefix=prefix, fail_open=False, timeout=10)
    await lim.usage([Limit("warm", "u:warm", 1, 60.0, "requests")])  # connect before the start line
    await asyncio.sleep(max(0.0, start - time.time()))
    limit = Limit("user:requests_per_minute", "u:shared", 60, 60.0, "requests")
    decisions = await asyncio.gather(*(lim.acquire([limit], {"requests": 1}) for _ in range(n)))
    print(sum(d.allowed for d in decisions))
    await lim.close()

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))
"""


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    prefix = f"cgtest:{secrets.token_hex(6)}:"
    yield prefix
    client = Redis.from_url(REDIS_URL)
    await drop_prefix(client, prefix)
    await client.aclose()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when this returns: connections are refused


def test_two_processes_sharing_redis_admit_exactly_the_limit(prefix: str) -> None:
    start = time.time() + 1.5
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, REDIS_URL, prefix, str(start), "100"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    admitted = [int(out) for out, _ in outs]
    assert sum(admitted) == 60, admitted


async def test_one_evalsha_per_acquire_and_eval_on_noscript(prefix: str) -> None:
    lim = RedisLimiter.from_url(REDIS_URL, prefix=prefix)
    client = lim._redis
    calls: list[str] = []
    flushed = [True]
    real_evalsha, real_eval = client.evalsha, client.eval

    async def evalsha(*args: object) -> object:
        calls.append("evalsha")
        if flushed.pop() if flushed else False:
            raise NoScriptError("NOSCRIPT No matching script")
        return await real_evalsha(*args)  # type: ignore[arg-type]

    async def eval_(*args: object) -> object:
        calls.append("eval")
        return await real_eval(*args)  # type: ignore[arg-type]

    client.evalsha, client.eval = evalsha, eval_  # type: ignore[method-assign]
    limits = [Limit("r", "u:t", 60, 60.0, "requests"), Limit("t", "u:t", 10**5, 3600.0, "tokens")]
    assert (await lim.acquire(limits, {"requests": 1, "tokens": 10})).allowed
    assert calls == ["evalsha", "eval"]  # a flushed script cache: one EVAL, no SCRIPT LOAD dance
    calls.clear()
    for _ in range(5):
        assert (await lim.acquire(limits, {"requests": 1, "tokens": 10})).allowed
    assert calls == ["evalsha"] * 5
    await lim.close()


async def test_counters_expire_after_their_window(prefix: str) -> None:
    lim = RedisLimiter.from_url(REDIS_URL, prefix=prefix)
    limit = Limit("r", "u:t", 5, 60.0, "requests")
    await lim.acquire([limit], {"requests": 1})
    ttl = await lim._redis.pttl(prefix + limit.counter)
    assert 60_000 < ttl <= 60_000 * (SLOTS + 2) / SLOTS
    await lim.close()


async def test_redis_down_fail_open_uses_a_local_limiter_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    lim = RedisLimiter.from_url(f"redis://127.0.0.1:{closed_port()}/0", fail_open=True)
    limits = [Limit("r", "u:t", 3, 60.0, "requests"), Limit("t", "u:t", 1000, 3600.0, "tokens")]
    with caplog.at_level(logging.INFO, logger="chatgate.limits"):
        decisions = [await lim.acquire(limits, {"requests": 1, "tokens": 10}) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]  # still limited, locally
    assert lim.redis_errors == 5
    warnings = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
    assert len(warnings) == 1 and "failing open" in warnings[0].getMessage()
    reservation = decisions[0].reservation
    assert reservation is not None and reservation.origin == "memory"
    await lim.refund(reservation)  # goes to the local limiter that holds it
    assert (await lim.usage(limits))["t"]["used"] == 20
    await lim.close()


async def test_redis_down_fail_closed_refuses(caplog: pytest.LogCaptureFixture) -> None:
    lim = RedisLimiter.from_url(f"redis://127.0.0.1:{closed_port()}/0", fail_open=False)
    limits = [Limit("r", "u:t", 3, 60.0, "requests")]
    with caplog.at_level(logging.INFO, logger="chatgate.limits"):
        for _ in range(3):
            with pytest.raises(LimiterUnavailable) as err:
                await lim.acquire(limits, {"requests": 1})
        with pytest.raises(LimiterUnavailable):
            await lim.usage(limits)
    assert err.value.status == 503 and err.value.code == "LIMITER_UNAVAILABLE"
    assert lim.redis_errors == 4
    assert sum("Redis unreachable" in r.getMessage() for r in caplog.records) == 1
    await lim.close()


async def test_redis_lost_mid_test_and_back(prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    """Traffic stops mid-test (the client is pointed at a closed port), then comes back."""
    lim = RedisLimiter.from_url(REDIS_URL, prefix=prefix, fail_open=False)
    limits = [Limit("r", "u:t", 10, 60.0, "requests")]
    assert (await lim.acquire(limits, {"requests": 1})).allowed
    good = lim._redis
    lim._redis = Redis(port=closed_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    with caplog.at_level(logging.INFO, logger="chatgate.limits"):
        with pytest.raises(LimiterUnavailable):
            await lim.acquire(limits, {"requests": 1})
        await lim._redis.aclose()
        lim._redis = good
        d = await lim.acquire(limits, {"requests": 1})
    assert d.allowed and d.remaining == {"r": 8}  # the refused call charged nothing
    messages = [r.getMessage() for r in caplog.records]
    assert any("unreachable" in m for m in messages) and any("reachable again" in m for m in messages)
    await lim.close()


async def test_concurrent_acquires_from_one_process_queue_for_connections(prefix: str) -> None:
    lim = RedisLimiter.from_url(REDIS_URL, prefix=prefix, max_connections=4, timeout=5)
    limits = [Limit("r", "u:t", 60, 60.0, "requests")]
    decisions = await asyncio.gather(*(lim.acquire(limits, {"requests": 1}) for _ in range(200)))
    assert sum(d.allowed for d in decisions) == 60 and lim.redis_errors == 0
    await lim.close()
