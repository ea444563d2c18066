"""Background ingestion jobs (uploads): a job row per upload, run by an asyncio task on the app.

``submit`` saves the uploaded files under ``<upload_dir>/<job id>/`` and queues a ``rag_jobs`` row;
any process may submit. The ``JobRunner`` runs only where the dense index is writable (the Chroma
directory's writer, or every process with a Chroma server): it claims queued jobs one at a time
(``queued`` -> ``processing`` -> ``done`` / ``failed`` with the reason, per-file failures kept), so
an upload that lands on a read-only worker is ingested by the writer. A job left ``processing`` by a
process that died is queued again on start and resumes (files already indexed come out unchanged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Row, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from chatgate.rag.ingest import FileResult, Ingestor, SourceFile
from chatgate.rag.repo import CollectionRow, is_abandoned, new_id
from chatgate.settings import RetrievalSettings
from chatgate.store.models import RAG_JOBS, utcnow

log = logging.getLogger("chatgate.rag")
_UNSAFE = re.compile(r"[^\w.\- ]+")


_J = RAG_JOBS.c


@dataclass(frozen=True, slots=True)
class JobRow:
    id: str
    collection_id: str
    status: str
    files: tuple[str, ...]
    total: int
    added: int
    unchanged: int
    updated: int
    failed: int
    error: str | None
    failures: dict[str, str]
    claimed_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


def _job(r: Row[Any]) -> JobRow:
    m = r._mapping
    values = {f: m[f] for f in JobRow.__dataclass_fields__ if f not in ("files", "failures")}
    return JobRow(**values, files=tuple(m["files"] or ()), failures=dict(m["failures"] or {}))


class JobRepo:
    """The ``rag_jobs`` table."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create_job(self, collection_id: str, files: Sequence[str], job_id: str | None = None) -> JobRow:
        now = utcnow()
        values: dict[str, Any] = {
            "id": job_id or new_id(),
            "collection_id": collection_id,
            "status": "queued",
            "files": list(files),
            "total": len(files),
            "added": 0,
            "unchanged": 0,
            "updated": 0,
            "failed": 0,
            "error": None,
            "failures": {},
            "claimed_by": None,
            "created_at": now,
            "started_at": None,
            "finished_at": None,
            "updated_at": now,
        }
        async with self.engine.begin() as conn:
            await conn.execute(insert(RAG_JOBS).values(**values))
        return _job_from(values)

    async def get_job(self, job_id: str) -> JobRow | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(RAG_JOBS).where(_J.id == job_id))).first()
        return _job(row) if row else None

    async def list_jobs(self, collection_id: str) -> list[JobRow]:
        async with self.engine.connect() as conn:
            stmt = select(RAG_JOBS).where(_J.collection_id == collection_id).order_by(_J.created_at.desc())
            return [_job(r) for r in (await conn.execute(stmt)).all()]

    async def recent_jobs(self, limit: int = 50) -> list[JobRow]:
        """Every collection's jobs, newest first."""
        async with self.engine.connect() as conn:
            stmt = select(RAG_JOBS).order_by(_J.created_at.desc(), _J.id).limit(limit)
            return [_job(r) for r in (await conn.execute(stmt)).all()]

    async def claim_job(self, claim: str, collection_ids: Sequence[str] | None = None) -> JobRow | None:
        """Take the oldest queued job (in ``collection_ids`` when given); None when there is none."""
        while True:
            stmt = select(_J.id).where(_J.status == "queued").order_by(_J.created_at).limit(1)
            if collection_ids is not None:
                stmt = stmt.where(_J.collection_id.in_(list(collection_ids)))
            async with self.engine.begin() as conn:
                job_id = (await conn.execute(stmt)).scalar()
                if job_id is None:
                    return None
                now = utcnow()
                result = await conn.execute(
                    update(RAG_JOBS)
                    .where(_J.id == job_id, _J.status == "queued")
                    .values(status="processing", claimed_by=claim, started_at=now, updated_at=now)
                )
            if result.rowcount:  # else another process took it first: try the next one
                job = await self.get_job(job_id)
                if job is not None:
                    return job

    async def update_job(self, job_id: str, **values: Any) -> None:
        """Progress (counts, failures) or the outcome (``status``, ``error``, ``finished_at``) of a job."""
        async with self.engine.begin() as conn:
            await conn.execute(update(RAG_JOBS).where(_J.id == job_id).values(**values, updated_at=utcnow()))

    async def requeue_abandoned_jobs(self, stale_after: float) -> int:
        """Put back in the queue the ``processing`` jobs whose runner is gone (they resume: files already
        indexed are unchanged)."""
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(select(_J.id, _J.claimed_by, _J.updated_at).where(_J.status == "processing"))
            ).all()
        now = utcnow()
        stale = [r for r in rows if is_abandoned(r.claimed_by, r.updated_at, now, stale_after)]
        n = 0
        for r in stale:
            async with self.engine.begin() as conn:
                result = await conn.execute(
                    update(RAG_JOBS)
                    .where(_J.id == r.id, _J.status == "processing", _J.claimed_by == r.claimed_by)
                    .values(status="queued", claimed_by=None, updated_at=now)
                )
            n += result.rowcount
        return n


def _job_from(values: dict[str, Any]) -> JobRow:
    return JobRow(
        **{k: v for k, v in values.items() if k not in ("files", "failures")},
        files=tuple(values["files"]),
        failures=dict(values["failures"]),
    )


class UploadTooLarge(ValueError):
    """A file over ``upload_max_bytes``."""


def safe_name(filename: str) -> str:
    """A file name safe to store: no directories, no odd characters, never empty or hidden."""
    name = _UNSAFE.sub("_", Path(filename.replace("\\", "/")).name).strip(" .") or "upload"
    return name[:200]


def distinct(names: Sequence[str]) -> list[str]:
    """``names``, a repeated one numbered from its second time on: ``a.md``, ``a (2).md``."""
    taken: set[str] = set()
    out: list[str] = []
    for name in names:
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            path = Path(name)
            candidate = f"{path.stem} ({n}){path.suffix}"
        taken.add(candidate)
        out.append(candidate)
    return out


async def submit(
    jobs: JobRepo,
    upload_dir: Path,
    collection: CollectionRow,
    files: Sequence[tuple[str, bytes]],
    max_bytes: int,
) -> JobRow:
    """Save (filename, content) uploads and queue a job for them. Raises ``UploadTooLarge`` or
    ``ValueError`` (no files). Two files of one upload with the same name are both kept: the second is
    ``name (2).ext``, and so on."""
    if not files:
        raise ValueError("no files uploaded")
    names = distinct([safe_name(name) for name, _ in files])
    for name, data in zip(names, (d for _, d in files), strict=True):
        if len(data) > max_bytes:
            raise UploadTooLarge(f"{name} is larger than {max_bytes} bytes")
    job_id = new_id()
    folder = upload_dir / job_id

    def save() -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, (_, data) in zip(names, files, strict=True):
            (folder / name).write_bytes(data)

    await asyncio.to_thread(save)
    try:
        return await jobs.create_job(collection.id, names, job_id=job_id)
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, folder, True)
        raise


class JobRunner:
    """Runs queued ingestion jobs one after another until closed."""

    def __init__(self, jobs: JobRepo, ingestor: Ingestor, settings: RetrievalSettings, upload_dir: Path) -> None:
        self.jobs = jobs
        self.ingestor = ingestor
        self.settings = settings
        self.upload_dir = upload_dir
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="chatgate-rag-jobs")

    def wake(self) -> None:
        """A job was just queued (in this process): look now rather than at the next poll."""
        self._wake.set()

    async def close(self) -> None:
        """Stop; a job in progress is interrupted (its unfinished documents removed) and queued again."""
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run_pending(self) -> int:
        """Run every queued job now; how many ran (tests and the CLI use this without the task)."""
        n = 0
        while (job := await self.jobs.claim_job(self.ingestor.claim)) is not None:
            await self._run_job(job)
            n += 1
        return n

    async def _run(self) -> None:
        requeued = await self.jobs.requeue_abandoned_jobs(self.settings.stale_after)
        if requeued:
            log.info("requeued %d interrupted ingestion jobs", requeued)
        while True:
            try:
                await self.run_pending()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("ingestion job runner error")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.job_poll_interval)

    async def _run_job(self, job: JobRow) -> None:
        folder = self.upload_dir / job.id
        collection = await self.ingestor.repo.get_collection(job.collection_id)
        if collection is None:  # deleted meanwhile (the job row went with it)
            await asyncio.to_thread(shutil.rmtree, folder, True)
            return
        counts = {"added": 0, "unchanged": 0, "updated": 0, "failed": 0}
        failures: dict[str, str] = {}
        pending: list[asyncio.Task[None]] = []

        def progress(result: FileResult) -> None:
            counts[result.outcome] += 1
            if result.reason:
                failures[result.source] = result.reason
            pending.append(asyncio.ensure_future(self.jobs.update_job(job.id, **counts, failures=dict(failures))))

        files = [SourceFile(source=name, path=folder / name) for name in job.files]
        try:
            await self.ingestor.ingest(collection, files, progress)
        except asyncio.CancelledError:
            await asyncio.gather(*pending, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.shield(self.jobs.update_job(job.id, status="queued", claimed_by=None))
            raise
        except Exception as exc:
            await asyncio.gather(*pending, return_exceptions=True)
            log.warning("ingestion job %s failed: %s", job.id, exc)
            await self.jobs.update_job(
                job.id, status="failed", error=str(exc) or type(exc).__name__, finished_at=utcnow(), **counts
            )
            await asyncio.to_thread(shutil.rmtree, folder, True)
            return
        await asyncio.gather(*pending, return_exceptions=True)
        await self.jobs.update_job(
            job.id, status="done", finished_at=utcnow(), failures=failures, claimed_by=None, **counts
        )
        await asyncio.to_thread(shutil.rmtree, folder, True)
