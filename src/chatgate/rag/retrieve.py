"""Search: the dense and lexical rankings of a query, fused, filtered and de-duplicated.

Modes: ``lexical`` (BM25 / ``ts_rank_cd``), ``dense`` (cosine similarity) and ``hybrid``, where each
index contributes its best ``candidates`` and they are fused by weighted reciprocal rank fusion: a chunk
scores ``sum(w_i / (k + rank_i))`` over the rankings it appears in (rank from 1). A hybrid score is
reported scaled to 0..1 (divided by ``sum(w_i) / (k + 1)``, the score of a chunk first everywhere), so
one ``score_threshold`` reads the same whatever ``k`` and the weights are.

A dense or hybrid hit is relevant when a side that ranked it clears that side's own floor
(``relevance_floor``: cosine similarity; ``relevance_floor_lexical``: BM25); the others are dropped, so a
question about nothing in the documents finds nothing (a fused score cannot tell: it is a rank, and some
chunk is always first).

Only chunks of ready documents come back (the store decides, for both indexes). Near duplicates, the
same text (content hash) or a word-set overlap (Jaccard) of at least ``dedupe_overlap`` with a better
hit, are dropped before the cut to ``top_k``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from chatgate.rag.dense import DenseIndex
from chatgate.rag.embedders import LOCAL_MODEL_NAME
from chatgate.rag.lexical import LexicalIndex
from chatgate.rag.repo import ChunkRow, CollectionRow, RagRepo
from chatgate.rag.types import Embedder
from chatgate.settings import MINILM_RELEVANCE_FLOOR, RetrievalSettings

Mode = Literal["hybrid", "dense", "lexical"]
MODES: tuple[Mode, ...] = ("hybrid", "dense", "lexical")
_WORD = re.compile(r"\w+")


@dataclass(frozen=True, slots=True)
class SearchFilters:
    """Restrict a search to some documents: by id, and/or carrying at least one of the tags."""

    document_ids: frozenset[str] | None = None
    tags: frozenset[str] | None = None

    @property
    def active(self) -> bool:
        return self.document_ids is not None or self.tags is not None


@dataclass(frozen=True, slots=True)
class Hit:
    chunk_id: int
    document_id: str
    collection_id: str
    source: str
    title: str
    """The document's title."""
    text: str
    page: int | None
    headings: tuple[str, ...]
    ordinal: int
    score: float
    dense_score: float | None = None
    lexical_score: float | None = None


def rrf(rankings: Sequence[tuple[Sequence[int], float]], k: int) -> dict[int, float]:
    """Weighted reciprocal rank fusion of (ranked ids, weight) lists: id -> ``sum(w / (k + rank))``."""
    scores: dict[int, float] = {}
    for ranked, weight in rankings:
        for rank, item in enumerate(ranked, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return scores


def dedupe(rows: Sequence[ChunkRow], overlap: float, limit: int) -> list[ChunkRow]:
    """The first ``limit`` rows, in order, skipping a row with the same content hash as a kept one or
    whose word set overlaps a kept one's by ``overlap`` (Jaccard) or more."""
    kept: list[ChunkRow] = []
    hashes: set[str] = set()
    words: list[frozenset[str]] = []
    for row in rows:
        if len(kept) >= limit:
            break
        if row.content_hash in hashes:
            continue
        mine = frozenset(_WORD.findall(row.text.lower()))
        if any(_jaccard(mine, other) >= overlap for other in words):
            continue
        kept.append(row)
        hashes.add(row.content_hash)
        words.append(mine)
    return kept


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


class Retriever:
    """Searches collections. ``embedder`` may be None for lexical-only use."""

    def __init__(
        self,
        repo: RagRepo,
        lexical: LexicalIndex,
        dense: DenseIndex | None,
        embedder: Embedder | None,
        settings: RetrievalSettings,
    ) -> None:
        self.repo = repo
        self.lexical = lexical
        self.dense = dense
        self.embedder = embedder
        self.settings = settings

    def relevance_floor(self) -> float | None:
        """The cosine similarity a dense or hybrid hit needs (unless its BM25 clears ``relevance_floor_lexical``):
        ``auto`` is the one tuned for the bundled model, and no floor for another."""
        floor = self.settings.relevance_floor
        if floor != "auto":
            return floor
        embedder = self.embedder
        return MINILM_RELEVANCE_FLOOR if embedder is not None and embedder.name == LOCAL_MODEL_NAME else None

    async def embed_query(self, query: str) -> list[float]:
        if self.embedder is None:
            raise RuntimeError("no embedder configured: only lexical search is available")
        return (await self.embedder.embed([query]))[0]

    async def search(
        self,
        collections: Sequence[CollectionRow],
        query: str,
        top_k: int | None = None,
        mode: Mode | None = None,
        filters: SearchFilters | None = None,
        threshold: float | None = None,
        query_vector: Sequence[float] | None = None,
        floor: bool = True,
    ) -> list[Hit]:
        """The best ``top_k`` chunks for ``query`` in ``collections`` (best first), the relevant ones only
        (``relevance_floor``; ``floor=False``: every hit, for the benchmark that tunes it). ``query_vector``: the
        query's embedding when the caller already has it. Raises ``EmbeddingMismatch`` when a dense search
        meets a collection embedded by another model."""
        s = self.settings
        top_k = top_k or s.top_k
        mode = mode or s.mode
        threshold = s.score_threshold if threshold is None else threshold
        if not collections or not query.strip():
            return []
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        ids = [c.id for c in collections]
        allowed: list[str] | None = None
        if filters is not None and filters.active:
            allowed = await self.repo.filter_documents(ids, filters.document_ids, filters.tags)
            if not allowed:
                return []
        n = max(s.candidates, top_k)
        dense_task = self._dense(collections, query, n, allowed, query_vector) if mode != "lexical" else _none()
        lexical_task = self.lexical.search(ids, query, n, allowed) if mode != "dense" else _none()
        dense, lexical = await asyncio.gather(dense_task, lexical_task)
        rows = await self.repo.ready_chunks(list({i for i, _ in dense} | {i for i, _ in lexical}), ids)
        dense = [(i, v) for i, v in dense if i in rows]
        lexical = [(i, v) for i, v in lexical if i in rows]
        dense_scores, lexical_scores = dict(dense), dict(lexical)
        if mode == "hybrid":
            weights = s.dense_weight + s.lexical_weight
            best = weights / (s.rrf_k + 1) if weights > 0 else 1.0
            fused = rrf([([i for i, _ in dense], s.dense_weight), ([i for i, _ in lexical], s.lexical_weight)], s.rrf_k)
            scores = {i: v / best for i, v in fused.items()}
        else:
            scores = dense_scores if mode == "dense" else lexical_scores
        ranked = sorted(scores, key=lambda i: (-scores[i], i))
        if floor and mode != "lexical" and (dense_min := self.relevance_floor()) is not None:
            lexical_min = s.relevance_floor_lexical
            ranked = [
                i
                for i in ranked
                if dense_scores.get(i, -1.0) >= dense_min
                or (lexical_min is not None and lexical_scores.get(i, -1.0) >= lexical_min)
            ]
        if threshold is not None:
            ranked = [i for i in ranked if scores[i] >= threshold]
        ordered = [rows[i] for i in ranked]
        chosen = dedupe(ordered, s.dedupe_overlap, top_k) if s.dedupe else ordered[:top_k]
        return [
            Hit(
                chunk_id=r.id,
                document_id=r.document_id,
                collection_id=r.collection_id,
                source=r.source,
                title=r.document_title,
                text=r.text,
                page=r.page,
                headings=r.headings,
                ordinal=r.ordinal,
                score=scores[r.id],
                dense_score=dense_scores.get(r.id),
                lexical_score=lexical_scores.get(r.id),
            )
            for r in chosen
        ]

    async def _dense(
        self,
        collections: Sequence[CollectionRow],
        query: str,
        n: int,
        allowed: Sequence[str] | None,
        vector: Sequence[float] | None,
    ) -> list[tuple[int, float]]:
        if self.dense is None:
            raise RuntimeError("no dense index configured: only lexical search is available")
        if vector is None:
            if self.embedder is None:
                raise RuntimeError("no embedder configured: only lexical search is available")
            for c in collections:
                c.check_embedder(self.embedder.name, self.embedder.dimension)
            vector = await self.embed_query(query)
        else:
            for c in collections:
                if c.embedding_dim != len(vector):
                    c.check_embedder(c.embedding_model, len(vector))
        dense = self.dense
        results = await asyncio.gather(*(dense.query(c.dense_name, vector, n, allowed) for c in collections))
        merged = [hit for found in results for hit in found]
        merged.sort(key=lambda hit: -hit[1])
        return merged[:n]


async def _none() -> list[tuple[int, float]]:
    return []
