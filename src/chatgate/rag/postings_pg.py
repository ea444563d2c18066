"""What changed in PostgreSQL's chunk table, for the postings (``lexical_postings.ChunkFeed``).

Triggers (migration 0006) write every chunk inserted or deleted to ``rag_chunk_changes`` with the writing
transaction's id (``xid8``). Ids are handed out in order but committed in any order, so neither a chunk id
nor a log sequence number can say "everything before this is seen". A snapshot can: it lists the
transactions still running (``xip``) and the first one not started yet (``xmax``); every other transaction
below ``xmax`` had ended, so its entries, if committed, were visible in it. Each poll therefore reads, in
one statement (one snapshot), the new snapshot's bounds and only the entries of transactions that were
running or not yet started at the last one: every entry is read exactly once, whatever else runs on the
server (a long transaction elsewhere costs nothing). Nothing changed: one statement, one row.

Chunk ids come from a sequence and are never reused; a delete followed by an insert is two entries. Each
process reads the log on its own, so every instance's postings keep up with every writer.

The log is pruned by the readers: at most every ``PRUNE_EVERY`` seconds, entries of transactions below an
``xmin`` (the oldest transaction still running) this process saw ``KEEP_CHANGES`` seconds ago are deleted,
and ``rag_chunk_changes_pruned.below`` records it: a reader whose last ``xmin`` is below that (idle for that
long) compares every chunk instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, BIGINT
from sqlalchemy.ext.asyncio import AsyncEngine

from chatgate.rag.lexical_fts5 import TOKENIZE
from chatgate.rag.lexical_postings import Changes, Row

log = logging.getLogger(__name__)
KEEP_CHANGES = 3600.0  # seconds of the change log kept for readers
PRUNE_EVERY = 300.0
SAMPLE_EVERY = 60.0  # seconds between the xmin values remembered for pruning
BATCH = 5_000  # rows read at a time

_BOUNDS = (
    "pg_snapshot_xmin(pg_current_snapshot()) AS xmin, pg_snapshot_xmax(pg_current_snapshot()) AS xmax, "
    "ARRAY(SELECT pg_snapshot_xip(pg_current_snapshot())) AS xip"
)
# Kept cheap in the planner's eyes too: a join with the one-row table (2,260 rows to a planner without
# statistics) made the estimate large enough for PostgreSQL to JIT-compile the poll (~270 ms each time).
_POLL = text(
    f"""
SELECT s.xmin, s.xmax, s.xip, (SELECT max(below) FROM rag_chunk_changes_pruned) AS below, c.chunk_id, c.gone
FROM (SELECT {_BOUNDS}) AS s
LEFT JOIN rag_chunk_changes AS c ON c.xid >= :xmax OR c.xid = ANY(:xip)
ORDER BY c.seq
"""
)
_ROWS = text(
    "SELECT c.id, c.document_id, d.collection_id, c.title || ' ' || c.text AS text FROM rag_chunks c "
    "JOIN rag_documents d ON d.id = c.document_id WHERE c.id = ANY(:ids) ORDER BY c.id"
).bindparams(bindparam("ids", type_=ARRAY(BIGINT)))


class PostgresFeed:
    name = "postgresql"
    tokenize = TOKENIZE

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._last: tuple[int, int, list[int]] | None = None  # the last snapshot's xmin, xmax and xip
        self._resync = False
        self._samples: deque[tuple[float, int]] = deque()  # (monotonic time, xmin), oldest first
        self._pruned = time.monotonic()
        self._pruning: asyncio.Task[None] | None = None

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        if self._pruning is not None:
            await asyncio.gather(self._pruning, return_exceptions=True)

    def resync(self) -> None:
        self._resync = True

    async def changes(self, known: tuple[int, int], everything: bool = False) -> Changes | None:
        last = self._last
        if everything or self._resync or last is None:
            return await self._everything()
        async with self.engine.connect() as conn:
            rows = (await conn.execute(_POLL, {"xmax": last[1], "xip": last[2]})).all()
        first = rows[0]
        if int(first.below) > last[0]:  # entries this reader needs were pruned
            return await self._everything()
        self._seen_snapshot(int(first.xmin), int(first.xmax), first.xip)
        gone: set[int] = set()
        added: set[int] = set()
        for r in rows:
            if r.chunk_id is None:
                continue
            cid = int(r.chunk_id)
            # In sequence order, a chunk's last entry says whether it is there.
            (gone if r.gone else added).add(cid)
            (added if r.gone else gone).discard(cid)
        if not gone and not added:
            return None
        return Changes(gone=sorted(gone), added=sorted(added))

    async def _everything(self) -> Changes:
        """Every (id, document) pair, and the bounds of the same snapshot."""
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                bounds = (await conn.execute(text(f"SELECT {_BOUNDS}"))).one()
                present = {int(i): d for i, d in await conn.execute(text("SELECT id, document_id FROM rag_chunks"))}
        self._seen_snapshot(int(bounds.xmin), int(bounds.xmax), bounds.xip)
        self._resync = False
        return Changes(present=present)

    def _seen_snapshot(self, xmin: int, xmax: int, xip: Sequence[int] | None) -> None:
        self._last = (xmin, xmax, [int(x) for x in xip or ()])
        self._sample(xmin)

    async def rows(self, added: object, missing: Sequence[int]) -> AsyncIterator[list[Row]]:
        ids = sorted(set(added if isinstance(added, list) else ()) | set(missing))
        for start in range(0, len(ids), BATCH):
            async with self.engine.connect() as conn:
                found = await conn.execute(_ROWS, {"ids": ids[start : start + BATCH]})
                batch = [(int(r.id), r.document_id, r.collection_id, r.text) for r in found]
            if batch:
                yield batch

    # -- pruning -------------------------------------------------------------------------------------------

    def _sample(self, horizon: int) -> None:
        now = time.monotonic()
        if not self._samples or now - self._samples[-1][0] >= SAMPLE_EVERY:
            self._samples.append((now, horizon))
        if now - self._pruned >= PRUNE_EVERY and (self._pruning is None or self._pruning.done()):
            self._pruned = now
            old = None
            while self._samples and now - self._samples[0][0] >= KEEP_CHANGES:
                old = self._samples.popleft()[1]
            if old is not None:
                self._pruning = asyncio.ensure_future(self._prune(old))

    async def _prune(self, below: int) -> None:
        """Delete the entries of transactions below ``below`` (every reader seen since has read them)."""
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    text("UPDATE rag_chunk_changes_pruned SET below = greatest(below, :below)"), {"below": below}
                )
                await conn.execute(text("DELETE FROM rag_chunk_changes WHERE xid < :below"), {"below": below})
        except Exception:  # the next round tries again
            log.warning("lexical change log not pruned", exc_info=True)
