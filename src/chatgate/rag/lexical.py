"""Lexical search over chunk text: one interface, and what every ranker behind it shares.

Rankers (chosen in ``app.build_lexical``):

- ``lexical_postings.PostingsSearch``: FTS5's BM25 over in-memory postings, on SQLite and PostgreSQL alike
  (same tokenizer, statistics and scores), with a database ranker answering until they are ready;
- ``lexical_fts5.Fts5Search``: SQLite FTS5's own ``bm25()``;
- ``lexical_pg.PgFullText``: PostgreSQL's ``ts_rank_cd`` over the GIN index (the fallback there).

Only chunks of ``ready`` documents are returned. A query is taken as words, any of which may match (OR),
best first (higher is better). Query syntax is never passed through: each word is quoted (FTS5) or joined
with ``or`` (websearch), so no input can make a query invalid.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from chatgate.rag.repo import RagRepo

MAX_TERMS = 64
# Words are runs of letters and digits: an underscore separates them, as FTS5's unicode61 tokenizer does (so a
# word is one FTS5 term, never a phrase, and every ranker reads a query alike).
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
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
DF_TTL = 300.0  # seconds a word's document frequency (and the chunk count) is remembered (database rankers)
DF_CACHE = 20_000  # words remembered
DF_FLOOR = 50  # a word is never common below this many chunks


class LexicalIndex(Protocol):
    """A lexical ranker over the store's chunks."""

    async def search(
        self, collection_ids: Sequence[str], query: str, limit: int, document_ids: Sequence[str] | None = None
    ) -> list[tuple[int, float]]:
        """(chunk id, score) best first, from ready documents in the collections (and among ``document_ids``
        when given)."""
        ...

    def warm(self) -> None:
        """Start whatever it builds in the background (once; nothing for a database ranker)."""
        ...

    async def ready(self) -> None:
        """Until it ranks as it will from now on (at once for a database ranker)."""
        ...

    async def close(self) -> None: ...

    def stats(self) -> dict[str, object]:
        """For ``/admin/metrics``: at least ``ranker``."""
        ...


def terms(query: str) -> list[str]:
    """The query's distinct words, lower-cased, in order, stopwords left out unless there is nothing else
    (at most ``MAX_TERMS``)."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(query.lower()):
        seen.setdefault(word, None)
    words = list(seen)
    content = [w for w in words if w not in STOPWORDS]
    return (content or words)[:MAX_TERMS]


def common(counts: Sequence[int], total: int, max_df: float) -> set[int]:
    """Positions of the words to leave out of a query: those found in more than ``max_df`` of ``total``
    chunks (and at least ``DF_FLOOR``), when three or more words are asked and two or more remain.
    ``counts`` may stop at ``cap(total, max_df) + 1``."""
    if len(counts) < 3:
        return set()
    limit = cap(total, max_df)
    out = {i for i, n in enumerate(counts) if n > limit}
    return out if len(counts) - len(out) >= 2 else set()


def cap(total: int, max_df: float) -> int:
    return max(DF_FLOOR, int(total * max_df))


class CommonWords:
    """``common`` for the database rankers: each word's count (up to the cut-off) and the chunk count asked
    of the store, and remembered for ``DF_TTL`` seconds. None ``max_df``: every word is kept (exact BM25)."""

    def __init__(
        self,
        max_df: float | None,
        count_chunks: Callable[[], Awaitable[int]],
        count_word: Callable[[str, int], Awaitable[int]],
    ) -> None:
        self.max_df = max_df
        self._count_chunks, self._count_word = count_chunks, count_word
        self._df: OrderedDict[str, tuple[float, int, int]] = OrderedDict()  # word -> (when, cut-off, count)
        self._total: tuple[float, int] = (-DF_TTL, 0)

    async def without(self, words: list[str]) -> list[str]:
        """``words`` less the common ones."""
        if self.max_df is None or len(words) < 3:
            return words
        now = time.monotonic()
        if now - self._total[0] > DF_TTL:
            self._total = (now, await self._count_chunks())
        total = self._total[1]
        limit = cap(total, self.max_df) + 1
        counts = []
        for w in words:
            cached = self._df.get(w)
            if cached is None or now - cached[0] > DF_TTL or cached[1] != limit:
                cached = (now, limit, await self._count_word(w, limit))
                self._df[w] = cached
                if len(self._df) > DF_CACHE:
                    self._df.popitem(last=False)
            else:
                self._df.move_to_end(w)
            counts.append(cached[2])
        drop = common(counts, total, self.max_df)
        return [w for i, w in enumerate(words) if i not in drop]


class DatabaseRanker:
    """What the database's own rankers share: nothing to build or close, and the common-word cut-off
    (``CommonWords``) from counts they ask of the store."""

    name = ""

    def __init__(self, engine: AsyncEngine, max_df: float | None = None) -> None:
        self.engine = engine
        self.repo = RagRepo(engine)
        self.common = CommonWords(max_df, self._count_chunks, self._count_word)

    def warm(self) -> None:
        pass

    async def ready(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def stats(self) -> dict[str, object]:
        return {"ranker": self.name}

    async def _count_chunks(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(text("SELECT count(*) FROM rag_chunks"))).scalar_one())

    async def _count_word(self, word: str, cap: int) -> int:
        """Chunks matching ``word``, counted up to ``cap``."""
        raise NotImplementedError
