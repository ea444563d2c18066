"""The BM25 postings on the real PostgreSQL: the same ranking and scores as on SQLite for the same chunks, and
every instance in step with every writer (a second engine is a second instance), through the change log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from chatgate.rag import postings_pg
from chatgate.rag.lexical import LexicalIndex
from chatgate.rag.lexical_fts5 import Fts5Search
from chatgate.rag.lexical_postings import PostingsSearch
from chatgate.rag.repo import new_claim, new_id
from chatgate.store import Store
from chatgate.store.models import RAG_CHUNKS, RAG_DOCUMENTS, utcnow
from tests.rag.conftest import PG_URL, Rag, _reset_pg, make_rag
from tests.rag.test_lexical import add
from tests.rag.test_postings import _tied, corpus, postings, queries, ready, remove


@pytest.fixture
async def pg(pg_url: str | None, tmp_path: Path) -> AsyncIterator[Rag]:
    if pg_url is None:
        pytest.fail(f"PostgreSQL not reachable at {PG_URL}: the RAG store tests need it (see README)")
    await _reset_pg(pg_url)
    r = await make_rag(pg_url, tmp_path / "pg")
    yield r
    await r.close()


@pytest.fixture
async def instances(pg: Rag, tmp_path: Path) -> AsyncIterator[list[PostingsSearch]]:
    """Postings of two more processes on the same database (engines of their own), ready."""
    made: list[tuple[Store, PostingsSearch]] = []
    for i in range(2):
        store = await Store.open(str(pg.store.engine.url.render_as_string(hide_password=False)))
        lex = postings(store.engine, tmp_path / f"instance{i}")
        await ready(lex)
        made.append((store, lex))
    yield [lex for _, lex in made]
    for store, lex in made:
        await lex.close()
        await store.close()


async def fill_both(sqlite: Rag, pg: Rag, seed: int) -> tuple[str, str]:
    """The same documents, chunks and order in both stores; the collections' ids."""
    texts = corpus(seed, 90)
    ids = []
    for rag in (sqlite, pg):
        c = await rag.collection()
        for i in range(0, 80, 4):
            await add(rag, c.id, f"d{i}.md", *texts[i : i + 4], title=f"Study {i} of heart risk")
        await add(rag, c.id, "draft.md", *texts[80:], ready=False)
        ids.append(c.id)
    return ids[0], ids[1]


async def keyed(engine: AsyncEngine, hits: list[tuple[int, float]]) -> list[tuple[str, int, float]]:
    """Hits as (source, ordinal, score): the same chunk has the same key in both stores."""
    if not hits:
        return []
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT c.id, d.source, c.ordinal FROM rag_chunks c JOIN rag_documents d ON d.id = c.document_id "
                "WHERE c.id IN (" + ",".join(str(i) for i, _ in hits) + ")"
            )
        )
        key = {int(r.id): (r.source, int(r.ordinal)) for r in rows}
    return [(*key[i], round(v, 9)) for i, v in hits]


async def assert_same_ranking(
    a: LexicalIndex, a_engine: AsyncEngine, a_collection: str, b: LexicalIndex, b_engine: AsyncEngine, b_collection: str
) -> None:
    for q in [*queries(2, 40), "heart risk", "study", "foo_bar patients"]:
        got = await keyed(a_engine, await a.search([a_collection], q, 10))
        want = await keyed(b_engine, await b.search([b_collection], q, 10))
        assert got == want or sorted(g[::-1] for g in got) == sorted(w[::-1] for w in want), q
        assert got, q


async def test_ranks_as_on_sqlite(rag_sqlite: Rag, pg: Rag) -> None:
    s_collection, p_collection = await fill_both(rag_sqlite, pg, 1)
    on_pg = pg.retriever.lexical
    assert isinstance(on_pg, PostingsSearch) and on_pg.feed.name == "postgresql" and on_pg.index is not None
    fts5 = Fts5Search(rag_sqlite.store.engine)  # the reference: FTS5's own bm25()
    await assert_same_ranking(on_pg, pg.store.engine, p_collection, fts5, rag_sqlite.store.engine, s_collection)
    on_sqlite = rag_sqlite.retriever.lexical
    await assert_same_ranking(on_pg, pg.store.engine, p_collection, on_sqlite, rag_sqlite.store.engine, s_collection)
    assert on_pg.index.stats()["chunks"] == 90  # every chunk row counts, as in FTS5 (the draft's too)


async def test_built_from_the_table_ranks_the_same(pg: Rag, tmp_path: Path) -> None:
    """Postings built from existing chunks (not followed from the log) agree with those that followed it."""
    c = await pg.collection()
    texts = corpus(3, 40)
    for i in range(0, 40, 4):
        await add(pg, c.id, f"d{i}.md", *texts[i : i + 4])
    fresh = postings(pg.store.engine, tmp_path / "fresh")
    await ready(fresh)
    try:
        followed = pg.retriever.lexical
        for q in queries(4, 20):
            got, want = await fresh.search([c.id], q, 10), await followed.search([c.id], q, 10)
            assert got == want or _tied(got, want), q
    finally:
        await fresh.close()


async def test_another_instance_sees_new_retired_and_deleted_chunks(pg: Rag, instances: list[PostingsSearch]) -> None:
    writer = pg  # the process that writes; the instances only search
    first, second = instances
    c = await writer.collection()
    await add(writer, c.id, "keep.md", "steady text about mice")
    added = await add(writer, c.id, "a.md", "zeppelin airships over the heart")
    for lex in instances:
        assert [i for i, _ in await lex.search([c.id], "zeppelin", 5)] == added  # at once, no restart

    doc = await writer.repo.ready_document(c.id, "a.md")
    assert doc is not None
    await writer.repo.retire(doc.id)  # out of search at once (its rows are still there)
    for lex in instances:
        assert await lex.search([c.id], "zeppelin", 5) == []
    await writer.repo.purge(doc.id)
    newer = await add(writer, c.id, "a.md", "balloons over the heart")
    assert not set(newer) & set(added)  # PostgreSQL never hands an id out again
    for lex in instances:
        assert [i for i, _ in await lex.search([c.id], "balloons", 5)] == newer
        assert await lex.search([c.id], "zeppelin", 5) == []
    for lex in instances:
        assert lex.index is not None and lex.index.stats()["chunks"] == 2  # the purged chunk left the statistics
    assert await first.search([c.id], "heart mice", 5) == await second.search([c.id], "heart mice", 5)
    assert await first.search([c.id], "heart mice", 5) == await writer.retriever.lexical.search([c.id], "heart mice", 5)


async def _insert_document(conn: object, collection_id: str, source: str, chunk: str) -> str:
    """A ready document with one chunk, written on ``conn`` (whose transaction the caller holds open)."""
    doc_id = new_id()
    now = utcnow()
    await conn.execute(  # type: ignore[attr-defined]
        insert(RAG_DOCUMENTS).values(
            id=doc_id,
            collection_id=collection_id,
            source=source,
            title=source,
            sha256="x",
            status="ready",
            chunk_count=1,
            size_bytes=1,
            tags=[],
            claimed_by=new_claim(),
            created_at=now,
            updated_at=now,
        )
    )
    values = {"document_id": doc_id, "ordinal": 0, "text": chunk, "title": source, "headings": [], "tokens": 1}
    await conn.execute(insert(RAG_CHUNKS).values(**values, content_hash="h"))  # type: ignore[attr-defined]
    return doc_id


async def test_a_transaction_committed_after_a_later_one_is_not_missed(
    pg: Rag, instances: list[PostingsSearch]
) -> None:
    """Chunk ids are handed out in order but committed in any order: the reader must not take the highest id
    (or sequence number) it saw as the line below which everything is seen."""
    reader = instances[0]
    c = await pg.collection()
    slow_store = await Store.open(str(pg.store.engine.url.render_as_string(hide_password=False)))
    try:
        async with slow_store.engine.begin() as slow:
            await _insert_document(slow, c.id, "slow.md", "walrus colony")  # the lower chunk id, not committed
            async with pg.store.engine.begin() as quick:
                await _insert_document(quick, c.id, "quick.md", "walrus tusks")
            seen = await keyed(pg.store.engine, await reader.search([c.id], "walrus", 5))
            assert [source for source, _, _ in seen] == ["quick.md"]
        found = await keyed(pg.store.engine, await reader.search([c.id], "walrus", 5))
        assert sorted(source for source, _, _ in found) == ["quick.md", "slow.md"]
    finally:
        await slow_store.close()


async def test_a_reader_behind_the_pruned_log_compares_everything(
    pg: Rag, instances: list[PostingsSearch], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, behind = instances
    c = await pg.collection()
    await add(pg, c.id, "a.md", "narwhal tusks")
    assert len(await behind.search([c.id], "narwhal", 5)) == 1  # its last look
    await remove(pg, c.id, "a.md")
    late = await add(pg, c.id, "b.md", "narwhal songs")
    feed = first.feed
    assert isinstance(feed, postings_pg.PostgresFeed)

    monkeypatch.setattr(postings_pg, "KEEP_CHANGES", 0.0)
    monkeypatch.setattr(postings_pg, "PRUNE_EVERY", 0.0)
    monkeypatch.setattr(postings_pg, "SAMPLE_EVERY", 0.0)
    assert [i for i, _ in await first.search([c.id], "narwhal", 5)] == late  # and it prunes what it has seen
    assert feed._pruning is not None
    await feed._pruning
    assert await pruned_below(pg.store.engine) > 0

    # As if the log had been pruned past everything written so far (by any instance):
    async with pg.store.engine.connect() as conn:
        now = int((await conn.execute(text("SELECT pg_current_xact_id()"))).scalar_one())
    await feed._prune(now)
    assert await pruned_below(pg.store.engine) == now
    async with pg.store.engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM rag_chunk_changes"))).scalar_one() == 0
    # The entry saying the first chunk went is gone: the reader behind compares every chunk instead.
    assert [i for i, _ in await behind.search([c.id], "narwhal", 5)] == late
    assert behind.index is not None and behind.index.stats()["chunks"] == 1


async def pruned_below(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT below FROM rag_chunk_changes_pruned"))).scalar_one())


async def test_stats_name_the_ranker(pg: Rag) -> None:
    stats = pg.retriever.lexical.stats()
    assert stats["ranker"] == "bm25_postings" and stats["store"] == "postgresql"
    assert stats["fallback"] == "postgres_full_text" and stats["ready"] is True
