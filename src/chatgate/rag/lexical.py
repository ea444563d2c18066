"""Lexical search over chunk text: SQLite FTS5 with BM25, or PostgreSQL full-text search.

Only chunks of ``ready`` documents are returned. A query is taken as words, any of which may match
(OR), ranked by BM25 (FTS5; higher is better here, FTS5's own ``bm25()`` is negated) or by
``ts_rank_cd`` over ``websearch_to_tsquery('english', ...)`` (PostgreSQL). Query syntax is never
passed through: each word is quoted (FTS5) or joined with ``or`` (websearch), so no input can make
the query invalid.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chatgate.rag.types import import_numpy
from chatgate.settings import RetrievalSettings

if TYPE_CHECKING:
    from chatgate.rag.postings import PostingsIndex

log = logging.getLogger(__name__)
_WORD = re.compile(r"\w+", re.UNICODE)
MAX_TERMS = 64
# English function words, left out of queries (unless a query has nothing else): they match nearly every
# chunk, so they add work (every match is scored) and next to nothing to a BM25 ranking.
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have having
    he her here hers herself him himself his how i if in into is it its itself just me more most my myself no
    nor not now of off on once only or other our ours ourselves out over own same she should so some such than
    that the their theirs them themselves then there these they this those through to too under until up very
    was we were what when where which while who whom why will with would you your yours yourself yourselves""".split()
)
# SQLite: FTS5 ranks its matches alone (fast: ``ORDER BY rank``), then the best are checked against the
# documents; when too few of them are searchable here, it asks for more, and past this many it joins instead.
FTS_FIRST = 200
FTS_MAX = 20_000
DF_TTL = 300.0  # seconds a word's document frequency (and the chunk count) is remembered
DF_CACHE = 20_000  # words remembered
DF_FLOOR = 50  # a word is never common below this many chunks
_SQLITE_DF = "SELECT count(*) FROM (SELECT rowid FROM rag_chunks_fts WHERE rag_chunks_fts MATCH :query LIMIT :cap)"
_PG_DF = (
    "SELECT count(*) FROM (SELECT 1 FROM rag_chunks WHERE tsv @@ plainto_tsquery('english', :query) LIMIT :cap) AS m"
)

_SQLITE_RANKED = """
SELECT rowid AS id, -rank AS score FROM rag_chunks_fts WHERE rag_chunks_fts MATCH :query ORDER BY rank LIMIT :limit
"""
# ``+``: no index for these terms, so the planner starts from the chunk ids (see ``repo._unindexed_ready_in``).
_SQLITE_KEEP = text(
    """
SELECT c.id AS id, c.document_id AS document_id FROM rag_chunks c JOIN rag_documents d ON d.id = c.document_id
WHERE c.id IN :ids AND +d.status = 'ready' AND +d.collection_id IN :collections
"""
).bindparams(bindparam("ids", expanding=True), bindparam("collections", expanding=True))
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
    """The query's distinct words, lower-cased, in order, stopwords left out unless there is nothing else
    (at most ``MAX_TERMS``)."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(query.lower()):
        seen.setdefault(word, None)
    words = list(seen)
    content = [w for w in words if w not in STOPWORDS]
    return (content or words)[:MAX_TERMS]


def fts5_query(words: Sequence[str]) -> str:
    """FTS5 MATCH text: each word a quoted string, any of them matching."""
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words)


def websearch_query(words: Sequence[str]) -> str:
    """``websearch_to_tsquery`` text: the words joined with ``or`` (its OR operator)."""
    return " or ".join(w for w in words if w != "or")


class LexicalIndex:
    """Lexical search over the store's chunk table (the index itself is kept by the database).

    ``max_df``: leave out of a query the words found in more than this share of all chunks, as long as
    two or more words remain (their BM25 weight is small, and scoring their matches is most of the work).
    A word's share is counted up to the cut-off (``LIMIT``) and remembered for ``DF_TTL`` seconds.
    None: every word is kept (exact BM25).

    ``postings`` (SQLite only): rank with FTS5's BM25 over in-memory postings (``rag/postings.py``), kept
    in ``postings_dir`` between runs; FTS5 itself answers until they are built, and when they cannot.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        max_df: float | None = None,
        postings: bool = False,
        postings_dir: Path | None = None,
    ) -> None:
        self.engine = engine
        self.max_df = max_df
        self._postgres = engine.dialect.name == "postgresql"
        self._df: OrderedDict[str, tuple[float, bool]] = OrderedDict()  # word -> (when, common?)
        self._total: tuple[float, int] = (-DF_TTL, 0)
        database = engine.url.database
        self._postings_at: tuple[Path, Path | None] | None = None
        if postings and not self._postgres and database and database != ":memory:":
            self._postings_at = (Path(database), postings_dir)
        self.postings: PostingsIndex | None = None
        self._opening: Future[None] | None = None
        self._closed = False

    @classmethod
    def from_settings(cls, engine: AsyncEngine, retrieval: RetrievalSettings, data_dir: Path) -> LexicalIndex:
        return cls(engine, retrieval.lexical_max_df, retrieval.lexical_postings, data_dir / "lexical")

    async def ready(self) -> None:
        """The postings built or loaded (at once without them; FTS5 answers if they failed)."""
        opening = self.warm()
        if opening is not None:
            await asyncio.wrap_future(opening)

    def warm(self) -> Future[None] | None:
        """Start building (or loading) the postings in the background, once; None without postings."""
        if self._postings_at is not None and self._opening is None and not self._closed:
            self._opening = Future()
            threading.Thread(target=self._start_postings, name="chatgate-postings-start", daemon=True).start()
        return self._opening

    def _start_postings(self) -> None:
        opening = self._opening
        assert opening is not None and self._postings_at is not None
        try:
            import_numpy()  # imported here, not at start
            from chatgate.rag.postings import PostingsIndex

            postings = PostingsIndex(*self._postings_at)
            self.postings = postings
            if self._closed:
                postings.close()
            else:
                postings.open().result()
        except BaseException as exc:
            opening.set_exception(exc)
        else:
            opening.set_result(None)

    def postings_stats(self) -> dict[str, object] | None:
        """For ``/admin/metrics``: None when lexical search does not use postings."""
        if self._postings_at is None:
            return None
        if self.postings is None:
            return {"ready": False, "started": self._opening is not None}
        return self.postings.stats()

    def close(self) -> None:
        self._closed = True
        if self.postings is not None:
            self.postings.close()

    async def _common(self, words: list[str]) -> set[str]:
        """The words matching more than ``max_df`` of the chunks (none unless three or more words)."""
        if self.max_df is None or len(words) < 3:
            return set()
        now = time.monotonic()
        async with self.engine.connect() as conn:
            if now - self._total[0] > DF_TTL:
                self._total = (now, int((await conn.execute(text("SELECT count(*) FROM rag_chunks"))).scalar_one()))
            cap = max(DF_FLOOR, int(self._total[1] * self.max_df))
            sql = text(_PG_DF if self._postgres else _SQLITE_DF)
            common: set[str] = set()
            for w in words:
                cached = self._df.get(w)
                if cached is None or now - cached[0] > DF_TTL:
                    q = w if self._postgres else fts5_query([w])
                    n = int((await conn.execute(sql, {"query": q, "cap": cap + 1})).scalar_one())
                    cached = (now, n > cap)
                    self._df[w] = cached
                    if len(self._df) > DF_CACHE:
                        self._df.popitem(last=False)
                else:
                    self._df.move_to_end(w)
                if cached[1]:
                    common.add(w)
        return common if len(words) - len(common) >= 2 else set()

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
        common = await self._common(words)
        words = [w for w in words if w not in common]
        match = websearch_query(words) if self._postgres else fts5_query(words)
        if not match:
            return []
        if self._postings_at is not None:
            self.warm()
            if self.postings is not None and self.postings.ready:
                found = await self._postings_ranked(collection_ids, words, limit, document_ids)
                if found is not None:
                    return found
        if not self._postgres and document_ids is None:
            ranked = await self._sqlite_ranked(collection_ids, match, limit)
            if ranked is not None:
                return ranked
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

    async def _sqlite_ranked(
        self, collection_ids: Sequence[str], match: str, limit: int
    ) -> list[tuple[int, float]] | None:
        """The best ``limit`` matches ranked by FTS5 alone, then kept if searchable in the collections; None
        when that would need more than ``FTS_MAX`` matches (the caller joins instead)."""
        ranked_sql = text(_SQLITE_RANKED)
        fetch = max(FTS_FIRST, 2 * limit)
        async with self.engine.connect() as conn:
            while fetch <= FTS_MAX:
                ranked = [
                    (int(r.id), float(r.score))
                    for r in await conn.execute(ranked_sql, {"query": match, "limit": fetch})
                ]
                if not ranked:
                    return []
                keep = await _searchable(conn, [i for i, _ in ranked], collection_ids)
                found = [(i, v) for i, v in ranked if i in keep]
                if len(found) >= limit or len(ranked) < fetch:
                    return found[:limit]
                fetch *= 4
        return None

    async def _postings_ranked(
        self, collection_ids: Sequence[str], words: list[str], limit: int, document_ids: Sequence[str] | None
    ) -> list[tuple[int, float]] | None:
        """The best ``limit`` by the postings, kept if searchable in the collections; None when FTS5 must
        answer (a phrase among the words, a hit changed under its id, the postings failing)."""
        postings = self.postings
        assert postings is not None
        # The postings already keep to the collections: only chunks of documents not (or no longer) ready can
        # fall out, so a few more than asked for nearly always suffice.
        fetch = limit + max(10, limit // 2)
        loop = asyncio.get_running_loop()
        while True:
            try:
                ranked = await asyncio.wrap_future(
                    postings.submit(_rank, postings, words, list(collection_ids), document_ids, fetch), loop=loop
                )
            except Exception:
                log.warning("lexical postings search failed; FTS5 answers", exc_info=True)
                return None
            if ranked is None:
                return None
            if not ranked:
                return []
            async with self.engine.connect() as conn:
                keep = await _searchable(conn, [i for i, _, _ in ranked], collection_ids)
            if any(keep.get(i, d) != d for i, _, d in ranked):
                postings.invalidate()  # a known id now holds another document's chunk
                return None
            found = [(i, v) for i, v, _ in ranked if i in keep]
            if len(found) >= limit or len(ranked) < fetch or fetch >= FTS_MAX:
                return found[:limit]
            fetch *= 4


async def _searchable(conn: AsyncConnection, ids: list[int], collection_ids: Sequence[str]) -> dict[int, str]:
    """Of ``ids``, the chunks of ready documents in the collections: chunk id -> document id."""
    rows = await conn.execute(_SQLITE_KEEP, {"ids": ids, "collections": list(collection_ids)})
    return {int(r.id): r.document_id for r in rows}


def _rank(
    postings: PostingsIndex,
    words: list[str],
    collection_ids: list[str],
    document_ids: Sequence[str] | None,
    limit: int,
) -> list[tuple[int, float, str]] | None:
    """On the postings' thread: in step with the store, then ranked (None: a word is a phrase to FTS5)."""
    postings.sync()
    found = postings.terms(words)
    if found is None:
        return None
    return postings.rank(found, collection_ids, document_ids, limit)
