"""FTS5's BM25 ranking computed over in-memory postings, whatever the store.

FTS5 must score every chunk that any query word matches before it can sort them, and a question's words
together match about half of all chunks: 80+ ms a search at 100k chunks. This index holds the same terms
(produced by FTS5's own tokenizer, run on an in-memory FTS5 table with the store's ``tokenize`` option),
the same statistics (every chunk row counts, as in FTS5) and the same formula as FTS5's ``bm25()`` (k1 1.2,
b 0.75, idf floored at 1e-6, title and text weighted alike), as NumPy arrays: a query's postings are scored
in a few milliseconds. On SQLite it is a cache of FTS5; on PostgreSQL it is the BM25 ranking itself (the
same figures as on SQLite for the same chunks). It knows nothing of the store: a feed tells it which
chunks came and went (``lexical_postings.py``, ``postings_sqlite.py``, ``postings_pg.py``).

A chunk gone is marked dead (its postings stay until the next compaction, skipped when counting). New
chunks go to a small delta; past ``COMPACT_SHARE`` of the main postings (or dead chunks), a background
thread merges everything into new main arrays and saves them (``<data_dir>/lexical/postings.npz``), so a
restart loads the arrays instead of tokenizing every chunk again, and only synchronises the difference.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from chatgate.rag.fts5 import Fts5Tokenizer
from chatgate.rag.lexical import common
from chatgate.rag.postings_file import Snapshot

log = logging.getLogger(__name__)
T = TypeVar("T")

K1, B = 1.2, 0.75  # FTS5 bm25()
MIN_IDF = 1e-6
BATCH = 2_000  # chunks tokenized at a time
COMPACT_SHARE = 0.25
MAX_BATCHES = 256  # delta batches (each looked up per query term) before a compaction


class _Grow:
    """An append-only NumPy array with spare capacity."""

    def __init__(self, dtype: object, data: np.ndarray | None = None) -> None:
        self.a = np.zeros(max(1024, 0 if data is None else len(data) * 2), dtype=dtype)  # type: ignore[call-overload]
        self.n = 0
        if data is not None:
            self.extend(data)

    def extend(self, values: np.ndarray | Sequence[object]) -> None:
        values = np.asarray(values, dtype=self.a.dtype)
        need = self.n + len(values)
        if need > len(self.a):
            bigger = np.zeros(max(need, 2 * len(self.a)), dtype=self.a.dtype)
            bigger[: self.n] = self.a[: self.n]
            self.a = bigger
        self.a[self.n : need] = values
        self.n = need

    @property
    def view(self) -> np.ndarray:
        view: np.ndarray = self.a[: self.n]
        return view


@dataclass
class _Batch:
    """Postings of chunks added together, by term: ``lookup[term] = (start, end)`` into ``idx``/``tf``."""

    tid: np.ndarray
    idx: np.ndarray
    tf: np.ndarray
    lookup: dict[int, tuple[int, int]]

    @classmethod
    def of(cls, tid: np.ndarray, idx: np.ndarray, tf: np.ndarray) -> _Batch:
        order = np.argsort(tid, kind="stable")
        tid, idx, tf = tid[order], idx[order], tf[order]
        terms, starts = np.unique(tid, return_index=True)
        ends = np.append(starts[1:], len(tid))
        spans = zip(starts.tolist(), ends.tolist(), strict=True)
        return cls(tid, idx, tf, dict(zip(terms.tolist(), spans, strict=True)))


@dataclass
class _Main:
    """Immutable postings of the chunks below ``chunks``: term id -> ``idx[offsets[t]:offsets[t+1]]``."""

    chunks: int = 0
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    idx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    tf: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


class PostingsIndex:
    """See the module. Every method but ``submit``/``close`` runs on the index's own thread (``submit``);
    a compaction builds new main arrays on a second thread, and the index's thread swaps them in."""

    def __init__(self, snapshot_dir: Path | None) -> None:
        self._file = snapshot_dir / "postings.npz" if snapshot_dir is not None else None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="chatgate-postings")
        self._compactor = ThreadPoolExecutor(1, thread_name_prefix="chatgate-postings-compact")
        self._tokenizer: Fts5Tokenizer | None = None
        # Chunks, by internal index (never reused).
        self._ids = _Grow(np.int64)
        self._dl = _Grow(np.float64)
        self._coll = _Grow(np.int32)
        self._alive = _Grow(np.bool_)
        self._docs: list[str] = []
        self._where: dict[int, int] = {}  # alive chunk id -> internal index
        self._collections: dict[str, int] = {}
        self._terms: dict[str, int] = {}
        self._main = _Main()
        self._delta: list[_Batch] = []  # chunks added since the main arrays were built
        self._delta_postings = 0
        self._dead = 0  # dead chunks whose postings are still held
        self._alive_n = 0
        self._total = 0.0  # tokens in alive chunks
        self._max_id = 0
        self._compacting: Future[tuple[_Main, int, int, np.ndarray]] | None = None
        self._closing = False
        self._changes = 0  # chunks killed so far (a key of the cached collection mask)
        self._wanted: tuple[object, np.ndarray] = ((), np.zeros(0, np.bool_))

    # -- lifecycle -----------------------------------------------------------------------------------------

    def submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        """Run ``fn`` on the index's thread (every method below but ``close`` runs there)."""
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        """Stop: a build in progress gives up at its next batch; a snapshot being written is finished."""
        self._closing = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._compactor.shutdown(wait=True)

    def start(self, tokenize: str) -> bool:
        """Take the store's tokenizer and load the snapshot, when there is one made with it (True)."""
        self._tokenizer = Fts5Tokenizer(tokenize)
        return self._load(tokenize)

    @property
    def known(self) -> tuple[int, int]:
        """(highest chunk id ever added, chunks alive): what a feed compares with the store."""
        return self._max_id, self._alive_n

    # -- keeping in step (a feed says what changed: ``lexical_postings.py``) ------------------------------

    def remove(self, ids: Iterable[int]) -> None:
        """Chunks gone from the store (unknown ids are ignored)."""
        for cid in ids:
            if cid in self._where:
                self._kill(cid)

    def reconcile(self, present: dict[int, str]) -> list[int]:
        """Every chunk in the store (id -> document id): the missing or changed ones marked dead; the ids
        to add (new, or under an old id)."""
        for cid, at in list(self._where.items()):
            if present.get(cid) != self._docs[at]:
                self._kill(cid)
        return [cid for cid in present if cid not in self._where]

    def add(self, rows: Sequence[tuple[int, str, str, str]]) -> None:
        """Chunks (id, document id, collection id, title and text), tokenized ``BATCH`` at a time; a known id
        is replaced."""
        for start in range(0, len(rows), BATCH):
            if self._closing:
                raise Closing
            self._add_rows(rows[start : start + BATCH])

    def settle(self, now: bool = False) -> None:
        """After changes: a compaction started when the delta or the dead have grown (``now``: merged at
        once and saved, as after the first build, unless one is already running)."""
        if now:
            self._finish_compaction(again=False)
            if self._compacting is None and (self._delta_postings or self._dead):
                self._swap(self._compaction()(), save=True)
        else:
            self._finish_compaction()
            self._maybe_compact()

    def _add_rows(self, rows: Sequence[tuple[int, str, str, str]]) -> None:
        assert self._tokenizer is not None
        for row in rows:
            if row[0] in self._where:
                self._kill(row[0])
        terms, term_of, text_of, tf, lengths = self._tokenizer.postings([r[3] for r in rows])
        base = self._ids.n
        self._ids.extend([r[0] for r in rows])
        self._dl.extend(lengths)
        self._coll.extend([self._code(self._collections, r[2]) for r in rows])
        self._alive.extend(np.ones(len(rows), np.bool_))
        for offset, row in enumerate(rows):
            self._where[row[0]] = base + offset
            self._docs.append(row[1])
            self._max_id = max(self._max_id, row[0])
        self._alive_n += len(rows)
        self._total += float(lengths.sum())
        if len(tf):
            tids = np.fromiter((self._code(self._terms, t) for t in terms), dtype=np.int64, count=len(terms))
            self._delta.append(_Batch.of(tids[term_of], (text_of + base).astype(np.int32), tf.astype(np.float32)))
            self._delta_postings += len(tf)

    def _kill(self, cid: int) -> None:
        at = self._where.pop(cid)
        self._alive.a[at] = False
        self._changes += 1
        self._alive_n -= 1
        self._total -= float(self._dl.a[at])
        self._dead += 1

    @staticmethod
    def _code(codes: dict[str, int], key: str) -> int:
        code = codes.get(key)
        if code is None:
            code = codes[key] = len(codes)
        return code

    # -- compaction and the snapshot -----------------------------------------------------------------------

    def _maybe_compact(self) -> None:
        if self._compacting is not None:
            return
        if (
            self._delta_postings > COMPACT_SHARE * max(len(self._main.idx), 1)
            or len(self._delta) > MAX_BATCHES
            or self._dead > COMPACT_SHARE * max(self._alive_n, 1)
        ):
            self._compacting = self._compactor.submit(self._compaction())

    def _finish_compaction(self, again: bool = True) -> None:
        """Swap a finished compaction in (and, ``again``, start another if what changed meanwhile calls for
        one)."""
        done = self._compacting
        if done is not None and done.done():
            self._compacting = None
            try:
                result = done.result()
            except Exception:
                log.warning("lexical postings compaction failed", exc_info=True)
                return
            self._swap(result, save=True)
            if again:
                self._maybe_compact()

    def _compaction(self) -> Callable[[], tuple[_Main, int, int, np.ndarray]]:
        """A function merging the main arrays and the delta known now, without dead chunks' postings; it
        returns (new main, delta batches merged, dead chunks dropped, the alive mask it used). It reads
        only copies and immutables."""
        main, delta, n_terms, dead = self._main, list(self._delta), len(self._terms), self._dead
        alive = self._alive.view.copy()

        def build() -> tuple[_Main, int, int, np.ndarray]:
            tid = np.concatenate(
                [np.repeat(np.arange(len(main.offsets) - 1, dtype=np.int64), np.diff(main.offsets))]
                + [b.tid for b in delta]
            )
            idx = np.concatenate([main.idx] + [b.idx for b in delta])
            tf = np.concatenate([main.tf] + [b.tf for b in delta])
            keep = alive[idx]
            tid, idx, tf = tid[keep], idx[keep], tf[keep]
            order = np.lexsort((idx, tid))
            offsets = np.zeros(n_terms + 1, np.int64)
            np.cumsum(np.bincount(tid, minlength=n_terms), out=offsets[1:])
            return _Main(len(alive), offsets, idx[order].astype(np.int32), tf[order]), len(delta), dead, alive

        return build

    def _swap(self, result: tuple[_Main, int, int, np.ndarray], save: bool) -> None:
        main, merged, dropped, alive = result
        self._main = main
        del self._delta[:merged]
        self._delta_postings = sum(len(b.tf) for b in self._delta)
        self._dead -= dropped
        if save and self._file is not None:
            assert self._tokenizer is not None
            n = main.chunks
            # The mask the compaction used: a chunk dead in the file has no postings left in it; one that went
            # since is alive there, and the next start's comparison with the store finds it gone.
            snapshot = Snapshot(
                tokenize=self._tokenizer.tokenize,
                terms=list(self._terms),
                collections=list(self._collections),
                docs=self._docs[:n],
                offsets=main.offsets,
                idx=main.idx,
                tf=main.tf,
                ids=self._ids.a[:n].copy(),
                dl=self._dl.a[:n].copy(),
                coll=self._coll.a[:n].copy(),
                alive=alive,
            )
            self._compactor.submit(snapshot.save, self._file)

    def _load(self, tokenize: str) -> bool:
        """The saved postings, when there are some for this tokenizer (the sync that follows corrects them)."""
        snapshot = Snapshot.load(self._file, tokenize) if self._file is not None else None
        if snapshot is None:
            return False
        ids, dl, alive = snapshot.ids, snapshot.dl, snapshot.alive
        self._terms = {t: i for i, t in enumerate(snapshot.terms)}
        self._collections = {c: i for i, c in enumerate(snapshot.collections)}
        self._main = _Main(len(ids), snapshot.offsets, snapshot.idx, snapshot.tf)
        self._docs = snapshot.docs
        self._ids, self._dl = _Grow(np.int64, ids), _Grow(np.float64, dl)
        self._coll, self._alive = _Grow(np.int32, snapshot.coll), _Grow(np.bool_, alive)
        self._where = {int(ids[i]): int(i) for i in np.flatnonzero(alive)}
        self._alive_n = len(self._where)
        self._total = float(dl[alive].sum())
        self._max_id = int(ids.max()) if len(ids) else 0
        return True

    # -- search --------------------------------------------------------------------------------------------

    def terms(self, words: Sequence[str]) -> list[str] | None:
        """The FTS5 term of each query word (a word without one left out); None when FTS5 would read one
        as a phrase (this index ranks single terms only)."""
        assert self._tokenizer is not None
        out: list[str] = []
        for found in self._tokenizer.words(words):
            if len(found) > 1:
                return None
            out.extend(found)
        return out

    def rank(
        self,
        terms: Sequence[str],
        collection_ids: Sequence[str],
        documents: Sequence[str] | None,
        limit: int,
        max_df: float | None = None,
    ) -> list[tuple[int, float, str]]:
        """The best ``limit`` (chunk id, BM25 score, document id), best first, among the alive chunks of the
        collections (and of ``documents`` when given). Each term scores as one FTS5 phrase. ``max_df``: terms
        found in more than this share of the chunks are left out (``lexical.common``)."""
        self._finish_compaction()
        n = self._ids.n
        codes = [self._collections[c] for c in collection_ids if c in self._collections]
        if not codes or not n or limit <= 0:
            return []
        alive, total = self._alive.a[:n], self._alive_n
        found_postings = [self._postings(term, alive) for term in terms]
        if max_df is not None:
            drop = common([0 if p is None else len(p[0]) for p in found_postings], total, max_df)
            found_postings = [p for i, p in enumerate(found_postings) if i not in drop]
        norm = K1 * (1 - B + B * self._dl.a[:n] / (self._total / total if total else 1.0))
        scores = np.zeros(n, np.float64)
        for posting in found_postings:
            if posting is None:
                continue
            idx, tf = posting
            df = len(idx)
            idf = math.log((total - df + 0.5) / (df + 0.5))
            f = tf.astype(np.float64)
            scores[idx] += (idf if idf > 0 else MIN_IDF) * f * (K1 + 1) / (f + norm[idx])
        key = (tuple(codes), n, self._changes)
        if self._wanted[0] != key:
            self._wanted = (key, alive & np.isin(self._coll.a[:n], codes))
        wanted = self._wanted[1]
        if documents is not None:
            keep = set(documents)
            wanted = wanted & np.fromiter((d in keep for d in self._docs), dtype=np.bool_, count=n)
        scores[~wanted] = 0.0
        found = np.flatnonzero(scores)
        if len(found) > limit:
            found = found[np.argpartition(-scores[found], limit - 1)[:limit]]
        found = found[np.lexsort((self._ids.a[found], -scores[found]))]
        return [(int(self._ids.a[i]), float(scores[i]), self._docs[i]) for i in found]

    def _postings(self, term: str, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """A term's postings among the alive chunks: (chunk indexes, term frequencies), or None."""
        tid = self._terms.get(term)
        if tid is None:
            return None
        main = self._main
        parts = []
        if tid + 1 < len(main.offsets) and main.offsets[tid + 1] > main.offsets[tid]:
            s, e = main.offsets[tid], main.offsets[tid + 1]
            parts.append((main.idx[s:e], main.tf[s:e]))
        for b in self._delta:
            at = b.lookup.get(tid)
            if at is not None:
                parts.append((b.idx[at[0] : at[1]], b.tf[at[0] : at[1]]))
        if not parts:
            return None
        idx = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        tf = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        if self._dead:
            live = alive[idx]
            idx, tf = idx[live], tf[live]
        return (idx, tf) if len(idx) else None

    def stats(self) -> dict[str, object]:
        return {
            "chunks": self._alive_n,
            "terms": len(self._terms),
            "postings": len(self._main.idx) + self._delta_postings,
            "delta_postings": self._delta_postings,
            "dead": self._dead,
        }


class Closing(Exception):
    """The index is closing: the build stops."""
