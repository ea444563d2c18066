"""Write ops and how one batch of them is applied, in one transaction, in a dependency-safe order.

First the batch's id (``write_batches``): a batch already committed under it is skipped, whole. Then, in
order: users, conversations, (PostgreSQL: lock the touched conversation rows, in id order, so
concurrent instances serialise per conversation), messages, counters, briefs, key touches, analytics
(raw request rows, then their hourly rollups, one upsert per (hour, user, model, kind) in key order).
Each phase coalesces its ops and runs as one ``executemany``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Boolean, Dialect, Integer, Table, bindparam, case, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from chatgate.store.models import (
    API_KEYS,
    CONVERSATIONS,
    LATENCY_COLUMNS,
    MESSAGES,
    REQUEST_KINDS,
    REQUEST_LOG,
    ROLLUP_SUMS,
    USAGE_HOURLY,
    USERS,
    WRITE_BATCHES,
    UTCDateTime,
    latency_bucket,
)

BATCHES_KEPT = timedelta(days=1)

# The ops are treated as immutable; they are not frozen dataclasses, which cost on every construction.


@dataclass(slots=True)
class UpsertUser:
    id: str
    name: str | None
    email: str | None
    role: str | None
    source: str
    seen_at: datetime


@dataclass(slots=True)
class UpsertConversation:
    id: str
    user_id: str
    key: str
    source: str
    created_at: datetime
    title: str | None
    variables: dict[str, Any]


@dataclass(slots=True)
class AddMessage:
    conversation_id: str
    role: str
    content: Any
    dedupe_key: str
    tokens: int | None
    model: str | None
    client_message_id: str | None
    created_at: datetime


@dataclass(slots=True)
class CountRequest:
    """One request on a conversation: ``kind`` is standard, rag, research, multimodal or tool.

    An unknown ``kind`` still adds its tokens, but counts no request.
    """

    conversation_id: str
    kind: str
    tokens_in: int
    tokens_out: int
    rag_applied: bool
    at: datetime


@dataclass(slots=True)
class TouchKey:
    key_id: str
    at: datetime


@dataclass(slots=True)
class SetBrief:
    """A conversation's running brief (``context/``): the last one queued for a conversation wins."""

    conversation_id: str
    brief: str | None
    upto: int
    digest: str | None


@dataclass(slots=True)
class RecordRequest:
    """One request for analytics: a ``request_log`` row, and its share of the ``usage_hourly`` rollup.

    ``kind``: standard, rag, research, multimodal or tool. ``status``: the HTTP status sent (a stream
    that failed after its 200 keeps the 200 and carries an ``error_code``); an error is a status of 400
    or more, or an error code. ``latency_ms``: until the last byte; ``ttft_ms``: until the first token
    (streams), else None. Strings longer than their columns are cut.
    """

    at: datetime
    user_id: str
    conversation_id: str | None
    message_id: str | None
    model: str
    upstream: str | None
    kind: str
    status: int
    error_code: str | None
    tokens_in: int
    tokens_out: int
    cached: bool
    stream: bool
    latency_ms: int
    ttft_ms: int | None
    tool_steps: int = 0  # the tool loop's model answers (0: no loop)
    tool_calls: int = 0  # the server tool calls it ran
    usage_counted: bool = False  # the tokens were counted by the gateway, not reported by the upstream


WriteOp = UpsertUser | UpsertConversation | AddMessage | CountRequest | TouchKey | SetBrief | RecordRequest


def is_error(status: int, error_code: str | None) -> bool:
    return status >= 400 or error_code is not None


@dataclass(slots=True)
class _Activity:
    """Everything one batch does to one conversation's counters."""

    at: datetime
    tokens_in: int = 0
    tokens_out: int = 0
    new_messages: int = 0
    rag: bool = False
    kinds: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REQUEST_KINDS, 0))

    def seen(self, at: datetime) -> None:
        self.at = max(self.at, at)


def _insert(conn: AsyncConnection, table: Table) -> Any:
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


def _latest(column: Any, param: str) -> Any:
    """``max(column, :param)``, portably."""
    value = bindparam(param, type_=UTCDateTime())
    return case((column < value, value), else_=column)


async def apply(conn: AsyncConnection, ops: Iterable[WriteOp], batch_id: str | None = None) -> bool:
    """Apply ``ops`` in ``conn``'s transaction; False when the batch ``batch_id`` was applied already."""
    if batch_id is not None and not await _claim(conn, batch_id):
        return False
    users: dict[str, dict[str, Any]] = {}
    conversations: dict[str, dict[str, Any]] = {}
    messages: dict[tuple[str, str], dict[str, Any]] = {}
    activity: dict[str, _Activity] = {}
    touches: dict[str, datetime] = {}
    briefs: dict[str, SetBrief] = {}
    requests: list[RecordRequest] = []
    for op in ops:
        if isinstance(op, AddMessage):
            messages.setdefault((op.conversation_id, op.dedupe_key), _message_values(op))
            _touch(activity, op.conversation_id, op.created_at)
        elif isinstance(op, RecordRequest):
            requests.append(op)
        elif isinstance(op, CountRequest):
            a = _touch(activity, op.conversation_id, op.at)
            a.tokens_in += op.tokens_in
            a.tokens_out += op.tokens_out
            a.rag = a.rag or op.rag_applied
            if op.kind in a.kinds:
                a.kinds[op.kind] += 1
        elif isinstance(op, UpsertUser):
            _merge_user(users, op)
        elif isinstance(op, UpsertConversation):
            conversations.setdefault(op.id, _conversation_values(op))
        elif isinstance(op, TouchKey):
            touches[op.key_id] = max(op.at, touches.get(op.key_id, op.at))
        elif isinstance(op, SetBrief):
            briefs[op.conversation_id] = op
    if users:
        await _upsert_users(conn, [users[k] for k in sorted(users)])
    if conversations:
        stmt = _insert(conn, CONVERSATIONS).on_conflict_do_nothing()
        await conn.execute(stmt, [conversations[k] for k in sorted(conversations)])
    if (activity or briefs) and conn.dialect.name == "postgresql":
        c = CONVERSATIONS.c
        touched = sorted(activity.keys() | briefs.keys())
        await conn.execute(select(c.id).where(c.id.in_(touched)).order_by(c.id).with_for_update())
    if messages:
        # RETURNING names only the rows really inserted (duplicates are skipped): message_count grows by
        # exactly those, in the same transaction, instead of a recount that costs more as a conversation grows.
        stmt = _insert(conn, MESSAGES).on_conflict_do_nothing().returning(MESSAGES.c.conversation_id)
        for (cid,) in await conn.execute(stmt, list(messages.values())):
            activity[cid].new_messages += 1
    if activity:
        await _update_conversations(conn, activity)
    if briefs:
        c = CONVERSATIONS.c
        stmt = (
            update(CONVERSATIONS)
            .where(c.id == bindparam("b_id"))
            .values(brief=bindparam("b_brief"), brief_upto=bindparam("b_upto"), brief_digest=bindparam("b_digest"))
        )
        await conn.execute(
            stmt,
            [
                {"b_id": cid, "b_brief": op.brief, "b_upto": op.upto, "b_digest": op.digest}
                for cid, op in sorted(briefs.items())
            ],
        )
    if touches:
        k = API_KEYS.c
        when = bindparam("b_at", type_=UTCDateTime())
        stmt = (
            update(API_KEYS)
            .where(k.id == bindparam("b_id"), or_(k.last_used_at.is_(None), k.last_used_at < when))
            .values(last_used_at=when)
        )
        await conn.execute(stmt, [{"b_id": key, "b_at": touches[key]} for key in sorted(touches)])
    if requests:
        await _record_requests(conn, requests)
    return True


async def _claim(conn: AsyncConnection, batch_id: str) -> bool:
    """Record the batch's id; False if it is there already. Ids older than a day go now and then."""
    now = datetime.now(UTC)
    stmt = _insert(conn, WRITE_BATCHES).on_conflict_do_nothing().returning(WRITE_BATCHES.c.id)
    claimed = (await conn.execute(stmt, {"id": batch_id, "at": now})).first() is not None
    if claimed and batch_id.endswith("00"):  # one batch in 256 (ids end in a hex counter)
        await conn.execute(WRITE_BATCHES.delete().where(WRITE_BATCHES.c.at < now - BATCHES_KEPT))
    return claimed


def _touch(activity: dict[str, _Activity], conversation_id: str, at: datetime) -> _Activity:
    a = activity.get(conversation_id)
    if a is None:
        a = activity[conversation_id] = _Activity(at=at)
    else:
        a.seen(at)
    return a


def _merge_user(users: dict[str, dict[str, Any]], op: UpsertUser) -> None:
    row = users.get(op.id)
    if row is None:
        users[op.id] = {
            "id": op.id,
            "name": op.name,
            "email": op.email,
            "role": op.role,
            "source": op.source,
            "disabled": False,
            "created_at": op.seen_at,
            "last_seen_at": op.seen_at,
        }
        return
    for name in ("name", "email", "role"):
        if (value := getattr(op, name)) is not None:
            row[name] = value
    row["last_seen_at"] = max(row["last_seen_at"], op.seen_at)


async def _upsert_users(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    stmt = _insert(conn, USERS)
    new, u = stmt.excluded, USERS.c
    stmt = stmt.on_conflict_do_update(
        index_elements=[u.id],
        set_={
            "name": func.coalesce(new.name, u.name),
            "email": func.coalesce(new.email, u.email),
            "role": func.coalesce(new.role, u.role),
            "last_seen_at": case((new.last_seen_at > u.last_seen_at, new.last_seen_at), else_=u.last_seen_at),
        },
    )
    await conn.execute(stmt, rows)


def _conversation_values(op: UpsertConversation) -> dict[str, Any]:
    return {
        "id": op.id,
        "user_id": op.user_id,
        "key": op.key,
        "source": op.source,
        "title": op.title,
        "created_at": op.created_at,
        "last_activity_at": op.created_at,
        "variables": op.variables,
    }


def _message_values(op: AddMessage) -> dict[str, Any]:
    return {
        "conversation_id": op.conversation_id,
        "role": op.role,
        "content": op.content,
        "tokens": op.tokens,
        "model": op.model,
        "client_message_id": op.client_message_id,
        "dedupe_key": op.dedupe_key,
        "created_at": op.created_at,
    }


async def _update_conversations(conn: AsyncConnection, activity: dict[str, _Activity]) -> None:
    """Add counters and the messages this batch inserted; keep the latest activity time."""
    c = CONVERSATIONS.c
    counts = {
        f"request_{kind}": getattr(c, f"request_{kind}") + bindparam(f"b_n_{kind}", type_=Integer())
        for kind in REQUEST_KINDS
    }
    stmt = (
        update(CONVERSATIONS)
        .where(c.id == bindparam("b_id"))
        .values(
            tokens_in=c.tokens_in + bindparam("b_tokens_in", type_=Integer()),
            tokens_out=c.tokens_out + bindparam("b_tokens_out", type_=Integer()),
            rag_applied=or_(c.rag_applied, bindparam("b_rag", type_=Boolean())),
            last_activity_at=_latest(c.last_activity_at, "b_at"),
            message_count=c.message_count + bindparam("b_new", type_=Integer()),
            **counts,
        )
    )
    params = [
        {
            "b_id": cid,
            "b_tokens_in": a.tokens_in,
            "b_tokens_out": a.tokens_out,
            "b_new": a.new_messages,
            "b_rag": a.rag,
            "b_at": a.at,
            **{f"b_n_{kind}": n for kind, n in a.kinds.items()},
        }
        for cid, a in sorted(activity.items())
    ]
    await conn.execute(stmt, params)


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


_FIRST_BUCKET = ROLLUP_SUMS.index(LATENCY_COLUMNS[0])


_LOG_COLUMNS = (
    "at",
    "user_id",
    "conversation_id",
    "message_id",
    "model",
    "upstream",
    "kind",
    "status",
    "error_code",
    "tokens_in",
    "tokens_out",
    "cached",
    "stream",
    "latency_ms",
    "ttft_ms",
    "tool_steps",
    "tool_calls",
    "usage_counted",
)
_ROLLUP_COLUMNS = ("hour", "user_id", "model", "kind", *ROLLUP_SUMS)


@dataclass(frozen=True, slots=True)
class _Statement:
    """A statement compiled once for a dialect, run as the driver's own ``executemany`` over plain tuples:
    SQLAlchemy's per-row parameter handling cost more CPU than the database's work (~25 µs a row, on the
    event loop's thread). Values get the columns' own bind processing, so rows are stored as ``execute`` would."""

    sql: str
    processors: tuple[Any, ...]  # per column: the type's bind processor, or None

    def rows(self, rows: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        if not any(self.processors):
            return list(rows)
        procs = self.processors
        return [tuple(v if f is None or v is None else f(v) for f, v in zip(procs, row, strict=True)) for row in rows]


@functools.cache
def _compiled(dialect: Dialect, which: str) -> _Statement:
    columns: tuple[str, ...]
    if which == "request_log":
        table, columns = REQUEST_LOG, _LOG_COLUMNS
        stmt: Any = insert(table).values({c: bindparam(c) for c in columns})
    else:
        table, columns = USAGE_HOURLY, _ROLLUP_COLUMNS
        stmt = (postgresql.insert if dialect.name == "postgresql" else sqlite.insert)(table)
        stmt = stmt.values({c: bindparam(c) for c in columns})
        new, u = stmt.excluded, table.c
        stmt = stmt.on_conflict_do_update(
            index_elements=[u.hour, u.user_id, u.model, u.kind], set_={n: u[n] + new[n] for n in ROLLUP_SUMS}
        )
    compiled = stmt.compile(dialect=dialect)
    order = compiled.positiontup
    assert order is not None and tuple(order) == columns, (order, columns)  # positional, in our order
    processors = tuple(table.c[c].type.dialect_impl(dialect).bind_processor(dialect) for c in columns)
    return _Statement(compiled.string, processors)


async def _executemany(conn: AsyncConnection, which: str, rows: list[tuple[Any, ...]]) -> None:
    statement = _compiled(conn.dialect, which)
    await conn.exec_driver_sql(statement.sql, statement.rows(rows))


async def _record_requests(conn: AsyncConnection, ops: list[RecordRequest]) -> None:
    """Insert the raw rows; add them to their hourly rollups (aggregated here: one upsert per key)."""
    rows = []
    rollups: dict[tuple[datetime, str, str, str], list[int]] = {}
    for op in ops:
        at = _utc(op.at)
        user_id, model, kind = op.user_id[:255], op.model[:255], op.kind[:16]
        error = is_error(op.status, op.error_code)
        rows.append(
            (
                at,
                user_id,
                op.conversation_id[:64] if op.conversation_id is not None else None,
                op.message_id[:255] if op.message_id is not None else None,
                model,
                op.upstream[:255] if op.upstream is not None else None,
                kind,
                op.status,
                op.error_code[:64] if op.error_code is not None else None,
                op.tokens_in,
                op.tokens_out,
                op.cached,
                op.stream,
                op.latency_ms,
                op.ttft_ms,
                op.tool_steps,
                op.tool_calls,
                op.usage_counted,
            )
        )
        key = (at.replace(minute=0, second=0, microsecond=0), user_id, model, kind)
        r = rollups.get(key)
        if r is None:
            r = rollups[key] = [0] * len(ROLLUP_SUMS)
        # ROLLUP_SUMS: requests, errors, cached, streams, ttft_count, tokens_in, tokens_out, latency_ms_sum,
        # ttft_ms_sum, then the histogram.
        r[0] += 1
        r[1] += error
        r[2] += op.cached
        r[3] += op.stream
        r[5] += op.tokens_in
        r[6] += op.tokens_out
        r[7] += op.latency_ms
        if op.ttft_ms is not None:
            r[4] += 1
            r[8] += op.ttft_ms
        r[_FIRST_BUCKET + latency_bucket(op.latency_ms)] += 1
    await _executemany(conn, "request_log", rows)
    await _executemany(conn, "usage_hourly", [(*key, *sums) for key, sums in sorted(rollups.items())])
