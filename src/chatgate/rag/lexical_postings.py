"""Lexical ranking by FTS5's BM25 over in-memory postings (``postings.py``), on either store.

The postings are built (or loaded from ``<data_dir>/lexical/postings.npz`` and brought up to date) in the
background; until then, and whenever they cannot answer, a database ranker does (``fallback``: FTS5 on
SQLite, the same ranking, slower; ``ts_rank_cd`` on PostgreSQL). Before each search a feed says what changed
in the chunk table since the last one (``postings_sqlite.SqliteFeed``: ``PRAGMA data_version``;
``postings_pg.PostgresFeed``: the change log of migration 0006), so a chunk written by this process or any
other is found by the next search, and one deleted is gone from it. Each process holds its own postings.

The hits are checked against the store (ready document, in the collections, the same document as known): a
chunk found changed under a known id makes the feed compare everything before the next search, and this
search use the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from chatgate.rag.lexical import LexicalIndex, terms
from chatgate.rag.repo import RagRepo
from chatgate.rag.types import import_numpy

if TYPE_CHECKING:
    from chatgate.rag.postings import PostingsIndex

log = logging.getLogger(__name__)
T = TypeVar("T")
Row = tuple[int, str, str, str]  # chunk id, document id, collection id, title and text
MAX_FETCH = 20_000  # hits asked of the postings at most (when the store keeps too few of them)


@dataclass
class Changes:
    """What changed in the chunk table: ids gone; every (id, document) pair when the feed compares
    everything (the postings add what they lack); new rows, in the feed's own terms (``ChunkFeed.rows``)."""

    gone: list[int] = field(default_factory=list)
    present: dict[int, str] | None = None
    added: object = None


class ChunkFeed(Protocol):
    """Where the postings learn what changed in the chunk table."""

    name: str
    tokenize: str
    """The FTS5 ``tokenize`` option whose terms the postings hold."""

    async def open(self) -> None: ...

    async def changes(self, known: tuple[int, int], everything: bool = False) -> Changes | None:
        """The changes since the last call (None: nothing changed). ``known``: the postings' highest chunk id
        and alive count; ``everything``: compare every chunk."""
        ...

    def rows(self, added: object, missing: Sequence[int]) -> AsyncIterator[list[Row]]:
        """The new rows ``changes`` described, and those of ``missing`` ids, in batches."""
        ...

    def resync(self) -> None:
        """Compare every chunk at the next call."""
        ...

    async def close(self) -> None: ...


class PostingsSearch:
    """See the module. ``max_df``: see ``lexical.common`` (decided from the postings' exact counts)."""

    def __init__(
        self,
        feed: ChunkFeed,
        engine: AsyncEngine,
        fallback: LexicalIndex,
        snapshot_dir: Path | None,
        max_df: float | None = None,
    ) -> None:
        self.feed = feed
        self.repo = RagRepo(engine)
        self.fallback = fallback
        self.snapshot_dir = snapshot_dir
        self.max_df = max_df
        self.index: PostingsIndex | None = None  # once ready
        self._building: PostingsIndex | None = None
        self._opening: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self.failed = False

    # -- lifecycle -----------------------------------------------------------------------------------------

    def warm(self) -> None:
        if self._opening is None and not self._closed:
            self._opening = asyncio.ensure_future(self._open())

    async def ready(self) -> None:
        """The postings built or loaded (or failed: the fallback answers)."""
        self.warm()
        if self._opening is not None:
            await asyncio.shield(self._opening)

    async def _open(self) -> None:
        from chatgate.rag.postings import Closing

        started = time.monotonic()
        try:
            await asyncio.to_thread(import_numpy)  # imported here, not at start
            from chatgate.rag.postings import PostingsIndex

            index = self._building = PostingsIndex(self.snapshot_dir)
            await self.feed.open()
            loaded = await _on(index, index.start, self.feed.tokenize)
            await self._in_step(index, everything=True)
            await _on(index, index.settle, True)
        except Closing:
            return
        except Exception:
            self.failed = True
            log.warning("lexical postings unavailable; the database ranks alone", exc_info=True)
            return
        self.index = index
        log.info(
            "lexical postings ready",
            extra={"chunks": index.known[1], "seconds": round(time.monotonic() - started, 3), "snapshot": loaded},
        )

    async def close(self) -> None:
        """Stop: a build in progress gives up at its next batch; a snapshot being written is finished."""
        self._closed = True
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
            with contextlib.suppress(BaseException):
                await self._opening
        if self._building is not None:
            await asyncio.to_thread(self._building.close)
        await self.feed.close()
        await self.fallback.close()

    def stats(self) -> dict[str, object]:
        out: dict[str, object] = {
            "ranker": "bm25_postings",
            "store": self.feed.name,
            "fallback": self.fallback.stats()["ranker"],
            "ready": self.index is not None,
            "started": self._opening is not None,
            "failed": self.failed,
        }
        if self.index is not None:
            out |= self.index.stats()
        return out

    # -- keeping in step -----------------------------------------------------------------------------------

    async def _in_step(self, index: PostingsIndex, everything: bool = False) -> None:
        """Apply what the feed says changed (one searcher at a time; the others then find nothing new)."""
        async with self._lock:
            changes = await self.feed.changes(index.known, everything)
            if changes is None:
                return
            if changes.gone:
                await _on(index, index.remove, changes.gone)
            missing: list[int] = []
            if changes.present is not None:
                missing = await _on(index, index.reconcile, changes.present)
            async for rows in self.feed.rows(changes.added, missing):
                await _on(index, index.add, rows)
            if not everything:
                await _on(index, index.settle)

    # -- search --------------------------------------------------------------------------------------------

    async def search(
        self, collection_ids: Sequence[str], query: str, limit: int, document_ids: Sequence[str] | None = None
    ) -> list[tuple[int, float]]:
        index = self.index
        if index is None:
            self.warm()
            return await self.fallback.search(collection_ids, query, limit, document_ids)
        words = terms(query)
        if not words or not collection_ids or limit <= 0 or (document_ids is not None and not document_ids):
            return []
        try:
            found = await self._ranked(index, words, collection_ids, limit, document_ids)
        except Exception:
            log.warning("lexical postings search failed; the database answers", exc_info=True)
            found = None
        if found is None:
            return await self.fallback.search(collection_ids, query, limit, document_ids)
        return found

    async def _ranked(
        self,
        index: PostingsIndex,
        words: list[str],
        collection_ids: Sequence[str],
        limit: int,
        document_ids: Sequence[str] | None,
    ) -> list[tuple[int, float]] | None:
        """The best ``limit`` by the postings, kept if searchable in the collections; None when the fallback
        must answer (a word that is a phrase to FTS5, a hit changed under its id)."""
        await self._in_step(index)
        found_terms = await _on(index, index.terms, words)
        if found_terms is None:
            return None
        # The postings already keep to the collections: only chunks of documents not (or no longer) ready can
        # fall out, so a few more than asked for nearly always suffice.
        fetch = limit + max(10, limit // 2)
        collections = list(collection_ids)
        while True:
            ranked = await _on(index, index.rank, found_terms, collections, document_ids, fetch, self.max_df)
            if not ranked:
                return []
            keep = await self.repo.searchable([i for i, _, _ in ranked], collections)
            if any(keep.get(i, d) != d for i, _, d in ranked):
                self.feed.resync()  # a known id now holds another document's chunk
                return None
            hits = [(i, v) for i, v, _ in ranked if i in keep]
            if len(hits) >= limit or len(ranked) < fetch or fetch >= MAX_FETCH:
                return hits[:limit]
            fetch *= 4


async def _on(index: PostingsIndex, fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` on the postings' thread."""
    return await asyncio.wrap_future(index.submit(fn, *args))
