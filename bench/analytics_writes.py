#!/usr/bin/env python3
"""Analytics write-behind throughput: request records per second into SQLite and into PostgreSQL.

    .venv/bin/python bench/analytics_writes.py [--records N] [--users N] [--hours N] [--batch-size N]
        [--pg-url URL]

For each backend: a fresh database (SQLite: a file in a temporary directory; PostgreSQL: a
temporary database ``chatgate_bench_<hex>`` created on the server at ``--pg-url``, dropped
afterwards), migrated, then a started ``WriteBehind`` receives ``--records`` ``RecordRequest`` ops
(mixed: --users users, 4 models, the 5 kinds, ~8% errors, ~20% cached, half streams, spread over
the last --hours hours: with the defaults nearly every op in a batch has its own (hour, user,
model, kind) rollup key, the costly case; live traffic falls in the current hour and shares keys
more), put by a producer that yields to the event loop every 500 ops as a server would. Each op
becomes one ``request_log`` row and its share of a ``usage_hourly`` upsert, in the same
transaction. Timed from the first ``put`` to ``close()`` returning; then the raw rows are counted
and the rollups' request counts summed.
``put()`` (the hot path) is timed per call: mean, p99 and max. Prints figures, never a verdict.
``--pg-url ''`` skips PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shlex
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from chatgate.store import RecordRequest, Store, WriteBehind
from chatgate.store.models import REQUEST_KINDS

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: bench/ is a package here
from bench.store_writes import DEFAULT_PG, scratch_database

TARGET = 5_000
MODELS = ("llama-3.1-8b", "qwen-2.5-72b", "gpt-4o-mini", "mistral-small")


def make_records(n: int, users: int, hours: float) -> list[RecordRequest]:
    rnd = random.Random(5)
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        stream = rnd.random() < 0.5
        cached = not stream and rnd.random() < 0.4
        status, code = (502, "UPSTREAM_ERROR") if rnd.random() < 0.08 else (200, None)
        latency = 2 if cached else int(rnd.lognormvariate(6.5, 1.0))
        out.append(
            RecordRequest(
                at=now - timedelta(seconds=rnd.uniform(0, hours * 3600)),
                user_id=f"user-{rnd.randrange(users)}",
                conversation_id=f"c-{rnd.randrange(users * 5)}",
                message_id=f"msg-{i}",
                model=rnd.choice(MODELS),
                upstream="vllm-1",
                kind=rnd.choice(REQUEST_KINDS),
                status=status,
                error_code=code,
                tokens_in=rnd.randint(20, 4000),
                tokens_out=rnd.randint(0, 800),
                cached=cached,
                stream=stream,
                latency_ms=latency,
                ttft_ms=latency // 5 if stream else None,
            )
        )
    return out


async def run(url: str, records: list[RecordRequest], batch_size: int) -> dict[str, float]:
    store = await Store.open(url)
    wb = WriteBehind(store, batch_size=batch_size, max_size=max(100_000, len(records) + 1))
    await wb.start()
    put_ns: list[int] = []
    clock = time.perf_counter_ns
    started = time.perf_counter()
    for i, op in enumerate(records):
        t = clock()
        wb.put(op)
        put_ns.append(clock() - t)
        if i % 500 == 499:
            await asyncio.sleep(0)
    await wb.close()
    elapsed = time.perf_counter() - started
    async with store.engine.connect() as conn:
        stored = int((await conn.execute(text("SELECT count(*) FROM request_log"))).scalar_one())
        rolled = int((await conn.execute(text("SELECT coalesce(sum(requests), 0) FROM usage_hourly"))).scalar_one())
        keys = int((await conn.execute(text("SELECT count(*) FROM usage_hourly"))).scalar_one())
    await store.close()
    put_ns.sort()
    return {
        "rows": stored,
        "rolled": rolled,
        "keys": keys,
        "seconds": elapsed,
        "rows_per_s": stored / elapsed,
        "put_mean_us": sum(put_ns) / len(put_ns) / 1000,
        "put_p99_us": put_ns[int(len(put_ns) * 0.99)] / 1000,
        "put_max_us": put_ns[-1] / 1000,
        "failures": wb.failures,
        "drops": wb.drops,
    }


def report(name: str, r: dict[str, float]) -> None:
    print(
        f"{name:<11} {int(r['rows']):>8} rows in {r['seconds']:6.2f} s = {r['rows_per_s']:>9,.0f} records/s"
        f"  (rollups: {int(r['keys']):,} keys, {int(r['rolled']):,} requests; put() mean {r['put_mean_us']:.2f} us,"
        f" p99 {r['put_p99_us']:.2f} us, max {r['put_max_us']:.1f} us; failures {int(r['failures'])},"
        f" drops {int(r['drops'])}; target >= {TARGET:,} records/s)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=50_000, help="RecordRequest ops (default 50,000)")
    parser.add_argument("--users", type=int, default=200, help="users they spread over (200)")
    parser.add_argument("--hours", type=float, default=3, help="hours the records spread over (3)")
    parser.add_argument("--batch-size", type=int, default=1000, help="WriteBehind batch size (1000)")
    parser.add_argument("--pg-url", default=DEFAULT_PG, help=f"PostgreSQL server to use ({DEFAULT_PG}); '' skips")
    args = parser.parse_args()
    print("$", shlex.join([".venv/bin/python", "bench/analytics_writes.py", *sys.argv[1:]]))
    print(f"{args.records:,} request records, {args.users} users, {args.hours:g} h, batch size {args.batch_size}")
    records = make_records(args.records, args.users, args.hours)
    with tempfile.TemporaryDirectory() as tmp:
        report("sqlite", await run(f"sqlite+aiosqlite:///{tmp}/bench.db", records, args.batch_size))
    if args.pg_url:
        async with scratch_database(args.pg_url) as url:
            report("postgresql", await run(url, records, args.batch_size))


if __name__ == "__main__":
    asyncio.run(main())
