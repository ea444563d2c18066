"""JobRepo on SQLite and PostgreSQL: uploads stored with their job, claims with a lease, takeover of a
job whose lease ran out, writes fenced by the claim, attempts."""

from __future__ import annotations

import asyncio

import pytest

from chatgate.rag.jobs import JobRepo, Upload
from chatgate.rag.repo import new_claim
from tests.rag.conftest import Rag
from tests.rag.test_repo import begin

HOUR = 3600.0


async def test_an_upload_is_stored_with_its_job_and_goes_when_it_ends(rag: Rag) -> None:
    c = await rag.collection()
    job = await rag.jobs.create_job(c.id, [Upload.of("a.md", b"# A\n\nalpha"), Upload.of("b.pdf", b"%PDF-")])
    assert (job.status, job.total, job.files, job.attempts) == ("queued", 2, ("a.md", "b.pdf"), 0)
    other = JobRepo(rag.jobs.engine)  # another instance: same database, nothing on its disk
    assert await other.read_upload(job.id, "a.md") == b"# A\n\nalpha"
    with pytest.raises(LookupError):
        await other.read_upload(job.id, "missing.md")
    claim = new_claim()
    claimed = await other.claim_job(claim, HOUR)
    assert claimed is not None and claimed.job.id == job.id and claimed.taken_from is None
    assert await other.finish_job(job.id, claim, "done", added=1, failed=1, failures={"b.pdf": "corrupt"})
    row = await rag.jobs.get_job(job.id)
    assert row is not None and (row.status, row.added, row.failed, row.lease_until) == ("done", 1, 1, None)
    assert row.finished_at is not None and row.claimed_by == claim  # the row says who finished it
    assert await rag.jobs.stored_uploads(job.id) == []
    with pytest.raises(LookupError):
        await other.read_upload(job.id, "a.md")


async def test_a_claim_holds_while_its_lease_runs_and_fences_every_write(rag: Rag) -> None:
    c = await rag.collection()
    job = await rag.jobs.create_job(c.id, ["a.md"])
    first, second = new_claim(), new_claim()
    got = await rag.jobs.claim_job(first, HOUR)
    assert got is not None and got.job.status == "processing" and got.job.claimed_by == first
    assert got.job.attempts == 1 and got.job.lease_until is not None and got.job.started_at is not None
    assert await rag.jobs.claim_job(second, HOUR) is None  # the lease holds
    assert await rag.jobs.renew(job.id, first, HOUR)
    assert await rag.jobs.update_job(job.id, first, added=1)
    assert not await rag.jobs.update_job(job.id, second, added=5)  # not its job
    assert not await rag.jobs.renew(job.id, second, HOUR)
    assert not await rag.jobs.finish_job(job.id, second, "done")
    row = await rag.jobs.get_job(job.id)
    assert row is not None and (row.status, row.added, row.claimed_by) == ("processing", 1, first)


async def test_a_job_whose_lease_ran_out_is_taken_over(rag: Rag) -> None:
    c = await rag.collection()
    job = await rag.jobs.create_job(c.id, ["a.md"])
    dead, alive = new_claim(), new_claim()
    assert await rag.jobs.has_claimable()
    assert await rag.jobs.claim_job(dead, 0.05) is not None  # a runner that will stop beating
    assert not await rag.jobs.has_claimable()
    half, _ = await begin(rag.repo, c.id, "a.md", claim=dead)  # what it left half-indexed
    await asyncio.sleep(0.1)
    assert await rag.jobs.has_claimable()
    taken = await rag.jobs.claim_job(alive, HOUR)
    assert taken is not None and taken.job.id == job.id and taken.taken_from == dead
    assert taken.job.claimed_by == alive and taken.job.attempts == 2
    assert not await rag.jobs.renew(job.id, dead, HOUR)  # the old runner learns it lost the job
    assert not await rag.jobs.update_job(job.id, dead, added=1)
    assert await rag.jobs.abandon_claim(dead, c.id) == 1
    doc = await rag.repo.get_document(half)
    assert doc is not None and doc.status == "deleting"  # recovery removes it (vectors first)


async def test_only_one_of_many_runners_claims_a_job(rag: Rag) -> None:
    c = await rag.collection()
    job = await rag.jobs.create_job(c.id, ["a.md"])
    repos = [JobRepo(rag.jobs.engine) for _ in range(6)]
    got = await asyncio.gather(*(r.claim_job(new_claim(), HOUR) for r in repos))
    winners = [g for g in got if g is not None]
    assert len(winners) == 1 and winners[0].job.id == job.id


async def test_a_clean_release_gives_its_attempt_back(rag: Rag) -> None:
    c = await rag.collection()
    job = await rag.jobs.create_job(c.id, ["a.md"])
    claim = new_claim()
    assert await rag.jobs.claim_job(claim, HOUR) is not None
    assert await rag.jobs.release_jobs(claim) == 1
    row = await rag.jobs.get_job(job.id)
    assert row is not None and (row.status, row.claimed_by, row.attempts, row.lease_until) == ("queued", None, 0, None)
    again = await rag.jobs.claim_job(new_claim(), HOUR)
    assert again is not None and again.job.attempts == 1 and again.taken_from is None


async def test_claims_keep_to_the_given_collections(rag: Rag) -> None:
    a, b = await rag.collection("a"), await rag.collection("b")
    job_b = await rag.jobs.create_job(b.id, ["x.md"])
    assert await rag.jobs.claim_job(new_claim(), HOUR, collection_ids=[a.id]) is None
    got = await rag.jobs.claim_job(new_claim(), HOUR, collection_ids=[a.id, b.id])
    assert got is not None and got.job.id == job_b.id
