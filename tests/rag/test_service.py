"""The RAG service (``Rag``) as the gateway uses it: while the embedding model loads after a start, a
hybrid search is answered by the lexical index alone and says so; a dense search waits; an instance with
nothing open yet runs the jobs that wait for a runner."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from chatgate.app import build_lexical
from chatgate.rag.dense import DenseIndex
from chatgate.rag.ingest import SourceFile
from chatgate.rag.jobs import JobRepo, Upload
from chatgate.rag.service import Rag
from chatgate.settings import Settings
from chatgate.store import Store
from chatgate.store.db import database_url
from tests.rag.doubles import HashEmbedder


def with_embedder(settings: Settings, store: Store, embedder: HashEmbedder) -> Rag:
    """``Rag`` as ``app.build_rag`` makes it, with this embedder."""
    r = settings.rag.retrieval
    return Rag(
        settings,
        store.engine,
        lexical=build_lexical(settings, store.engine),
        open_dense=lambda write: DenseIndex.open(r, settings.data_dir, write),
        make_embedder=lambda: embedder,
    )


class LoadingEmbedder(HashEmbedder):
    """Ready (like the local model once loaded) only when the test says so; embedding waits until then."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self.loaded.is_set()

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        await self.loaded.wait()
        return await super().embed(texts)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[Rag, LoadingEmbedder]]:
    embedder = LoadingEmbedder()
    settings = Settings(data_dir=tmp_path / "data")
    store = await Store.open(database_url(settings))
    rag = with_embedder(settings, store, embedder)
    await rag.start()
    yield rag, embedder
    await rag.close()
    await store.close()


async def test_hybrid_is_lexical_while_the_model_loads(service: tuple[Rag, LoadingEmbedder], tmp_path: Path) -> None:
    rag, embedder = service
    row = await rag.repo.create_collection("docs", "admin", "admin", embedder.name, embedder.dimension)
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "leave.md").write_text("Parental leave lasts sixteen weeks.")
    (folder / "travel.md").write_text("Travel expenses are reimbursed within a month.")
    await rag.ready()
    assert rag.ingestor is not None
    ingesting = asyncio.ensure_future(
        rag.ingestor.ingest(row, [SourceFile(p.name, p) for p in sorted(folder.iterdir())])
    )
    await asyncio.sleep(0.05)
    assert not ingesting.done()  # the ingestion waits for the model too
    embedder.loaded.set()
    await ingesting
    embedder.loaded.clear()  # as right after a restart: the index is there, the model not yet

    hits, mode = await rag.search([row], "parental leave weeks")
    assert mode == "lexical" and hits[0].source == "leave.md"
    assert hits[0].dense_score is None and hits[0].lexical_score is not None
    dense = asyncio.ensure_future(rag.search([row], "parental leave weeks", mode="dense"))
    await asyncio.sleep(0.05)
    assert not dense.done()  # a dense search cannot do without the model: it waits
    embedder.loaded.set()
    hits, mode = await dense
    assert mode == "dense" and hits[0].source == "leave.md"
    hits, mode = await rag.search([row], "parental leave weeks")
    assert mode == "hybrid" and hits[0].dense_score is not None and hits[0].lexical_score is not None


async def test_waits_when_told_to(tmp_path: Path) -> None:
    embedder = LoadingEmbedder()
    settings = Settings(data_dir=tmp_path / "data", rag={"retrieval": {"lexical_while_loading": False}})
    store = await Store.open(database_url(settings))
    rag = with_embedder(settings, store, embedder)
    try:
        row = await rag.repo.create_collection("docs", "admin", "admin", embedder.name, embedder.dimension)
        search = asyncio.ensure_future(rag.search([row], "anything"))
        await asyncio.sleep(0.1)
        assert not search.done()
        embedder.loaded.set()
        assert await search == ([], "hybrid")
    finally:
        await rag.close()
        await store.close()


async def test_assistant_collections_by_name_operator_first_then_the_callers_own(
    service: tuple[Rag, LoadingEmbedder], caplog: pytest.LogCaptureFixture
) -> None:
    from chatgate.rag.assistants import Assistant

    rag, _ = service
    repo, emb = rag.repo, HashEmbedder()
    operator = await repo.create_collection("hr", "admin", "shared", emb.name, emb.dimension)  # chatgate ingest's
    squatter = await repo.create_collection("hr", "mallory", "shared", emb.name, emb.dimension)
    own = await repo.create_collection("notes", "erin", "private", emb.name, emb.dimension)
    theirs = await repo.create_collection("notes", "mallory", "shared", emb.name, emb.dimension)
    secret = await repo.create_collection("vault", "mallory", "private", emb.name, emb.dimension)
    hr = Assistant(name="hr", model="m", collections=("hr", "notes", "missing", secret.id))

    unresolved = rag.metrics.rag_unresolved.values
    before = unresolved.get(("hr",), 0.0)
    found = await rag.resolve_collections(hr, "erin")
    assert [c.id for c in found.collections] == [operator.id, own.id]  # never the squatter's, nor mallory's notes
    assert found.unresolved == ("missing", secret.id)
    assert {squatter.id, theirs.id}.isdisjoint(c.id for c in found.collections)
    assert [c.id for c in await rag.for_assistant(hr, "erin")] == [operator.id, own.id]
    assert unresolved[("hr",)] == before + 2  # counted per request
    logged = [r for r in caplog.records if "matches nothing" in r.getMessage()]
    assert sorted(r.collection for r in logged) == sorted(["missing", secret.id])  # type: ignore[attr-defined]
    # mallory's own "notes" is hers; the operator's "hr" still wins over her "hr"
    mine = await rag.resolve_collections(hr, "mallory")
    assert [c.id for c in mine.collections] == [operator.id, theirs.id, secret.id] and mine.unresolved == ("missing",)


async def test_an_instance_with_no_index_open_yet_runs_the_jobs_that_wait(tmp_path: Path) -> None:
    """Started with no documents, the service loads nothing; when a job waits for a runner (queued by another
    instance, or left by a dead one), it opens the index and runs it."""
    embedder = HashEmbedder()
    settings = Settings(
        data_dir=tmp_path / "data",
        rag={"retrieval": {"job_poll_interval": 0.05}, "parsing": {"isolate": False}},
    )
    store = await Store.open(database_url(settings))
    rag = with_embedder(settings, store, embedder)
    try:
        await rag.start()
        assert rag.dense is None and rag.runner is None  # nothing to do: nothing loaded
        other = JobRepo(store.engine)  # another instance takes an upload
        row = await rag.repo.create_collection("docs", "admin", "admin", embedder.name, embedder.dimension)
        job = await other.create_job(row.id, [Upload.of("a.md", b"# A\n\nAlpacas graze on the hills.")])
        for _ in range(500):
            done = await other.get_job(job.id)
            if done is not None and done.status == "done":
                break
            await asyncio.sleep(0.01)
        assert done is not None and done.status == "done" and done.added == 1
        assert rag.runner is not None and rag.dense is not None and rag.dense.writable
        hits, _ = await rag.search([row], "alpacas hills")
        assert hits and hits[0].source == "a.md"
    finally:
        await rag.close()
        await store.close()
