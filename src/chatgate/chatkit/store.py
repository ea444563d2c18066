"""ChatKit's ``Store`` on chatgate's SQL store (tables of migration 0011), SQLite or PostgreSQL.

Every query names the caller's user id, and every key starts with it: another user's thread, item or
attachment is simply not found, and an item's foreign key (user_id, thread_id) makes a write into another
user's thread fail in the database itself. Writes are direct (not behind the write queue): ChatKit reads an
item straight after writing it. Ids are ours, 128 random bits; times are UTC with their zone.

Paging follows ChatKit's contract: ``after`` is the id of the last object of the previous page (a cursor on
the order objects were first stored in), ``has_more`` says whether another page follows, in both orders.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from chatkit.store import AttachmentStore, NotFoundError, Store, StoreItemType
from chatkit.types import Attachment, Page, Thread, ThreadItem, ThreadMetadata
from pydantic import TypeAdapter
from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chatgate.store.models import CHATKIT_ATTACHMENTS, CHATKIT_ITEMS, CHATKIT_THREADS
from chatgate.store.writebehind import StoreUnavailable

PREFIXES: dict[str, str] = {
    "thread": "thr",
    "message": "msg",
    "tool_call": "tc",
    "workflow": "wf",
    "task": "tsk",
    "attachment": "atc",
    "sdk_hidden_context": "shcx",
}
ITEM = TypeAdapter[ThreadItem](ThreadItem)
ATTACHMENT = TypeAdapter[Attachment](Attachment)


@dataclass(slots=True)
class Owner:
    """Whose data a store call touches: the caller's user id, from their credential (never the request body)."""

    user_id: str


def new_id(kind: str) -> str:
    return f"{PREFIXES.get(kind, kind)}_{secrets.token_hex(16)}"


def utc(value: datetime) -> datetime:
    """ChatKit makes naive local times (``datetime.now()``): the same instant, in UTC with its zone."""
    return value.astimezone(UTC)


class Clock:
    """Insertion order across processes: nanoseconds, strictly increasing within this one."""

    def __init__(self) -> None:
        self.last = 0

    def __call__(self) -> int:
        self.last = max(time.time_ns(), self.last + 1)
        return self.last


class SqlStore(Store[Owner], AttachmentStore[Owner]):
    """Threads, items and attachment records. ``AttachmentStore``'s half (two-phase upload) is
    ``chatkit/attachments.py``'s, which extends this."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.seq = Clock()
        # (thread id, its attachments' ids, owner), awaited once a thread is deleted: files, its conversation
        self.deleted: Callable[[str, list[str], Owner], Awaitable[None]] | None = None

    # ---- ids ------------------------------------------------------------------------------------------

    def generate_thread_id(self, context: Owner) -> str:
        return new_id("thread")

    def generate_item_id(self, item_type: StoreItemType, thread: ThreadMetadata, context: Owner) -> str:
        return new_id(item_type)

    def generate_attachment_id(self, mime_type: str, context: Owner) -> str:
        return new_id("attachment")

    # ---- plumbing -------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncConnection]:
        """One transaction; the database unreachable or failing is ``StoreUnavailable`` (503), never a 500."""
        try:
            async with self.engine.begin() as conn:
                yield conn
        except IntegrityError:
            raise
        except (DBAPIError, OSError, TimeoutError) as exc:
            raise StoreUnavailable("The thread store is unavailable; try again.", retry_after=1.0) from exc

    def _upsert(self, table: Any, values: dict[str, Any], keys: Sequence[str], keep: Sequence[str]) -> Any:
        insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        stmt = insert(table).values(**values)
        changed = {k: v for k, v in values.items() if k not in keys and k not in keep}
        return stmt.on_conflict_do_update(index_elements=list(keys), set_=changed)

    # ---- threads --------------------------------------------------------------------------------------

    async def load_thread(self, thread_id: str, context: Owner) -> ThreadMetadata:
        async with self._tx() as conn:
            data = await conn.scalar(
                select(CHATKIT_THREADS.c.data).where(
                    CHATKIT_THREADS.c.user_id == context.user_id, CHATKIT_THREADS.c.id == thread_id
                )
            )
        if data is None:
            raise NotFoundError(f"Thread {thread_id} not found")
        return ThreadMetadata.model_validate_json(data)

    async def save_thread(self, thread: ThreadMetadata, context: Owner) -> None:
        """Upsert the metadata; a ``Thread`` that still carries items is stored without them."""
        created = utc(thread.created_at)
        fields = thread.model_dump(exclude={"items"}) if isinstance(thread, Thread) else thread.model_dump()
        meta = ThreadMetadata.model_validate({**fields, "created_at": created})
        values = {
            "user_id": context.user_id,
            "id": thread.id,
            "seq": self.seq(),
            "created_at": created,
            "data": meta.model_dump_json(),
        }
        async with self._tx() as conn:
            await conn.execute(self._upsert(CHATKIT_THREADS, values, ("user_id", "id"), ("seq", "created_at")))

    async def load_threads(self, limit: int, after: str | None, order: str, context: Owner) -> Page[ThreadMetadata]:
        t = CHATKIT_THREADS.c
        async with self._tx() as conn:
            rows = await _page(conn, CHATKIT_THREADS, (t.user_id == context.user_id,), after, limit, order)
        return _paged([ThreadMetadata.model_validate_json(r.data) for r in rows], limit)

    async def delete_thread(self, thread_id: str, context: Owner) -> None:
        """The thread, its items and its attachment records (the foreign keys cascade)."""
        t, a = CHATKIT_THREADS.c, CHATKIT_ATTACHMENTS.c
        async with self._tx() as conn:
            attached = list(
                await conn.scalars(select(a.id).where(a.user_id == context.user_id, a.thread_id == thread_id))
            )
            done = await conn.execute(delete(CHATKIT_THREADS).where(t.user_id == context.user_id, t.id == thread_id))
        if not done.rowcount:
            raise NotFoundError(f"Thread {thread_id} not found")
        if self.deleted is not None:
            await self.deleted(thread_id, attached, context)

    # ---- items ----------------------------------------------------------------------------------------

    async def load_thread_items(
        self, thread_id: str, after: str | None, limit: int, order: str, context: Owner
    ) -> Page[ThreadItem]:
        i = CHATKIT_ITEMS.c
        async with self._tx() as conn:
            await self._own_thread(conn, thread_id, context)
            where = (i.user_id == context.user_id, i.thread_id == thread_id)
            rows = await _page(conn, CHATKIT_ITEMS, where, after, limit, order)
        return _paged([ITEM.validate_json(r.data) for r in rows], limit)

    async def add_thread_item(self, thread_id: str, item: ThreadItem, context: Owner) -> None:
        await self.save_item(thread_id, item, context)

    async def save_item(self, thread_id: str, item: ThreadItem, context: Owner, *, cut_off: bool = False) -> None:
        """Upsert by id; the item keeps its place (its first ``seq``). A thread that is not the caller's is
        not found (the composite foreign key refuses the row)."""
        item.created_at = utc(item.created_at)
        values = {
            "user_id": context.user_id,
            "thread_id": thread_id,
            "id": item.id,
            "seq": self.seq(),
            "type": item.type,
            "created_at": item.created_at,
            "cut_off": cut_off,
            "data": item.model_dump_json(),
        }
        try:
            async with self._tx() as conn:
                await conn.execute(self._upsert(CHATKIT_ITEMS, values, ("user_id", "thread_id", "id"), ("seq",)))
        except IntegrityError:
            raise NotFoundError(f"Thread {thread_id} not found") from None

    async def load_item(self, thread_id: str, item_id: str, context: Owner) -> ThreadItem:
        i = CHATKIT_ITEMS.c
        async with self._tx() as conn:
            data = await conn.scalar(
                select(i.data).where(i.user_id == context.user_id, i.thread_id == thread_id, i.id == item_id)
            )
        if data is None:
            raise NotFoundError(f"Item {item_id} not found")
        return ITEM.validate_json(data)

    async def delete_thread_item(self, thread_id: str, item_id: str, context: Owner) -> None:
        i = CHATKIT_ITEMS.c
        async with self._tx() as conn:
            done = await conn.execute(
                delete(CHATKIT_ITEMS).where(i.user_id == context.user_id, i.thread_id == thread_id, i.id == item_id)
            )
        if not done.rowcount:
            raise NotFoundError(f"Item {item_id} not found")

    async def cut_off(self, thread_id: str, item_ids: list[str], context: Owner) -> None:
        """Mark items a cancelled stream left unfinished."""
        if not item_ids:
            return
        i = CHATKIT_ITEMS.c
        async with self._tx() as conn:
            await conn.execute(
                update(CHATKIT_ITEMS)
                .where(i.user_id == context.user_id, i.thread_id == thread_id, i.id.in_(item_ids))
                .values(cut_off=True)
            )

    async def recent_items(self, thread_id: str, limit: int, context: Owner) -> tuple[list[ThreadItem], set[str]]:
        """The thread's last ``limit`` items, oldest first, and the ids of those a stopped stream cut off: the
        history a turn is built from, in one query (the thread was loaded by this request already)."""
        i = CHATKIT_ITEMS.c
        async with self._tx() as conn:
            query = (
                select(i.id, i.cut_off, i.data)
                .where(i.user_id == context.user_id, i.thread_id == thread_id)
                .order_by(i.seq.desc(), i.id.desc())
                .limit(limit)
            )
            rows = list((await conn.execute(query)).all())
        rows.reverse()
        return [ITEM.validate_json(r.data) for r in rows], {r.id for r in rows if r.cut_off}

    # ---- attachments ----------------------------------------------------------------------------------

    async def save_attachment(self, attachment: Attachment, context: Owner) -> None:
        """Upsert the record (ChatKit saves it again with its thread id once a message carries it)."""
        a = CHATKIT_ATTACHMENTS.c
        async with self._tx() as conn:
            row = (await conn.execute(select(a.id).where(a.user_id == context.user_id, a.id == attachment.id))).first()
            data = attachment.model_dump_json()
            if row is None:
                await conn.execute(
                    CHATKIT_ATTACHMENTS.insert().values(
                        user_id=context.user_id,
                        id=attachment.id,
                        thread_id=attachment.thread_id,
                        kind=attachment.type,
                        mime_type=attachment.mime_type,
                        size=0,
                        created_at=datetime.now(UTC),
                        data=data,
                    )
                )
                return
            values: dict[str, Any] = {"data": data}
            if attachment.thread_id is not None:
                values["thread_id"] = attachment.thread_id
            try:
                await conn.execute(
                    update(CHATKIT_ATTACHMENTS)
                    .where(a.user_id == context.user_id, a.id == attachment.id)
                    .values(**values)
                )
            except IntegrityError:
                raise NotFoundError(f"Thread {attachment.thread_id} not found") from None

    async def load_attachment(self, attachment_id: str, context: Owner) -> Attachment:
        a = CHATKIT_ATTACHMENTS.c
        async with self._tx() as conn:
            data = await conn.scalar(select(a.data).where(a.user_id == context.user_id, a.id == attachment_id))
        if data is None:
            raise NotFoundError(f"Attachment {attachment_id} not found")
        return ATTACHMENT.validate_json(data)

    async def delete_attachment(self, attachment_id: str, context: Owner) -> None:
        a = CHATKIT_ATTACHMENTS.c
        async with self._tx() as conn:
            await conn.execute(delete(CHATKIT_ATTACHMENTS).where(a.user_id == context.user_id, a.id == attachment_id))

    async def attachment_row(self, attachment_id: str, context: Owner) -> Any:
        a = CHATKIT_ATTACHMENTS.c
        async with self._tx() as conn:
            row = (
                await conn.execute(
                    select(CHATKIT_ATTACHMENTS).where(a.user_id == context.user_id, a.id == attachment_id)
                )
            ).first()
        if row is None:
            raise NotFoundError(f"Attachment {attachment_id} not found")
        return row

    async def set_attachment(self, attachment_id: str, context: Owner, **values: Any) -> None:
        a = CHATKIT_ATTACHMENTS.c
        async with self._tx() as conn:
            await conn.execute(
                update(CHATKIT_ATTACHMENTS).where(a.user_id == context.user_id, a.id == attachment_id).values(**values)
            )

    async def thread_attachments(self, thread_id: str, context: Owner) -> list[Any]:
        a = CHATKIT_ATTACHMENTS.c
        async with self._tx() as conn:
            return list(
                (
                    await conn.execute(
                        select(CHATKIT_ATTACHMENTS).where(a.user_id == context.user_id, a.thread_id == thread_id)
                    )
                ).all()
            )

    async def _own_thread(self, conn: AsyncConnection, thread_id: str, context: Owner) -> None:
        t = CHATKIT_THREADS.c
        found = await conn.scalar(select(func.count()).where(t.user_id == context.user_id, t.id == thread_id))
        if not found:
            raise NotFoundError(f"Thread {thread_id} not found")


async def _page(
    conn: AsyncConnection, table: Any, where: tuple[Any, ...], after: str | None, limit: int, order: str
) -> list[Any]:
    """Up to ``limit + 1`` rows after the cursor, in (seq, id) order (``desc``: newest first)."""
    c = table.c
    query = select(c.id, c.seq, c.data).where(*where)
    if after is not None:
        cursor = (await conn.execute(select(c.seq).where(*where, c.id == after))).first()
        if cursor is None:
            raise NotFoundError(f"No such cursor {after}")
        seq = cursor.seq
        if order == "desc":
            query = query.where(or_(c.seq < seq, and_(c.seq == seq, c.id < after)))
        else:
            query = query.where(or_(c.seq > seq, and_(c.seq == seq, c.id > after)))
    ordering = (c.seq.desc(), c.id.desc()) if order == "desc" else (c.seq.asc(), c.id.asc())
    return list((await conn.execute(query.order_by(*ordering).limit(max(limit, 0) + 1))).all())


def _paged(data: list[Any], limit: int) -> Page[Any]:
    has_more = len(data) > limit
    data = data[:limit]
    return Page(data=data, has_more=has_more, after=data[-1].id if data else None)


Order = Literal["asc", "desc"]


async def set_feedback(store: SqlStore, thread_id: str, item_ids: list[str], kind: str, context: Owner) -> int:
    """``items.feedback``: the kind on each of the caller's items named; how many there were."""
    i = CHATKIT_ITEMS.c
    async with store._tx() as conn:
        done = await conn.execute(
            update(CHATKIT_ITEMS)
            .where(i.user_id == context.user_id, i.thread_id == thread_id, i.id.in_(item_ids))
            .values(feedback=kind)
        )
    return int(done.rowcount or 0)
