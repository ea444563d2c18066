#!/usr/bin/env python3
"""One limit check (``acquire``) with 3 limits: requests/minute, tokens/hour, tokens/day.

    .venv/bin/python bench/limits_check.py [--n 20000] [--users 1000] [--redis redis://127.0.0.1:6379/0]
        [--alternatives]

- memory: ``MemoryLimiter.acquire`` timed one call at a time (``perf_counter_ns`` around each
  await), over ``--users`` subjects in turn with limits high enough that every call is admitted;
  p50 and p99 (the issue's target: p50 at most 30 µs).
- redis: the same calls on ``RedisLimiter`` against ``--redis`` (p50, p99), and the Redis commands
  the server executed per acquire, from ``INFO commandstats`` deltas (``cmdstat_evalsha`` +
  ``cmdstat_eval`` calls: the round trips; the issue's target: exactly 1). Run it on a quiet Redis:
  other clients' EVALSHAs would be counted too.

- shared: the same calls on ``SharedLimiter`` (the workers' table without Redis, a SQLite file in a
  temporary directory), alone; then two processes at once, each timing its own calls (the flock taken
  in turn), and their wall time per check together.
- ``--alternatives``: the mechanisms weighed against it, as minimal prototypes with the same three
  counters (``bench/limits_alternatives.py``): a table in shared memory (``mmap`` + ``flock``, no probing
  or eviction: a lower bound) and a ``MemoryLimiter`` in another process asked over a Unix socket.

Figures only, never a verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import secrets
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from redis.asyncio import Redis  # noqa: E402

from chatgate.limits import Limit, Limiter, MemoryLimiter, RedisLimiter, SharedLimiter  # noqa: E402


def limits_for(user: int) -> list[Limit]:
    key = f"u:{user}"
    return [
        Limit("user:requests_per_minute", key, 10**9, 60.0, "requests"),
        Limit("user:tokens_per_hour", key, 10**12, 3600.0, "tokens"),
        Limit("user:tokens_per_day", key, 10**12, 86400.0, "tokens"),
    ]


async def timed(limiter: Limiter, n: int, users: int, settle: bool = False) -> list[float]:
    """Each acquire's time; with ``settle``, each acquire and its reconcile (what one request costs)."""
    sets = [limits_for(u) for u in range(users)]
    costs = {"requests": 1, "tokens": 1534}
    for s in sets:  # warm: every counter exists
        await limiter.acquire(s, costs)
    out = []
    clock = time.perf_counter_ns
    for i in range(n):
        s = sets[i % users]
        t0 = clock()
        d = await limiter.acquire(s, costs)
        if settle:
            assert d.reservation is not None
            await limiter.reconcile(d.reservation, {"tokens": 900})
        out.append((clock() - t0) / 1000)
        assert d.allowed
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


async def commandstats(client: Redis) -> dict[str, int]:
    info = await client.info("commandstats")
    return {k: int(v["calls"]) for k, v in info.items()}


def show(name: str, us: list[float]) -> None:
    print(f"{name}: n={len(us)} p50={statistics.median(us):.1f} µs p99={pct(us, 0.99):.1f} µs")


def contended(path: str, n: int, users: int, queue: Any) -> None:
    """One of two processes on one shared file: its own calls' times."""

    async def go() -> list[float]:
        lim = SharedLimiter(Path(path))
        try:
            return await timed(lim, n, users)
        finally:
            await lim.close()

    t0 = time.perf_counter()
    us = asyncio.run(go())
    queue.put((us, time.perf_counter() - t0))


def two_processes(path: Path, n: int, users: int) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=contended, args=(str(path), n, users, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    both = [x for us, _ in results for x in us]
    wall = max(w for _, w in results)
    show("shared, 2 processes at once", both)
    print(f"shared, 2 processes at once: {wall / (2 * (n + users)) * 1e6:.1f} µs wall time per check together")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--alternatives", action="store_true", help="also time the prototypes weighed against shared")
    a = ap.parse_args()
    print("$", shlex.join([Path(sys.executable).name, *sys.argv]))
    print(f"python {platform.python_version()} on {platform.machine()}, 3 limits per acquire")

    mem = MemoryLimiter()
    us = await timed(mem, a.n, a.users)
    print(f"memory: n={a.n} p50={statistics.median(us):.1f} µs p99={pct(us, 0.99):.1f} µs")
    show("memory, acquire + reconcile", await timed(MemoryLimiter(), a.n, a.users, settle=True))

    with tempfile.TemporaryDirectory() as tmp:
        shared = SharedLimiter(Path(tmp) / "limits.sqlite")
        show("shared", await timed(shared, a.n, a.users))
        show("shared, acquire + reconcile", await timed(shared, a.n, a.users, settle=True))
        await shared.close()
        two_processes(Path(tmp) / "two.sqlite", a.n // 2, a.users)
        if a.alternatives:
            from bench.limits_alternatives import MmapTable, SocketLimiter

            show("alternative mmap table", await timed(MmapTable(Path(tmp) / "l.shm"), a.n, a.users))
            async with SocketLimiter(Path(tmp) / "l.sock") as sock:
                show("alternative unix socket", await timed(sock, a.n, a.users))

    prefix = f"cgbench:{secrets.token_hex(4)}:"
    red = RedisLimiter.from_url(a.redis, prefix=prefix, fail_open=False)
    admin = Redis.from_url(a.redis)
    n_redis = min(a.n, 5000)
    await timed(red, a.users, a.users)  # warm connection and script cache
    before = await commandstats(admin)
    us = await timed(red, n_redis, a.users)
    after = await commandstats(admin)
    calls = n_redis + a.users  # timed() warms every user's counters first
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    scripts = delta.get("cmdstat_evalsha", 0) + delta.get("cmdstat_eval", 0)
    print(f"redis: n={n_redis} p50={statistics.median(us):.1f} µs p99={pct(us, 0.99):.1f} µs")
    show("redis, acquire + reconcile", await timed(red, min(n_redis, 2000), a.users, settle=True))
    print(f"redis: {scripts / calls:.3f} EVALSHA/EVAL round trips per acquire ({scripts} for {calls} acquires)")
    inner = {k.removeprefix("cmdstat_"): v for k, v in sorted(delta.items()) if v and "eval" not in k}
    print(f"redis: commands inside the scripts and from the stats reads: {inner}")
    keys = [k async for k in admin.scan_iter(match=prefix + "*", count=1000)]
    if keys:
        await admin.unlink(*keys)
    await red.close()
    await admin.aclose()


if __name__ == "__main__":
    asyncio.run(main())
