"""What the RAG benchmarks share: the store they run on (SQLite in the data directory, or a database on the
local PostgreSQL server), and vectors without embedding again (those an index already holds, by text)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import make_url

from bench.store_writes import DEFAULT_PG, scratch_database

STORES = ("sqlite", "postgres")

NOISE = 0.05


class TableEmbedder:
    """Vectors from a table (text -> vector); a text not in it is embedded by ``fallback`` when given, else
    gets a derived vector: the normalised sum of two vectors of ``pool`` picked by a hash of the text, plus
    Gaussian noise (bench/retrieval_speed.py's synthetic chunks). Counts what it is asked to embed."""

    def __init__(
        self, table: dict[str, Any], pool: Any, name: str, dimension: int, fallback: Any | None = None
    ) -> None:
        self.table = table
        self.pool = pool  # real vectors (numpy, n x d) to derive synthetic ones from
        self.fallback = fallback
        self._name = name
        self._dimension = dimension
        self.texts = 0
        self.embedded = 0  # texts the fallback embedded

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        return self._dimension

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        import numpy as np

        self.texts += len(texts)
        unknown = [t for t in texts if t not in self.table] if self.fallback is not None else []
        if unknown:
            self.embedded += len(unknown)
            self.table.update(zip(unknown, await self.fallback.embed(unknown), strict=True))
        out = []
        for t in texts:
            v = self.table.get(t)
            if v is None:
                h = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "big")
                rng = np.random.default_rng(h)
                a, b = rng.integers(0, len(self.pool), 2)
                v = self.pool[a] + self.pool[b] + rng.normal(0, NOISE, self.pool.shape[1])
                v = v / np.linalg.norm(v)
            out.append([float(x) for x in v])
        return out

    async def close(self) -> None:
        if self.fallback is not None:
            await self.fallback.close()


def indexed_vectors(data_dir: Path) -> dict[str, Any]:
    """The vectors an index built by ``bench/retrieval_eval.py --keep`` holds, by the text they embed."""
    import sqlite3

    import chromadb
    import numpy as np

    from chatgate.rag.ingest import embed_text
    from chatgate.rag.types import Chunk

    con = sqlite3.connect(data_dir / "chatgate.db")
    try:
        dense_name = con.execute("SELECT dense_name FROM rag_collections WHERE name = 'scifact'").fetchone()[0]
        rows = con.execute(
            "SELECT c.id, c.text, c.title, c.headings FROM rag_chunks c JOIN rag_documents d ON d.id = c.document_id "
            "WHERE d.status = 'ready'"
        ).fetchall()
    finally:
        con.close()
    texts = {
        str(i): embed_text(Chunk(text=t, ordinal=0, tokens=0, headings=tuple(json.loads(h or "[]"))), title)
        for i, t, title, h in rows
    }
    client = chromadb.PersistentClient(path=str(data_dir / "chroma"))
    col = client.get_collection(dense_name)
    out: dict[str, Any] = {}
    ids = list(texts)
    for start in range(0, len(ids), 5000):
        got = col.get(ids=ids[start : start + 5000], include=["embeddings"])
        for i, v in zip(got["ids"], got["embeddings"], strict=True):
            out[texts[i]] = np.asarray(v, dtype=np.float32)
    return out


@contextlib.asynccontextmanager
async def store_url(store: str, pg_url: str, keep_as: str | None) -> AsyncIterator[str | None]:
    """The database URL for ``store``: None for SQLite (the data directory's file); on PostgreSQL a database
    on ``pg_url``'s server: ``keep_as`` (created when missing, kept for the next run), else a scratch one
    dropped afterwards."""
    if store == "sqlite":
        yield None
        return
    if keep_as is None:
        async with scratch_database(pg_url) as url:
            yield url
        return
    dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", keep_as):
            await conn.execute(f'CREATE DATABASE "{keep_as}"')
    finally:
        await conn.close()
    yield make_url(pg_url).set(database=keep_as).render_as_string(hide_password=False)


async def reset_database(url: str) -> None:
    """An empty PostgreSQL database (its schema dropped and made again): migrated afresh by ``Store.open``."""
    conn = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(False), timeout=5)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await conn.close()


def kept_name(kind: str, root: Path) -> str:
    """A database name for ``--keep DIR``: one per benchmark, directory and purpose."""
    return f"chatgate_bench_{kind}_{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]}"


__all__ = ["DEFAULT_PG", "STORES", "TableEmbedder", "indexed_vectors", "kept_name", "reset_database", "store_url"]
