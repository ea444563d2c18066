"""Lexical search over chunk text: SQLite FTS5 with BM25, or PostgreSQL full-text search.

Only chunks of ``ready`` documents are returned. A query is taken as words, any of which may match
(OR), ranked by BM25 (FTS5; higher is better here, FTS5's own ``bm25()`` is negated) or by
``ts_rank_cd`` over ``websearch_to_tsquery('english', ...)`` (PostgreSQL). Query syntax is never
passed through: each word is quoted (FTS5) or joined with ``or`` (websearch), so no input can make
the query invalid.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine

_WORD = re.compile(r"\w+", re.UNICODE)
MAX_TERMS = 64

_SQLITE = """
SELECT c.id AS id, -bm25(rag_chunks_fts) AS score
FROM rag_chunks_fts
JOIN rag_chunks c ON c.id = rag_chunks_fts.rowid
JOIN rag_documents d ON d.id = c.document_id
WHERE rag_chunks_fts MATCH :query AND d.status = 'ready' AND d.collection_id IN :collections {documents}
ORDER BY bm25(rag_chunks_fts)
LIMIT :limit
"""
_POSTGRES = """
SELECT c.id AS id, ts_rank_cd(c.tsv, q.query) AS score
FROM websearch_to_tsquery('english', :query) AS q(query), rag_chunks c
JOIN rag_documents d ON d.id = c.document_id
WHERE c.tsv @@ q.query AND d.status = 'ready' AND d.collection_id IN :collections {documents}
ORDER BY score DESC, c.id
LIMIT :limit
"""


def terms(query: str) -> list[str]:
    """The query's distinct words, lower-cased, in order (at most ``MAX_TERMS``)."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(query.lower()):
        seen.setdefault(word, None)
    return list(seen)[:MAX_TERMS]


def fts5_query(words: Sequence[str]) -> str:
    """FTS5 MATCH text: each word a quoted string, any of them matching."""
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words)


def websearch_query(words: Sequence[str]) -> str:
    """``websearch_to_tsquery`` text: the words joined with ``or`` (its OR operator)."""
    return " or ".join(w for w in words if w != "or")


class LexicalIndex:
    """Lexical search over the store's chunk table (the index itself is kept by the database)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"

    async def search(
        self,
        collection_ids: Sequence[str],
        query: str,
        limit: int,
        document_ids: Sequence[str] | None = None,
    ) -> list[tuple[int, float]]:
        """(chunk id, score) best first, from ready documents in the collections (and among
        ``document_ids`` when given)."""
        words = terms(query)
        if not words or not collection_ids or limit <= 0 or (document_ids is not None and not document_ids):
            return []
        match = websearch_query(words) if self._postgres else fts5_query(words)
        if not match:
            return []
        sql = (_POSTGRES if self._postgres else _SQLITE).format(
            documents="AND d.id IN :documents" if document_ids is not None else ""
        )
        params: dict[str, object] = {"query": match, "collections": list(collection_ids), "limit": limit}
        stmt = text(sql).bindparams(bindparam("collections", expanding=True))
        if document_ids is not None:
            stmt = stmt.bindparams(bindparam("documents", expanding=True))
            params["documents"] = list(document_ids)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt, params)).all()
        return [(int(r.id), float(r.score)) for r in rows]
