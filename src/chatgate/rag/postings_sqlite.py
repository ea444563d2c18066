"""What changed in SQLite's chunk table, for the postings (``lexical_postings.ChunkFeed``).

On its own read-only connection, ``PRAGMA data_version`` says whether another connection wrote the database
since the last look (one PRAGMA when nothing was). If so, chunks above the highest id known are new; when
the count says some went (a replaced or deleted document), or the highest id fell (SQLite hands the highest
ids out again once they are free), every ``(id, document)`` pair is compared, at most every
``FULL_SYNC_EVERY`` seconds (until then, the hits are checked against the store anyway).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from chatgate.rag.lexical_fts5 import tokenize_option
from chatgate.rag.lexical_postings import Changes, Row

T = TypeVar("T")
FULL_SYNC_EVERY = 1.0  # seconds: at most this often, every (id, document) pair is compared
BATCH = 2_000  # rows read at a time
_IN = 500  # ids per IN (...) list
_ROWS = (
    "SELECT c.id, c.document_id, d.collection_id, c.title || ' ' || c.text FROM rag_chunks c "
    "JOIN rag_documents d ON d.id = c.document_id WHERE {where} ORDER BY c.id"
)


class SqliteFeed:
    name = "sqlite"

    def __init__(self, database: Path) -> None:
        self.database = database
        self.tokenize = ""
        self._conn: sqlite3.Connection | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="chatgate-postings-sqlite")
        self._version: int | None = None
        self._last_full = 0.0
        self._resync = False

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.wrap_future(self._pool.submit(fn, *args))

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        conn = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, check_same_thread=False)
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'rag_chunks_fts'").fetchone()
        self.tokenize = tokenize_option(sql[0] if sql else "")
        self._conn = conn

    async def close(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, True)
        if self._conn is not None:
            self._conn.close()

    def resync(self) -> None:
        self._resync = True

    async def changes(self, known: tuple[int, int], everything: bool = False) -> Changes | None:
        return await self._run(self._changes, known, everything)

    def _changes(self, known: tuple[int, int], everything: bool) -> Changes | None:
        conn = self._conn
        assert conn is not None
        max_id, alive = known
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._version and not everything and not self._resync:
            return None
        conn.execute("BEGIN")
        try:
            top, count, new = conn.execute(
                "SELECT coalesce(max(id), 0), count(*), coalesce(sum(id > ?), 0) FROM rag_chunks", (max_id,)
            ).fetchone()
            out = Changes(added=max_id if new else None)
            if count != alive + new or top < max_id or self._resync or everything:
                now = time.monotonic()
                if everything or self._resync or now - self._last_full >= FULL_SYNC_EVERY:
                    pairs = conn.execute("SELECT id, document_id FROM rag_chunks")
                    out = Changes(present={int(i): d for i, d in pairs})
                    self._last_full = now
                    self._resync = False
                else:
                    version = None  # compare again at a later search
        finally:
            conn.execute("COMMIT")
        self._version = version
        return out if out.present is not None or out.added is not None else None

    async def rows(self, added: object, missing: Sequence[int]) -> AsyncIterator[list[Row]]:
        if isinstance(added, int):
            async for batch in self._query("c.id > ?", (added,)):
                yield batch
        for start in range(0, len(missing), _IN):
            part = list(missing[start : start + _IN])
            async for batch in self._query("c.id IN (" + ",".join("?" * len(part)) + ")", part):
                yield batch

    async def _query(self, where: str, params: Sequence[object]) -> AsyncIterator[list[Row]]:
        conn = self._conn
        assert conn is not None
        cursor = await self._run(conn.execute, _ROWS.format(where=where), tuple(params))
        try:
            while rows := await self._run(cursor.fetchmany, BATCH):
                yield rows
        finally:
            await self._run(cursor.close)
