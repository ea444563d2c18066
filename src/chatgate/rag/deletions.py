"""Vector deletions for the dense index's writer, from processes that cannot write it.

With the embedded (on-disk) Chroma index only one process writes (``dense.py``). When another one
deletes a collection or a document, it cannot remove the vectors itself: in the same transaction as the
rows (a collection's go at once; a document is retired, out of search), it queues the deletion in
``rag_dense_deletions``, and the writer's job runner drains the queue (``drain``): vectors first, then
the rows left, then the queue entry, so a crash anywhere leaves the entry to be done again. With a Chroma
server every process writes, and deletes directly.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from chatgate.rag.dense import DenseIndex
from chatgate.rag.repo import CollectionRow, RagRepo
from chatgate.store.models import RAG_CHUNKS, RAG_COLLECTIONS, RAG_DENSE_DELETIONS, RAG_DOCUMENTS, utcnow

log = logging.getLogger("chatgate.rag")
_Q = RAG_DENSE_DELETIONS.c
_D = RAG_DOCUMENTS.c
_K = RAG_CHUNKS.c
_C = RAG_COLLECTIONS.c
BATCH = 100


class DenseDeletions:
    """The ``rag_dense_deletions`` queue."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def delete_collection(self, collection: CollectionRow) -> None:
        """The collection's rows deleted (documents, chunks; jobs and uploads cascade) and its vectors queued."""
        async with self.engine.begin() as conn:
            documents = select(_D.id).where(_D.collection_id == collection.id).scalar_subquery()
            await conn.execute(delete(RAG_CHUNKS).where(_K.document_id.in_(documents)))
            await conn.execute(delete(RAG_DOCUMENTS).where(_D.collection_id == collection.id))
            await conn.execute(delete(RAG_COLLECTIONS).where(_C.id == collection.id))
            queued = {"dense_name": collection.dense_name, "document_id": None, "created_at": utcnow()}
            await conn.execute(insert(RAG_DENSE_DELETIONS).values(**queued))

    async def delete_document(self, collection: CollectionRow, document_id: str) -> bool:
        """The document retired (out of search at once) and its vectors queued; False if it was already going."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(RAG_DOCUMENTS)
                .where(_D.id == document_id, _D.collection_id == collection.id, _D.status != "deleting")
                .values(status="deleting", updated_at=utcnow())
            )
            if not result.rowcount:
                return False
            await conn.execute(
                insert(RAG_DENSE_DELETIONS).values(
                    dense_name=collection.dense_name, document_id=document_id, created_at=utcnow()
                )
            )
        return True

    async def pending(self) -> int:
        async with self.engine.connect() as conn:
            return len((await conn.execute(select(_Q.id))).all())

    async def drain(self, dense: DenseIndex, repo: RagRepo) -> int:
        """Do the queued deletions (the writer only); how many were done."""
        n = 0
        while True:
            async with self.engine.connect() as conn:
                stmt = select(_Q.id, _Q.dense_name, _Q.document_id).order_by(_Q.id).limit(BATCH)
                rows = (await conn.execute(stmt)).all()
            if not rows:
                break
            for r in rows:
                if r.document_id is None:
                    await dense.drop(r.dense_name)
                else:
                    await dense.delete_document(r.dense_name, r.document_id)
                    await repo.purge(r.document_id)
                async with self.engine.begin() as conn:
                    await conn.execute(delete(RAG_DENSE_DELETIONS).where(_Q.id == r.id))
                n += 1
        if n:
            log.info("removed the vectors of %d deletions made where the index was read-only", n)
        return n
