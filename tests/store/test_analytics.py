"""Analytics storage: 1,000 mixed requests through the real write-behind queue, the rollups against the raw
rows, summaries against a computation from the records, retention, export, and migration 0003 down and up,
on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from sqlalchemy import inspect, select
from sqlalchemy.engine import Connection

from chatgate.store import RecordRequest, Store, WriteBehind
from chatgate.store.analytics import EXPORT_COLUMNS, exact_percentile, histogram_percentile
from chatgate.store.batch import is_error
from chatgate.store.db import alembic_config, create_engine, migrate
from chatgate.store.models import LATENCY_BOUNDS_MS, LATENCY_COLUMNS, REQUEST_KINDS, USAGE_HOURLY, latency_bucket

from .conftest import T0, seed

HOURS = 6
USERS = [f"u{i}" for i in range(7)]
MODELS = ["llama-3-8b", "gpt-4o-mini", "qwen-72b"]
CHATS = [f"c{i}" for i in range(12)]


def records(n: int = 1000, seed_: int = 5) -> list[RecordRequest]:
    """Mixed requests over ``HOURS`` hours: errors (HTTP and mid-stream), cache hits, streams, several users,
    models, kinds and conversations, latencies from 0 ms to beyond the last histogram bound."""
    rnd = random.Random(seed_)
    out = []
    for i in range(n):
        stream = rnd.random() < 0.5
        cached = not stream and rnd.random() < 0.25
        status, code = rnd.choice([(200, None)] * 8 + [(429, "RATE_LIMIT"), (502, "UPSTREAM_ERROR")])
        if stream and status == 200 and rnd.random() < 0.1:
            code = "STREAM_ABORTED"  # failed after its 200
        latency = int(rnd.lognormvariate(6.5, 1.5)) if rnd.random() > 0.01 else rnd.randint(300_001, 400_000)
        latency = 0 if cached else latency
        out.append(
            RecordRequest(
                at=T0 + timedelta(seconds=rnd.uniform(0, HOURS * 3600)),
                user_id=rnd.choice(USERS),
                conversation_id=rnd.choice([*CHATS, None]),
                message_id=f"m{i}" if rnd.random() < 0.7 else None,
                model=rnd.choice(MODELS),
                upstream=rnd.choice(["vllm-a", "vllm-b", None]),
                kind=rnd.choice(REQUEST_KINDS),
                status=status,
                error_code=code,
                tokens_in=rnd.randint(1, 4000),
                tokens_out=0 if status >= 400 else rnd.randint(0, 1000),
                cached=cached,
                stream=stream,
                latency_ms=latency,
                ttft_ms=rnd.randint(0, latency) if stream else None,
            )
        )
    return out


def _hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def _expected(recs: Iterable[RecordRequest]) -> dict[str, Any]:
    recs = list(recs)
    n = len(recs)
    errors = sum(is_error(r.status, r.error_code) for r in recs)
    cached = sum(r.cached for r in recs)
    return {
        "requests": n,
        "errors": errors,
        "error_rate": errors / n if n else 0.0,
        "cached": cached,
        "cache_hit_rate": cached / n if n else 0.0,
        "streams": sum(r.stream for r in recs),
        "tokens_in": sum(r.tokens_in for r in recs),
        "tokens_out": sum(r.tokens_out for r in recs),
    }


def _check(got: dict[str, Any], recs: list[RecordRequest], exact: bool) -> None:
    assert {k: got[k] for k in _expected(recs)} == pytest.approx(_expected(recs))
    latencies = [r.latency_ms for r in recs]
    assert got["latency_ms"]["avg"] == pytest.approx(sum(latencies) / len(latencies))
    for q, key in ((0.5, "p50"), (0.95, "p95")):
        true = exact_percentile(latencies, q)
        assert true is not None
        if exact:
            assert got["latency_ms"][key] == true
        else:  # estimated from the histogram: in the bucket of the exact value
            assert latency_bucket(got["latency_ms"][key]) == latency_bucket(true) or (
                latency_bucket(true) == len(LATENCY_BOUNDS_MS) and got["latency_ms"][key] == LATENCY_BOUNDS_MS[-1]
            )
    ttfts = [r.ttft_ms for r in recs if r.ttft_ms is not None]
    assert got["ttft_ms"]["avg"] == (pytest.approx(sum(ttfts) / len(ttfts)) if ttfts else None)


async def _record(store: Store, recs: list[RecordRequest]) -> WriteBehind:
    """Through a started queue with small batches (rollup keys recur across batches: the upsert path)."""
    wb = WriteBehind(store, batch_size=97, flush_interval=0.005, retry_base=0.01)
    await wb.start()
    seed(wb, "u0", "chat")  # other ops in the same batches
    for i, r in enumerate(recs):
        assert wb.put(r)
        if i % 50 == 0:
            await asyncio.sleep(0)
    await wb.close()
    assert wb.failures == 0 and wb.lost == 0 and wb.rejected == 0 and wb.drops == 0
    return wb


async def _export(store: Store, **kw: Any) -> list[dict[str, Any]]:
    return [row async for row in store.analytics.export_rows(T0 - timedelta(days=1), T0 + timedelta(days=1), **kw)]


def vars_(r: RecordRequest) -> dict[str, Any]:
    return {name: getattr(r, name) for name in RecordRequest.__dataclass_fields__}


def _row_key(values: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(values[c] for c in EXPORT_COLUMNS if c != "id")


async def test_every_request_is_a_row_and_the_rollups_match_the_rows(store: Store) -> None:
    recs = records()
    await _record(store, recs)
    rows = await _export(store, chunk=128)
    assert len(rows) == 1000
    assert set(rows[0]) == set(EXPORT_COLUMNS)
    sent = Counter(_row_key(vars_(r)) for r in recs)
    assert Counter(_row_key(row) for row in rows) == sent

    # The rollups against aggregates computed from the raw rows.
    want: dict[tuple[Any, ...], Counter[str]] = {}
    for row in rows:
        c = want.setdefault((_hour(row["at"]), row["user_id"], row["model"], row["kind"]), Counter())
        c.update(
            requests=1,
            errors=is_error(row["status"], row["error_code"]),
            cached=row["cached"],
            streams=row["stream"],
            tokens_in=row["tokens_in"],
            tokens_out=row["tokens_out"],
            latency_ms_sum=row["latency_ms"],
            ttft_count=row["ttft_ms"] is not None,
            ttft_ms_sum=row["ttft_ms"] or 0,
        )
        c[LATENCY_COLUMNS[latency_bucket(row["latency_ms"])]] += 1
    async with store.engine.connect() as conn:
        rollups = (await conn.execute(select(USAGE_HOURLY))).mappings().all()
    got = {
        (m["hour"], m["user_id"], m["model"], m["kind"]): Counter(
            {k: v for k, v in m.items() if k not in ("hour", "user_id", "model", "kind") and v}
        )
        for m in rollups
    }
    assert got == {k: +c for k, c in want.items()}
    assert sum(m["requests"] for m in rollups) == 1000
    assert sum(sum(m[c] for c in LATENCY_COLUMNS) for m in rollups) == 1000
    assert any(m["lat_inf"] for m in rollups) and any(m["lat_le_1"] for m in rollups)  # both ends are exercised


async def test_two_instances_add_to_the_same_rollups(db_url: str) -> None:
    """Two processes' worth of stores and queues recording into the same (hour, user, model, kind) keys at once."""
    stores = [await Store.open(db_url), await Store.open(db_url)]
    queues = [WriteBehind(s, batch_size=50, flush_interval=0.001, retry_base=0.01) for s in stores]
    recs = records(600, seed_=11)
    for q in queues:
        await q.start()
    for i, r in enumerate(recs):
        queues[i % 2].put(r)
        queues[(i + 1) % 2].put(r)  # every record twice, once through each instance
        if i % 25 == 0:
            await asyncio.sleep(0)
    await asyncio.gather(*(q.close() for q in queues))
    assert sum(q.lost + q.rejected for q in queues) == 0
    got = await stores[0].analytics.summary(T0, T0 + timedelta(hours=HOURS))
    assert {k: got[k] for k in ("requests", "errors", "cached", "tokens_in", "tokens_out")} == {
        k: 2 * v for k, v in _expected(recs).items() if k in ("requests", "errors", "cached", "tokens_in", "tokens_out")
    }
    assert len(await _export(stores[0])) == 1200
    for s in stores:
        await s.close()


async def test_summaries_match_the_records(store: Store) -> None:
    recs = records()
    await _record(store, recs)
    end = T0 + timedelta(hours=HOURS)

    everyone = await store.analytics.summary(T0 + timedelta(minutes=30), end - timedelta(minutes=1))
    assert (everyone["from"], everyone["to"], everyone["source"]) == (T0, end, "rollups")  # whole hours
    _check(everyone, recs, exact=False)
    for kind in REQUEST_KINDS:
        _check(everyone["by_kind"][kind], [r for r in recs if r.kind == kind], exact=False)
    for model in MODELS:
        _check(everyone["by_model"][model], [r for r in recs if r.model == model], exact=False)
    assert [h["hour"] for h in everyone["by_hour"]] == [T0 + timedelta(hours=h) for h in range(HOURS)]
    for h in everyone["by_hour"]:
        _check(h, [r for r in recs if _hour(r.at) == h["hour"]], exact=False)

    one_user = await store.analytics.summary(T0 + timedelta(hours=1), T0 + timedelta(hours=3), user_id="u3")
    want = [r for r in recs if r.user_id == "u3" and T0 + timedelta(hours=1) <= r.at < T0 + timedelta(hours=3)]
    _check(one_user, want, exact=False)
    assert sum(k["requests"] for k in one_user["by_kind"].values()) == len(want)

    # One conversation: raw rows, the exact window, exact percentiles.
    lo, hi = T0 + timedelta(minutes=75), T0 + timedelta(minutes=290)
    chat = await store.analytics.summary(lo, hi, conversation_id="c4")
    want = [r for r in recs if r.conversation_id == "c4" and lo <= r.at < hi]
    assert chat["source"] == "raw" and (chat["from"], chat["to"]) == (lo, hi)
    _check(chat, want, exact=True)
    for kind, got in chat["by_kind"].items():
        _check(got, [r for r in want if r.kind == kind], exact=True)
    for h in chat["by_hour"]:
        _check(h, [r for r in want if _hour(r.at) == h["hour"]], exact=True)
    owner = next(r.user_id for r in want)
    mine = await store.analytics.summary(lo, hi, conversation_id="c4", user_id=owner)
    _check(mine, [r for r in want if r.user_id == owner], exact=True)

    empty = await store.analytics.summary(end + timedelta(hours=1), end + timedelta(hours=2))
    assert empty["requests"] == 0 and empty["error_rate"] == 0.0 and empty["by_hour"] == []
    assert empty["latency_ms"] == {"avg": None, "p50": None, "p95": None}


async def test_purge_deletes_what_is_older_and_keeps_the_rest(store: Store) -> None:
    recs = records(400, seed_=9)
    await _record(store, recs)
    raw_before, rollups_before = T0 + timedelta(hours=3, minutes=20), T0 + timedelta(hours=2)
    old_raw = sum(r.at < raw_before for r in recs)
    old_keys = {(_hour(r.at), r.user_id, r.model, r.kind) for r in recs if r.at < rollups_before}
    all_keys = {(_hour(r.at), r.user_id, r.model, r.kind) for r in recs}

    assert await store.analytics.purge(raw_before, rollups_before, chunk=37) == (old_raw, len(old_keys))
    rows = await _export(store)
    assert len(rows) == 400 - old_raw and all(row["at"] >= raw_before for row in rows)
    kept = await store.analytics.summary(T0, T0 + timedelta(hours=HOURS))
    assert kept["requests"] == sum(r.at >= rollups_before for r in recs)
    async with store.engine.connect() as conn:
        left = (await conn.execute(select(USAGE_HOURLY.c.hour))).scalars().all()
    assert len(left) == len(all_keys) - len(old_keys) and min(left) == rollups_before
    assert await store.analytics.purge(raw_before, rollups_before) == (0, 0)
    now = T0 + timedelta(days=91)  # the defaults: 24 h of raw rows, 90 days of rollups
    assert await store.analytics.purge_expired(now) == (400 - old_raw, len(all_keys) - len(old_keys))


async def test_export_filters_and_pages(store: Store) -> None:
    recs = records(300, seed_=3)
    await _record(store, recs)
    rows = await _export(store, user_id="u2", chunk=7)
    assert Counter(_row_key(r) for r in rows) == Counter(_row_key(vars_(r)) for r in recs if r.user_id == "u2")
    assert [r["at"] for r in rows] == sorted(r["at"] for r in rows)
    chat = await _export(store, conversation_id="c1", chunk=5)
    assert len(chat) == sum(r.conversation_id == "c1" for r in recs)


async def test_long_strings_are_cut_and_naive_times_taken_as_utc(store: Store, wb: WriteBehind) -> None:
    naive = datetime(2026, 1, 1, 13, 59, 59)
    wb.put(
        RecordRequest(naive, "u" * 300, "c" * 80, None, "m" * 300, None, "tool", 200, "E" * 90, 1, 2, False, True, 5, 3)
    )
    await wb.flush()
    (row,) = await _export(store)
    assert (len(row["user_id"]), len(row["model"]), len(row["conversation_id"]), len(row["error_code"])) == (
        255,
        255,
        64,
        64,
    )
    assert row["at"] == naive.replace(tzinfo=UTC)
    s = await store.analytics.summary(naive.replace(tzinfo=UTC), naive.replace(tzinfo=UTC))
    assert (s["from"], s["to"], s["requests"]) == (T0 + timedelta(hours=1), T0 + timedelta(hours=2), 1)  # its hour
    s = await store.analytics.summary(T0, T0 + timedelta(hours=2), user_id="u" * 255)
    assert s["requests"] == 1 and s["errors"] == 1 and s["by_kind"]["tool"]["streams"] == 1


def test_histogram_percentile() -> None:
    counts = [0] * len(LATENCY_COLUMNS)
    assert histogram_percentile(counts, 0.5) is None
    counts[LATENCY_COLUMNS.index("lat_le_100")] = 4  # four requests in (70, 100] ms
    assert histogram_percentile(counts, 0.5) == 85.0 and histogram_percentile(counts, 1.0) == 100.0
    counts[-1] = 96
    assert histogram_percentile(counts, 0.95) == LATENCY_BOUNDS_MS[-1]
    assert exact_percentile([3, 1, 2], 0.5) == 2.0 and exact_percentile([5], 0.95) == 5.0
    assert math.isclose(histogram_percentile([1] + [0] * (len(LATENCY_COLUMNS) - 1), 0.5) or 0, 1.0)


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def _downgrade(conn: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    command.downgrade(cfg, "0002")


async def test_migration_0003_down_and_up(db_url: str) -> None:
    store = await Store.open(db_url)
    await _record(store, records(20))
    await store.close()
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            assert {"request_log", "usage_hourly"} <= await conn.run_sync(_tables)
            await conn.run_sync(_downgrade)
        async with engine.connect() as conn:
            assert not {"request_log", "usage_hourly"} & await conn.run_sync(_tables)
            assert (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).scalar_one() == "0002"
            assert (await conn.exec_driver_sql("SELECT count(*) FROM conversations")).scalar_one() == 1
    finally:
        await engine.dispose()
    await migrate(db_url)
    store = await Store.open(db_url)
    try:
        assert await _export(store) == []
        await _record(store, records(20))
        assert len(await _export(store)) == 20
    finally:
        await store.close()
