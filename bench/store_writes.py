#!/usr/bin/env python3
"""Write-behind throughput: message rows per second into SQLite and into PostgreSQL.

    .venv/bin/python bench/store_writes.py [--rows N] [--conversations N] [--batch-size N] [--pg-url URL]

For each backend: a fresh database (SQLite: a file in a temporary directory; PostgreSQL: a
temporary database ``chatgate_bench_<hex>`` created on the server at ``--pg-url``, dropped
afterwards), migrated, then a started ``WriteBehind`` receives one ``UpsertUser``, one
``UpsertConversation`` per conversation and ``--rows`` ``AddMessage`` ops spread across them
(each message ~300 characters of JSON content, a request count every second message), put by a
producer that yields to the event loop every 500 ops as a server would. Timed from the first
``put`` to ``close()`` returning; the rows are then counted in the database. Prints figures,
never a verdict. ``--pg-url ''`` skips PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import shlex
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
from sqlalchemy import make_url, text

from chatgate.store import AddMessage, CountRequest, Store, UpsertConversation, UpsertUser, WriteBehind

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
TARGET = 5_000


async def run(url: str, rows: int, conversations: int, batch_size: int) -> dict[str, float]:
    store = await Store.open(url)
    wb = WriteBehind(store, batch_size=batch_size, max_size=max(100_000, rows * 2 + conversations + 1))
    await wb.start()
    now = datetime.now(UTC)
    cids = [f"c-bench-{i}" for i in range(conversations)]
    body = "lorem ipsum dolor sit amet " * 11
    put_ns = 0
    started = time.perf_counter()
    t = time.perf_counter_ns()
    wb.put(UpsertUser("bench:user", "Bench", None, None, "bench", now))
    for i, cid in enumerate(cids):
        wb.put(UpsertConversation(cid, "bench:user", f"chat-{i}", "openai", now, None, {}))
    put_ns += time.perf_counter_ns() - t
    for i in range(rows):
        cid = cids[i % conversations]
        role = "user" if i % 2 == 0 else "assistant"
        t = time.perf_counter_ns()
        wb.put(AddMessage(cid, role, [{"type": "text", "text": f"{i} {body}"}], f"m{i}", 80, "bench", None, now))
        if role == "assistant":
            wb.put(CountRequest(cid, "standard", 120, 80, False, now))
        put_ns += time.perf_counter_ns() - t
        if i % 500 == 499:
            await asyncio.sleep(0)
    await wb.close()
    elapsed = time.perf_counter() - started
    async with store.engine.connect() as conn:
        stored = int((await conn.execute(text("SELECT count(*) FROM messages"))).scalar_one())
    await store.close()
    return {
        "rows": stored,
        "seconds": elapsed,
        "rows_per_s": stored / elapsed,
        "put_us": put_ns / 1000 / (rows + rows // 2 + conversations + 1),
        "failures": wb.failures,
        "drops": wb.drops,
    }


async def _admin(pg_url: str, sql: str) -> None:
    conn = await asyncpg.connect(make_url(pg_url).set(drivername="postgresql").render_as_string(False), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def scratch_database(pg_url: str) -> AsyncIterator[str]:
    """The URL of a new database ``chatgate_bench_<hex>`` on ``pg_url``'s server, dropped afterwards."""
    name = f"chatgate_bench_{secrets.token_hex(4)}"
    await _admin(pg_url, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await _admin(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def report(name: str, r: dict[str, float]) -> None:
    print(
        f"{name:<11} {int(r['rows']):>8} rows in {r['seconds']:6.2f} s = {r['rows_per_s']:>9,.0f} rows/s"
        f"  (put() {r['put_us']:.2f} us/op, failures {int(r['failures'])}, drops {int(r['drops'])};"
        f" target >= {TARGET:,} rows/s)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000, help="AddMessage ops (default 50,000)")
    parser.add_argument("--conversations", type=int, default=100, help="conversations they spread over (100)")
    parser.add_argument("--batch-size", type=int, default=1000, help="WriteBehind batch size (1000)")
    parser.add_argument("--pg-url", default=DEFAULT_PG, help=f"PostgreSQL server to use ({DEFAULT_PG}); '' skips")
    args = parser.parse_args()
    print("$", shlex.join([".venv/bin/python", "bench/store_writes.py", *sys.argv[1:]]))
    print(f"{args.rows:,} messages over {args.conversations} conversations, batch size {args.batch_size}")
    with tempfile.TemporaryDirectory() as tmp:
        report(
            "sqlite", await run(f"sqlite+aiosqlite:///{tmp}/bench.db", args.rows, args.conversations, args.batch_size)
        )
    if args.pg_url:
        async with scratch_database(args.pg_url) as url:
            report("postgresql", await run(url, args.rows, args.conversations, args.batch_size))


if __name__ == "__main__":
    asyncio.run(main())
