"""The job runner: an asyncio task that runs ingestion jobs (uploads) one after another.

It runs only where the dense index is writable: in the process that holds the on-disk Chroma directory
as its writer, or in every process when the index is a Chroma server; it claims nothing once its index
is closed. Each pass it first does the vector deletions queued by processes that cannot write the index
(``deletions.py``), then claims jobs (``jobs.JobRepo.claim_job``): queued ones, and those whose lease ran
out because the instance running them died. While a job runs, a heartbeat renews its lease every
``rag.retrieval.job_heartbeat`` seconds; a runner that finds it no longer holds the job (another took it
over after a stall) stops working on it. A job is ``queued`` -> ``processing`` -> ``done`` (per-file
failures kept) or ``failed`` with the reason, including a job interrupted more than
``rag.retrieval.job_max_attempts`` times. A clean shutdown queues the running job again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from pathlib import Path
from typing import Any

from chatgate.rag.deletions import DenseDeletions
from chatgate.rag.ingest import FileResult, Ingestor, SourceFile
from chatgate.rag.jobs import Claimed, JobRepo, JobRow
from chatgate.settings import RetrievalSettings

log = logging.getLogger("chatgate.rag")
CLOSE_WAIT = 30.0  # seconds close() waits for an interrupted ingestion to clean up


class JobRunner:
    """Runs queued ingestion jobs until closed (see the module)."""

    def __init__(
        self,
        jobs: JobRepo,
        ingestor: Ingestor,
        settings: RetrievalSettings,
        deletions: DenseDeletions | None = None,
    ) -> None:
        self.jobs = jobs
        self.ingestor = ingestor
        self.settings = settings
        self.deletions = deletions
        self.claim = ingestor.claim  # the ingestor marks the documents it indexes with the same claim
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._ingesting: asyncio.Future[Any] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="chatgate-rag-jobs")

    def wake(self) -> None:
        """A job was just queued (in this process): look now rather than at the next poll."""
        self._wake.set()

    async def close(self) -> None:
        """Stop; a job in progress is queued again and its ingestion interrupted (its unfinished documents
        removed). The job is released first and only the ingestion is cancelled (it is made to be), never the
        runner's own writes: a write cut off mid-transaction can leave SQLite locked for a while."""
        if self._task is None:
            return
        task, self._task = self._task, None
        self._closing = True
        await self._release()
        if self._ingesting is not None:
            self._ingesting.cancel()
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), CLOSE_WAIT)
        except TimeoutError:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self._release()  # a job claimed meanwhile

    async def _release(self) -> None:
        try:
            if await self.jobs.release_jobs(self.claim):
                log.info("ingestion job queued again (shutdown)", extra={"claim": self.claim})
        except Exception as exc:  # the lease runs out instead, and another runner takes the job
            log.warning("could not queue the running ingestion job again: %s", exc)

    async def run_pending(self) -> int:
        """Do the queued deletions, then run every claimable job now; how many jobs ran (tests and the CLI
        use this without the task)."""
        if not self.ingestor.dense.writable:  # the rule: only a writer of the index runs jobs
            return 0
        if self.deletions is not None:
            await self.deletions.drain(self.ingestor.dense, self.ingestor.repo)
        n = 0
        while self.ingestor.dense.writable and not self._closing:
            claimed = await self.jobs.claim_job(self.claim, self.settings.job_lease)
            if claimed is None:
                break
            await self._run_job(claimed)
            n += 1
        return n

    async def _run(self) -> None:
        while not self._closing:
            try:
                await self.run_pending()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("ingestion job runner error")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.job_poll_interval)

    async def _run_job(self, claimed: Claimed) -> None:
        job = claimed.job
        collection = await self.ingestor.repo.get_collection(job.collection_id)
        if collection is None:  # deleted meanwhile (the job row and its files went with it)
            return
        extra = {"job_id": job.id, "attempt": job.attempts, "taken_over_from": claimed.taken_from, "claim": self.claim}
        if claimed.taken_from is not None:
            retired = await self.jobs.abandon_claim(claimed.taken_from, collection.id)
            log.warning("ingestion job taken over (its runner's lease ran out)", extra={**extra, "retired": retired})
        if job.attempts > self.settings.job_max_attempts:
            reason = (
                f"ingestion was interrupted {job.attempts - 1} times (the process running it stopped or crashed); "
                "not retried (rag.retrieval.job_max_attempts)"
            )
            await self.jobs.finish_job(job.id, self.claim, "failed", error=reason)
            log.warning("ingestion job failed: interrupted too often", extra=extra)
            return
        log.info("ingestion job started", extra=extra)
        counts = {"added": 0, "unchanged": 0, "updated": 0, "failed": 0}
        failures: dict[str, str] = {}
        pending: list[asyncio.Task[bool]] = []

        def progress(result: FileResult) -> None:
            counts[result.outcome] += 1
            if result.reason:
                failures[result.source] = result.reason
            update = self.jobs.update_job(job.id, self.claim, **counts, failures=dict(failures))
            pending.append(asyncio.ensure_future(update))

        files = [_source(self.jobs, job, name) for name in job.files]
        ingesting = self._ingesting = asyncio.ensure_future(self.ingestor.ingest(collection, files, progress))
        lost, stop = asyncio.Event(), asyncio.Event()
        beat = asyncio.ensure_future(self._heartbeat(job, ingesting, lost, stop))
        try:
            await ingesting
        except asyncio.CancelledError:
            await asyncio.gather(*pending, return_exceptions=True)
            if _cancelling():
                raise
            if lost.is_set():
                log.warning("ingestion job abandoned: another runner holds it now", extra=extra)
            else:
                log.info("ingestion job interrupted (shutdown)", extra=extra)  # close() queued it again
            return
        except Exception as exc:
            await asyncio.gather(*pending, return_exceptions=True)
            log.warning("ingestion job failed: %s", exc, extra=extra)
            await self.jobs.finish_job(job.id, self.claim, "failed", error=str(exc) or type(exc).__name__, **counts)
            return
        finally:
            self._ingesting = None
            stop.set()  # not cancelled: a renewal in flight completes
            await asyncio.gather(beat, return_exceptions=True)
        await asyncio.gather(*pending, return_exceptions=True)
        if await self.jobs.finish_job(job.id, self.claim, "done", failures=failures, **counts):
            log.info("ingestion job done", extra={**extra, **counts})
        else:
            log.warning("ingestion job finished after another runner took it over", extra=extra)

    async def _heartbeat(
        self, job: JobRow, ingesting: asyncio.Future[Any], lost: asyncio.Event, stop: asyncio.Event
    ) -> None:
        """Renew the job's lease until ``stop``; if the claim is gone, stop the ingestion."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.job_heartbeat)
            if stop.is_set():
                return
            try:
                held = await self.jobs.renew(job.id, self.claim, self.settings.job_lease)
            except Exception as exc:  # the database is briefly away: try again at the next beat
                log.warning("ingestion job heartbeat failed: %s", exc, extra={"job_id": job.id})
                continue
            if not held:
                lost.set()
                ingesting.cancel()
                return


def _source(jobs: JobRepo, job: JobRow, name: str) -> SourceFile:
    """An uploaded file, read from the store when its turn comes (``path`` only names its format)."""
    return SourceFile(source=name, path=Path(name), load=functools.partial(jobs.read_upload, job.id, name))


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
