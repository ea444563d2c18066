"""RAG on the running gateway: one ``Rag`` object on the app's services, used by the HTTP layer and the pipeline.

Cheap until documents are in use: the store-side parts (collections, jobs, lexical search, assistants)
are built at once, but the dense index (Chroma) and the embedder (torch, for the local model) only when
first needed, or in the background at start when collections already exist. ``/health`` never waits
for them; a request that needs them waits for the dense index to open and, when it embeds, for the model.

The dense index is opened as its writer when its directory is free (``write="try"``), or by every process
with a Chroma server: a process that can write it runs the ingestion jobs (uploads, ``runner.py``),
taking over those whose runner died. A process that only reads it stores uploads for the writer (in the
database: any instance may run the job) and queues vector deletions for it (``deletions.py``: a deleted
collection's rows go at once, a deleted document is out of search at once, and the writer removes the
vectors within a poll interval).

Every method takes plain values and raises the project's errors (``chatgate.errors``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from chatgate.errors import BadRequest, ChatgateError, Conflict, Forbidden, NotFound, PayloadTooLarge
from chatgate.identity.keys import ADMIN
from chatgate.observe.metrics import Metrics
from chatgate.rag.assistants import Assistant, AssistantRepo, Assistants
from chatgate.rag.deletions import DenseDeletions
from chatgate.rag.dense import DenseIndex
from chatgate.rag.ingest import FileResult, Ingestor, IngestSummary, Parser, SourceFile
from chatgate.rag.jobs import JobRepo, JobRow, Upload, UploadTooLarge, submit
from chatgate.rag.lexical import LexicalIndex
from chatgate.rag.repo import AlreadyExists, CollectionRow, DocumentRow, EmbeddingMismatch, RagRepo
from chatgate.rag.retrieve import Hit, Mode, Retriever, SearchFilters
from chatgate.rag.runner import JobRunner
from chatgate.rag.types import Embedder
from chatgate.settings import Settings
from chatgate.store.models import RAG_COLLECTIONS

log = logging.getLogger("chatgate.rag")
_C = RAG_COLLECTIONS.c


OPERATOR = ADMIN.user_id  # the bootstrap admin key's user, and the owner ``chatgate ingest`` gives collections


@dataclass(frozen=True, slots=True)
class AssistantCollections:
    """An assistant's collections as one caller may read them, and the references that matched none."""

    collections: list[CollectionRow]
    unresolved: tuple[str, ...] = ()


class IndexUnavailable(ChatgateError):
    status = 503
    code = "INDEX_UNAVAILABLE"
    type = "server_error"


class CountingIngestor(Ingestor):
    """The ingestor, counting each file's outcome in ``chatgate_rag_documents_ingested``."""

    def __init__(self, metrics: Metrics, *args: Any) -> None:
        super().__init__(*args)
        self.metrics = metrics

    async def ingest(
        self,
        collection: CollectionRow,
        files: Sequence[SourceFile],
        progress: Callable[[FileResult], None] | None = None,
    ) -> IngestSummary:
        def counted(result: FileResult) -> None:
            self.metrics.rag_ingested.inc((result.outcome,))
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
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.retrieval = settings.rag.retrieval
        self.engine = engine
        self.repo = RagRepo(engine)
        self.jobs = JobRepo(engine)
        self.lexical = lexical
        self._open_dense, self._make_embedder = open_dense, make_embedder
        self.assistants = Assistants(settings.assistants, AssistantRepo(engine))
        self.retriever = Retriever(self.repo, self.lexical, None, None, self.retrieval)
        self.dense: DenseIndex | None = None
        self.embedder: Embedder | None = None
        self.ingestor: Ingestor | None = None
        self.runner: JobRunner | None = None
        self._opening: asyncio.Future[None] | None = None
        self._unresolved_logged: set[tuple[str, str]] = set()  # (assistant, reference), logged once each
        self._watching: asyncio.Task[None] | None = None
        self._promoting: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """At start: the stored assistants read; the index opened in the background when documents or grounded
        assistants exist."""
        await self.assistants.refresh()
        if await self.in_use():
            self.lexical.warm()
            self._open_soon()
        else:
            self._watching = asyncio.create_task(self._watch_for_jobs(), name="chatgate-rag-watch")

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
        embedder = self.shared_embedder()
        parser = await asyncio.to_thread(Parser.from_settings, self.settings)
        self.dense = dense
        self.retriever.dense, self.retriever.embedder = dense, embedder
        self.ingestor = CountingIngestor(self.metrics, self.repo, dense, embedder, parser, self.retrieval)
        if dense.writable:
            self._start_runner()
        elif dense.persistent:
            self._promoting = asyncio.create_task(self._become_writer(), name="chatgate-rag-promote")
        log.info("document index open", extra={"where": dense.where, "writer": dense.writable})

    def _start_runner(self) -> None:
        assert self.ingestor is not None
        self.runner = JobRunner(self.jobs, self.ingestor, self.retrieval, DenseDeletions(self.engine))
        self.runner.start()

    async def _become_writer(self) -> None:
        """A reader of the Chroma directory (another process wrote it when this one opened it: a `chatgate
        ingest`, a server stopping) takes the writer's part, and runs the ingestion jobs, once a job waits
        and the writer's lock is free: an upload, or files `chatgate ingest` handed over, never wait for a
        restart."""
        dense = self.dense
        assert dense is not None
        while not dense.writable:
            await asyncio.sleep(self.retrieval.job_poll_interval)
            try:
                if await self.jobs.has_claimable() and await asyncio.to_thread(dense.promote):
                    self._start_runner()
                    log.info("document index: this process writes it now", extra={"where": dense.where})
            except Exception as exc:  # the database or the directory briefly away: try again
                log.warning("taking over the document index failed: %s", exc)

    def shared_embedder(self) -> Embedder:
        """The embedder, made (and its model's load started) once: document search and the local
        ``/v1/embeddings`` (``upstream/local_embeddings.py``) share it, without the dense index."""
        embedder = self.embedder
        if embedder is None:
            embedder = self.embedder = self._make_embedder()
            start = getattr(embedder, "start", None)
            if start is not None:
                start()  # the local model loads on its own thread
        return embedder

    async def _watch_for_jobs(self) -> None:
        """Not open yet (no documents when it started), this instance still takes its share of the jobs: it
        opens the index (and so starts its job runner, where it can write) once a job waits for a runner,
        one an instance that died left behind included."""
        while self._opening is None:
            try:
                if await self.jobs.has_claimable():
                    self._open_soon()
                    return
            except Exception as exc:
                log.warning("checking for ingestion jobs failed: %s", exc)
            await asyncio.sleep(self.retrieval.job_poll_interval)

    async def close(self) -> None:
        for task in (self._watching, self._promoting):
            if task is not None:
                task.cancel()
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
        else:  # the rows go now; the writer drops the vectors (no row points at them meanwhile: none is found)
            await DenseDeletions(self.engine).delete_collection(row)

    async def for_assistant(self, assistant: Assistant, user_id: str) -> list[CollectionRow]:
        """The assistant's collections that ``user_id`` may read (``resolve_collections`` without what was
        left unresolved)."""
        return (await self.resolve_collections(assistant, user_id)).collections

    async def resolve_collections(self, assistant: Assistant, user_id: str) -> AssistantCollections:
        """The assistant's collections that ``user_id`` may read, never another user's private one, and the
        references that matched nothing (logged once per assistant and reference, counted per request in
        ``chatgate_rag_unresolved_collections``).

        A reference is a collection id, or a name. A name matches the operator's collections first (admin-managed
        ones, which only admin keys make, and those the operator owns: ``chatgate ingest`` makes them as the
        ``admin`` user, whatever their visibility), then the caller's own. Never another user's shared collection,
        or anyone could slip documents into everyone's assistant by naming a collection like its own (name
        those by id)."""
        found: dict[str, CollectionRow] = {}
        unresolved: list[str] = []
        for ref in assistant.collections:
            by_id = await self.repo.get_collection(ref)
            if by_id is not None:
                if by_id.readable_by(user_id):
                    found[by_id.id] = by_id
                else:
                    unresolved.append(ref)
                continue
            named = await self.repo.find_collections_named(ref)
            matches = [r for r in named if r.visibility == "admin" or r.owner_id == OPERATOR]
            if not matches:
                matches = [r for r in named if r.owner_id == user_id]
            if not matches:
                unresolved.append(ref)
            for row in matches:
                found[row.id] = row
        if unresolved:
            self.metrics.rag_unresolved.inc((assistant.name,))
            for ref in unresolved:
                if (assistant.name, ref) not in self._unresolved_logged:
                    self._unresolved_logged.add((assistant.name, ref))
                    log.warning(
                        "an assistant's collection matches nothing the caller may read",
                        extra={"assistant": assistant.name, "collection": ref},
                    )
        return AssistantCollections(list(found.values()), tuple(unresolved))

    # -- documents and jobs ------------------------------------------------------------------------------

    async def upload(self, row: CollectionRow, files: Sequence[Upload]) -> JobRow:
        """Store the files and queue their job (a 413 for a file over ``upload_max_bytes``)."""
        max_bytes = self.retrieval.upload_max_bytes
        try:
            job = await submit(self.jobs, row, files, max_bytes)
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
        else:  # out of search now; the writer removes its vectors, then its rows
            await DenseDeletions(self.engine).delete_document(row, document_id)

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
        self.metrics.rag_retrievals.inc((used,))
        self.metrics.rag_retrieval_latency.observe(time.perf_counter() - started, (used,))
        return hits, used

    def _dense_ready(self) -> bool:
        """The dense index open and the embedder able to embed a query now."""
        return self.dense is not None and self.embedder is not None and bool(getattr(self.embedder, "ready", True))


def _log_failure(opening: asyncio.Future[None]) -> None:
    if not opening.cancelled() and (exc := opening.exception()) is not None:
        log.error("the document index could not be opened", extra={"error": f"{type(exc).__name__}: {exc}"})
