"""RagRepo on SQLite and PostgreSQL: collections, document versions and their swap, leftovers (jobs:
test_jobs.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from chatgate.rag.jobs import Upload
from chatgate.rag.repo import AlreadyExists, EmbeddingMismatch, RagRepo, is_abandoned, new_claim
from chatgate.rag.types import Chunk
from chatgate.store.models import RAG_DOCUMENTS, Base, utcnow
from tests.rag.conftest import Rag


def chunks(*texts: str) -> list[tuple[Chunk, str]]:
    return [
        (Chunk(text=t, ordinal=i, tokens=len(t.split()), headings=("H",)), f"h{i}{t}"[:64]) for i, t in enumerate(texts)
    ]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


async def begin(
    repo: RagRepo, cid: str, source: str = "a.md", *texts: str, claim: str | None = None
) -> tuple[str, list[int]]:
    return await repo.begin_document(
        cid, source, "Title", "sha-" + source, 10, ("t1",), claim or new_claim(), chunks(*(texts or ("one", "two")))
    )


async def test_migration_creates_the_lexical_index(rag: Rag) -> None:
    async with rag.store.engine.connect() as conn:
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert {"rag_collections", "rag_documents", "rag_chunks", "rag_jobs"} <= tables
        if rag.store.dialect == "sqlite":
            assert "rag_chunks_fts" in tables
        else:
            cols = await conn.run_sync(lambda c: {col["name"] for col in inspect(c).get_columns("rag_chunks")})
            assert "tsv" in cols


def lexical_index_objects(name: str | None, type_: str, _parent: object) -> bool:
    """The lexical index is SQL the models do not describe: FTS5 tables (SQLite), ``tsv`` and the chunk change
    log (PostgreSQL)."""
    if type_ == "table":
        return not (name or "").startswith(("rag_chunks_fts", "rag_chunk_changes"))
    return name not in ("tsv", "ix_rag_chunks_tsv")


async def test_models_match_the_migration_but_for_the_lexical_index(rag: Rag) -> None:
    def diff(conn: Connection) -> list[object]:
        opts = {"compare_type": True, "include_name": lexical_index_objects}
        return list(compare_metadata(MigrationContext.configure(conn, opts=opts), Base.metadata))

    async with rag.store.engine.connect() as conn:
        assert await conn.run_sync(diff) == []
        assert (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).scalar() >= "0004"


async def test_collections_visibility_and_uniqueness(rag: Rag) -> None:
    repo = rag.repo
    mine = await repo.create_collection("notes", "alice", "private", "m", 8)
    shared = await repo.create_collection("handbook", "admin", "shared", "m", 8)
    await repo.create_collection("policies", "admin", "admin", "m", 8)
    with pytest.raises(AlreadyExists):
        await repo.create_collection("notes", "alice", "private", "m", 8)
    await repo.create_collection("notes", "bob", "private", "m", 8)  # unique per owner only
    with pytest.raises(ValueError):
        await repo.create_collection("x", "alice", "public", "m", 8)

    assert {c.name for c in await repo.list_collections("bob")} == {"handbook", "policies", "notes"}
    assert "alice" not in {c.owner_id for c in await repo.list_collections("bob") if c.visibility == "private"}
    assert len(await repo.list_collections("carol", admin=True)) == 4
    assert not mine.readable_by("bob") and mine.readable_by("alice") and mine.readable_by("bob", admin=True)
    assert shared.readable_by("bob") and not shared.writable_by("bob")
    assert (await repo.find_collection("alice", "notes")) == mine
    assert (await repo.get_collection(mine.id)) == mine
    assert mine.dense_name == f"cg_{mine.id}_1" and len(mine.dense_name) <= 63
    assert [c.owner_id for c in await repo.find_collections_named("notes")] == ["alice", "bob"]

    with pytest.raises(EmbeddingMismatch, match="chatgate reindex --collection notes"):
        mine.check_embedder("other", 8)
    mine.check_embedder("m", 8)
    await repo.set_embedding(mine.id, "other", 16, f"cg_{mine.id}_2", 2)
    moved = await repo.get_collection(mine.id)
    assert moved is not None and (moved.embedding_model, moved.embedding_dim, moved.generation) == ("other", 16, 2)


async def test_a_version_is_searchable_only_once_published_and_replaces_the_old_one(rag: Rag) -> None:
    repo = rag.repo
    c = await rag.collection()
    v1, ids1 = await begin(repo, c.id, "a.md", "alpha", "beta", "gamma")
    assert ids1 == sorted(ids1) and len(ids1) == 3
    assert await repo.ready_chunks(ids1, [c.id]) == {}
    assert await repo.ready_document(c.id, "a.md") is None
    assert await repo.publish(v1) is None
    got = await repo.ready_chunks(ids1, [c.id])
    assert [got[i].text for i in ids1] == ["alpha", "beta", "gamma"]
    assert got[ids1[0]].headings == ("H",) and got[ids1[0]].source == "a.md" and got[ids1[0]].document_title == "Title"
    assert await repo.ready_chunks(ids1, ["other"]) == {}

    v2, ids2 = await begin(repo, c.id, "a.md", "delta")
    assert (await repo.ready_document(c.id, "a.md")).id == v1  # type: ignore[union-attr]
    assert await repo.publish(v2) == v1  # the old version retired in the same transaction
    assert (await repo.get_document(v1)).status == "deleting"  # type: ignore[union-attr]
    assert await repo.ready_chunks(ids1, [c.id]) == {}
    assert list(await repo.ready_chunks(ids2, [c.id])) == ids2
    await repo.purge(v1)
    assert await repo.get_document(v1) is None and await repo.count_chunks(v1) == 0
    with pytest.raises(LookupError):
        await repo.publish(v2)  # already ready


async def test_at_most_one_ready_version_per_source(rag: Rag) -> None:
    c = await rag.collection()
    v1, _ = await begin(rag.repo, c.id)
    v2, _ = await begin(rag.repo, c.id)
    await rag.repo.publish(v1)
    with pytest.raises(IntegrityError):
        async with rag.store.engine.begin() as conn:
            await conn.execute(update(RAG_DOCUMENTS).where(RAG_DOCUMENTS.c.id == v2).values(status="ready"))


async def test_failures_are_kept_and_replaced(rag: Rag) -> None:
    c = await rag.collection()
    await rag.repo.record_failure(c.id, "bad.pdf", "s1", 3, "corrupt")
    await rag.repo.record_failure(c.id, "bad.pdf", "s2", 3, "still corrupt")
    failed = await rag.repo.list_documents(c.id, "failed")
    assert [(d.source, d.error) for d in failed] == [("bad.pdf", "still corrupt")]
    v, _ = await begin(rag.repo, c.id, "bad.pdf")
    await rag.repo.publish(v)  # fixed: the failure goes
    assert await rag.repo.list_documents(c.id, "failed") == []


async def test_filter_documents_by_id_and_tag(rag: Rag) -> None:
    c = await rag.collection()
    a, _ = await rag.repo.begin_document(c.id, "a", "A", "s", 1, ("hr", "eu"), new_claim(), chunks("x"))
    b, _ = await rag.repo.begin_document(c.id, "b", "B", "s", 1, ("it",), new_claim(), chunks("y"))
    p, _ = await rag.repo.begin_document(c.id, "p", "P", "s", 1, ("hr",), new_claim(), chunks("z"))
    await rag.repo.publish(a)
    await rag.repo.publish(b)
    assert sorted(await rag.repo.filter_documents([c.id])) == sorted([a, b])  # p is not ready
    assert await rag.repo.filter_documents([c.id], tags=["hr"]) == [a]
    assert await rag.repo.filter_documents([c.id], document_ids=[b, p]) == [b]
    assert await rag.repo.filter_documents([c.id], document_ids=[a], tags=["it"]) == []


async def test_leftovers_are_the_dead_processes_work(rag: Rag) -> None:
    c = await rag.collection()
    host = socket.gethostname()
    live, _ = await begin(rag.repo, c.id, "live.md", claim=f"{host}:{os.getpid()}:x")
    dead, _ = await begin(rag.repo, c.id, "dead.md", claim=f"{host}:{dead_pid()}:x")
    far, _ = await begin(rag.repo, c.id, "far.md", claim="elsewhere:1:x")
    done, _ = await begin(rag.repo, c.id, "done.md")
    await rag.repo.publish(done)
    assert await rag.repo.retire(done)
    found = {d.id for d in await rag.repo.leftovers(c.id, stale_after=3600)}
    assert found == {dead, done}
    found = {d.id for d in await rag.repo.leftovers(c.id, stale_after=0)}
    assert found == {dead, done, far}  # another host's claim only by age
    assert live not in found
    doc = await rag.repo.get_document(dead)
    assert doc is not None and await rag.repo.abandon(doc)
    assert not await rag.repo.abandon(doc)  # already taken


def test_is_abandoned() -> None:
    now = utcnow()
    host = socket.gethostname()
    assert not is_abandoned(f"{host}:{os.getpid()}:t", now - timedelta(days=9), now, 1)
    assert is_abandoned(f"{host}:{dead_pid()}:t", now, now, 3600)
    assert not is_abandoned("other-host:1:t", now, now, 60)
    assert is_abandoned("other-host:1:t", now - timedelta(seconds=61), now, 60)
    assert is_abandoned(None, now - timedelta(seconds=61), now, 60)


async def test_deleting_a_collection_removes_its_rows(rag: Rag) -> None:
    c = await rag.collection()
    v, _ = await begin(rag.repo, c.id)
    await rag.repo.publish(v)
    job = await rag.jobs.create_job(c.id, [Upload.of("a", b"bytes")])
    assert await rag.jobs.stored_uploads(job.id) == ["a"]
    assert await rag.repo.delete_collection(c.id)
    assert await rag.repo.get_collection(c.id) is None
    assert await rag.repo.get_document(v) is None and await rag.repo.count_chunks(v) == 0
    assert await rag.jobs.list_jobs(c.id) == [] and await rag.jobs.stored_uploads(job.id) == []  # cascaded
    assert not await rag.repo.delete_collection(c.id)
