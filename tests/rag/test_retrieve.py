"""Retrieval: fusion and de-duplication units, and searches over ingested documents."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatgate.rag.ingest import SourceFile
from chatgate.rag.repo import ChunkRow, EmbeddingMismatch, new_claim
from chatgate.rag.retrieve import Retriever, SearchFilters, dedupe, rrf
from chatgate.rag.types import Chunk
from tests.rag.conftest import Rag
from tests.rag.doubles import HashEmbedder

DOCS = {
    "leave.md": "# Leave\n\nParental leave lasts sixteen weeks. Parents may split the leave between them.",
    "travel.md": "# Travel\n\nTrain travel is reimbursed in second class. Flights need approval from a manager.",
    "security.md": "# Security\n\nLaptops must use disk encryption. Report lost laptops to the security desk.",
    "food.md": "# Canteen\n\nThe canteen serves lunch from noon. Vegetarian dishes are offered daily.",
}


def test_rrf_weights_and_ranks() -> None:
    fused = rrf([([1, 2, 3], 1.0), ([3, 1], 1.0)], k=60)
    assert fused[1] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[3] == pytest.approx(1 / 63 + 1 / 61)
    assert fused[2] == pytest.approx(1 / 62)
    assert sorted(fused, key=lambda i: -fused[i]) == [1, 3, 2]
    weighted = rrf([([1, 2], 0.1), ([2, 1], 2.0)], k=1)
    assert weighted[2] > weighted[1]  # the heavier ranking wins
    assert rrf([([1], 0.0), ([2], 1.0)], k=60)[1] == 0.0
    assert rrf([], k=60) == {}


def row(i: int, text: str, content_hash: str | None = None) -> ChunkRow:
    return ChunkRow(i, "d", "c", "s", "t", 0, text, "t", (), None, 1, content_hash or f"h{i}")


def test_dedupe_drops_same_hash_and_high_overlap() -> None:
    rows = [
        row(1, "the quick brown fox jumps over the lazy dog"),
        row(2, "something else", content_hash="h1"),  # same content hash as 1
        row(3, "the quick brown fox jumps over the lazy dog again"),  # 8/9 words shared
        row(4, "a completely different sentence"),
        row(5, "yet another one"),
    ]
    assert [r.id for r in dedupe(rows, 0.85, 10)] == [1, 4, 5]
    assert [r.id for r in dedupe(rows, 0.95, 10)] == [1, 3, 4, 5]
    assert [r.id for r in dedupe(rows, 0.85, 2)] == [1, 4]


async def ingest_docs(rag: Rag, tmp_path: Path, docs: dict[str, str] = DOCS, tags: tuple[str, ...] = ()) -> str:
    folder = tmp_path / "docs"
    folder.mkdir(exist_ok=True)
    for name, text in docs.items():
        (folder / name).write_text(text)
    c = await rag.collection()
    files = [SourceFile(source=p.name, path=p, tags=tags) for p in sorted(folder.iterdir())]
    summary = await rag.ingestor.ingest(c, files)
    assert summary.counts()["added"] == len(docs)
    return c.id


async def test_modes_find_the_right_document(rag: Rag, tmp_path: Path) -> None:
    await ingest_docs(rag, tmp_path)
    collections = await rag.repo.list_collections()
    for mode in ("hybrid", "dense", "lexical"):
        hits = await rag.retriever.search(collections, "how many weeks of parental leave", top_k=2, mode=mode)
        assert hits and hits[0].source == "leave.md", mode
        assert hits[0].title == "leave" or hits[0].title == "Leave"
        assert hits[0].headings == ("Leave",) and "sixteen weeks" in hits[0].text
    hybrid = await rag.retriever.search(collections, "parental leave", top_k=4)
    assert hybrid[0].score == pytest.approx(1.0)  # first in both rankings
    assert hybrid[0].dense_score is not None and hybrid[0].lexical_score is not None
    assert all(0 < h.score <= 1.0 + 1e-9 for h in hybrid)
    assert [h.score for h in hybrid] == sorted((h.score for h in hybrid), reverse=True)
    assert len(await rag.retriever.search(collections, "leave travel laptops canteen", top_k=3)) == 3


async def test_threshold_and_filters(rag: Rag, tmp_path: Path) -> None:
    await ingest_docs(rag, tmp_path, tags=("handbook",))
    collections = await rag.repo.list_collections()
    everything = await rag.retriever.search(collections, "laptops encryption", top_k=10, mode="dense")
    assert len(everything) == 4
    cut = everything[1].score
    kept = await rag.retriever.search(collections, "laptops encryption", top_k=10, mode="dense", threshold=cut)
    assert [h.chunk_id for h in kept] == [h.chunk_id for h in everything[:2]]

    travel = await rag.repo.ready_document(collections[0].id, "travel.md")
    assert travel is not None
    only = SearchFilters(document_ids=frozenset({travel.id}))
    for mode in ("hybrid", "dense", "lexical"):
        hits = await rag.retriever.search(collections, "laptops encryption travel", top_k=5, mode=mode, filters=only)
        assert {h.source for h in hits} == {"travel.md"}, mode
    assert await rag.retriever.search(collections, "laptops", filters=SearchFilters(tags=frozenset({"x"}))) == []
    tagged = await rag.retriever.search(collections, "laptops", filters=SearchFilters(tags=frozenset({"handbook"})))
    assert tagged and tagged[0].source == "security.md"


async def test_near_duplicates_are_removed(rag: Rag, tmp_path: Path) -> None:
    text = "# Expenses\n\nMeal expenses are capped at thirty euros per day on business trips."
    await ingest_docs(rag, tmp_path, {"a.md": text, "copy.md": text, "other.md": "# Other\n\nMeals at home."})
    collections = await rag.repo.list_collections()
    hits = await rag.retriever.search(collections, "meal expenses per day", top_k=5)
    assert [h.source for h in hits].count("a.md") + [h.source for h in hits].count("copy.md") == 1
    rag.settings.dedupe = False
    hits = await rag.retriever.search(collections, "meal expenses per day", top_k=5)
    assert {"a.md", "copy.md"} <= {h.source for h in hits}


async def test_a_document_being_indexed_is_invisible_to_dense_search(rag: Rag, tmp_path: Path) -> None:
    await ingest_docs(rag, tmp_path)
    c = (await rag.repo.list_collections())[0]
    chunk = Chunk(text="Submarines are painted yellow.", ordinal=0, tokens=5)
    doc, ids = await rag.repo.begin_document(c.id, "sub.md", "Sub", "s", 1, (), new_claim(), [(chunk, "h")])
    await rag.dense.add(c.dense_name, ids, await rag.embedder.embed([chunk.text]), [doc], [0])
    for mode in ("dense", "lexical", "hybrid"):
        hits = await rag.retriever.search([c], "submarines painted yellow", top_k=5, mode=mode)
        assert doc not in {h.document_id for h in hits}, mode
    await rag.repo.publish(doc)
    hits = await rag.retriever.search([c], "submarines painted yellow", top_k=1)
    assert hits[0].document_id == doc


async def test_an_embedder_mismatch_is_a_clear_error(rag: Rag, tmp_path: Path) -> None:
    await ingest_docs(rag, tmp_path)
    collections = await rag.repo.list_collections()
    other = Retriever(rag.repo, rag.retriever.lexical, rag.dense, HashEmbedder(32, "other"), rag.settings)
    with pytest.raises(EmbeddingMismatch, match="reindex"):
        await other.search(collections, "leave", mode="hybrid")
    assert await other.search(collections, "leave", mode="lexical")  # lexical needs no embedder
    assert await rag.retriever.search(collections, "   ") == []
    assert await rag.retriever.search([], "leave") == []


async def test_query_vector_given(rag: Rag, tmp_path: Path) -> None:
    await ingest_docs(rag, tmp_path)
    collections = await rag.repo.list_collections()
    calls = rag.embedder.calls
    vector = HashEmbedder().vector("canteen lunch")
    hits = await rag.retriever.search(collections, "canteen lunch", mode="dense", query_vector=vector)
    assert hits[0].source == "food.md" and rag.embedder.calls == calls


async def test_the_relevance_floor_drops_what_neither_side_finds_relevant(rag: Rag, tmp_path: Path) -> None:
    """A hit stays when a side that ranked it clears its own floor (cosine, or BM25); ``auto`` is a floor for
    the bundled model only."""
    await ingest_docs(rag, tmp_path)
    collections = await rag.repo.list_collections()
    r = rag.retriever
    unfloored = await r.search(collections, "quantum chromodynamics of gluons", top_k=4, mode="hybrid")
    assert r.relevance_floor() is None and len(unfloored) == 4  # auto: no floor for the test embedder
    # BM25 grows with the corpus: over four documents a match scores a few points, not SciFact's 10
    strict = {"relevance_floor": 0.99, "relevance_floor_lexical": 0.1}
    floored = Retriever(r.repo, r.lexical, r.dense, r.embedder, r.settings.model_copy(update=strict))
    assert await floored.search(collections, "quantum chromodynamics of gluons", top_k=4, mode="hybrid") == []
    assert await floored.search(collections, "quantum chromodynamics of gluons", top_k=4, mode="dense") == []
    kept = await floored.search(collections, "vegetarian dishes", top_k=4, mode="hybrid")
    assert [h.source for h in kept] == ["food.md"] and kept[0].dense_score < 0.99  # its BM25 kept it
    assert kept[0].lexical_score >= floored.settings.relevance_floor_lexical
    dense_only = Retriever(
        r.repo,
        r.lexical,
        r.dense,
        r.embedder,
        r.settings.model_copy(update={"relevance_floor": 0.99, "relevance_floor_lexical": None}),
    )
    assert await dense_only.search(collections, "vegetarian dishes", top_k=4, mode="hybrid") == []
    everything = await floored.search(collections, "quantum chromodynamics of gluons", top_k=4, floor=False)
    assert len(everything) == 4
