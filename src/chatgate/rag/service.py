"""RAG on the running gateway: one ``Rag`` object on the app's services, used by the HTTP layer and the pipeline.

Cheap until documents are in use: the store-side parts (collections, jobs, lexical search, assistants)
are built at once, but the dense index (Chroma) and the embedder (torch, for the local model) only when
first needed, or in the background at start when collections already exist. ``/health`` never waits
for them; a request that needs them waits for the dense index to open and, when it embeds, for the model.

The dense index is opened as its writer when its directory is free (``write="try"``): that process runs
the ingestion jobs (uploads), requeueing at start those a dead process left ``processing``. A process
that only reads it queues uploads for the writer and leaves vector deletions to it (a retired document
is out of search at once; its vectors go when the writer next ingests into the collection).

Every method takes plain values and raises the project's errors (``chatgate.errors``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from chatgate.errors import BadRequest, ChatgateError, Conflict, Forbidden, NotFound, PayloadTooLarge
from chatgate.observe import metrics
from chatgate.rag.assistants import Assistant, AssistantRepo, Assistants
from chatgate.rag.dense import DenseIndex
from chatgate.rag.ingest import FileResult, Ingestor, IngestSummary, Parser, SourceFile
from chatgate.rag.jobs import JobRepo, JobRow, JobRunner, UploadTooLarge, submit
from chatgate.rag.lexical import LexicalIndex
from chatgate.rag.repo import AlreadyExists, CollectionRow, DocumentRow, EmbeddingMismatch, RagRepo
from chatgate.rag.retrieve import Hit, Mode, Retriever, SearchFilters
from chatgate.rag.types import Embedder
from chatgate.settings import Settings
from chatgate.store.models import RAG_COLLECTIONS

log = logging.getLogger("chatgate.rag")
_C = RAG_COLLECTIONS.c


class IndexUnavailable(ChatgateError):
    status = 503
    code = "INDEX_UNAVAILABLE"
    type = "server_error"


class CountingIngestor(Ingestor):
    """The ingestor, counting each file's outcome in ``chatgate_rag_documents_ingested``."""

    async def ingest(
        self,
        collection: CollectionRow,
        files: Sequence[SourceFile],
        progress: Callable[[FileResult], None] | None = None,
    ) -> IngestSummary:
        def counted(result: FileResult) -> None:
            metrics.RAG_INGESTED.inc((result.outcome,))
            if progress is not None:
                progress(result)

        return await super().ingest(collection, files, counted)


def mismatch(exc: EmbeddingMismatch) -> Conflict:
    err = Conflict(str(exc), details={"reason": "embedding_mismatch"})
    err.code = "EMBEDDING_MISMATCH"
    return err


DenseOpener = Callable[[Literal["try"]], DenseIndex]
"""Opens the dense index (``write="try"``: as its writer when the directory is free); may block."""
EmbedderFactory = Callable[[], Embedder]


class Rag:
    """RAG on the gateway, over the backends ``app.build_rag`` chose: the lexical index (ready to search at
    once), and how to open the dense index and make the embedder (called on first need)."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        lexical: LexicalIndex,
        open_dense: DenseOpener,
        make_embedder: EmbedderFactory,
    ) -> None:
        self.settings = settings
        self.retrieval = settings.rag.retrieval
        self.engine = engine
        self.repo = RagRepo(engine)
        self.jobs = JobRepo(engine)
        self.lexical = lexical
        self._open_dense, self._make_embedder = open_dense, make_embedder
        self.assistants = Assistants(settings.assistants, AssistantRepo(engine))
        self.upload_dir: Path = settings.data_dir / "uploads"
        self.retriever = Retriever(self.repo, self.lexical, None, None, self.retrieval)
        self.dense: DenseIndex | None = None
        self.embedder: Embedder | None = None
        self.ingestor: Ingestor | None = None
        self.runner: JobRunner | None = None
        self._opening: asyncio.Future[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """At start: the stored assistants read; the index opened in the background when documents or grounded
        assistants exist."""
        await self.assistants.refresh()
        if await self.in_use():
            self.lexical.warm()
            self._open_soon()

    async def in_use(self) -> bool:
        async with self.engine.connect() as conn:
            if (await conn.execute(select(_C.id).limit(1))).first() is not None:
                return True
        return any(a.collections for a in self.assistants.configured.values())

    def _open_soon(self) -> asyncio.Future[None]:
        """Opening, once (again after a failure)."""
        opening = self._opening
        if opening is None or (opening.done() and not opening.cancelled() and opening.exception() is not None):
            opening = self._opening = asyncio.ensure_future(self._open())
            opening.add_done_callback(_log_failure)
        return opening

    async def ready(self) -> None:
        """The dense index and the embedder are open (the local model may still be loading)."""
        await asyncio.shield(self._open_soon())

    async def _open(self) -> None:
        dense = await asyncio.to_thread(self._open_dense, "try")
        embedder = self._make_embedder()
        start = getattr(embedder, "start", None)
        if start is not None:
            start()  # the local model loads on its own thread
        parser = await asyncio.to_thread(Parser.from_settings, self.settings)
        self.dense, self.embedder = dense, embedder
        self.retriever.dense, self.retriever.embedder = dense, embedder
        self.ingestor = CountingIngestor(self.repo, dense, embedder, parser, self.retrieval)
        if dense.writable:
            self.runner = JobRunner(self.jobs, self.ingestor, self.retrieval, self.upload_dir)
            self.runner.start()
        log.info("document index open", extra={"where": dense.where, "writer": dense.writable})

    async def close(self) -> None:
        await self.assistants.close()
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
            with contextlib.suppress(BaseException):
                await self._opening
        if self.runner is not None:
            await self.runner.close()
        if self.embedder is not None:
            await self.embedder.close()
        if self.dense is not None:
            self.dense.close()
        await self.lexical.close()

    def overview(self) -> dict[str, object]:
        """For ``/admin/metrics``: whether the index is open (and written here), the embedder, the job runner."""
        embedder = self.embedder
        return {
            "index_open": self.dense is not None,
            "index": self.dense.where if self.dense is not None else None,
            "writer": self.dense.writable if self.dense is not None else False,
            "embedder": embedder.name if embedder is not None else None,
            "embedder_ready": bool(getattr(embedder, "ready", True)) if embedder is not None else False,
            "job_runner": self.runner is not None,
            "assistants_configured": len(self.assistants.configured),
            "lexical": self.lexical.stats(),
        }

    async def embedder_info(self) -> tuple[str, int]:
        """The embedder's model name and dimension (an ``openai`` one learns it from a first request)."""
        await self.ready()
        embedder = self.embedder
        assert embedder is not None
        try:
            return embedder.name, embedder.dimension
        except RuntimeError:
            wait = getattr(embedder, "wait_ready", None)
            if wait is not None:
                await wait()
            return embedder.name, embedder.dimension

    # -- collections ---------------------------------------------------------------------------------------

    async def create_collection(
        self, name: str, owner_id: str, visibility: str, description: str | None = None
    ) -> CollectionRow:
        model, dim = await self.embedder_info()
        try:
            row = await self.repo.create_collection(name, owner_id, visibility, model, dim)
        except AlreadyExists:
            raise Conflict(
                f"You already have a collection named {name!r}.", details={"field": "name", "name": name}
            ) from None
        if description:
            async with self.engine.begin() as conn:
                await conn.execute(update(RAG_COLLECTIONS).where(_C.id == row.id).values(description=description))
        return row

    async def descriptions(self, ids: Sequence[str]) -> dict[str, str | None]:
        if not ids:
            return {}
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(_C.id, _C.description).where(_C.id.in_(list(ids))))).all()
        return {r.id: r.description for r in rows}

    async def readable(self, collection_id: str, user_id: str, admin: bool = False) -> CollectionRow:
        """The collection, if the caller may read it; otherwise a 404 (never a 403: not revealed)."""
        row = await self.repo.get_collection(collection_id)
        if row is None or not row.readable_by(user_id, admin):
            raise NotFound("No such collection.", details={"collection_id": collection_id})
        return row

    async def writable(self, collection_id: str, user_id: str, admin: bool = False) -> CollectionRow:
        """The collection, if the caller may change it (404 when it may not even read it)."""
        row = await self.readable(collection_id, user_id, admin)
        if not row.writable_by(user_id, admin):
            raise Forbidden(
                "Only its owner or an admin may change this collection.", details={"collection_id": collection_id}
            )
        return row

    async def delete_collection(self, row: CollectionRow) -> None:
        await self.ready()
        if self.dense is not None and self.dense.writable and self.ingestor is not None:
            await self.ingestor.delete_collection(row)
        else:  # the writer's index keeps the vectors; no row points at them any more, so none is found
            await self.repo.delete_collection(row.id)

    async def for_assistant(self, assistant: Assistant, user_id: str) -> list[CollectionRow]:
        """The assistant's collections that ``user_id`` may read, never another user's private one.

        A reference is a collection id, or a name. A name matches admin-managed collections (only admins
        make those) and the caller's own: not another user's shared collection, or anyone could slip
        documents into everyone's assistant by naming a collection like its own (name those by id)."""
        found: dict[str, CollectionRow] = {}
        for ref in assistant.collections:
            by_id = await self.repo.get_collection(ref)
            if by_id is not None:
                if by_id.readable_by(user_id):
                    found[by_id.id] = by_id
                continue
            for row in await self.repo.find_collections_named(ref):
                if row.visibility == "admin" or row.owner_id == user_id:
                    found[row.id] = row
        return list(found.values())

    # -- documents and jobs ------------------------------------------------------------------------------

    async def upload(self, row: CollectionRow, files: Sequence[tuple[str, bytes]]) -> JobRow:
        max_bytes = self.retrieval.upload_max_bytes
        try:
            job = await submit(self.jobs, self.upload_dir, row, files, max_bytes)
        except UploadTooLarge as exc:
            raise PayloadTooLarge(str(exc), details={"field": "files", "max_bytes": max_bytes}) from None
        except ValueError as exc:
            raise BadRequest(str(exc).capitalize() + ".", details={"field": "files"}) from None
        await self.ready()  # the writer (this process, or another) runs it
        if self.runner is not None:
            self.runner.wake()
        return job

    async def job_for(self, job_id: str, user_id: str, admin: bool) -> JobRow:
        job = await self.jobs.get_job(job_id)
        if job is None:
            raise NotFound("No such job.", details={"job_id": job_id})
        try:
            await self.readable(job.collection_id, user_id, admin)
        except NotFound:
            raise NotFound("No such job.", details={"job_id": job_id}) from None
        return job

    async def delete_document(self, row: CollectionRow, document_id: str) -> None:
        doc = await self.repo.get_document(document_id)
        if doc is None or doc.collection_id != row.id or doc.status == "deleting":
            raise NotFound("No such document.", details={"document_id": document_id})
        await self.ready()
        if self.dense is not None and self.dense.writable and self.ingestor is not None:
            await self.ingestor.delete_document(row, document_id)
        else:
            await self.repo.retire(document_id)  # out of search now; the writer removes it later

    async def documents(self, row: CollectionRow) -> list[DocumentRow]:
        return [d for d in await self.repo.list_documents(row.id) if d.status != "deleting"]

    # -- search --------------------------------------------------------------------------------------------

    async def search(
        self,
        collections: Sequence[CollectionRow],
        query: str,
        top_k: int | None = None,
        mode: Mode | None = None,
        filters: SearchFilters | None = None,
        threshold: float | None = None,
    ) -> tuple[list[Hit], Mode]:
        """The best chunks for ``query``, and the mode that found them (counted and timed in the RAG
        metrics): ``lexical`` for a hybrid search while the dense side is still opening, with
        ``rag.retrieval.lexical_while_loading``."""
        used: Mode = mode or self.retrieval.mode
        if used == "hybrid" and self.retrieval.lexical_while_loading and not self._dense_ready():
            self._open_soon()
            used = "lexical"
        if used != "lexical":
            await self.ready()
        started = time.perf_counter()
        try:
            hits = await self.retriever.search(collections, query, top_k, used, filters, threshold)
        except EmbeddingMismatch as exc:
            raise mismatch(exc) from None
        except RuntimeError as exc:  # no dense index or embedder (it failed to open)
            raise IndexUnavailable(f"Document search is unavailable: {exc}.") from None
        metrics.RAG_RETRIEVALS.inc((used,))
        metrics.RAG_RETRIEVAL_LATENCY.observe(time.perf_counter() - started, (used,))
        return hits, used

    def _dense_ready(self) -> bool:
        """The dense index open and the embedder able to embed a query now."""
        return self.dense is not None and self.embedder is not None and bool(getattr(self.embedder, "ready", True))


def _log_failure(opening: asyncio.Future[None]) -> None:
    if not opening.cancelled() and (exc := opening.exception()) is not None:
        log.error("the document index could not be opened", extra={"error": f"{type(exc).__name__}: {exc}"})
