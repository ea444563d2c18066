"""The job runner on SQLite and PostgreSQL: takeover of a job whose runner died (its half-indexed work
removed), the heartbeat keeping a long job its own, a runner that lost its job stopping, bounded restarts,
a clean shutdown queueing the job again, the deletions queued for the writer, and the writer-only rule."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest
from sqlalchemy import update

from chatgate.rag.deletions import DenseDeletions
from chatgate.rag.ingest import Ingestor
from chatgate.rag.jobs import Upload
from chatgate.rag.repo import new_claim
from chatgate.rag.runner import JobRunner
from chatgate.rag.types import Chunk
from chatgate.settings import RetrievalSettings
from chatgate.store.models import RAG_JOBS, utcnow
from tests.rag.conftest import Rag, test_parser
from tests.rag.doubles import HashEmbedder
from tests.rag.test_ingest import consistent

FAST = {"job_lease": 0.4, "job_heartbeat": 0.1, "job_poll_interval": 0.05}
DOCS = {f"d{i}.md": f"# D{i}\n\n" + " ".join(f"Topic{i} sentence {j}." for j in range(30)) for i in range(4)}


def uploads(texts: dict[str, str]) -> list[Upload]:
    return [Upload.of(name, text.encode()) for name, text in texts.items()]


def runner(rag: Rag, delay: float = 0.0, batch: int = 8, **settings: float) -> JobRunner:
    cfg = RetrievalSettings(**{**FAST, **settings, "ingest_batch_size": batch})  # type: ignore[arg-type]
    ingestor = Ingestor(rag.repo, rag.dense, HashEmbedder(delay=delay), test_parser(), cfg)
    return JobRunner(rag.jobs, ingestor, cfg, DenseDeletions(rag.store.engine))


async def until(check: object, polls: int = 1000) -> None:
    for _ in range(polls):
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def expire(rag: Rag, job_id: str) -> None:
    """The lease of a job runs out (its runner stopped beating)."""
    async with rag.store.engine.begin() as conn:
        await conn.execute(
            update(RAG_JOBS).where(RAG_JOBS.c.id == job_id).values(lease_until=utcnow() - timedelta(seconds=1))
        )


async def test_a_dead_runners_job_is_taken_over_and_its_half_work_removed(
    rag: Rag, caplog: pytest.LogCaptureFixture
) -> None:
    c = await rag.collection()
    job = await rag.jobs.create_job(c.id, uploads(DOCS))
    dead = new_claim()
    assert await rag.jobs.claim_job(dead, 60) is not None
    chunk = Chunk(text="Half indexed text.", ordinal=0, tokens=3)
    half, ids = await rag.repo.begin_document(c.id, "d0.md", "D0", "s", 1, (), dead, [(chunk, "h")])
    await rag.dense.add(c.dense_name, ids, await rag.embedder.embed([chunk.text]), [half], [0])
    other = runner(rag)
    assert await other.run_pending() == 0  # the dead runner's lease still holds
    await expire(rag, job.id)
    with caplog.at_level(logging.INFO, logger="chatgate.rag"):
        assert await other.run_pending() == 1
    row = await rag.jobs.get_job(job.id)
    assert row is not None and (row.status, row.added, row.attempts) == ("done", 4, 2)
    assert row.claimed_by == other.claim
    taken = [r for r in caplog.records if r.getMessage().startswith("ingestion job taken over")]
    assert [(r.job_id, r.taken_over_from, r.claim) for r in taken] == [(job.id, dead, other.claim)]  # type: ignore[attr-defined]
    assert await rag.repo.get_document(half) is None  # the half-indexed version and its vectors are gone
    await consistent(rag, c.id)


async def test_the_heartbeat_keeps_a_long_job_its_own(rag: Rag) -> None:
    c = await rag.collection()
    job = await rag.jobs.create_job(c.id, uploads(DOCS))
    slow = runner(rag, delay=0.25, batch=2, job_lease=1.0)  # ~8 batches of 2 chunks: twice the lease
    rival = runner(rag)
    slow.start()
    claims: list[object] = []
    try:
        await until(lambda: _status(rag, job.id, "processing"))
        first = await rag.jobs.get_job(job.id)
        while not await _status(rag, job.id, "done"):
            claims.append(await rival.jobs.claim_job(rival.claim, 60))
            await asyncio.sleep(0.05)
    finally:
        await slow.close()
    row = await rag.jobs.get_job(job.id)
    assert row is not None and row.claimed_by == slow.claim and row.attempts == 1 and row.added == 4
    assert first is not None and first.lease_until is not None and row.finished_at is not None
    assert row.finished_at > first.lease_until  # it ran past the lease it first took, renewed by its heartbeat
    assert claims and claims == [None] * len(claims)  # and the rival, trying all along, never got it


async def test_a_runner_that_lost_its_job_stops_working_on_it(rag: Rag, caplog: pytest.LogCaptureFixture) -> None:
    c = await rag.collection()
    job = await rag.jobs.create_job(c.id, uploads(DOCS))
    slow = runner(rag, delay=0.3)
    thief = new_claim()
    with caplog.at_level(logging.INFO, logger="chatgate.rag"):
        slow.start()
        try:
            await until(lambda: _status(rag, job.id, "processing"))
            async with rag.store.engine.begin() as conn:  # another runner took it after a stall
                await conn.execute(update(RAG_JOBS).where(RAG_JOBS.c.id == job.id).values(claimed_by=thief))
            await until(lambda: _logged(caplog, "ingestion job abandoned"))
        finally:
            await slow.close()
    row = await rag.jobs.get_job(job.id)
    assert row is not None and row.status == "processing" and row.claimed_by == thief  # untouched by the loser
    docs = await rag.repo.list_documents(c.id)
    assert all(d.status != "processing" or d.claimed_by != slow.claim for d in docs)  # its work taken back out


async def test_a_job_interrupted_too_often_fails_with_the_reason(rag: Rag) -> None:
    c = await rag.collection()
    job = await rag.jobs.create_job(c.id, uploads(DOCS))
    r = runner(rag, job_max_attempts=2)
    for _ in range(2):  # two starts, each by a runner that died
        assert await rag.jobs.claim_job(new_claim(), 60) is not None
        await expire(rag, job.id)
    assert await r.run_pending() == 1
    row = await rag.jobs.get_job(job.id)
    assert row is not None and row.status == "failed" and row.added == 0
    assert "interrupted 2 times" in (row.error or "") and "job_max_attempts" in (row.error or "")
    assert await rag.jobs.stored_uploads(job.id) == []


async def test_a_clean_shutdown_queues_the_job_again_without_counting(rag: Rag) -> None:
    c = await rag.collection()
    job = await rag.jobs.create_job(c.id, uploads(DOCS))
    slow = runner(rag, delay=0.3)
    slow.start()
    await until(lambda: _status(rag, job.id, "processing"))
    await slow.close()
    row = await rag.jobs.get_job(job.id)
    assert row is not None and (row.status, row.attempts, row.claimed_by) == ("queued", 0, None)
    assert await runner(rag).run_pending() == 1
    row = await rag.jobs.get_job(job.id)
    assert row is not None and (row.status, row.added, row.attempts) == ("done", 4, 1)
    await consistent(rag, c.id)


async def test_the_writer_drains_deletions_queued_where_the_index_is_read_only(rag: Rag) -> None:
    keep, gone = await rag.collection("keep"), await rag.collection("gone")
    for c in (keep, gone):
        job = await rag.jobs.create_job(c.id, uploads(DOCS))
        assert await runner(rag).run_pending() == 1, job
    doc = await rag.repo.ready_document(keep.id, "d1.md")
    assert doc is not None and await rag.dense.count(keep.dense_name, doc.id) > 0
    reader = DenseDeletions(rag.store.engine)  # what a process that only reads the index does
    await reader.delete_collection(gone)
    assert await reader.delete_document(keep, doc.id)
    assert not await reader.delete_document(keep, doc.id)  # already going
    assert await rag.repo.get_collection(gone.id) is None and await reader.pending() == 2
    hits = await rag.retriever.search([keep], "Topic1 sentence", top_k=5)
    assert hits and all(h.document_id != doc.id for h in hits)  # out of search before its vectors go
    assert await rag.dense.count(gone.dense_name) > 0  # the vectors wait for the writer
    await runner(rag).run_pending()
    assert await reader.pending() == 0
    assert await rag.dense.count(gone.dense_name) == 0 and await rag.dense.count(keep.dense_name, doc.id) == 0
    assert await rag.repo.get_document(doc.id) is None
    await consistent(rag, keep.id)


async def test_a_runner_without_a_writable_index_claims_nothing(rag: Rag) -> None:
    c = await rag.collection()
    job = await rag.jobs.create_job(c.id, uploads(DOCS))
    r = runner(rag)
    rag.dense.writable = False
    try:
        assert await r.run_pending() == 0
    finally:
        rag.dense.writable = True
    row = await rag.jobs.get_job(job.id)
    assert row is not None and row.status == "queued" and row.attempts == 0


async def _status(rag: Rag, job_id: str, status: str) -> bool:
    row = await rag.jobs.get_job(job_id)
    return row is not None and row.status == status


async def _logged(caplog: pytest.LogCaptureFixture, prefix: str) -> bool:
    return any(r.getMessage().startswith(prefix) for r in caplog.records)
