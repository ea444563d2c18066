"""The in-memory BM25 postings on SQLite: the same ranking as FTS5, kept in step with the store, saved and
loaded again (PostgreSQL: test_postings_pg.py)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from chatgate.app import build_lexical
from chatgate.rag import postings as postings_module
from chatgate.rag import postings_sqlite
from chatgate.rag.fts5 import Fts5Tokenizer
from chatgate.rag.lexical import LexicalIndex
from chatgate.rag.lexical_fts5 import Fts5Search
from chatgate.rag.lexical_postings import PostingsSearch
from chatgate.rag.postings import PostingsIndex
from chatgate.settings import Settings
from tests.rag.conftest import Rag
from tests.rag.test_lexical import add

VOCAB = (
    "patient patients treatment treated trial trials protein proteins cell cells cancer tumour growth "
    "signal signalling running runner ran café naïve résumé gene genes expression vitamin dose doses "
    "mouse mice model models blood pressure heart risk higher lower effect effects study studies"
).split()


def corpus(seed: int, n: int) -> list[str]:
    rnd = random.Random(seed)
    return [" ".join(rnd.choice(VOCAB) for _ in range(rnd.randint(3, 40))) for _ in range(n)]


def queries(seed: int, n: int) -> list[str]:
    rnd = random.Random(seed)
    return [" ".join(rnd.sample(VOCAB, rnd.randint(1, 6))) for _ in range(n)]


async def fill(rag: Rag, collection_id: str, seed: int, n: int, per_doc: int) -> None:
    """``n`` chunks of random words from ``VOCAB``, ``per_doc`` to a ready document."""
    texts = corpus(seed, n)
    for i in range(0, n, per_doc):
        await add(rag, collection_id, f"d{i}.md", *texts[i : i + per_doc])


async def remove(rag: Rag, collection_id: str, source: str) -> None:
    """As a replaced or deleted document goes: out of search, then its chunks deleted."""
    doc = await rag.repo.ready_document(collection_id, source)
    assert doc is not None
    await rag.repo.retire(doc.id)
    await rag.repo.purge(doc.id)


def postings(engine: AsyncEngine, root: Path) -> PostingsSearch:
    """The postings the gateway builds (not started yet)."""
    lex = build_lexical(Settings(data_dir=root), engine)
    assert isinstance(lex, PostingsSearch)
    return lex


async def ready(lex: PostingsSearch) -> None:
    await lex.ready()
    assert lex.index is not None


def index_of(lex: PostingsSearch) -> PostingsIndex:
    assert lex.index is not None
    return lex.index


async def assert_same_as_fts5(
    fast: LexicalIndex, fts: LexicalIndex, collections: list[str], qs: list[str], documents: list[str] | None = None
) -> None:
    await assert_same(fast, fts, collections, qs, documents)


async def assert_same(
    fast: LexicalIndex, fts: LexicalIndex, collections: list[str], qs: list[str], documents: list[str] | None = None
) -> None:
    for q in qs:
        got = await fast.search(collections, q, 10, documents)
        want = await fts.search(collections, q, 10, documents)
        assert [i for i, _ in got] == [i for i, _ in want] or _tied(got, want), q
        assert [round(v, 9) for _, v in got] == [round(v, 9) for _, v in want], q


def _tied(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> bool:
    """Equal scores may come in either order."""
    return sorted((round(v, 9), i) for i, v in got) == sorted((round(v, 9), i) for i, v in want)


@pytest.fixture
async def fast(rag_sqlite: Rag, tmp_path: Path) -> AsyncIterator[PostingsSearch]:
    lex = postings(rag_sqlite.store.engine, tmp_path / "fast")
    yield lex
    await lex.close()


def test_tokenizer_is_fts5s() -> None:
    tok = Fts5Tokenizer("porter unicode61 remove_diacritics 2")
    terms, term_of, text_of, tf, lengths = tok.postings(["Running runners ran; naïve Café", "", "run RUN"])
    pairs = {(terms[t], int(d)): int(f) for t, d, f in zip(term_of, text_of, tf, strict=True)}
    assert pairs == {("run", 0): 1, ("runner", 0): 1, ("ran", 0): 1, ("naiv", 0): 1, ("cafe", 0): 1, ("run", 2): 2}
    assert lengths.tolist() == [5, 0, 2]
    assert tok.words(["Treatments", "foo_bar", "--", "treatments"]) == [
        ("treatment",),
        ("foo", "bar"),  # a phrase to FTS5
        (),
        ("treatment",),
    ]
    assert tok.words(["foo_bar"]) == [("foo", "bar")]  # remembered


async def test_ranks_exactly_as_fts5(rag_sqlite: Rag, fast: PostingsSearch) -> None:
    rag = rag_sqlite
    fts = Fts5Search(rag.store.engine)
    c = await rag.collection()
    other = await rag.collection("other")
    texts = corpus(1, 120)
    for i in range(0, 80, 4):
        await add(rag, c.id, f"d{i}.md", *texts[i : i + 4], title=f"Study {i} of heart risk")
    for i in range(80, 110, 3):
        await add(rag, other.id, f"o{i}.md", *texts[i : i + 3])
    await add(rag, c.id, "draft.md", *texts[110:], ready=False)
    await ready(fast)
    qs = queries(2, 40)
    await assert_same_as_fts5(fast, fts, [c.id], qs)
    await assert_same_as_fts5(fast, fts, [c.id, other.id], qs[:10])
    docs = [d.id for d in await rag.repo.list_documents(c.id, "ready")][:3]
    await assert_same_as_fts5(fast, fts, [c.id], qs[:10], documents=docs)
    await assert_same_as_fts5(fast, fts, [c.id], ["foo_bar patients", "-- ?", "the of"])  # a phrase: FTS5 answers
    assert index_of(fast).stats()["chunks"] == 120


async def test_keeps_in_step_with_the_store(
    rag_sqlite: Rag, fast: PostingsSearch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postings_sqlite, "FULL_SYNC_EVERY", 0.0)
    rag = rag_sqlite
    fts = Fts5Search(rag.store.engine)
    c = await rag.collection()
    await fill(rag, c.id, 3, 40, 4)
    await ready(fast)
    qs = queries(4, 15)

    added = await add(rag, c.id, "new.md", "zeppelin airships over the heart")
    assert [i for i, _ in await fast.search([c.id], "zeppelin", 5)] == added  # written after the build
    await assert_same_as_fts5(fast, fts, [c.id], qs)

    # Replaced: the old version's chunks leave (retire, purge), the new one's come.
    await remove(rag, c.id, "new.md")
    assert await fast.search([c.id], "zeppelin", 5) == []
    newer = await add(rag, c.id, "new.md", "balloons over the heart")
    # SQLite hands the highest ids out again once they are free: the same id, another document's chunk.
    assert set(newer) & set(added)
    assert await fast.search([c.id], "zeppelin", 5) == []
    assert [i for i, _ in await fast.search([c.id], "balloons", 5)] == newer
    await assert_same_as_fts5(fast, fts, [c.id], [*qs, "balloons heart", "zeppelin heart"])


async def test_a_reused_id_seen_first_at_search_time_is_caught(rag_sqlite: Rag, fast: PostingsSearch) -> None:
    """Between two searches, a chunk went and another took its id, the count and highest id unchanged:
    the hit's document differs from the one known, so FTS5 answers and the next search resynchronises."""
    rag = rag_sqlite
    fts = Fts5Search(rag.store.engine)
    c = await rag.collection()
    await add(rag, c.id, "keep.md", "steady text about mice")
    first = await add(rag, c.id, "a.md", "quokka island mice")
    await ready(fast)
    assert [i for i, _ in await fast.search([c.id], "quokka", 5)] == first
    await remove(rag, c.id, "a.md")
    second = await add(rag, c.id, "b.md", "quokka quokka wombat mice")
    assert second == first
    feed = fast.feed
    assert isinstance(feed, postings_sqlite.SqliteFeed)
    feed._last_full = float("inf")  # as if compared a moment ago: only the hit check can tell
    got = await fast.search([c.id], "quokka wombat", 5)
    assert got == await fts.search([c.id], "quokka wombat", 5)
    await assert_same_as_fts5(fast, fts, [c.id], ["quokka wombat", "mice", "island"])
    assert await fast.search([c.id], "island", 5) == []


async def test_saved_and_loaded_without_tokenizing_again(
    rag_sqlite: Rag, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rag = rag_sqlite
    fts = Fts5Search(rag.store.engine)
    c = await rag.collection()
    await fill(rag, c.id, 5, 30, 3)
    first = postings(rag.store.engine, tmp_path)
    await ready(first)
    await first.close()  # waits for the snapshot to be written
    assert (tmp_path / "lexical" / "postings.npz").exists()

    tokenized: list[int] = []
    real = Fts5Tokenizer.postings

    def counting(self: Fts5Tokenizer, texts: list[str]):  # type: ignore[no-untyped-def]
        tokenized.append(len(texts))
        return real(self, texts)

    monkeypatch.setattr(Fts5Tokenizer, "postings", counting)
    again = postings(rag.store.engine, tmp_path)
    await ready(again)
    assert tokenized == []  # everything came from the snapshot
    await assert_same_as_fts5(again, fts, [c.id], queries(6, 10))
    await again.close()

    await add(rag, c.id, "late.md", "narwhal tusks and the heart")  # while no postings were open
    third = postings(rag.store.engine, tmp_path)
    await ready(third)
    assert tokenized == [1]  # only the new chunk
    assert len(await third.search([c.id], "narwhal", 5)) == 1
    await assert_same_as_fts5(third, fts, [c.id], queries(7, 10))
    await third.close()


async def test_compaction_merges_new_chunks(
    rag_sqlite: Rag, fast: PostingsSearch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postings_module, "COMPACT_SHARE", 0.01)
    monkeypatch.setattr(postings_sqlite, "FULL_SYNC_EVERY", 0.0)
    rag = rag_sqlite
    fts = Fts5Search(rag.store.engine)
    c = await rag.collection()
    texts = corpus(8, 60)
    await add(rag, c.id, "base.md", *texts[:20])
    await ready(fast)
    index = index_of(fast)
    for i in range(20, 60, 5):
        await add(rag, c.id, f"d{i}.md", *texts[i : i + 5])
        await fast.search([c.id], "patients", 3)  # in step, and a compaction started
    await remove(rag, c.id, "d20.md")
    for _ in range(20):  # each round waits for the compaction under way (events, not a clock)
        await fast.search([c.id], "patients", 3)
        s = index.stats()
        if s["delta_postings"] == 0 and s["dead"] == 0:
            break
        if (pending := index._compacting) is not None:  # wait for the compaction under way: events, not a clock
            await asyncio.wrap_future(pending)
    assert index.stats()["delta_postings"] == 0 and index.stats()["dead"] == 0
    assert index.stats()["chunks"] == 55
    await assert_same_as_fts5(fast, fts, [c.id], queries(9, 20))


async def test_chunks_not_ready_do_not_crowd_out_the_ready(rag_sqlite: Rag, fast: PostingsSearch) -> None:
    rag = rag_sqlite
    c = await rag.collection()
    mine = await add(rag, c.id, "mine.md", "A note on glaciers among many other things said here at length.")
    for i in range(15):  # better matches, being indexed (not searchable yet)
        await add(rag, c.id, f"draft{i}.md", "glaciers glaciers glaciers", ready=False)
    await ready(fast)
    assert [i for i, _ in await fast.search([c.id], "glaciers", 1)] == mine  # found on a second, larger fetch
