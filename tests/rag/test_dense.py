"""The dense index on a real on-disk Chroma and on a real ``chroma run`` server; the writer lock."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatgate.rag.dense import DenseIndex, IndexBusy, ReadOnlyIndex
from chatgate.settings import RetrievalSettings
from tests.rag.conftest import ChromaServer
from tests.rag.doubles import HashEmbedder

EMB = HashEmbedder(dimension=16)


@pytest.fixture(params=["persistent", "server"])
async def dense(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DenseIndex]:
    if request.param == "persistent":
        index = DenseIndex.open(RetrievalSettings(chroma_path=tmp_path / "chroma"), tmp_path, write="require")
    else:
        server: ChromaServer = request.getfixturevalue("chroma_server")
        cfg = RetrievalSettings(chroma_host=server.host, chroma_port=server.port)
        index = DenseIndex.open(cfg, tmp_path, write="require")
    yield index
    index.close()


async def test_add_query_filter_delete(dense: DenseIndex, tmp_path: Path) -> None:
    name = f"cg_{tmp_path.name[-20:].lower().replace('_', '')}_1"
    texts = ["red apples and pears", "green pears", "blue whales swim", "whales and dolphins"]
    vectors = await EMB.embed(texts)
    await dense.add(name, [1, 2, 3, 4], vectors, ["d1", "d1", "d2", "d2"], [0, 1, 0, 1])
    assert await dense.count(name) == 4
    assert await dense.count(name, "d2") == 2
    query = (await EMB.embed(["whales"]))[0]
    hits = await dense.query(name, query, 4)
    assert hits[0][0] in (3, 4) and len(hits) == 4
    assert hits[0][1] > hits[-1][1] and -1.0 <= hits[-1][1] <= hits[0][1] <= 1.0 + 1e-6
    assert [i for i, _ in await dense.query(name, query, 10, document_ids=["d1"])] in ([1, 2], [2, 1])
    assert {i for i, _ in await dense.query(name, query, 10, document_ids=["d1", "d2"])} == {1, 2, 3, 4}
    assert await dense.query(name, query, 10, document_ids=[]) == []
    same = await dense.query(name, vectors[0], 1)
    assert same[0][0] == 1 and same[0][1] == pytest.approx(1.0, abs=1e-5)

    await dense.add(name, [1], [vectors[2]], ["d1"], [0])  # an id again: replaced, not duplicated
    assert await dense.count(name) == 4
    await dense.delete_document(name, "d2")
    assert await dense.count(name) == 2 and await dense.count(name, "d2") == 0
    await dense.drop(name)
    assert await dense.count(name) == 0
    assert await dense.query(name, query, 3) == []  # a missing collection is empty
    await dense.delete_document(name, "d1")  # nothing to delete: fine
    await dense.drop(name)


async def test_more_results_asked_than_stored(dense: DenseIndex, tmp_path: Path) -> None:
    name = f"cg_{tmp_path.name[-20:].lower().replace('_', '')}_2"
    await dense.add(name, [7], await EMB.embed(["only one"]), ["d"], [0])
    assert [i for i, _ in await dense.query(name, (await EMB.embed(["one"]))[0], 50)] == [7]
    await dense.drop(name)


async def test_one_writer_per_directory(tmp_path: Path) -> None:
    cfg = RetrievalSettings(chroma_path=tmp_path / "chroma")
    writer = DenseIndex.open(cfg, tmp_path, write="require")
    assert writer.writable
    with pytest.raises(IndexBusy, match="being written by another process"):
        DenseIndex.open(cfg, tmp_path, write="require")
    reader = DenseIndex.open(cfg, tmp_path, write="try")
    assert not reader.writable
    with pytest.raises(ReadOnlyIndex):
        await reader.add("cg_x_1", [1], [[1.0, 0.0]], ["d"], [0])
    await writer.add("cg_x_1", [1], [[1.0, 0.0]], ["d"], [0])
    assert [i for i, _ in await reader.query("cg_x_1", [1.0, 0.0], 1)] == [1]  # same process: same system
    writer.close()
    again = DenseIndex.open(cfg, tmp_path, write="require")  # the lock is free once the writer closes
    assert again.writable
    again.close()


def test_a_crashed_writer_leaves_the_directory_writable(tmp_path: Path) -> None:
    path = tmp_path / "chroma"
    code = (
        "import os, sys; from pathlib import Path; from chatgate.rag.dense import DenseIndex; "
        "from chatgate.settings import RetrievalSettings; "
        "d = DenseIndex.open(RetrievalSettings(chroma_path=Path(sys.argv[1])), Path(sys.argv[1]), write='require'); "
        "print('locked', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"locked"
        with pytest.raises(IndexBusy, match=f"pid {proc.pid}"):
            DenseIndex.open(RetrievalSettings(chroma_path=path), tmp_path, write="require")
    finally:
        proc.kill()
        proc.wait()
    index = DenseIndex.open(RetrievalSettings(chroma_path=path), tmp_path, write="require")
    assert index.writable
    index.close()


WRITER = """
import asyncio, sys
from pathlib import Path
from chatgate.rag.dense import DenseIndex
from chatgate.settings import RetrievalSettings

d = DenseIndex.open(RetrievalSettings(chroma_path=Path(sys.argv[1])), Path(sys.argv[1]), write="require")
asyncio.run(d.add("cg_shared_1", [1], [[1.0, 0.0]], ["d1"], [0]))
print("one", flush=True)
sys.stdin.readline()
asyncio.run(d.add("cg_shared_1", [2], [[0.9, 0.1]], ["d2"], [0]))
asyncio.run(d.delete_document("cg_shared_1", "d1"))
print("two", flush=True)
sys.stdin.readline()
"""


async def test_a_reading_process_sees_what_the_writer_process_wrote(tmp_path: Path) -> None:
    path = tmp_path / "chroma"
    proc = subprocess.Popen(  # noqa: ASYNC220 (a line-by-line conversation with the writer)
        [sys.executable, "-c", WRITER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "one"
        reader = DenseIndex.open(RetrievalSettings(chroma_path=path, reader_refresh=0), tmp_path, write="try")
        assert not reader.writable
        assert [i for i, _ in await reader.query("cg_shared_1", [1.0, 0.0], 5)] == [1]
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "two"
        assert [i for i, _ in await reader.query("cg_shared_1", [1.0, 0.0], 5)] == [2]  # reloaded
        assert reader.reloads == 1
        reader.close()
    finally:
        proc.kill()
        proc.wait()
