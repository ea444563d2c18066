"""``chatgate ingest`` while another process writes the index: the files handed to it as ingestion jobs.

A persistent Chroma directory has one writer (``dense.py``), and a running ``chatgate serve`` holds it. Rather
than fail, or wait for the server to stop, the command stores the files in the database as upload jobs
(``jobs.py``: the same rows an upload through the API makes, each file named by its path relative to the
ingest root), which the writer's job runner claims within ``rag.retrieval.job_poll_interval``. ``follow``
reads the jobs until they end, for ``chatgate ingest --wait``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from chatgate.rag.ingest import SourceFile
from chatgate.rag.jobs import JobRepo, JobRow, Upload, UploadTooLarge
from chatgate.rag.repo import CollectionRow

JOB_FILES = 64  # files per job: a big folder is several jobs, each stored in one transaction
ENDED = ("done", "failed")


def batches(files: Sequence[SourceFile], max_file_bytes: int, max_job_bytes: int) -> list[list[SourceFile]]:
    """The files in jobs of at most ``JOB_FILES`` files and ``max_job_bytes``; ``UploadTooLarge`` naming every
    file over ``max_file_bytes`` (nothing is handed over then)."""
    sizes = {f.source: f.path.stat().st_size for f in files}
    too_large = [name for name, size in sizes.items() if size > max_file_bytes]
    if too_large:
        raise UploadTooLarge(
            f"larger than rag.retrieval.upload_max_bytes ({max_file_bytes} bytes): {', '.join(too_large)}"
        )
    out: list[list[SourceFile]] = []
    held = 0
    for f in files:
        if not out or len(out[-1]) >= JOB_FILES or held + sizes[f.source] > max_job_bytes:
            out.append([])
            held = 0
        out[-1].append(f)
        held += sizes[f.source]
    return out


async def hand_over(
    jobs: JobRepo, collection: CollectionRow, files: Sequence[SourceFile], max_file_bytes: int, max_job_bytes: int
) -> list[JobRow]:
    """Queue ``files`` for the index's writer as upload jobs on ``collection``; the jobs, in order."""
    queued = []
    for batch in batches(files, max_file_bytes, max_job_bytes):
        uploads = [Upload(f.source, f.path.stat().st_size, f.read) for f in batch]
        queued.append(await jobs.create_job(collection.id, uploads))
    return queued


async def follow(jobs: JobRepo, ids: Sequence[str], poll: float, seen: Callable[[list[JobRow]], None]) -> list[JobRow]:
    """Read the jobs every ``poll`` seconds, telling ``seen`` each time, until every one has ended."""
    while True:
        rows = [row for job_id in ids if (row := await jobs.get_job(job_id)) is not None]
        seen(rows)
        if all(r.status in ENDED for r in rows):
            return rows
        await asyncio.sleep(poll)


def processed(job: JobRow) -> int:
    """Files of the job the runner has been through, whatever became of them."""
    return job.added + job.unchanged + job.updated + job.failed
