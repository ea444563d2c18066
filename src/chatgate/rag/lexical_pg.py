"""Lexical ranking by PostgreSQL full-text search: ``ts_rank_cd`` over ``websearch_to_tsquery('english', ...)``
and the GIN index on ``rag_chunks.tsv`` (migration 0004).

Not BM25, and worse for it (SciFact nDCG@10 0.42 against BM25's 0.68: docs/benchmarks.md): on PostgreSQL it
answers only while the BM25 postings are being built, when they cannot be, or with
``rag.retrieval.lexical_postings`` off.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import bindparam, text

from chatgate.rag.lexical import DatabaseRanker, terms

_RANKED = """
SELECT c.id AS id, ts_rank_cd(c.tsv, q.query) AS score
FROM websearch_to_tsquery('english', :query) AS q(query), rag_chunks c
JOIN rag_documents d ON d.id = c.document_id
WHERE c.tsv @@ q.query AND d.status = 'ready' AND d.collection_id IN :collections {documents}
ORDER BY score DESC, c.id
LIMIT :limit
"""
_COUNT = text(
    "SELECT count(*) FROM (SELECT 1 FROM rag_chunks WHERE tsv @@ plainto_tsquery('english', :query) LIMIT :cap) AS m"
)


def websearch_query(words: Sequence[str]) -> str:
    """``websearch_to_tsquery`` text: the words joined with ``or`` (its OR operator)."""
    return " or ".join(w for w in words if w != "or")


class PgFullText(DatabaseRanker):
    """See the module. ``max_df``: see ``lexical.CommonWords``."""

    name = "postgres_full_text"

    async def search(
        self, collection_ids: Sequence[str], query: str, limit: int, document_ids: Sequence[str] | None = None
    ) -> list[tuple[int, float]]:
        words = terms(query)
        if not words or not collection_ids or limit <= 0 or (document_ids is not None and not document_ids):
            return []
        match = websearch_query(await self.common.without(words))
        if not match:
            return []
        stmt = text(_RANKED.format(documents="AND d.id IN :documents" if document_ids is not None else ""))
        stmt = stmt.bindparams(bindparam("collections", expanding=True))
        params: dict[str, object] = {"query": match, "collections": list(collection_ids), "limit": limit}
        if document_ids is not None:
            stmt = stmt.bindparams(bindparam("documents", expanding=True))
            params["documents"] = list(document_ids)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt, params)).all()
        return [(int(r.id), float(r.score)) for r in rows]

    async def _count_word(self, word: str, cap: int) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(_COUNT, {"query": word, "cap": cap})).scalar_one())
