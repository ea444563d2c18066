"""The running brief's columns: written by the write-behind queue, read back, and the 0002 migration
up and down with data in place, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from chatgate.store import AddMessage, SetBrief, Store, WriteBehind
from chatgate.store.db import alembic_config, create_engine, migrate

from .conftest import T0, seed


async def test_set_brief_last_one_wins_and_reads_back(store: Store, wb: WriteBehind) -> None:
    (cid,) = seed(wb, "u:1", "chat")
    await wb.flush()
    row = await store.conversations.get(cid)
    assert row is not None and (row.brief, row.brief_upto, row.brief_digest) == (None, 0, None)
    wb.put(SetBrief(conversation_id=cid, brief="- first", upto=4, digest="a" * 64))
    wb.put(SetBrief(conversation_id=cid, brief="- first\n- second", upto=8, digest="b" * 64))
    await wb.flush()
    row = await store.conversations.get(cid)
    assert row is not None and (row.brief, row.brief_upto, row.brief_digest) == ("- first\n- second", 8, "b" * 64)
    wb.put(SetBrief(conversation_id=cid, brief=None, upto=0, digest=None))
    await wb.flush()
    row = await store.conversations.get(cid)
    assert row is not None and (row.brief, row.brief_upto) == (None, 0)
    assert wb.written >= 4 and wb.lost == 0


async def test_a_brief_in_the_same_batch_as_its_conversation(store: Store, wb: WriteBehind) -> None:
    (cid,) = seed(wb, "u:2", "chat")
    wb.put(SetBrief(conversation_id=cid, brief="x" * 20_000, upto=2, digest="c" * 64))
    wb.put(SetBrief(conversation_id="no-such-conversation", brief="y", upto=2, digest="d" * 64))
    await wb.flush()
    row = await store.conversations.get(cid)
    assert row is not None and row.brief == "x" * 20_000 and row.brief_upto == 2
    assert await store.conversations.get("no-such-conversation") is None


def _columns(conn: Connection) -> set[str]:
    return {c["name"] for c in inspect(conn).get_columns("conversations")}


def _downgrade(conn: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    command.downgrade(cfg, "0001")


async def test_migration_0002_down_and_up_keeps_conversations_and_messages(db_url: str) -> None:
    store = await Store.open(db_url)
    wb = WriteBehind(store, flush_interval=0.01)
    await wb.start()
    (cid,) = seed(wb, "u:3", "chat")
    wb.put(
        AddMessage(
            conversation_id=cid,
            role="user",
            content="hello",
            dedupe_key="k1",
            tokens=None,
            model=None,
            client_message_id=None,
            created_at=T0,
        )
    )
    wb.put(SetBrief(conversation_id=cid, brief="- hello", upto=1, digest="e" * 64))
    await wb.close()
    await store.close()

    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            assert {"brief", "brief_upto", "brief_digest"} <= await conn.run_sync(_columns)
            await conn.run_sync(_downgrade)
        async with engine.connect() as conn:
            assert not {"brief", "brief_upto", "brief_digest"} & await conn.run_sync(_columns)
            version = (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).scalar_one()
            assert version == "0001"
            assert (await conn.exec_driver_sql("SELECT count(*) FROM messages")).scalar_one() == 1
    finally:
        await engine.dispose()

    await migrate(db_url)  # and up again: old rows get the defaults
    store = await Store.open(db_url)
    try:
        row = await store.conversations.get(cid)
        assert row is not None and (row.brief, row.brief_upto, row.brief_digest) == (None, 0, None)
        assert row.message_count == 1 and await store.messages.count(cid) == 1
    finally:
        await store.close()
