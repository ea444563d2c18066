from __future__ import annotations

import asyncio
import logging

import pytest

from chatgate.store import AddMessage, CountRequest, Store, UpsertUser, WriteBehind, migrate

from .conftest import at, eventually, seed

SECRET = "do-not-log-this-content"


def msg(cid: str, key: str, content: object = "hello") -> AddMessage:
    return AddMessage(cid, "user", content, key, 1, None, None, at(1))


async def _rows(store: Store) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.exec_driver_sql("SELECT count(*) FROM messages")).scalar_one())


async def test_concurrent_producers_exact_counts(store: Store, wb: WriteBehind) -> None:
    (cid,) = seed(wb, "u1", "chat")

    async def producer(i: int) -> None:
        for attempt in range(3):  # a client retrying: the same message three times, across batches
            assert wb.put(msg(cid, f"m{i}"))
            assert wb.put(CountRequest(cid, ("standard", "rag", "tool")[i % 3], 10, 1, i == 7, at(i)))
            await asyncio.sleep(0.001 * attempt)

    await asyncio.gather(*(producer(i) for i in range(100)))
    await wb.flush()
    row = await store.conversations.get(cid)
    assert row is not None
    assert await _rows(store) == 100 and row.message_count == 100
    assert (row.tokens_in, row.tokens_out, row.rag_applied) == (3000, 300, True)
    assert row.request_counts == {"standard": 102, "rag": 99, "research": 0, "multimodal": 0, "tool": 99, "task": 0}
    assert row.last_activity_at == at(99)
    assert wb.failures == 0 and wb.drops == 0 and wb.depth == 0


async def test_two_instances_on_one_database(db_url: str) -> None:
    """Two processes' worth of stores and queues writing the same conversation at once."""
    stores = [await Store.open(db_url), await Store.open(db_url)]
    queues = [WriteBehind(s, batch_size=50, flush_interval=0.001, retry_base=0.01) for s in stores]
    for q in queues:
        seed(q, "u1", "chat")  # both create the same user and conversation
        await q.start()
    for i in range(400):
        for q in queues:  # both record every message (the same dedupe keys) and every request
            q.put(msg("c-u1-chat", f"m{i}"))
            q.put(CountRequest("c-u1-chat", "standard", 1, 2, False, at(i)))
        if i % 50 == 0:
            await asyncio.sleep(0)
    await asyncio.gather(*(q.close() for q in queues))
    row = await stores[0].conversations.get("c-u1-chat")
    assert row is not None
    assert await _rows(stores[0]) == 400 and row.message_count == 400
    assert (row.tokens_in, row.tokens_out, row.request_counts["standard"]) == (800, 1600, 800)
    assert sum(q.lost + q.rejected for q in queues) == 0
    for s in stores:
        await s.close()


async def test_close_drains_a_large_queue(store: Store) -> None:
    wb = WriteBehind(store, flush_interval=0.01)
    await wb.start()
    cids = seed(wb, "u1", *(f"chat{i}" for i in range(20)))
    accepted = sum(wb.put(msg(cids[i % 20], f"m{i}")) for i in range(20_000))
    await wb.close()
    assert accepted == 20_000 and wb.depth == 0
    assert await _rows(store) == accepted
    assert wb.written == accepted + 21 and wb.failures == 0
    assert not wb.put(msg(cids[0], "late")) and wb.drops == 1  # closed: refused and counted


async def test_close_without_start_drains(store: Store) -> None:
    wb = WriteBehind(store)
    (cid,) = seed(wb, "u1", "chat")
    wb.put(msg(cid, "m1"))
    await wb.close()
    assert await _rows(store) == 1


async def test_put_beyond_max_size_drops(store: Store) -> None:
    wb = WriteBehind(store, max_size=100)  # not started: nothing drains
    (cid,) = seed(wb, "u1", "chat")
    results = [wb.put(msg(cid, f"m{i}")) for i in range(150)]
    assert results.count(True) == 98 and results.count(False) == 52
    assert wb.depth == 100 and wb.drops == 52
    await wb.close()
    assert await _rows(store) == 98


async def test_a_rejected_op_does_not_sink_its_batch(
    store: Store, wb: WriteBehind, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="chatgate.store")
    (cid,) = seed(wb, "u1", "chat")
    await wb.flush()
    wb.put(msg(cid, "m1"))
    wb.put(msg("no-such-conversation", "m2", content=SECRET))  # a foreign key violation
    wb.put(msg(cid, "m3"))
    await wb.flush()
    assert wb.failures >= 1 and wb.rejected == 1 and wb.lost == 0
    assert [m.dedupe_key for m in await store.messages.list(cid)] == ["m1", "m3"]
    assert "IntegrityError" in caplog.text and SECRET not in caplog.text and "no-such-conversation" not in caplog.text

    wb.put(msg(cid, "m4"))  # the flusher lives on

    async def written() -> bool:
        return await store.messages.count(cid) == 3

    await eventually(written)


async def test_retries_until_the_database_is_back(db_url: str) -> None:
    store = await Store.open(db_url, migrate=False)  # no tables yet: every write fails
    wb = WriteBehind(store, flush_interval=0.01, retry_base=0.2, max_retries=5)
    await wb.start()
    (cid,) = seed(wb, "u1", "chat")
    wb.put(msg(cid, "m1"))

    async def failed() -> bool:
        return wb.failures > 0

    await eventually(failed)
    assert wb.written == 0
    await migrate(db_url)  # the database comes back while the batch waits to retry
    await wb.close()
    assert wb.lost == 0 and wb.written == 3
    assert await store.messages.count(cid) == 1
    await store.close()


async def test_unreachable_database_gives_up_and_close_does_not_hang() -> None:
    store = await Store.open("postgresql+asyncpg://postgres@127.0.0.1:1/none", migrate=False)
    wb = WriteBehind(store, batch_size=100, flush_interval=0.01, retry_base=0.01, max_retries=2)
    await wb.start()
    for i in range(1000):
        wb.put(UpsertUser(f"u{i}", None, None, None, "test", at(0)))
    await wb.close()  # returns (pytest's timeout would catch a hang) having given every op up
    assert wb.written == 0 and wb.lost == 1000 and wb.failures >= 3 and wb.depth == 0
    await store.close()


async def test_a_commit_does_not_wait_for_a_batch_being_gathered(store: Store) -> None:
    wb = WriteBehind(store, flush_interval=3600)  # a batch gathered for an hour
    await wb.start()
    try:
        (cid,) = seed(wb, "u1", "chat")
        assert wb.put(msg(cid, "behind"))  # the flusher starts gathering
        await asyncio.sleep(0)
        await asyncio.wait_for(wb.commit([msg(cid, "acknowledged")]), 30)  # committed now, with what was queued
        assert await _rows(store) == 2 and wb.depth == 0
    finally:
        await wb.close()
