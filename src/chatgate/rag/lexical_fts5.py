"""Lexical ranking by SQLite FTS5's own ``bm25()`` (negated: higher is better here).

FTS5 ranks its matches alone (fast: ``ORDER BY rank``), then the best are checked against the documents
(ready, in the collections); when too few of them are searchable, it asks for more, and past ``FTS_MAX``
matches (or with a document filter) it joins instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import bindparam, text

from chatgate.rag.lexical import DatabaseRanker, terms

# The chunk table's tokenizer (migration 0004 creates ``rag_chunks_fts`` with it): the postings use it on
# PostgreSQL too, so both stores rank with the same terms.
TOKENIZE = "porter unicode61 remove_diacritics 2"
FTS_FIRST = 200
FTS_MAX = 20_000
_RANKED = text(
    "SELECT rowid AS id, -rank AS score FROM rag_chunks_fts WHERE rag_chunks_fts MATCH :query "
    "ORDER BY rank LIMIT :limit"
)
_JOINED = """
SELECT c.id AS id, -bm25(rag_chunks_fts) AS score
FROM rag_chunks_fts
JOIN rag_chunks c ON c.id = rag_chunks_fts.rowid
JOIN rag_documents d ON d.id = c.document_id
WHERE rag_chunks_fts MATCH :query AND d.status = 'ready' AND d.collection_id IN :collections {documents}
ORDER BY bm25(rag_chunks_fts)
LIMIT :limit
"""
_COUNT = text("SELECT count(*) FROM (SELECT rowid FROM rag_chunks_fts WHERE rag_chunks_fts MATCH :query LIMIT :cap)")


def fts5_query(words: Sequence[str]) -> str:
    """FTS5 MATCH text: each word a quoted string, any of them matching."""
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words)


class Fts5Search(DatabaseRanker):
    """See the module. ``max_df``: see ``lexical.CommonWords``."""

    name = "fts5"

    async def search(
        self, collection_ids: Sequence[str], query: str, limit: int, document_ids: Sequence[str] | None = None
    ) -> list[tuple[int, float]]:
        words = terms(query)
        if not words or not collection_ids or limit <= 0 or (document_ids is not None and not document_ids):
            return []
        match = fts5_query(await self.common.without(words))
        if document_ids is None:
            ranked = await self._ranked(collection_ids, match, limit)
            if ranked is not None:
                return ranked
        stmt = text(_JOINED.format(documents="AND d.id IN :documents" if document_ids is not None else ""))
        stmt = stmt.bindparams(bindparam("collections", expanding=True))
        params: dict[str, object] = {"query": match, "collections": list(collection_ids), "limit": limit}
        if document_ids is not None:
            stmt = stmt.bindparams(bindparam("documents", expanding=True))
            params["documents"] = list(document_ids)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt, params)).all()
        return [(int(r.id), float(r.score)) for r in rows]

    async def _ranked(self, collection_ids: Sequence[str], match: str, limit: int) -> list[tuple[int, float]] | None:
        """The best ``limit`` matches ranked by FTS5 alone, then kept if searchable in the collections; None
        when that would need more than ``FTS_MAX`` matches (the caller joins instead)."""
        fetch = max(FTS_FIRST, 2 * limit)
        async with self.engine.connect() as conn:
            while fetch <= FTS_MAX:
                params = {"query": match, "limit": fetch}
                ranked = [(int(r.id), float(r.score)) for r in await conn.execute(_RANKED, params)]
                if not ranked:
                    return []
                keep = await self.repo.searchable([i for i, _ in ranked], collection_ids)
                found = [(i, v) for i, v in ranked if i in keep]
                if len(found) >= limit or len(ranked) < fetch:
                    return found[:limit]
                fetch *= 4
        return None

    async def _count_word(self, word: str, cap: int) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(_COUNT, {"query": fts5_query([word]), "cap": cap})).scalar_one())


def tokenize_option(create_sql: str) -> str:
    """The ``tokenize='...'`` option of the FTS5 table's CREATE statement (FTS5's default when none)."""
    at = create_sql.find("tokenize=")
    if at < 0:
        return "unicode61"
    rest = create_sql[at + len("tokenize=") :].lstrip()
    if rest[:1] in ("'", '"'):
        return rest[1 : rest.index(rest[0], 1)]
    return rest.split(",")[0].split(")")[0].strip()
