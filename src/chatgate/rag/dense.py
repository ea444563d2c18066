"""The dense index: chunk vectors in Chroma, one Chroma collection per chatgate collection.

Embedded default: ``chromadb.PersistentClient`` on ``<data_dir>/chroma``. Scale-out: a Chroma server
(``chroma run``) through ``chromadb.HttpClient`` when ``rag.retrieval.chroma_host`` is set.

A persistent directory has one writer. The process that opens it for writing holds an exclusive
``flock`` on ``<dir>/chatgate-writer.lock`` (released by the kernel when the process ends, crash
included) for as long as the index is open; another process asking to write gets ``IndexBusy``
(naming the holder's pid), and a process opened with ``write="try"`` (each ``chatgate serve``
worker) falls back to read-only, leaving ingestion to the writer: uploads queue a job row that the
writer's job runner picks up. Chroma loads a collection's vector index once per process, so a reader
would not see later writes: the writer touches ``<dir>/chatgate-writes`` after each change, and a reader
that finds it moved opens the directory afresh (at most every ``reader_refresh`` seconds). A reader
becomes the writer (``promote``) once the lock is free again. A Chroma
server takes writes from any number of processes, and every client sees them at once.

Vectors are keyed by the chunk id (decimal) and carry ``document_id`` and ``ordinal``; the space is
cosine, so a hit's score is ``1 - distance``. Which vectors count is decided by the store (only chunks
of ready documents are returned by searches), so a vector written before its document is ready, or
not yet deleted after, is never seen. Chroma's client is synchronous: every call runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from chatgate.rag.types import import_numpy
from chatgate.settings import RetrievalSettings

log = logging.getLogger("chatgate.rag")

LOCK_NAME = "chatgate-writer.lock"
OPEN_LOCK_NAME = "chatgate-open.lock"  # held while opening: Chroma's first open creates its tables
STAMP_NAME = "chatgate-writes"  # touched by the writer after each change; readers reload when it moves
WriteMode = Literal["require", "try", "never"]


class IndexBusy(RuntimeError):
    """Another process writes this persistent Chroma directory (``holder``: its pid, as its lock file says)."""

    def __init__(self, message: str, holder: str = "?") -> None:
        super().__init__(message)
        self.holder = holder


class ReadOnlyIndex(RuntimeError):
    """A write to an index opened read-only (another process is the writer)."""


class WriterLock:
    """An exclusive, non-blocking ``flock`` on a file in the Chroma directory, holding the writer's pid."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # releases the lock


@contextlib.contextmanager
def _opening(directory: Path) -> Iterator[None]:
    """Held while a process opens the persistent directory: Chroma creates its tables on first open, and two
    workers doing that at once collide (``table collections already exists``)."""
    fd = os.open(directory / OPEN_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def persistent_client(directory: Path) -> Any:
    import chromadb

    with _opening(directory):
        return chromadb.PersistentClient(path=str(directory), settings=_chroma_settings())


def _chroma_settings() -> Any:
    from chromadb.config import Settings as ChromaSettings

    return ChromaSettings(anonymized_telemetry=False, allow_reset=False)


class DenseIndex:
    """Vectors by chunk id in named Chroma collections; async methods over the sync client."""

    def __init__(
        self,
        client: Any,
        *,
        writable: bool = True,
        lock: WriterLock | None = None,
        where: str = "",
        directory: Path | None = None,
        refresh: float = 2.0,
    ) -> None:
        self._client = client
        self.writable = writable
        self._lock = lock
        self.where = where
        self._collections: dict[str, Any] = {}
        self._max_batch: int | None = None
        # A persistent directory: the writer's change stamp, and when a reader last looked at it.
        self._stamp = directory / STAMP_NAME if directory is not None else None
        self._refresh = refresh
        self._seen = self._stamp_value()
        self._checked = time.monotonic()
        self._reload = threading.Lock()
        self.reloads = 0

    @classmethod
    def open(cls, settings: RetrievalSettings, data_dir: Path, write: WriteMode = "try") -> DenseIndex:
        """The configured index: a Chroma server when ``chroma_host`` is set, else the persistent
        directory (``chroma_path`` or ``<data_dir>/chroma``), writable per ``write`` (see the module)."""
        import_numpy()
        import chromadb

        if settings.chroma_host:
            client = chromadb.HttpClient(
                host=settings.chroma_host,
                port=settings.chroma_port,
                ssl=settings.chroma_ssl,
                settings=_chroma_settings(),
            )
            return cls(client, writable=write != "never", where=f"{settings.chroma_host}:{settings.chroma_port}")
        path = (settings.chroma_path or data_dir / "chroma").resolve()
        lock: WriterLock | None = None
        if write != "never":
            lock = WriterLock(path)
            if not lock.acquire():
                if write == "require":
                    holder = lock.holder()
                    raise IndexBusy(
                        f"the Chroma directory {path} is being written by another process (pid {holder}): "
                        "stop it (e.g. `chatgate serve`), upload through the API instead, or use a Chroma server "
                        "(rag.retrieval.chroma_host)",
                        holder,
                    )
                lock = None
        path.mkdir(parents=True, exist_ok=True)
        client = persistent_client(path)
        return cls(
            client,
            writable=lock is not None,
            lock=lock,
            where=str(path),
            directory=path,
            refresh=settings.reader_refresh,
        )

    @property
    def persistent(self) -> bool:
        """A directory on disk (one writer at a time), not a Chroma server."""
        return self._stamp is not None

    def promote(self) -> bool:
        """A reader of a persistent directory becomes its writer, when no process holds the writer's lock any
        more (it opened the directory while another did: a ``chatgate ingest``, a stopped server); it reopens
        the directory first, to see what the last writer wrote. Whether it is the writer now. Blocks."""
        if self.writable or self._stamp is None:
            return self.writable
        lock = WriterLock(self._stamp.parent)
        if not lock.acquire():
            return False
        with self._reload:
            from chromadb.api.shared_system_client import SharedSystemClient

            SharedSystemClient._identifier_to_system.pop(str(self._stamp.parent), None)
            SharedSystemClient._identifier_to_refcount.pop(str(self._stamp.parent), None)
            self._client = persistent_client(self._stamp.parent)
            self._collections = {}
            self._seen = self._stamp_value()
        self._lock, self.writable = lock, True
        return True

    def close(self) -> None:
        self._collections.clear()
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self.writable = False

    # -- sync helpers (run in a thread) ---------------------------------------------------------------------

    def _stamp_value(self) -> int:
        if self._stamp is None:
            return 0
        try:
            return self._stamp.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def _changed(self) -> None:
        """After a write: move the stamp so that readers in other processes reload."""
        if self._stamp is not None:
            self._stamp.touch()
            os.utime(self._stamp, ns=(time.time_ns(), time.time_ns()))

    def _maybe_reload(self) -> None:
        """A reader of a persistent directory: Chroma loads a collection's vector index once per process, so
        after the writer has changed the directory, open it afresh (at most every ``refresh`` seconds)."""
        if self.writable or self._stamp is None or time.monotonic() - self._checked < self._refresh:
            return
        with self._reload:
            if time.monotonic() - self._checked < self._refresh:
                return
            self._checked = time.monotonic()
            stamp = self._stamp_value()
            if stamp == self._seen:
                return
            from chromadb.api.shared_system_client import SharedSystemClient

            # Chroma shares one system per directory in a process: drop it so the new client loads afresh.
            SharedSystemClient._identifier_to_system.pop(str(self._stamp.parent), None)
            SharedSystemClient._identifier_to_refcount.pop(str(self._stamp.parent), None)
            self._client = persistent_client(self._stamp.parent)
            self._collections = {}
            self._seen = stamp
            self.reloads += 1

    def _collection(self, name: str, create: bool) -> Any | None:
        col = self._collections.get(name)
        if col is not None:
            return col
        if create:
            col = self._client.get_or_create_collection(
                name, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
            )
        else:
            try:
                col = self._client.get_collection(name, embedding_function=None)
            except Exception:  # NotFoundError (its class moved between releases): nothing stored yet
                return None
        self._collections[name] = col
        return col

    def _check_writable(self) -> None:
        if not self.writable:
            raise ReadOnlyIndex(f"the dense index at {self.where} is open read-only (another process writes it)")

    def _add(
        self,
        name: str,
        ids: Sequence[int],
        vectors: Sequence[Sequence[float]],
        documents: Sequence[str],
        ordinals: Sequence[int],
    ) -> None:
        col = self._collection(name, create=True)
        assert col is not None
        if self._max_batch is None:
            self._max_batch = int(self._client.get_max_batch_size())
        step = max(1, self._max_batch)
        for start in range(0, len(ids), step):
            end = start + step
            col.upsert(
                ids=[str(i) for i in ids[start:end]],
                embeddings=[list(v) for v in vectors[start:end]],
                metadatas=[
                    {"document_id": d, "ordinal": o}
                    for d, o in zip(documents[start:end], ordinals[start:end], strict=True)
                ],
            )
        self._changed()

    def _delete_document(self, name: str, document_id: str) -> None:
        col = self._collection(name, create=False)
        if col is not None:
            col.delete(where={"document_id": document_id})
            self._changed()

    def _query_fresh(
        self, name: str, vector: Sequence[float], n: int, document_ids: Sequence[str] | None
    ) -> list[tuple[int, float]]:
        self._maybe_reload()
        return self._query(name, vector, n, document_ids)

    def _query(
        self, name: str, vector: Sequence[float], n: int, document_ids: Sequence[str] | None
    ) -> list[tuple[int, float]]:
        col = self._collection(name, create=False)
        if col is None or n <= 0:
            return []
        where: dict[str, Any] | None = None
        if document_ids is not None:
            if not document_ids:
                return []
            ids = list(document_ids)
            where = {"document_id": ids[0]} if len(ids) == 1 else {"document_id": {"$in": ids}}
        result = col.query(query_embeddings=[list(vector)], n_results=n, where=where, include=["distances"])
        found_ids = result["ids"][0] if result["ids"] else []
        distances = (result.get("distances") or [[]])[0] or []
        return [(int(i), 1.0 - float(d)) for i, d in zip(found_ids, distances, strict=True)]

    def _count(self, name: str, document_id: str | None) -> int:
        col = self._collection(name, create=False)
        if col is None:
            return 0
        if document_id is None:
            return int(col.count())
        return len(col.get(where={"document_id": document_id}, include=[])["ids"])

    def _drop(self, name: str) -> None:
        self._collections.pop(name, None)
        with contextlib.suppress(Exception):  # already gone
            self._client.delete_collection(name)
        self._changed()

    # -- async API ----------------------------------------------------------------------------------------

    async def add(
        self,
        name: str,
        ids: Sequence[int],
        vectors: Sequence[Sequence[float]],
        document_ids: Sequence[str],
        ordinals: Sequence[int],
    ) -> None:
        """Store (or replace) the vectors of chunks ``ids`` in collection ``name`` (created if missing)."""
        self._check_writable()
        if ids:
            await asyncio.to_thread(self._add, name, ids, vectors, document_ids, ordinals)

    async def delete_document(self, name: str, document_id: str) -> None:
        """Remove every vector of one document."""
        self._check_writable()
        await asyncio.to_thread(self._delete_document, name, document_id)

    async def query(
        self, name: str, vector: Sequence[float], n: int, document_ids: Sequence[str] | None = None
    ) -> list[tuple[int, float]]:
        """Up to ``n`` (chunk id, cosine similarity) nearest ``vector``, best first, among ``document_ids``
        when given."""
        return await asyncio.to_thread(self._query_fresh, name, vector, n, document_ids)

    async def count(self, name: str, document_id: str | None = None) -> int:
        """Vectors in collection ``name`` (of one document when given)."""
        return await asyncio.to_thread(self._count, name, document_id)

    async def drop(self, name: str) -> None:
        """Delete collection ``name`` and its vectors (nothing if it does not exist)."""
        self._check_writable()
        await asyncio.to_thread(self._drop, name)
