"""Ingestion: incremental by content hash (also across restarts), replacement, failures, recovery,
deletion, reindex, and background jobs."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from chatgate.rag.dense import DenseIndex, ReadOnlyIndex
from chatgate.rag.ingest import Ingestor, embed_text
from chatgate.rag.jobs import Upload, UploadTooLarge, safe_name, submit
from chatgate.rag.repo import EmbeddingMismatch
from chatgate.rag.runner import JobRunner
from chatgate.rag.types import Chunk
from chatgate.settings import RetrievalSettings
from tests.rag.conftest import ChromaServer, Rag, make_rag, test_parser
from tests.rag.doubles import CountingEmbedder, FailingEmbedder, HashEmbedder
from tests.rag.test_repo import dead_pid

TEXTS = {
    "leave.md": "# Leave\n\n" + " ".join(f"Parental leave rule {i} says parents rest." for i in range(20)),
    "travel.txt": "Travel policy.\n\n" + " ".join(f"Trains are booked in class {i}." for i in range(15)),
    "security.html": "<html><head><title>Security</title></head><body><h1>Laptops</h1>"
    "<p>Laptops use disk encryption.</p></body></html>",
}


def write(folder: Path, texts: dict[str, str | bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        if isinstance(text, bytes):
            (folder / name).write_bytes(text)
        else:
            (folder / name).write_text(text)


async def consistent(rag: Rag, collection_id: str) -> None:
    """Every document ready, each with all its chunk rows and exactly its vectors; nothing else stored."""
    c = await rag.repo.get_collection(collection_id)
    assert c is not None
    docs = await rag.repo.list_documents(c.id)
    assert {d.status for d in docs} <= {"ready", "failed"}
    total = 0
    for d in docs:
        if d.status == "ready":
            assert await rag.repo.count_chunks(d.id) == d.chunk_count > 0
            assert await rag.dense.count(c.dense_name, d.id) == d.chunk_count
            total += d.chunk_count
    assert await rag.dense.count(c.dense_name) == total


async def test_added_unchanged_updated_and_failed(rag: Rag, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    write(folder, {**TEXTS, "broken.pdf": b"%PDF-1.4 not really", "empty.md": ""})
    c = await rag.collection()
    seen: list[str] = []
    summary = await rag.ingestor.ingest(c, rag.files(folder), lambda r: seen.append(r.source))
    counts = summary.counts()
    assert counts == {"added": 3, "unchanged": 0, "updated": 0, "failed": 2}
    assert sorted(seen) == sorted([*TEXTS, "broken.pdf", "empty.md"])
    assert {r.source for r in summary.of("failed")} == {"broken.pdf", "empty.md"}
    assert all(r.reason for r in summary.of("failed"))
    assert all(r.chunks > 0 and r.document_id for r in summary.of("added"))
    await consistent(rag, c.id)
    failed = await rag.repo.list_documents(c.id, "failed")
    assert {d.source for d in failed} == {"broken.pdf", "empty.md"}

    calls = rag.embedder.calls
    again = await rag.ingestor.ingest(c, rag.files(folder))
    assert again.counts() == {"added": 0, "unchanged": 3, "updated": 0, "failed": 2}
    assert rag.embedder.calls == calls  # nothing re-embedded

    (folder / "leave.md").write_text("# Leave\n\nParental leave is now twenty weeks.")
    old = await rag.repo.ready_document(c.id, "leave.md")
    updated = await rag.ingestor.ingest(c, rag.files(folder))
    assert updated.counts() == {"added": 0, "unchanged": 2, "updated": 1, "failed": 2}
    new = await rag.repo.ready_document(c.id, "leave.md")
    assert old is not None and new is not None and new.id != old.id
    assert await rag.repo.get_document(old.id) is None and await rag.dense.count(c.dense_name, old.id) == 0
    hits = await rag.retriever.search([c], "parental leave weeks", top_k=3)
    assert hits[0].document_id == new.id and "twenty" in hits[0].text
    assert all(h.document_id != old.id for h in hits)
    await consistent(rag, c.id)


async def test_a_restart_reembeds_nothing(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    write(folder, TEXTS)
    first = await make_rag(db_url, tmp_path)
    c = await first.collection()
    assert (await first.ingestor.ingest(c, first.files(folder))).counts()["added"] == 3
    await first.close()

    second = await make_rag(db_url, tmp_path)  # a new process: new store, index and ingestor on the same data
    try:
        c2 = await second.repo.find_collection("admin", "docs")
        assert c2 is not None
        summary = await second.ingestor.ingest(c2, second.files(folder))
        assert summary.counts() == {"added": 0, "unchanged": 3, "updated": 0, "failed": 0}
        assert second.embedder.calls == 0
        hits = await second.retriever.search([c2], "disk encryption laptops", top_k=1, mode="dense")
        assert hits[0].source == "security.html"
    finally:
        await second.close()


async def test_batches_span_documents(rag_sqlite: Rag, tmp_path: Path) -> None:
    rag = rag_sqlite
    rag.settings.ingest_batch_size = 7
    folder = tmp_path / "docs"
    write(folder, {f"d{i}.md": f"# D{i}\n\n" + " ".join(f"Word{i} sentence {j}." for j in range(30)) for i in range(6)})
    c = await rag.collection()
    summary = await rag.ingestor.ingest(c, rag.files(folder))
    chunks = sum(r.chunks for r in summary.of("added"))
    assert summary.counts()["added"] == 6
    assert rag.embedder.calls == -(-chunks // 7)  # full batches across document boundaries
    await consistent(rag, c.id)


async def test_an_embedding_failure_fails_the_document_and_keeps_the_old_version(
    rag_sqlite: Rag, tmp_path: Path
) -> None:
    rag = rag_sqlite
    folder = tmp_path / "docs"
    write(folder, {"a.md": "# A\n\nApples are red.", "b.md": "# B\n\nBananas are yellow."})
    c = await rag.collection()
    await rag.ingestor.ingest(c, rag.files(folder))
    old = await rag.repo.ready_document(c.id, "b.md")
    (folder / "b.md").write_text("# B\n\nBananas are POISON now.")
    rag.settings.ingest_batch_size = 1
    embedder = FailingEmbedder("POISON", dimension=rag.embedder.dimension, name=rag.embedder.name)
    failing = Ingestor(rag.repo, rag.dense, embedder, test_parser(), rag.settings)
    summary = await failing.ingest(c, rag.files(folder))
    assert summary.counts() == {"added": 0, "unchanged": 1, "updated": 0, "failed": 1}
    assert "embedding failed" in (summary.of("failed")[0].reason or "")
    assert (await rag.repo.ready_document(c.id, "b.md")) == old  # still the searchable version
    hits = await rag.retriever.search([c], "bananas yellow", top_k=1)
    assert hits[0].document_id == old.id  # type: ignore[union-attr]
    await consistent(rag, c.id)


async def test_recover_removes_a_dead_process_work(rag: Rag, tmp_path: Path) -> None:
    c = await rag.collection()
    chunk = Chunk(text="Half indexed text about volcanoes.", ordinal=0, tokens=5)
    claim = f"{socket.gethostname()}:{dead_pid()}:x"
    doc, ids = await rag.repo.begin_document(c.id, "v.md", "V", "s", 1, (), claim, [(chunk, "h"), (chunk, "h")])
    await rag.dense.add(c.dense_name, ids[:1], await rag.embedder.embed([chunk.text]), [doc], [0])
    assert await rag.ingestor.recover(c) == 1
    assert await rag.repo.get_document(doc) is None and await rag.dense.count(c.dense_name) == 0
    assert await rag.ingestor.recover(c) == 0


async def test_delete_document_and_collection(rag: Rag, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    write(folder, TEXTS)
    c = await rag.collection()
    await rag.ingestor.ingest(c, rag.files(folder))
    doc = await rag.repo.ready_document(c.id, "travel.txt")
    assert doc is not None
    assert await rag.ingestor.delete_document(c, doc.id)
    assert not await rag.ingestor.delete_document(c, doc.id)
    assert all(h.document_id != doc.id for h in await rag.retriever.search([c], "trains booked class", top_k=5))
    await consistent(rag, c.id)
    await rag.ingestor.delete_collection(c)
    assert await rag.repo.get_collection(c.id) is None and await rag.dense.count(c.dense_name) == 0


async def test_mismatch_then_reindex(rag: Rag, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    write(folder, TEXTS)
    c = await rag.collection()
    await rag.ingestor.ingest(c, rag.files(folder))
    bigger = CountingEmbedder(HashEmbedder(dimension=96, name="bigger"))
    ingestor = Ingestor(rag.repo, rag.dense, bigger, test_parser(), rag.settings)
    with pytest.raises(EmbeddingMismatch, match="chatgate reindex --collection docs"):
        await ingestor.ingest(c, rag.files(folder))
    same = await ingestor.reindex(c, force=False)
    assert same.embedding_model == "bigger" and same.embedding_dim == 96 and same.generation == 2
    assert same.dense_name != c.dense_name and await rag.dense.count(c.dense_name) == 0
    rag.ingestor = ingestor
    rag.embedder = bigger
    await consistent(rag, c.id)
    assert (await ingestor.ingest(same, rag.files(folder))).counts()["unchanged"] == 3
    assert await ingestor.reindex(same) == same  # up to date: nothing to do


async def test_a_read_only_index_refuses_ingestion(rag: Rag, tmp_path: Path) -> None:
    c = await rag.collection()
    rag.dense.writable = False
    with pytest.raises(ReadOnlyIndex):
        await rag.ingestor.ingest(c, [])


def test_embed_text_carries_title_and_headings() -> None:
    chunk = Chunk(text="Body.", ordinal=0, tokens=1, headings=("Guide", "Leave"))
    assert embed_text(chunk, "Guide") == "Guide > Leave\n\nBody."
    assert embed_text(Chunk(text="Body.", ordinal=0, tokens=1), "") == "Body."


async def test_upload_jobs_run_in_the_background(rag: Rag, tmp_path: Path) -> None:
    c = await rag.collection()
    runner = JobRunner(rag.jobs, rag.ingestor, rag.settings)
    with pytest.raises(UploadTooLarge):
        await submit(rag.jobs, c, [Upload.of("big.txt", b"x" * 2000)], max_bytes=1024)
    with pytest.raises(ValueError):
        await submit(rag.jobs, c, [], max_bytes=1024)
    twice = await submit(rag.jobs, c, [Upload.of("a.txt", b"1"), Upload.of("a.txt", b"2")], max_bytes=1024)
    assert twice.files == ("a.txt", "a (2).txt")  # one name twice: both kept
    files = [Upload.of("../../etc/notes.md", b"# Notes\n\nRemember the milk."), Upload.of("bad.pdf", b"%PDF-")]
    job = await submit(rag.jobs, c, files, 1024)
    assert job.status == "queued" and job.files == ("notes.md", "bad.pdf")
    assert await rag.jobs.stored_uploads(job.id) == ["bad.pdf", "notes.md"]  # the bytes are in the store
    runner.start()
    runner.wake()
    for _ in range(500):
        row = await rag.jobs.get_job(job.id)
        if row is not None and row.status in ("done", "failed"):
            break
        await asyncio.sleep(0.01)
    await runner.close()
    assert row is not None and row.status == "done", row
    assert (row.added, row.failed, row.total) == (1, 1, 2) and "bad.pdf" in row.failures
    assert row.finished_at is not None and await rag.jobs.stored_uploads(job.id) == []
    hits = await rag.retriever.search([c], "milk", top_k=1)
    assert hits and hits[0].source == "notes.md"


async def test_a_job_for_a_mismatched_collection_fails_with_the_reason(rag_sqlite: Rag, tmp_path: Path) -> None:
    rag = rag_sqlite
    c = await rag.repo.create_collection("old", "admin", "admin", "another-model", 384)
    job = await submit(rag.jobs, c, [Upload.of("a.md", b"# A\n\ntext")], 1024)
    assert await JobRunner(rag.jobs, rag.ingestor, rag.settings).run_pending() == 1
    row = await rag.jobs.get_job(job.id)
    assert row is not None and row.status == "failed" and "reindex" in (row.error or "")


def test_safe_name() -> None:
    assert safe_name("../../x/y.md") == "y.md"
    assert safe_name("C:\\Users\\me\\a b.pdf") == "a b.pdf"
    assert safe_name("..") == "upload" and safe_name(".hidden") == "hidden"
    assert safe_name("ä;rm -rf.txt") == "ä_rm -rf.txt"


def test_files_of_one_upload_with_the_same_name_are_all_kept() -> None:
    from chatgate.rag.jobs import distinct

    assert distinct(["a.md", "b.md", "a.md", "a.md", "a (2).md"]) == [
        "a.md",
        "b.md",
        "a (2).md",
        "a (3).md",
        "a (2) (2).md",
    ]


async def test_ingest_and_replace_against_a_chroma_server(
    sqlite_url: str, tmp_path: Path, chroma_server: ChromaServer
) -> None:
    cfg = RetrievalSettings(chroma_host=chroma_server.host, chroma_port=chroma_server.port)
    rag = await make_rag(sqlite_url, tmp_path, dense=DenseIndex.open(cfg, tmp_path, write="require"))
    try:
        folder = tmp_path / "docs"
        write(folder, TEXTS)
        c = await rag.collection("server-docs")
        assert (await rag.ingestor.ingest(c, rag.files(folder))).counts()["added"] == 3
        (folder / "travel.txt").write_text("Travel policy.\n\nBicycles are reimbursed per kilometre.")
        summary = await rag.ingestor.ingest(c, rag.files(folder))
        assert summary.counts() == {"added": 0, "unchanged": 2, "updated": 1, "failed": 0}
        hits = await rag.retriever.search([c], "bicycles reimbursed", top_k=1, mode="dense")
        assert hits[0].source == "travel.txt" and "Bicycles" in hits[0].text
        await consistent(rag, c.id)
        await rag.ingestor.delete_collection(c)
        assert await rag.dense.count(c.dense_name) == 0
    finally:
        await rag.close()


async def test_an_openai_embedder_learns_its_dimension_before_the_first_ingestion(
    rag_sqlite: Rag, tmp_path: Path
) -> None:
    """An OpenAI-compatible embedder without a configured dimension knows it only after a first call: the
    ingestion (here a fresh CLI-like Ingestor) asks for it instead of failing on the collection check."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from chatgate.rag.embedders import OpenAIEmbedder

    async def embeddings(request: web.Request) -> web.Response:
        texts = (await request.json())["input"]
        data = [{"index": i, "embedding": HashEmbedder().vector(t)} for i, t in enumerate(texts)]
        return web.json_response({"data": data})

    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings)
    async with TestServer(app) as srv:
        embedder = OpenAIEmbedder(str(srv.make_url("/v1")), "hash-embedder")
        assert not embedder.ready
        ingestor = Ingestor(rag_sqlite.repo, rag_sqlite.dense, embedder, test_parser(), rag_sqlite.settings)
        collection = await rag_sqlite.repo.create_collection(
            "api", "admin", "admin", "hash-embedder", HashEmbedder().dimension
        )
        folder = tmp_path / "docs"
        write(folder, TEXTS)
        summary = await ingestor.ingest(collection, rag_sqlite.files(folder))
        assert summary.counts()["added"] == len(TEXTS) and embedder.dimension == HashEmbedder().dimension
        await embedder.close()
