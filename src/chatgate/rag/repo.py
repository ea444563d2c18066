"""The RAG tables: collections, document versions and chunks, as plain frozen rows (jobs: ``jobs.JobRepo``).

A document row is one version of one source. It is written ``processing`` with its chunks, becomes
``ready`` (searchable) in the one transaction that retires the previous version (``deleting``), and a
``deleting`` row is purged only after its vectors are gone, so no vector outlives its row and no
half-indexed version is ever ``ready``. Who is indexing a ``processing`` row is recorded as a claim
(``host:pid:token``) so that a crashed process's leftovers can be told from live work.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chatgate.processes import alive
from chatgate.rag.types import Chunk
from chatgate.store.models import RAG_CHUNKS, RAG_COLLECTIONS, RAG_DOCUMENTS, RAG_VISIBILITIES, utcnow
from chatgate.store.repos import AlreadyExists

__all__ = [
    "AlreadyExists",
    "ChunkRow",
    "CollectionRow",
    "DocumentRow",
    "EmbeddingMismatch",
    "RagRepo",
    "is_abandoned",
    "new_claim",
]


class EmbeddingMismatch(ValueError):
    """A collection's vectors were made by another embedding model (or dimension) than the configured one."""


def new_id() -> str:
    return secrets.token_hex(16)


def new_claim() -> str:
    """A claim naming this process: ``host:pid:token``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"

    return True


def is_abandoned(claim: str | None, updated_at: datetime, now: datetime, stale_after: float) -> bool:
    """Whether the work ``claim`` names was left behind: its process is gone (same host), or it has shown
    no sign of life for ``stale_after`` seconds (another host, whose processes cannot be checked)."""
    host, _, rest = (claim or "").partition(":")
    pid = rest.partition(":")[0]
    if host == socket.gethostname() and pid.isdigit():
        return not alive(int(pid))
    return now - updated_at > timedelta(seconds=stale_after)


@dataclass(frozen=True, slots=True)
class CollectionRow:
    id: str
    name: str
    owner_id: str
    visibility: str
    embedding_model: str
    embedding_dim: int
    dense_name: str
    generation: int
    created_at: datetime

    def readable_by(self, user_id: str, admin: bool = False) -> bool:
        """Private: its owner (and admins); shared and admin-managed: everyone."""
        return admin or self.visibility != "private" or self.owner_id == user_id

    def writable_by(self, user_id: str, admin: bool = False) -> bool:
        """Admin-managed: admins only; otherwise its owner (and admins)."""
        return admin or (self.visibility != "admin" and self.owner_id == user_id)

    def check_embedder(self, model: str, dimension: int) -> None:
        """Raise ``EmbeddingMismatch`` unless vectors by ``model`` (``dimension``) fit this collection."""
        if (model, dimension) != (self.embedding_model, self.embedding_dim):
            raise EmbeddingMismatch(
                f"collection {self.name!r} was embedded with {self.embedding_model} ({self.embedding_dim}-d) but the "
                f"configured embedder is {model} ({dimension}-d): run `chatgate reindex --collection {self.name}`"
            )


@dataclass(frozen=True, slots=True)
class DocumentRow:
    id: str
    collection_id: str
    source: str
    title: str
    sha256: str
    status: str
    error: str | None
    chunk_count: int
    size_bytes: int
    tags: tuple[str, ...]
    claimed_by: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ChunkRow:
    """A chunk of a ready document, with what a citation needs."""

    id: int
    document_id: str
    collection_id: str
    source: str
    document_title: str
    ordinal: int
    text: str
    title: str
    headings: tuple[str, ...]
    page: int | None
    tokens: int
    content_hash: str


def _collection(r: Row[Any]) -> CollectionRow:
    m = r._mapping
    return CollectionRow(**{f: m[f] for f in CollectionRow.__dataclass_fields__})


def _document(r: Row[Any]) -> DocumentRow:
    m = r._mapping
    values = {f: m[f] for f in DocumentRow.__dataclass_fields__ if f != "tags"}
    return DocumentRow(**values, tags=tuple(m["tags"] or ()))


def _chunk(r: Any) -> ChunkRow:  # a Row of _CHUNK_COLUMNS
    m = r._mapping
    values = {f: m[f] for f in ChunkRow.__dataclass_fields__ if f not in ("id", "headings")}
    return ChunkRow(id=int(m["id"]), **values, headings=tuple(m["headings"] or ()))


_C, _D, _K = RAG_COLLECTIONS.c, RAG_DOCUMENTS.c, RAG_CHUNKS.c
_CHUNK_COLUMNS = (
    _K.id,
    _K.document_id,
    _D.collection_id,
    _D.source,
    _D.title.label("document_title"),
    _K.ordinal,
    _K.text,
    _K.title,
    _K.headings,
    _K.page,
    _K.tokens,
    _K.content_hash,
)
_IN_BATCH = 500  # ids per IN (...) list
_CHUNK_ONLY = (_K.id, _K.document_id, _K.ordinal, _K.text, _K.title, _K.headings, _K.page, _K.tokens, _K.content_hash)
_CHUNK_ONLY_NAMES = frozenset(c.name for c in _CHUNK_ONLY) - {"id", "headings"}


def _unindexed_ready_in(collection_ids: Sequence[str]) -> tuple[ColumnElement[bool], ...]:
    """``status = 'ready' AND collection_id IN (...)`` as expressions no index serves, for a lookup of
    documents by id: without statistics, SQLite's planner would otherwise start from the documents' status
    index and walk every ready document instead of looking up the few ids it was given."""
    return (_D.status.concat("") == "ready", _D.collection_id.concat("").in_(list(collection_ids)))


async def _ready_documents(conn: AsyncConnection, ids: Iterable[str], collection_ids: Sequence[str]) -> dict[str, Any]:
    """Of the documents ``ids``, the ready ones in the collections, by id (their id, collection, source and
    title). Looked up by primary key on both stores: a join of chunks and documents is planned from the
    documents (every ready one of the collection, probed for the chunks) by SQLite without statistics and
    by PostgreSQL too, 10-60 ms at 10k chunks instead of 1-2."""
    wanted = list(ids)
    if not wanted:
        return {}
    stmt = select(_D.id, _D.collection_id, _D.source, _D.title).where(
        _D.id.in_(wanted), *_unindexed_ready_in(collection_ids)
    )
    return {r.id: r for r in (await conn.execute(stmt)).all()}


class RagRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    # -- collections ---------------------------------------------------------------------------------------

    async def create_collection(
        self, name: str, owner_id: str, visibility: str, embedding_model: str, embedding_dim: int
    ) -> CollectionRow:
        if visibility not in RAG_VISIBILITIES:
            raise ValueError(f"visibility must be one of {', '.join(RAG_VISIBILITIES)}")
        cid = new_id()
        values = {
            "id": cid,
            "name": name,
            "owner_id": owner_id,
            "visibility": visibility,
            "embedding_model": embedding_model,
            "embedding_dim": embedding_dim,
            "dense_name": f"cg_{cid}_1",
            "generation": 1,
            "created_at": utcnow(),
        }
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(RAG_COLLECTIONS).values(**values))
        except IntegrityError:
            raise AlreadyExists(f"collection {name!r} already exists for {owner_id!r}") from None
        return CollectionRow(**values)  # type: ignore[arg-type]

    async def get_collection(self, collection_id: str) -> CollectionRow | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(RAG_COLLECTIONS).where(_C.id == collection_id))).first()
        return _collection(row) if row else None

    async def find_collection(self, owner_id: str, name: str) -> CollectionRow | None:
        async with self.engine.connect() as conn:
            stmt = select(RAG_COLLECTIONS).where(_C.owner_id == owner_id, _C.name == name)
            row = (await conn.execute(stmt)).first()
        return _collection(row) if row else None

    async def find_collections_named(self, name: str) -> list[CollectionRow]:
        """Every collection called ``name``, whoever owns it (the CLI names collections by name alone)."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(RAG_COLLECTIONS).where(_C.name == name).order_by(_C.created_at))).all()
        return [_collection(r) for r in rows]

    async def list_collections(self, user_id: str | None = None, admin: bool = False) -> list[CollectionRow]:
        """The collections ``user_id`` may read (every collection for an admin or when ``user_id`` is None)."""
        stmt = select(RAG_COLLECTIONS).order_by(_C.name, _C.created_at)
        if user_id is not None and not admin:
            stmt = stmt.where((_C.visibility != "private") | (_C.owner_id == user_id))
        async with self.engine.connect() as conn:
            return [_collection(r) for r in (await conn.execute(stmt)).all()]

    async def set_embedding(self, collection_id: str, model: str, dim: int, dense_name: str, generation: int) -> None:
        """Point a collection at a rebuilt dense index (after a reindex), in one statement."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(RAG_COLLECTIONS)
                .where(_C.id == collection_id)
                .values(embedding_model=model, embedding_dim=dim, dense_name=dense_name, generation=generation)
            )

    async def delete_collection(self, collection_id: str) -> bool:
        """Delete the collection's rows (documents, chunks and jobs cascade); drop its dense index first."""
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(RAG_CHUNKS).where(
                    _K.document_id.in_(select(_D.id).where(_D.collection_id == collection_id).scalar_subquery())
                )
            )
            await conn.execute(delete(RAG_DOCUMENTS).where(_D.collection_id == collection_id))
            result = await conn.execute(delete(RAG_COLLECTIONS).where(_C.id == collection_id))
        return bool(result.rowcount)

    # -- documents -----------------------------------------------------------------------------------------

    async def get_document(self, document_id: str) -> DocumentRow | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(RAG_DOCUMENTS).where(_D.id == document_id))).first()
        return _document(row) if row else None

    async def ready_document(self, collection_id: str, source: str) -> DocumentRow | None:
        """The searchable version of ``source`` in the collection, if any."""
        async with self.engine.connect() as conn:
            stmt = select(RAG_DOCUMENTS).where(
                _D.collection_id == collection_id, _D.source == source, _D.status == "ready"
            )
            row = (await conn.execute(stmt)).first()
        return _document(row) if row else None

    async def rename(self, document_id: str, source: str) -> None:
        """Give a document another source name (ingestion moving a document to its name relative to the
        ingest root)."""
        async with self.engine.begin() as conn:
            await conn.execute(update(RAG_DOCUMENTS).where(_D.id == document_id).values(source=source))

    async def list_documents(self, collection_id: str, status: str | None = None) -> list[DocumentRow]:
        stmt = select(RAG_DOCUMENTS).where(_D.collection_id == collection_id).order_by(_D.source, _D.created_at)
        if status is not None:
            stmt = stmt.where(_D.status == status)
        async with self.engine.connect() as conn:
            return [_document(r) for r in (await conn.execute(stmt)).all()]

    async def versions(self, collection_ids: Sequence[str]) -> dict[str, str]:
        """Each collection's version: its searchable documents' count and newest change (a document added,
        replaced or removed changes it), for what a cached answer searched."""
        if not collection_ids:
            return {}
        stmt = (
            select(_D.collection_id, func.count(), func.max(_D.updated_at))
            .where(_D.collection_id.in_(list(collection_ids)), _D.status == "ready")
            .group_by(_D.collection_id)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        found = {cid: f"{n}:{latest.isoformat() if latest is not None else ''}" for cid, n, latest in rows}
        return {cid: found.get(cid, "0:") for cid in collection_ids}

    async def document_counts(self) -> dict[str, dict[str, int]]:
        """Collection id -> documents by status, for every collection."""
        stmt = select(_D.collection_id, _D.status, func.count()).group_by(_D.collection_id, _D.status)
        out: dict[str, dict[str, int]] = {}
        async with self.engine.connect() as conn:
            for collection_id, status, n in (await conn.execute(stmt)).all():
                out.setdefault(collection_id, {})[status] = int(n)
        return out

    async def begin_document(
        self,
        collection_id: str,
        source: str,
        title: str,
        sha256: str,
        size_bytes: int,
        tags: Sequence[str],
        claim: str,
        chunks: Sequence[tuple[Chunk, str]],
    ) -> tuple[str, list[int]]:
        """A new ``processing`` version of ``source`` with its chunks (each with its content hash), in one
        transaction; its id and the chunk ids in order. Not searchable until ``publish``."""
        doc_id = new_id()
        now = utcnow()
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(RAG_DOCUMENTS).values(
                    id=doc_id,
                    collection_id=collection_id,
                    source=source,
                    title=title[:512],
                    sha256=sha256,
                    status="processing",
                    error=None,
                    chunk_count=len(chunks),
                    size_bytes=size_bytes,
                    tags=list(tags),
                    claimed_by=claim,
                    created_at=now,
                    updated_at=now,
                )
            )
            rows = [
                {
                    "document_id": doc_id,
                    "ordinal": chunk.ordinal,
                    "text": chunk.text,
                    "title": (chunk.title or title)[:512],
                    "headings": list(chunk.headings),
                    "page": chunk.page,
                    "tokens": chunk.tokens,
                    "content_hash": content_hash,
                }
                for chunk, content_hash in chunks
            ]
            # "insertmanyvalues": batched INSERT ... RETURNING, ids in the order of ``rows``.
            stmt = insert(RAG_CHUNKS).returning(_K.id, sort_by_parameter_order=True)
            ids = [int(i) for i in (await conn.execute(stmt, rows)).scalars().all()] if rows else []
        return doc_id, ids

    async def record_failure(
        self, collection_id: str, source: str, sha256: str, size_bytes: int, error: str, claim: str | None = None
    ) -> None:
        """Keep why ``source`` was not indexed (replacing an earlier failure of the same source)."""
        now = utcnow()
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(RAG_DOCUMENTS).where(
                    _D.collection_id == collection_id, _D.source == source, _D.status == "failed"
                )
            )
            await conn.execute(
                insert(RAG_DOCUMENTS).values(
                    id=new_id(),
                    collection_id=collection_id,
                    source=source,
                    title=source.rsplit("/", 1)[-1][:512],
                    sha256=sha256,
                    status="failed",
                    error=error[:4000],
                    chunk_count=0,
                    size_bytes=size_bytes,
                    tags=[],
                    claimed_by=claim,
                    created_at=now,
                    updated_at=now,
                )
            )

    async def touch(self, document_ids: Iterable[str]) -> None:
        """A sign of life for documents being indexed."""
        ids = list(document_ids)
        if not ids:
            return
        async with self.engine.begin() as conn:
            await conn.execute(update(RAG_DOCUMENTS).where(_D.id.in_(ids)).values(updated_at=utcnow()))

    async def publish(self, document_id: str) -> str | None:
        """Make a fully indexed version searchable and retire the previous one, in one transaction.

        Returns the retired version's id (now ``deleting``: purge it once its vectors are gone), or None.
        Raises ``LookupError`` when the version is no longer ``processing`` (cleaned up as abandoned).
        """
        async with self.engine.begin() as conn:
            doc = (
                await conn.execute(select(_D.collection_id, _D.source, _D.status).where(_D.id == document_id))
            ).first()
            if doc is None or doc.status != "processing":
                raise LookupError(f"document {document_id} is not being indexed")
            same_source = (_D.collection_id == doc.collection_id) & (_D.source == doc.source)
            old = (await conn.execute(select(_D.id).where(same_source, _D.status == "ready"))).scalar()
            now = utcnow()
            if old is not None:
                await conn.execute(update(RAG_DOCUMENTS).where(_D.id == old).values(status="deleting", updated_at=now))
            await conn.execute(delete(RAG_DOCUMENTS).where(same_source, _D.status == "failed"))
            await conn.execute(
                update(RAG_DOCUMENTS)
                .where(_D.id == document_id)
                .values(status="ready", claimed_by=None, error=None, updated_at=now)
            )
        return str(old) if old is not None else None

    async def retire(self, document_id: str, error: str | None = None) -> bool:
        """Take a document out of search (``deleting``) before its vectors are removed; False if gone."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(RAG_DOCUMENTS)
                .where(_D.id == document_id, _D.status != "deleting")
                .values(status="deleting", error=error, updated_at=utcnow())
            )
        return bool(result.rowcount)

    async def purge(self, document_id: str) -> None:
        """Delete a retired document's rows (its chunks leave the lexical index with them)."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(RAG_CHUNKS).where(_K.document_id == document_id))
            await conn.execute(delete(RAG_DOCUMENTS).where(_D.id == document_id))

    async def fail(self, document_id: str, error: str) -> None:
        """A version that could not be indexed: its chunks go, the row stays ``failed`` with the reason."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(RAG_CHUNKS).where(_K.document_id == document_id))
            await conn.execute(
                update(RAG_DOCUMENTS)
                .where(_D.id == document_id)
                .values(status="failed", error=error[:4000], chunk_count=0, claimed_by=None, updated_at=utcnow())
            )

    async def leftovers(self, collection_id: str, stale_after: float) -> list[DocumentRow]:
        """Documents to clean up: ``deleting`` ones, and ``processing`` ones whose indexer is gone."""
        async with self.engine.connect() as conn:
            stmt = select(RAG_DOCUMENTS).where(
                _D.collection_id == collection_id, _D.status.in_(("processing", "deleting"))
            )
            rows = [_document(r) for r in (await conn.execute(stmt)).all()]
        now = utcnow()
        return [d for d in rows if d.status == "deleting" or is_abandoned(d.claimed_by, d.updated_at, now, stale_after)]

    async def abandon(self, document: DocumentRow) -> bool:
        """Retire an abandoned ``processing`` version, unless its indexer claimed it again meanwhile."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(RAG_DOCUMENTS)
                .where(_D.id == document.id, _D.status == "processing", _D.updated_at == document.updated_at)
                .values(status="deleting", updated_at=utcnow())
            )
        return bool(result.rowcount)

    async def filter_documents(
        self,
        collection_ids: Sequence[str],
        document_ids: Iterable[str] | None = None,
        tags: Iterable[str] | None = None,
    ) -> list[str]:
        """Ids of the ready documents in the collections that are among ``document_ids`` (when given) and
        carry at least one of ``tags`` (when given)."""
        stmt = select(_D.id, _D.tags).where(_D.collection_id.in_(list(collection_ids)), _D.status == "ready")
        if document_ids is not None:
            stmt = stmt.where(_D.id.in_(list(document_ids)))
        wanted = set(tags) if tags is not None else None
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [r.id for r in rows if wanted is None or wanted.intersection(r.tags or ())]

    # -- chunks --------------------------------------------------------------------------------------------

    async def ready_chunks(self, chunk_ids: Sequence[int], collection_ids: Sequence[str]) -> dict[int, ChunkRow]:
        """The chunks among ``chunk_ids`` whose document is ready and in one of the collections."""
        found: dict[int, ChunkRow] = {}
        async with self.engine.connect() as conn:
            for start in range(0, len(chunk_ids), _IN_BATCH):
                part = list(chunk_ids[start : start + _IN_BATCH])
                chunks = (await conn.execute(select(*_CHUNK_ONLY).where(_K.id.in_(part)))).all()
                docs = await _ready_documents(conn, {r.document_id for r in chunks}, collection_ids)
                for r in chunks:
                    doc = docs.get(r.document_id)
                    if doc is not None:
                        m = r._mapping
                        values = {f: m[f] for f in ChunkRow.__dataclass_fields__ if f in _CHUNK_ONLY_NAMES}
                        found[int(r.id)] = ChunkRow(
                            **values | {"id": int(r.id), "headings": tuple(m["headings"] or ())},
                            collection_id=doc.collection_id,
                            source=doc.source,
                            document_title=doc.title,
                        )
        return found

    async def searchable(self, chunk_ids: Sequence[int], collection_ids: Sequence[str]) -> dict[int, str]:
        """Of ``chunk_ids``, those whose document is ready and in one of the collections: chunk id -> document id."""
        found: dict[int, str] = {}
        async with self.engine.connect() as conn:
            for start in range(0, len(chunk_ids), _IN_BATCH):
                part = list(chunk_ids[start : start + _IN_BATCH])
                pairs = (await conn.execute(select(_K.id, _K.document_id).where(_K.id.in_(part)))).all()
                docs = await _ready_documents(conn, {r.document_id for r in pairs}, collection_ids)
                found.update((int(r.id), r.document_id) for r in pairs if r.document_id in docs)
        return found

    async def chunk_page(self, collection_id: str, after_id: int, limit: int) -> list[ChunkRow]:
        """The collection's ready chunks with ids above ``after_id``, by id (a reindex walks them)."""
        stmt = (
            select(*_CHUNK_COLUMNS)
            .join(RAG_DOCUMENTS, _D.id == _K.document_id)
            .where(_D.collection_id == collection_id, _D.status == "ready", _K.id > after_id)
            .order_by(_K.id)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [_chunk(r) for r in (await conn.execute(stmt)).all()]

    async def count_chunks(self, document_id: str) -> int:
        async with self.engine.connect() as conn:
            stmt = select(func.count()).select_from(RAG_CHUNKS).where(_K.document_id == document_id)
            return int((await conn.execute(stmt)).scalar_one())
