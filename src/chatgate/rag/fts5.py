"""SQLite FTS5's tokenizer, outside the index: the terms FTS5 makes of a text or a word.

FTS5 has no call that tokenizes text; an in-memory FTS5 table with the same ``tokenize`` option, read back
through ``fts5vocab``, gives exactly its terms (stemming, diacritics, separators included).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import numpy as np

_WORD_CACHE = 50_000


class Fts5Tokenizer:
    """FTS5's tokenizer (as configured for the chunk table), on an in-memory FTS5 table."""

    def __init__(self, tokenize: str) -> None:
        self.tokenize = tokenize
        self._conn = sqlite3.connect(":memory:", check_same_thread=False)
        self._words: dict[str, tuple[str, ...]] = {}
        self._reset()

    def _reset(self) -> None:
        c = self._conn
        c.execute("DROP TABLE IF EXISTS v")
        c.execute("DROP TABLE IF EXISTS t")
        c.execute("CREATE VIRTUAL TABLE t USING fts5(x, tokenize=" + _quote(self.tokenize) + ")")
        c.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, 'instance')")

    def postings(self, texts: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The texts' terms: (terms, term of each posting as an index into terms, text index, term frequency,
        tokens in each text). Postings come by term, then text."""
        c = self._conn
        try:
            c.executemany("INSERT INTO t(rowid, x) VALUES (?, ?)", enumerate(texts))
            per_term = c.execute("SELECT term, count(*) FROM v GROUP BY term ORDER BY term").fetchall()
            joined = c.execute("SELECT group_concat(doc, ' ') FROM v").fetchone()[0] or ""
        finally:
            self._reset()
        terms = [t for t, _ in per_term]
        docs = np.array(joined.split(), dtype=np.int64) if joined else np.zeros(0, np.int64)
        runs = np.array([n for _, n in per_term], dtype=np.int64)
        term_of = np.repeat(np.arange(len(terms), dtype=np.int64), runs)
        if len(docs) != len(term_of):
            raise RuntimeError("FTS5 vocabulary scan out of step")
        lengths = np.bincount(docs, minlength=len(texts)).astype(np.int64)
        if len(docs) == 0:
            empty = np.zeros(0, np.int64)
            return terms, empty, empty, empty, lengths
        key = term_of * len(texts) + docs
        if np.any(np.diff(key) < 0):  # instances come by term then row; anything else would miscount
            raise RuntimeError("FTS5 vocabulary scan out of order")
        starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
        tf = np.diff(np.append(starts, len(key)))
        return terms, term_of[starts], docs[starts], tf, lengths

    def words(self, words: Sequence[str]) -> list[tuple[str, ...]]:
        """The terms FTS5 makes of each word: none, one, or several (FTS5 reads that word as a phrase)."""
        cache = self._words
        new = [w for w in dict.fromkeys(words) if w not in cache]
        if new:
            c = self._conn
            try:
                c.executemany("INSERT INTO t(rowid, x) VALUES (?, ?)", enumerate(new))
                found: dict[int, list[str]] = {}
                for doc, term in c.execute("SELECT doc, term FROM v ORDER BY doc, offset"):
                    found.setdefault(doc, []).append(term)
            finally:
                c.execute("DELETE FROM t")
            if len(cache) + len(new) > _WORD_CACHE:
                cache.clear()
            for i, w in enumerate(new):
                cache[w] = tuple(found.get(i, ()))
        return [cache[w] for w in words]


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
