"""``chatgate ingest`` and ``chatgate reindex``: in process with the test embedder, and as a process
killed with SIGKILL mid-ingestion."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from chatgate.cli import parser
from chatgate.cli_rag import cmd_ingest, cmd_reindex
from chatgate.rag.dense import DenseIndex
from chatgate.rag.jobs import JobRepo
from chatgate.rag.lexical_fts5 import Fts5Search
from chatgate.rag.repo import RagRepo
from chatgate.rag.retrieve import Retriever
from chatgate.settings import RetrievalSettings, Settings
from chatgate.store import Store
from tests.rag.doubles import CountingEmbedder, HashEmbedder

SCRIPT = Path(__file__).with_name("ingest_script.py")


def docs(folder: Path, n: int = 3, sentences: int = 4) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        body = " ".join(f"Topic{i} sentence {j} mentions marker{i}." for j in range(sentences))
        (folder / f"doc{i}.md").write_text(f"# Doc {i}\n\n{body}")


def ingest(settings: Settings, *argv: str, embedder: object = None) -> int:
    args = parser().parse_args(["ingest", *argv])
    return cmd_ingest(args, settings, embedder=embedder)  # type: ignore[arg-type]


def test_ingest_prints_progress_and_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "docs"
    docs(folder)
    (folder / "sub").mkdir()
    (folder / "sub" / "broken.docx").write_bytes(b"not a zip")
    settings = Settings(data_dir=tmp_path / "data")
    embedder = CountingEmbedder(HashEmbedder())
    assert ingest(settings, str(folder), "--collection", "handbook", embedder=embedder) == 0
    out = capsys.readouterr().out
    assert "created collection handbook" in out
    assert "added" in out and "failed" in out and "broken.docx" in out
    assert embedder.calls > 0

    again = CountingEmbedder(HashEmbedder())
    assert ingest(settings, str(folder / "*.md"), "--collection", "handbook", embedder=again) == 0
    out = capsys.readouterr().out
    assert again.calls == 0  # unchanged: nothing embedded
    assert "│ unchanged │     3" in out.replace("┃", "│") or "unchanged" in out
    with pytest.raises(SystemExit, match="no such file"):
        ingest(settings, str(tmp_path / "missing"), "--collection", "handbook", embedder=again)


def test_reindex_after_an_embedder_change(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "docs"
    docs(folder)
    settings = Settings(data_dir=tmp_path / "data")
    assert ingest(settings, str(folder), "--collection", "kb", embedder=HashEmbedder()) == 0
    other = HashEmbedder(dimension=24, name="other-model")
    with pytest.raises(SystemExit, match="chatgate reindex --collection kb"):
        ingest(settings, str(folder), "--collection", "kb", embedder=other)
    args = parser().parse_args(["reindex", "--collection", "kb"])
    assert cmd_reindex(args, settings, embedder=other) == 0
    assert "test-hash (64-d) -> other-model (24-d)" in capsys.readouterr().out
    assert cmd_reindex(args, settings, embedder=other) == 0
    assert "up to date" in capsys.readouterr().out
    counting = CountingEmbedder(other)
    assert ingest(settings, str(folder), "--collection", "kb", embedder=counting) == 0
    assert counting.calls == 0
    with pytest.raises(SystemExit, match="no collection"):
        cmd_reindex(parser().parse_args(["reindex", "--collection", "nope"]), settings, embedder=other)


def test_ingest_hands_its_files_over_while_another_process_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The index's writer is another process: the files become its upload jobs (named as ingest names them),
    nothing is embedded here; with --tag (jobs carry none) it stops and says why. (The server running the jobs:
    tests/integration/test_ingest_handoff.py.)"""
    folder = tmp_path / "docs"
    docs(folder, 2)
    settings = Settings(data_dir=tmp_path / "data")
    holder = DenseIndex.open(RetrievalSettings(), settings.data_dir, write="require")
    try:
        embedder = CountingEmbedder(HashEmbedder())
        assert ingest(settings, str(folder), "--collection", "kb", embedder=embedder) == 0
        out = capsys.readouterr().out
        assert "being written by another process" in out and "handed 2 files to it as 1 ingestion job" in out
        assert embedder.calls == 0
        with pytest.raises(SystemExit, match="carry no tags"):
            ingest(settings, str(folder), "--collection", "kb", "--tag", "x", embedder=embedder)
    finally:
        holder.close()
    job_id = next(line.split()[1] for line in out.splitlines() if line.strip().startswith("job "))

    async def stored() -> tuple[Any, list[str]]:
        store = await Store.open(f"sqlite+aiosqlite:///{settings.data_dir}/chatgate.db")
        try:
            jobs = JobRepo(store.engine)
            return await jobs.get_job(job_id), await jobs.stored_uploads(job_id)
        finally:
            await store.close()

    job, uploads = asyncio.run(stored())
    assert job.status == "queued" and job.files == ("docs/doc0.md", "docs/doc1.md") == tuple(uploads)


def _env(data: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGATE_")}
    env.update({"CHATGATE_DATA_DIR": str(data), **extra})
    return env


def _statuses(db: Path) -> dict[str, int]:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            rows = conn.execute("SELECT status, count(*) FROM rag_documents GROUP BY status").fetchall()
    except sqlite3.OperationalError:  # not migrated yet
        return {}
    return dict(rows)


async def _check(data: Path) -> tuple[dict[str, int], list[str]]:
    """After the kill: what is stored, and that every searchable document is complete."""
    store = await Store.open(f"sqlite+aiosqlite:///{data}/chatgate.db")
    dense = DenseIndex.open(RetrievalSettings(), data, write="require")  # the dead writer's lock is free
    try:
        repo = RagRepo(store.engine)
        (c,) = await repo.list_collections()
        retriever = Retriever(repo, Fts5Search(store.engine), dense, HashEmbedder(), RetrievalSettings())
        docs = await repo.list_documents(c.id)
        ready = {d.id for d in docs if d.status == "ready"}
        for d in docs:
            marker = "marker" + d.source.rsplit("doc", 1)[1].split(".")[0]
            for mode in ("lexical", "dense", "hybrid"):
                hits = await retriever.search([c], marker, top_k=50, mode=mode)
                assert {h.document_id for h in hits} <= ready, (mode, d.status)
            if d.status == "ready":
                assert await repo.count_chunks(d.id) == d.chunk_count == await dense.count(c.dense_name, d.id)
        found = sorted(d.source.rsplit("/", 1)[1] for d in docs if d.status == "ready")
        return {s: sum(1 for d in docs if d.status == s) for s in {d.status for d in docs}}, found
    finally:
        dense.close()
        await store.close()


def test_sigkill_mid_ingestion_leaves_nothing_half_searchable_and_a_rerun_completes(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    docs(folder, n=6, sentences=24)  # several chunks per document, two per embedder call
    data = tmp_path / "data"
    cmd = [sys.executable, str(SCRIPT), str(folder), "--collection", "kb"]
    slow = _env(data, CHATGATE_TEST_EMBED_DELAY="0.15", CHATGATE_RAG__RETRIEVAL__INGEST_BATCH_SIZE="2")
    proc = subprocess.Popen(cmd, env=slow, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen = _statuses(data / "chatgate.db")
            if seen.get("ready", 0) >= 1 and seen.get("processing", 0) >= 1:
                break
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.02)
        else:
            raise AssertionError(f"never caught the ingestion mid-way: {_statuses(data / 'chatgate.db')}")
        time.sleep(0.2)  # let it write some vectors of the document in progress
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    statuses, ready = asyncio.run(_check(data))
    assert statuses.get("processing", 0) >= 1 and 1 <= len(ready) < 6, statuses

    rerun = subprocess.run(cmd, env=_env(data), capture_output=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    out = rerun.stdout.decode()
    assert "unchanged" in out and "added" in out
    statuses, ready = asyncio.run(_check(data))
    assert statuses == {"ready": 6}
    assert ready == [f"doc{i}.md" for i in range(6)]


async def _sources(data: Path) -> dict[str, str]:
    store = await Store.open(f"sqlite+aiosqlite:///{data}/chatgate.db")
    try:
        repo = RagRepo(store.engine)
        (c,) = await repo.list_collections()
        return {d.source: d.status for d in await repo.list_documents(c.id)}
    finally:
        await store.close()


def test_documents_are_named_relative_to_the_ingest_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    docs(tmp_path / "handbook", 2)
    (tmp_path / "handbook" / "sub").mkdir()
    (tmp_path / "handbook" / "sub" / "leave.md").write_text("# Leave\n\nSixteen weeks of parental leave.")
    settings = Settings(data_dir=tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert ingest(settings, "./handbook", "--collection", "hr", embedder=HashEmbedder()) == 0
    names = {"handbook/doc0.md", "handbook/doc1.md", "handbook/sub/leave.md"}
    assert asyncio.run(_sources(settings.data_dir)) == dict.fromkeys(names, "ready")
    # The same files named another way keep their names: nothing is added or embedded again.
    monkeypatch.chdir(tmp_path / "handbook")
    counting = CountingEmbedder(HashEmbedder())
    for root in ("../handbook", str(tmp_path / "handbook" / "**" / "*.md")):
        assert ingest(settings, root, "--collection", "hr", embedder=counting) == 0
    assert counting.calls == 0 and set(asyncio.run(_sources(settings.data_dir))) == names
    assert ingest(settings, "sub/leave.md", "--collection", "hr", embedder=HashEmbedder()) == 0  # a file: its name
    assert "leave.md" in asyncio.run(_sources(settings.data_dir))
    assert str(tmp_path) not in capsys.readouterr().out.replace("\n", "")


def test_a_document_stored_under_its_absolute_path_is_renamed_not_indexed_again(tmp_path: Path) -> None:
    from chatgate.rag.ingest import SourceFile

    docs(tmp_path / "handbook", 2)
    settings = Settings(data_dir=tmp_path / "data")
    paths = sorted((tmp_path / "handbook").glob("*.md"))

    async def old_style_ingest() -> None:  # how chatgate ingest named documents before: the absolute path
        from chatgate.rag.ingest import Ingestor, Parser

        store = await Store.open(f"sqlite+aiosqlite:///{settings.data_dir}/chatgate.db")
        dense = DenseIndex.open(settings.rag.retrieval, settings.data_dir, write="require")
        try:
            repo = RagRepo(store.engine)
            emb = HashEmbedder()
            row = await repo.create_collection("hr", "admin", "admin", emb.name, emb.dimension)
            ingestor = Ingestor(repo, dense, emb, Parser.from_settings(settings), settings.rag.retrieval)
            await ingestor.ingest(row, [SourceFile(source=str(p), path=p) for p in paths])
        finally:
            dense.close()
            await store.close()

    asyncio.run(old_style_ingest())
    assert set(asyncio.run(_sources(settings.data_dir))) == {str(p) for p in paths}
    counting = CountingEmbedder(HashEmbedder())
    assert ingest(settings, str(tmp_path / "handbook"), "--collection", "hr", embedder=counting) == 0
    assert counting.calls == 0  # renamed, content unchanged: nothing embedded
    assert asyncio.run(_sources(settings.data_dir)) == {"handbook/doc0.md": "ready", "handbook/doc1.md": "ready"}
