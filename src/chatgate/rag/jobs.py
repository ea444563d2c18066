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
from pathlib import Path

from chatgate.rag.ingest import FileResult, Ingestor, SourceFile
from chatgate.rag.repo import CollectionRow, JobRow, RagRepo, new_id
from chatgate.settings import RetrievalSettings
from chatgate.store.models import utcnow

log = logging.getLogger("chatgate.rag")
_UNSAFE = re.compile(r"[^\w.\- ]+")


class UploadTooLarge(ValueError):
    """A file over ``upload_max_bytes``."""


def safe_name(filename: str) -> str:
    """A file name safe to store: no directories, no odd characters, never empty or hidden."""
    name = _UNSAFE.sub("_", Path(filename.replace("\\", "/")).name).strip(" .") or "upload"
    return name[:200]


async def submit(
    repo: RagRepo,
    upload_dir: Path,
    collection: CollectionRow,
    files: Sequence[tuple[str, bytes]],
    max_bytes: int,
) -> JobRow:
    """Save (filename, content) uploads and queue a job for them. Raises ``UploadTooLarge`` or
    ``ValueError`` (no files, or two with the same name)."""
    if not files:
        raise ValueError("no files uploaded")
    names = [safe_name(name) for name, _ in files]
    if len(set(names)) != len(names):
        raise ValueError("two uploaded files have the same name")
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
        return await repo.create_job(collection.id, names, job_id=job_id)
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, folder, True)
        raise


class JobRunner:
    """Runs queued ingestion jobs one after another until closed."""

    def __init__(self, repo: RagRepo, ingestor: Ingestor, settings: RetrievalSettings, upload_dir: Path) -> None:
        self.repo = repo
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
        while (job := await self.repo.claim_job(self.ingestor.claim)) is not None:
            await self._run_job(job)
            n += 1
        return n

    async def _run(self) -> None:
        requeued = await self.repo.requeue_abandoned_jobs(self.settings.stale_after)
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
        collection = await self.repo.get_collection(job.collection_id)
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
            pending.append(asyncio.ensure_future(self.repo.update_job(job.id, **counts, failures=dict(failures))))

        files = [SourceFile(source=name, path=folder / name) for name in job.files]
        try:
            await self.ingestor.ingest(collection, files, progress)
        except asyncio.CancelledError:
            await asyncio.gather(*pending, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.shield(self.repo.update_job(job.id, status="queued", claimed_by=None))
            raise
        except Exception as exc:
            await asyncio.gather(*pending, return_exceptions=True)
            log.warning("ingestion job %s failed: %s", job.id, exc)
            await self.repo.update_job(
                job.id, status="failed", error=str(exc) or type(exc).__name__, finished_at=utcnow(), **counts
            )
            await asyncio.to_thread(shutil.rmtree, folder, True)
            return
        await asyncio.gather(*pending, return_exceptions=True)
        await self.repo.update_job(
            job.id, status="done", finished_at=utcnow(), failures=failures, claimed_by=None, **counts
        )
        await asyncio.to_thread(shutil.rmtree, folder, True)
