"""Ingestion jobs (uploads) in the store: the ``rag_jobs`` rows and the uploaded files in ``rag_uploads``.

``submit`` writes a job row and its files (their bytes) in one transaction; any process may submit, and
any instance that can write the dense index may run the job (``runner.JobRunner``): the files are in the
database, not on the disk of the instance that received them. The database, rather than a shared
directory or an object store, because it is already shared by every instance that shares collections,
on SQLite and PostgreSQL alike, needs no setting, and the upload and its job commit or fail together;
an upload is capped (``rag.retrieval.upload_max_request_bytes``) and its rows go when the job ends.

A job is claimed with a lease (``lease_until``, ``rag.retrieval.job_lease`` seconds ahead) that the
runner's heartbeat renews: a job whose lease ran out (its instance died, or hung) is claimed again by
another runner, which takes over the dead claim's half-indexed documents too. Every write a runner makes
to a job names its claim, so a runner that lost its lease can no longer change the job. ``attempts``
counts starts; a clean shutdown gives its start back.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Row, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from chatgate.rag.repo import CollectionRow, new_id
from chatgate.store.models import RAG_DOCUMENTS, RAG_JOBS, RAG_UPLOADS, utcnow

_UNSAFE = re.compile(r"[^\w.\- ]+")
_J = RAG_JOBS.c
_U = RAG_UPLOADS.c
_D = RAG_DOCUMENTS.c


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
    attempts: int = 0
    lease_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job just claimed; ``taken_from``: the claim whose lease ran out, when the job was taken over."""

    job: JobRow
    taken_from: str | None


@dataclass(frozen=True, slots=True)
class Upload:
    """An uploaded file: its (safe) name, size and a way to read its bytes (once, when stored)."""

    name: str
    size: int
    read: Callable[[], Awaitable[bytes]]

    @classmethod
    def of(cls, name: str, data: bytes) -> Upload:
        async def read() -> bytes:
            return data

        return cls(name, len(data), read)


def _job(r: Row[Any]) -> JobRow:
    m = r._mapping
    values = {f: m[f] for f in JobRow.__dataclass_fields__ if f not in ("files", "failures")}
    return JobRow(**values, files=tuple(m["files"] or ()), failures=dict(m["failures"] or {}))


class JobRepo:
    """The ``rag_jobs`` and ``rag_uploads`` tables."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create_job(self, collection_id: str, files: Sequence[str | Upload]) -> JobRow:
        """A queued job for ``files``, with the bytes of those given as ``Upload`` (one transaction)."""
        now = utcnow()
        names = [f if isinstance(f, str) else f.name for f in files]
        values: dict[str, Any] = {
            "id": new_id(),
            "collection_id": collection_id,
            "status": "queued",
            "files": names,
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
            "attempts": 0,
            "lease_until": None,
        }
        async with self.engine.begin() as conn:
            await conn.execute(insert(RAG_JOBS).values(**values))
            for f in files:
                if isinstance(f, Upload):  # one file in memory at a time
                    data = await f.read()
                    stored = {"job_id": values["id"], "name": f.name, "size": len(data), "data": data}
                    await conn.execute(insert(RAG_UPLOADS).values(**stored))
                    del data, stored
        return JobRow(**{**values, "files": tuple(names), "failures": {}})

    async def read_upload(self, job_id: str, name: str) -> bytes:
        """An uploaded file's bytes; LookupError when they are not stored (the job is over)."""
        async with self.engine.connect() as conn:
            data = (await conn.execute(select(_U.data).where(_U.job_id == job_id, _U.name == name))).scalar()
        if data is None:
            raise LookupError("the uploaded file is no longer stored")
        return bytes(data)

    async def stored_uploads(self, job_id: str) -> list[str]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(select(_U.name).where(_U.job_id == job_id).order_by(_U.name))).scalars())

    async def get_job(self, job_id: str) -> JobRow | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(RAG_JOBS).where(_J.id == job_id))).first()
        return _job(row) if row else None

    async def recent_jobs(self, limit: int = 50) -> list[JobRow]:
        """Every collection's jobs, newest first."""
        async with self.engine.connect() as conn:
            stmt = select(RAG_JOBS).order_by(_J.created_at.desc(), _J.id).limit(limit)
            return [_job(r) for r in (await conn.execute(stmt)).all()]

    async def list_jobs(self, collection_id: str) -> list[JobRow]:
        async with self.engine.connect() as conn:
            stmt = select(RAG_JOBS).where(_J.collection_id == collection_id).order_by(_J.created_at.desc())
            return [_job(r) for r in (await conn.execute(stmt)).all()]

    async def has_claimable(self) -> bool:
        """Whether a job is queued, or claimed by a runner whose lease ran out."""
        async with self.engine.connect() as conn:
            found = (await conn.execute(select(_J.id).where(_claimable(utcnow())).limit(1))).first()
        return found is not None

    async def claim_job(self, claim: str, lease: float, collection_ids: Sequence[str] | None = None) -> Claimed | None:
        """Take the oldest job that is queued, or whose lease ran out (in ``collection_ids`` when given), for
        ``lease`` seconds; None when there is none. The claim counts as an attempt."""
        while True:
            now = utcnow()
            columns = (_J.id, _J.status, _J.claimed_by, _J.lease_until, _J.attempts, _J.started_at)
            stmt = select(*columns).where(_claimable(now))
            if collection_ids is not None:
                stmt = stmt.where(_J.collection_id.in_(list(collection_ids)))
            async with self.engine.begin() as conn:
                found = (await conn.execute(stmt.order_by(_J.created_at).limit(1))).first()
                if found is None:
                    return None
                result = await conn.execute(
                    update(RAG_JOBS)
                    .where(
                        _J.id == found.id,
                        _J.status == found.status,
                        _J.claimed_by.is_not_distinct_from(found.claimed_by),
                        _J.lease_until.is_not_distinct_from(found.lease_until),
                    )
                    .values(
                        status="processing",
                        claimed_by=claim,
                        lease_until=now + timedelta(seconds=lease),
                        attempts=found.attempts + 1,
                        started_at=found.started_at or now,
                        updated_at=now,
                    )
                )
            if result.rowcount:  # else another runner took it first: look again
                job = await self.get_job(found.id)
                if job is not None:
                    taken = found.claimed_by if found.status == "processing" else None
                    return Claimed(job, taken)

    async def renew(self, job_id: str, claim: str, lease: float) -> bool:
        """The heartbeat: extend the lease; False when ``claim`` no longer holds the job."""
        now = utcnow()
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(RAG_JOBS)
                .where(_J.id == job_id, _J.claimed_by == claim, _J.status == "processing")
                .values(lease_until=now + timedelta(seconds=lease), updated_at=now)
            )
        return bool(result.rowcount)

    async def update_job(self, job_id: str, claim: str, **values: Any) -> bool:
        """Progress (counts, failures) of a job ``claim`` holds; False when it does not."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(RAG_JOBS)
                .where(_J.id == job_id, _J.claimed_by == claim, _J.status == "processing")
                .values(**values, updated_at=utcnow())
            )
        return bool(result.rowcount)

    async def finish_job(self, job_id: str, claim: str, status: str, **values: Any) -> bool:
        """The outcome (``done`` or ``failed``, with counts, failures, ``error``) of a job ``claim`` holds,
        and its uploaded files deleted, in one transaction; False when ``claim`` no longer holds it."""
        now = utcnow()
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(RAG_JOBS)
                .where(_J.id == job_id, _J.claimed_by == claim, _J.status == "processing")
                .values(**values, status=status, finished_at=now, lease_until=None, updated_at=now)
            )
            if result.rowcount:
                await conn.execute(delete(RAG_UPLOADS).where(_U.job_id == job_id))
        return bool(result.rowcount)

    async def release_jobs(self, claim: str) -> int:
        """Queue again the jobs ``claim`` holds, after a clean interruption (a shutdown): their start does not
        count. How many."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(RAG_JOBS)
                .where(_J.claimed_by == claim, _J.status == "processing")
                .values(status="queued", claimed_by=None, lease_until=None, attempts=_J.attempts - 1)
                .values(updated_at=utcnow())
            )
        return int(result.rowcount)

    async def abandon_claim(self, claim: str, collection_id: str) -> int:
        """A dead runner's half-indexed documents in the collection, retired (``deleting``) so that the next
        ingestion's recovery removes them (vectors first); how many."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(RAG_DOCUMENTS)
                .where(_D.collection_id == collection_id, _D.claimed_by == claim, _D.status == "processing")
                .values(status="deleting", updated_at=utcnow())
            )
        return int(result.rowcount)


def _claimable(now: datetime) -> ColumnElement[bool]:
    return (_J.status == "queued") | ((_J.status == "processing") & (_J.lease_until.is_(None) | (_J.lease_until < now)))


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


async def submit(jobs: JobRepo, collection: CollectionRow, files: Sequence[Upload], max_bytes: int) -> JobRow:
    """Store uploads (named as sent) and queue a job for them. Raises ``UploadTooLarge`` or ``ValueError``
    (no files). Two files of one upload with the same name are both kept: the second is ``name (2).ext``."""
    if not files:
        raise ValueError("no files uploaded")
    names = distinct([safe_name(f.name) for f in files])
    named = [Upload(name, f.size, f.read) for name, f in zip(names, files, strict=True)]
    for f in named:
        if f.size > max_bytes:
            raise UploadTooLarge(f"{f.name} is larger than {max_bytes} bytes")
    return await jobs.create_job(collection.id, named)
