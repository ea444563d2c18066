"""Lexical search, every ranker against real databases: the database's own (SQLite FTS5's BM25, PostgreSQL's
``ts_rank_cd``) and the BM25 postings on each store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from chatgate.rag import lexical, lexical_fts5, lexical_postings
from chatgate.rag.lexical import LexicalIndex, common, terms
from chatgate.rag.lexical_fts5 import fts5_query
from chatgate.rag.lexical_pg import websearch_query
from chatgate.rag.repo import new_claim
from chatgate.rag.types import Chunk
from tests.rag.conftest import Rag, lexical_index

Make = Callable[..., Awaitable[LexicalIndex]]


async def add(rag: Rag, cid: str, source: str, *texts: str, ready: bool = True, title: str = "Doc") -> list[int]:
    doc, ids = await rag.repo.begin_document(
        cid,
        source,
        title,
        "sha",
        1,
        (),
        new_claim(),
        [(Chunk(text=t, ordinal=i, tokens=1), str(i)) for i, t in enumerate(texts)],
    )
    if ready:
        await rag.repo.publish(doc)
    return ids


@pytest.fixture(params=["database", "postings"])
async def make(request: pytest.FixtureRequest, rag: Rag, tmp_path: Path) -> AsyncIterator[Make]:
    """Builds the ranker under test (``database``: the store's own; ``postings``: BM25 in memory), ready."""
    made: list[LexicalIndex] = []

    async def build(**retrieval: object) -> LexicalIndex:
        retrieval.setdefault("lexical_postings", request.param == "postings")
        index = await lexical_index(rag.store.engine, tmp_path / f"lex{len(made)}", **retrieval)
        made.append(index)
        return index

    yield build
    for index in made:
        await index.close()


def test_queries_are_words_never_syntax() -> None:
    assert terms('Parental "leave" AND leave? NEAR(x) -y:z *') == ["parental", "leave", "near", "x", "y", "z"]
    assert terms("foo_bar baz") == ["foo", "bar", "baz"]  # an underscore separates words, as in FTS5
    assert terms("What is the leave of a parent?") == ["leave", "parent"]  # stopwords left out
    assert terms("to be or not to be") == ["to", "be", "or", "not"]  # unless nothing else is left
    assert fts5_query(["a", 'b"c']) == '"a" OR "b""c"'
    assert websearch_query(["cats", "or", "dogs"]) == "cats or dogs"


async def test_ranks_stemmed_matches_from_ready_documents(rag: Rag, make: Make) -> None:
    lex = await make()
    c = await rag.collection()
    other = await rag.collection("other")
    leave = await add(
        rag, c.id, "leave.md", "Parental leave lasts sixteen weeks for every parent.", "Holidays are fixed."
    )
    travel = await add(rag, c.id, "travel.md", "Travel expenses are reimbursed. Leaving early is allowed.")
    await add(rag, c.id, "draft.md", "Parental leave draft policy: parental leave for parents.", ready=False)
    await add(rag, other.id, "o.md", "Parental leave elsewhere.")

    hits = await lex.search([c.id], "parental leave weeks?", 10)
    assert [i for i, _ in hits][:1] == leave[:1]
    assert {i for i, _ in hits} == {leave[0], travel[0]}  # "leaving" stems to "leav": any word may match
    assert all(score > 0 for _, score in hits) and hits[0][1] >= hits[-1][1]

    assert [i for i, _ in await lex.search([c.id], "reimbursing travels", 10)] == travel[:1]
    assert [i for i, _ in await lex.search([c.id], "parental", 1)] == leave[:1]
    assert await lex.search([c.id, other.id], "elsewhere", 10) != []
    assert await lex.search([c.id], "elsewhere", 10) == []


async def test_titles_match_too(rag: Rag, make: Make) -> None:
    lex = await make()
    c = await rag.collection()
    ids = await add(rag, c.id, "x.md", "Nothing about it here.", title="Pension scheme")
    assert [i for i, _ in await lex.search([c.id], "pension", 5)] == ids


async def test_document_filter_and_odd_input(rag: Rag, make: Make) -> None:
    lex = await make()
    c = await rag.collection()
    a = await add(rag, c.id, "a.md", "budget approval process")
    await add(rag, c.id, "b.md", "budget planning calendar")
    doc_a = (await rag.repo.ready_document(c.id, "a.md")).id  # type: ignore[union-attr]
    assert [i for i, _ in await lex.search([c.id], "budget", 10, document_ids=[doc_a])] == a
    assert await lex.search([c.id], "budget", 10, document_ids=[]) == []
    for odd in ['"', "AND OR NOT", "budget*", "NEAR(budget approval)", "a:b", "(", "'; DROP TABLE x; --", "é ü"]:
        await lex.search([c.id], odd, 5)  # never a syntax error
    assert await lex.search([c.id], "  ?! ", 5) == []
    assert await lex.search([], "budget", 5) == []


async def test_deleted_chunks_leave_the_index(rag: Rag, make: Make) -> None:
    lex = await make()
    c = await rag.collection()
    await add(rag, c.id, "a.md", "zebra crossing rules")
    doc = await rag.repo.ready_document(c.id, "a.md")
    assert doc is not None
    await rag.repo.retire(doc.id)
    assert await lex.search([c.id], "zebra", 5) == []
    await rag.repo.purge(doc.id)
    ids = await add(rag, c.id, "a.md", "zebra crossing rules, revised")
    assert [i for i, _ in await lex.search([c.id], "zebra", 5)] == ids


async def test_matches_elsewhere_do_not_crowd_out_the_collection(
    rag: Rag, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lexical_fts5, "FTS_FIRST", 2)
    monkeypatch.setattr(lexical_fts5, "FTS_MAX", 8)
    monkeypatch.setattr(lexical_postings, "MAX_FETCH", 8)
    lex = await make()
    c = await rag.collection()
    other = await rag.collection("other")
    mine = await add(rag, c.id, "mine.md", "A note on glaciers among many other things said here at length.")
    for i in range(6):  # better matches, in another collection and not searchable here
        await add(rag, other.id, f"o{i}.md", "glaciers glaciers glaciers")
    assert [i for i, _ in await lex.search([c.id], "glaciers", 1)] == mine  # found on a second, larger fetch
    for i in range(6, 12):
        await add(rag, other.id, f"o{i}.md", "glaciers glaciers glaciers", ready=False)
    assert [i for i, _ in await lex.search([c.id], "glaciers", 1)] == mine  # past FTS_MAX: joined instead


def test_common_words_rule() -> None:
    assert common([5, 5, 1], 8, 0.5) == set()  # below the floor (50 chunks) nothing is common
    assert common([90, 80, 1], 100, 0.5) == set()  # only one word would remain
    assert common([90, 80, 1, 2], 100, 0.5) == {0, 1}
    assert common([90, 1], 100, 0.5) == set()  # two words: kept


async def test_common_words_can_be_left_out(rag: Rag, make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lexical, "DF_FLOOR", 1)
    c = await rag.collection()
    for i in range(8):
        await add(rag, c.id, f"d{i}.md", f"patients data row{i}" + (" rare" if i == 3 else ""))
    exact = await make()
    pruned = await make(lexical_max_df=0.5)
    query = "patients data rare row3"
    assert [i for i, _ in await pruned.search([c.id], query, 10)] == [
        i for i, _ in await exact.search([c.id], query, 1)
    ]  # only the chunk with "rare" or "row3" matches once "patients" and "data" are left out
    assert len(await exact.search([c.id], query, 10)) == 8  # every chunk matches the common words
    assert len(await pruned.search([c.id], "patients data row3", 10)) == 8  # two would remain: all kept
