"""Analytics reads: summaries, the export of raw rows, and retention.

Written only by the write-behind queue (``RecordRequest``): one ``request_log`` row per request and,
in the same transaction, its share of the ``usage_hourly`` rollup of its (UTC hour, user, model, kind).
The rollups therefore always agree with the raw rows, the current hour included.

Summaries for everyone or for one user read the rollups: they cover whole UTC hours (``from_`` rounded
down to its hour, ``to`` up; the summary says which), as far back as rollups are kept, and their
percentiles are estimated from the latency histogram (linearly within a bucket: the estimate lies in
the bucket of the exact value). A conversation's summary reads its raw rows (rollups are not per
conversation): the exact window, exact percentiles, but only as far back as raw rows are kept.

Retention: ``purge`` deletes raw rows and rollups older than two cut-offs; the defaults are
``RAW_RETENTION`` (24 h) and ``ROLLUP_RETENTION`` (90 days), applied by whoever schedules it.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from chatgate.store.batch import is_error
from chatgate.store.models import (
    LATENCY_BOUNDS_MS,
    LATENCY_COLUMNS,
    REQUEST_LOG,
    ROLLUP_SUMS,
    USAGE_HOURLY,
    latency_bucket,
)

RAW_RETENTION = timedelta(hours=24)
ROLLUP_RETENTION = timedelta(days=90)
EXPORT_COLUMNS = tuple(c.name for c in REQUEST_LOG.c)
HOUR = timedelta(hours=1)


def floor_hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def ceil_hour(at: datetime) -> datetime:
    floor = floor_hour(at)
    return floor if floor == at else floor + HOUR


def exact_percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest rank: the smallest value with at least ``q`` of ``values`` at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[max(1, math.ceil(q * len(ordered))) - 1])


def histogram_percentile(counts: Sequence[int], q: float) -> float | None:
    """The nearest-rank percentile estimated from latency bucket counts (``LATENCY_COLUMNS`` order).

    Linear within the bucket holding that rank, so within the bucket of the exact value; the last
    (unbounded) bucket answers its lower bound.
    """
    n = sum(counts)
    if n == 0:
        return None
    rank = max(1, math.ceil(q * n))
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            if i == len(LATENCY_BOUNDS_MS):
                return float(LATENCY_BOUNDS_MS[-1])
            lower = LATENCY_BOUNDS_MS[i - 1] if i else 0
            return lower + (LATENCY_BOUNDS_MS[i] - lower) * (rank - seen) / count
        seen += count
    raise AssertionError("unreachable: the ranks add up to n")


@dataclass(slots=True)
class _Totals:
    """Sums over rollup rows or raw rows; raw rows also keep their latencies for exact percentiles."""

    sums: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROLLUP_SUMS, 0))
    latencies: list[int] | None = None

    def add_rollup(self, m: Mapping[Any, Any]) -> None:
        for name in ROLLUP_SUMS:
            self.sums[name] += int(m[name] or 0)

    def add_raw(self, m: Mapping[Any, Any]) -> None:
        s = self.sums
        s["requests"] += 1
        s["errors"] += is_error(m["status"], m["error_code"])
        s["cached"] += bool(m["cached"])
        s["streams"] += bool(m["stream"])
        s["tokens_in"] += m["tokens_in"]
        s["tokens_out"] += m["tokens_out"]
        s["latency_ms_sum"] += m["latency_ms"]
        if m["ttft_ms"] is not None:
            s["ttft_count"] += 1
            s["ttft_ms_sum"] += m["ttft_ms"]
        s[LATENCY_COLUMNS[latency_bucket(m["latency_ms"])]] += 1
        if self.latencies is None:
            self.latencies = []
        self.latencies.append(m["latency_ms"])

    def result(self) -> dict[str, Any]:
        s = self.sums
        n = s["requests"]
        if self.latencies is not None:
            p50, p95 = exact_percentile(self.latencies, 0.5), exact_percentile(self.latencies, 0.95)
        else:
            hist = [s[name] for name in LATENCY_COLUMNS]
            p50, p95 = histogram_percentile(hist, 0.5), histogram_percentile(hist, 0.95)
        return {
            "requests": n,
            "errors": s["errors"],
            "error_rate": s["errors"] / n if n else 0.0,
            "cached": s["cached"],
            "cache_hit_rate": s["cached"] / n if n else 0.0,
            "streams": s["streams"],
            "tokens_in": s["tokens_in"],
            "tokens_out": s["tokens_out"],
            "latency_ms": {"avg": s["latency_ms_sum"] / n if n else None, "p50": p50, "p95": p95},
            "ttft_ms": {"avg": s["ttft_ms_sum"] / s["ttft_count"] if s["ttft_count"] else None},
        }


def _summary(
    from_: datetime,
    to: datetime,
    source: str,
    groups: Sequence[tuple[datetime, str, Mapping[Any, Any]]],
    models: Sequence[tuple[str, Mapping[Any, Any]]],
    raw: bool,
) -> dict[str, Any]:
    """Totals, by kind and by hour over ``groups`` ((hour, kind, sums)), by model over ``models``
    ((model, sums)); the sums are rollup sums, or (``raw``) one raw row each."""
    total = _Totals()
    by_kind: dict[str, _Totals] = {}
    by_hour: dict[datetime, _Totals] = {}
    by_model: dict[str, _Totals] = {}
    for hour, kind, m in groups:
        for t in (total, by_kind.setdefault(kind, _Totals()), by_hour.setdefault(hour, _Totals())):
            (t.add_raw if raw else t.add_rollup)(m)
    for model, m in models:
        t = by_model.setdefault(model, _Totals())
        (t.add_raw if raw else t.add_rollup)(m)
    return {
        "from": from_,
        "to": to,
        "source": source,
        **total.result(),
        "by_kind": {kind: t.result() for kind, t in sorted(by_kind.items())},
        "by_model": {model: t.result() for model, t in sorted(by_model.items())},
        "by_hour": [{"hour": hour, **t.result()} for hour, t in sorted(by_hour.items())],
    }


class AnalyticsRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def summary(
        self, from_: datetime, to: datetime, *, user_id: str | None = None, conversation_id: str | None = None
    ) -> dict[str, Any]:
        """Totals, error rate, p50/p95 latency (ms), tokens, cache hit rate; by kind, model and hour.

        Everyone (no ids) or one user: from the rollups, over whole hours. One conversation (of
        ``user_id``, when given): from its raw rows in ``[from_, to)``.
        """
        if conversation_id is not None:
            return await self._conversation_summary(from_, to, conversation_id, user_id)
        start, end = floor_hour(from_), ceil_hour(to)
        u = USAGE_HOURLY.c
        where = [u.hour >= start, u.hour < end]
        if user_id is not None:
            where.append(u.user_id == user_id)
        sums = [func.sum(u[n]).label(n) for n in ROLLUP_SUMS]
        by_hour_kind = select(u.hour, u.kind, *sums).where(*where).group_by(u.hour, u.kind)
        by_model = select(u.model, *sums).where(*where).group_by(u.model)
        async with self._engine.connect() as conn:
            groups = (await conn.execute(by_hour_kind)).mappings().all()
            models = (await conn.execute(by_model)).mappings().all()
        return _summary(
            start,
            end,
            "rollups",
            [(m["hour"], m["kind"], m) for m in groups],
            [(m["model"], m) for m in models],
            raw=False,
        )

    async def _conversation_summary(
        self, from_: datetime, to: datetime, conversation_id: str, user_id: str | None
    ) -> dict[str, Any]:
        r = REQUEST_LOG.c
        stmt = select(REQUEST_LOG).where(r.conversation_id == conversation_id, r.at >= from_, r.at < to)
        if user_id is not None:
            stmt = stmt.where(r.user_id == user_id)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        groups = [(floor_hour(m["at"]), m["kind"], m) for m in rows]
        return _summary(from_, to, "raw", groups, [(m["model"], m) for m in rows], raw=True)

    async def export_rows(
        self,
        from_: datetime,
        to: datetime,
        *,
        user_id: str | None = None,
        conversation_id: str | None = None,
        chunk: int = 5_000,
    ) -> AsyncIterator[dict[str, Any]]:
        """The raw rows in ``[from_, to)``, oldest first, as dicts keyed by ``EXPORT_COLUMNS``.

        Read ``chunk`` rows per query (keyset on (at, id)), so a day's worth streams without holding it.
        """
        r = REQUEST_LOG.c
        where = [r.at >= from_, r.at < to]
        if user_id is not None:
            where.append(r.user_id == user_id)
        if conversation_id is not None:
            where.append(r.conversation_id == conversation_id)
        after: tuple[datetime, int] | None = None
        while True:
            stmt = select(REQUEST_LOG).where(*where).order_by(r.at, r.id).limit(chunk)
            if after is not None:
                stmt = stmt.where(or_(r.at > after[0], and_(r.at == after[0], r.id > after[1])))
            async with self._engine.connect() as conn:
                rows = [dict(m) for m in (await conn.execute(stmt)).mappings()]
            for row in rows:
                yield row
            if len(rows) < chunk:
                return
            after = (rows[-1]["at"], rows[-1]["id"])

    async def purge(self, raw_before: datetime, rollups_before: datetime, *, chunk: int = 10_000) -> tuple[int, int]:
        """Delete raw rows older than ``raw_before`` and rollups of hours before ``rollups_before``.

        Raw rows go ``chunk`` at a time, one short transaction each (SQLite has one writer: the
        write-behind queue must not wait behind one long delete). Returns (raw rows, rollups) deleted.
        """
        r = REQUEST_LOG.c
        raw = 0
        while True:
            batch = select(r.id).where(r.at < raw_before).limit(chunk)
            async with self._engine.begin() as conn:
                deleted = (await conn.execute(delete(REQUEST_LOG).where(r.id.in_(batch)))).rowcount
            raw += deleted
            if deleted < chunk:
                break
        async with self._engine.begin() as conn:
            rollups = (await conn.execute(delete(USAGE_HOURLY).where(USAGE_HOURLY.c.hour < rollups_before))).rowcount
        return raw, rollups

    async def purge_expired(
        self, now: datetime, raw: timedelta = RAW_RETENTION, rollups: timedelta = ROLLUP_RETENTION
    ) -> tuple[int, int]:
        """``purge`` with cut-offs ``now - raw`` and ``now - rollups``."""
        return await self.purge(now - raw, now - rollups)
