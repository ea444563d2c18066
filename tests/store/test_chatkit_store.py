"""The ChatKit ``Store`` contract (``chatkit/store.py``), one test body run on SQLite and on PostgreSQL: paging with
``after`` in both orders and ``has_more``; upserts (``save_thread`` given a thread that still carries items); deletes
that cascade; not-found errors; user isolation down to the database's keys; our ids and UTC times."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from chatkit.store import NotFoundError
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageItem,
    FileAttachment,
    InferenceOptions,
    Page,
    Thread,
    ThreadMetadata,
    UserMessageItem,
    UserMessageTextContent,
)
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from chatgate.chatkit.store import Owner, SqlStore
from chatgate.store import Store
from chatgate.store.models import CHATKIT_ATTACHMENTS, CHATKIT_ITEMS

ALICE, BOB = Owner("alice"), Owner("bob")


def thread(store: SqlStore, title: str | None = None) -> ThreadMetadata:
    return ThreadMetadata(id=store.generate_thread_id(ALICE), created_at=datetime.now(), title=title)


def message(store: SqlStore, t: ThreadMetadata, text: str) -> UserMessageItem:
    return UserMessageItem(
        id=store.generate_item_id("message", t, ALICE),
        thread_id=t.id,
        created_at=datetime.now(),  # naive, as ChatKit makes them
        content=[UserMessageTextContent(text=text)],
        inference_options=InferenceOptions(),
    )


def reply(store: SqlStore, t: ThreadMetadata, text: str) -> AssistantMessageItem:
    return AssistantMessageItem(
        id=store.generate_item_id("message", t, ALICE),
        thread_id=t.id,
        created_at=datetime.now(UTC),
        content=[AssistantMessageContent(text=text)],
    )


def texts(page: Page) -> list[str]:  # type: ignore[type-arg]
    return [item.content[0].text for item in page.data]


async def all_pages(store: SqlStore, thread_id: str, order: str, limit: int) -> list[str]:
    out: list[str] = []
    after = None
    while True:
        page = await store.load_thread_items(thread_id, after, limit, order, ALICE)
        out += texts(page)
        if not page.has_more:
            return out
        assert page.after == page.data[-1].id
        after = page.after


async def test_store_contract(store: Store) -> None:
    ck = SqlStore(store.engine)
    t = thread(ck)
    assert t.id.startswith("thr_") and len(t.id) == 4 + 32  # 128 random bits, never ChatKit's 32
    await ck.save_thread(t, ALICE)
    loaded = await ck.load_thread(t.id, ALICE)
    assert (
        loaded.id == t.id
        and loaded.created_at.tzinfo is not None
        and loaded.created_at.utcoffset().total_seconds() == 0
    )

    # upsert: a Thread that still carries items is stored as metadata, and saved again it keeps its place
    items = [message(ck, t, f"m{n}") if n % 2 == 0 else reply(ck, t, f"m{n}") for n in range(7)]
    await ck.save_thread(Thread(**{**t.model_dump(), "title": "First"}, items=Page(data=items[:2])), ALICE)
    assert (await ck.load_thread(t.id, ALICE)).title == "First"
    for item in items:
        await ck.add_thread_item(t.id, item, ALICE)
    assert len({item.id for item in items}) == 7

    # paging, both orders, with after cursors and has_more
    assert await all_pages(ck, t.id, "asc", 3) == [f"m{n}" for n in range(7)]
    assert await all_pages(ck, t.id, "desc", 3) == [f"m{n}" for n in reversed(range(7))]
    first = await ck.load_thread_items(t.id, None, 7, "asc", ALICE)
    assert not first.has_more and len(first.data) == 7
    exact = await ck.load_thread_items(t.id, None, 6, "desc", ALICE)
    assert exact.has_more and texts(exact)[0] == "m6"
    assert (await ck.load_thread_items(t.id, items[-1].id, 5, "asc", ALICE)).data == []

    # save_item upserts by id and keeps the item's place; load_item reads it back
    edited = items[3].model_copy(update={"content": [AssistantMessageContent(text="m3 edited")]})
    await ck.save_item(t.id, edited, ALICE)
    assert (await all_pages(ck, t.id, "asc", 10))[3] == "m3 edited"
    assert (await ck.load_item(t.id, items[3].id, ALICE)).content[0].text == "m3 edited"  # type: ignore[union-attr]
    assert (await ck.load_item(t.id, items[0].id, ALICE)).created_at.tzinfo is not None

    # threads: paging both orders
    others = [thread(ck, f"t{n}") for n in range(4)]
    for other in others:
        await ck.save_thread(other, ALICE)
    asc = await ck.load_threads(2, None, "asc", ALICE)
    assert [x.id for x in asc.data] == [t.id, others[0].id] and asc.has_more
    rest = await ck.load_threads(10, asc.after, "asc", ALICE)
    assert [x.id for x in rest.data] == [o.id for o in others[1:]] and not rest.has_more
    desc = await ck.load_threads(4, None, "desc", ALICE)
    assert [x.id for x in desc.data] == [o.id for o in reversed(others)] and desc.has_more
    assert [x.id for x in (await ck.load_threads(4, desc.after, "desc", ALICE)).data] == [t.id]

    # another user: nothing is found, nothing can be written into the thread, not even past the code
    assert (await ck.load_threads(10, None, "desc", BOB)).data == []
    for call in (
        ck.load_thread(t.id, BOB),
        ck.load_thread_items(t.id, None, 10, "asc", BOB),
        ck.load_item(t.id, items[0].id, BOB),
        ck.delete_thread_item(t.id, items[0].id, BOB),
        ck.delete_thread(t.id, BOB),
        ck.add_thread_item(t.id, message(ck, t, "intruder"), BOB),
        ck.save_item(t.id, message(ck, t, "intruder"), BOB),
    ):
        with pytest.raises(NotFoundError):
            await call
    with pytest.raises(IntegrityError):  # the composite foreign key itself refuses the row
        async with store.engine.begin() as conn:
            await conn.execute(
                insert(CHATKIT_ITEMS).values(
                    user_id="bob",
                    thread_id=t.id,
                    id="msg_x",
                    seq=1,
                    type="user_message",
                    created_at=datetime.now(UTC),
                    data="{}",
                )
            )
    assert len(await all_pages(ck, t.id, "asc", 10)) == 7

    # attachments: upsert, isolation, thread id set later
    att = FileAttachment(id=ck.generate_attachment_id("text/plain", ALICE), name="a.txt", mime_type="text/plain")
    await ck.save_attachment(att, ALICE)
    await ck.save_attachment(att.model_copy(update={"thread_id": t.id}), ALICE)
    assert (await ck.load_attachment(att.id, ALICE)).thread_id == t.id
    with pytest.raises(NotFoundError):
        await ck.load_attachment(att.id, BOB)
    await ck.delete_attachment(att.id, BOB)  # not Bob's: nothing happens
    assert (await ck.load_attachment(att.id, ALICE)).name == "a.txt"

    # deletes: an item, then the thread with its items and attachment records
    await ck.delete_thread_item(t.id, items[0].id, ALICE)
    with pytest.raises(NotFoundError):
        await ck.load_item(t.id, items[0].id, ALICE)
    with pytest.raises(NotFoundError):
        await ck.delete_thread_item(t.id, items[0].id, ALICE)
    await ck.delete_thread(t.id, ALICE)
    for call in (
        ck.load_thread(t.id, ALICE),
        ck.load_thread_items(t.id, None, 10, "asc", ALICE),
        ck.load_attachment(att.id, ALICE),
    ):
        with pytest.raises(NotFoundError):
            await call
    async with store.engine.connect() as conn:
        assert (await conn.execute(select(CHATKIT_ITEMS).where(CHATKIT_ITEMS.c.thread_id == t.id))).all() == []
        assert (await conn.execute(select(CHATKIT_ATTACHMENTS))).all() == []
    with pytest.raises(NotFoundError):
        await ck.delete_thread(t.id, ALICE)
    with pytest.raises(NotFoundError):
        await ck.load_thread_items(others[0].id, "msg_nope", 10, "asc", ALICE)  # an unknown cursor
