"""Uploads through real ``chatgate serve`` processes: hostile files fail alone while the server stays
small and answering; the upload route's own body limit; deletions made where the index is read-only;
and on a cluster (PostgreSQL, Redis, a Chroma server, two instances): concurrent uploads spread over both,
and a job taken over from an instance killed mid-job."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import Fake, Gateway, start_gateway, stop
from tests.integration.cluster import ClusterFactory, Instance, descendants, fake_config, merge, vm
from tests.rag.bombs import docx_bomb, pdf_pages

MIB = 1024 * 1024
GOOD = b"# Leave\n\nParental leave is twenty six weeks at full pay.\n"


def h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def collection(url: str, key: str, name: str, visibility: str = "admin") -> str:
    resp = httpx.post(f"{url}/api/v1/collections", json={"name": name, "visibility": visibility}, headers=h(key))
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def upload(url: str, key: str, cid: str, files: dict[str, bytes]) -> httpx.Response:
    parts = [("files", (name, data)) for name, data in files.items()]
    return httpx.post(f"{url}/api/v1/collections/{cid}/documents", files=parts, headers=h(key), timeout=60)


def job(url: str, key: str, job_id: str) -> dict[str, Any]:
    resp = httpx.get(f"{url}/api/v1/jobs/{job_id}", headers=h(key), timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def wait_done(url: str, key: str, job_id: str, polls: int = 1200) -> dict[str, Any]:
    for _ in range(polls):
        found = job(url, key, job_id)
        if found["status"] in ("done", "failed"):
            return found
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {found}")


def search(url: str, key: str, cid: str, query: str, mode: str = "hybrid") -> list[dict[str, Any]]:
    resp = httpx.post(
        f"{url}/api/v1/collections/{cid}/search", json={"query": query, "mode": mode, "top_k": 3}, headers=h(key)
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]  # type: ignore[no-any-return]


def events(gw: Gateway) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in gw.logs().splitlines() if line.startswith("{")]


def rss_kib(pid: int) -> int:
    return sum(vm(p, "VmRSS") for p in [pid, *descendants(pid)])


# ---- hostile files on one instance -----------------------------------------------------------------


def single_config(fake: Fake, **parsing: Any) -> dict[str, Any]:
    """One instance on SQLite and the embedded Chroma index in its data directory."""
    return merge(fake_config(fake), {"rag": {"parsing": {"memory_mb": 512, "max_pages": 10, **parsing}}})


@pytest.fixture(scope="module")
def bomb() -> bytes:
    data = docx_bomb(1024 * MIB)  # 1 GiB of XML in ~3 MB
    assert len(data) < 4 * MIB
    return data


@pytest.mark.parametrize(
    ("parsing", "reason"),
    [
        ({}, "rag.parsing.zip_max_uncompressed_bytes"),  # refused from the archive's directory
        # with the zip checks out of the way, the worker's memory limit stops it
        ({"zip_max_uncompressed_bytes": 1 << 40, "zip_max_ratio": 1e9}, "rag.parsing.memory_mb"),
    ],
    ids=["zip-limits", "memory-limit"],
)
def test_a_decompression_bomb_fails_alone_and_the_server_stays_small(
    tmp_path: Path, fake_a: Fake, bomb: bytes, parsing: dict[str, Any], reason: str
) -> None:
    gw = start_gateway(tmp_path, single_config(fake_a, **parsing))
    try:
        cid = collection(gw.url, gw.key, "hostile")
        warm = upload(gw.url, gw.key, cid, {"warm.md": GOOD})  # the index, the embedder, a parse worker once
        assert wait_done(gw.url, gw.key, warm.json()["job_id"])["added"] == 1
        before = rss_kib(gw.proc.pid)
        server_peak_before = vm(gw.proc.pid, "VmHWM")
        resp = upload(gw.url, gw.key, cid, {"bomb.docx": bomb, "long.pdf": pdf_pages(30), "fine.md": GOOD + b"x"})
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["job_id"]
        peak, health, during = before, [], 0
        while (state := job(gw.url, gw.key, job_id))["status"] not in ("done", "failed"):
            peak = max(peak, rss_kib(gw.proc.pid))
            health.append(httpx.get(gw.url + "/health", timeout=30).status_code)
            during += 1
            time.sleep(0.05)
        peak = max(peak, rss_kib(gw.proc.pid))
        assert state["status"] == "done" and (state["added"], state["failed"]) == (1, 2), state
        assert reason in state["failures"]["bomb.docx"]
        assert "pdf has 30 pages, more than the 10 allowed" in state["failures"]["long.pdf"]
        assert during >= 1 and set(health) <= {200}  # it kept answering while the job ran
        # The bomb unpacks to 1 GiB (then several more to parse): the server and its parse worker together
        # stayed far below that, and the server process itself never held it.
        assert peak - before < 600 * 1024, (before, peak)
        assert vm(gw.proc.pid, "VmHWM") - server_peak_before < 150 * 1024
        docs = httpx.get(f"{gw.url}/api/v1/collections/{cid}/documents", headers=h(gw.key)).json()["data"]
        assert {d["source"]: d["status"] for d in docs} == {
            "warm.md": "ready",
            "fine.md": "ready",
            "bomb.docx": "failed",
            "long.pdf": "failed",
        }
    finally:
        stop(gw.proc)


# ---- the upload route's own body limit -------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, fake_a: Fake) -> Iterator[Gateway]:
    cfg = single_config(fake_a)
    cfg["server"] = {"max_body_bytes": 1 * MIB}
    cfg["rag"]["retrieval"].update(upload_max_bytes=3 * MIB, upload_max_request_bytes=5 * MIB)
    gw = start_gateway(tmp_path_factory.mktemp("limited"), cfg)
    yield gw
    stop(gw.proc)


def text_file(size: int, word: str) -> bytes:
    line = f"The {word} policy applies to everyone in the company.\n\n".encode()
    return (line * (size // len(line) + 1))[:size]


def test_an_upload_over_the_server_body_limit_is_accepted_within_its_own(limited: Gateway) -> None:
    cid = collection(limited.url, limited.key, "big-ok")
    resp = upload(limited.url, limited.key, cid, {"two-mib.txt": text_file(2 * MIB, "zebra")})
    assert resp.status_code == 202, resp.text  # over server.max_body_bytes (1 MiB), within upload_max_bytes
    assert wait_done(limited.url, limited.key, resp.json()["job_id"])["added"] == 1
    hits = search(limited.url, limited.key, cid, "zebra policy", mode="lexical")
    assert hits and hits[0]["document"] == "two-mib.txt"
    other = httpx.post(limited.base_url + "/chat/completions", content=b"x" * (2 * MIB), headers=h(limited.key))
    assert other.status_code == 413 and other.json()["error"]["details"]["max_bytes"] == MIB  # other routes: not


def test_over_the_upload_limits_is_413_with_the_unified_body(limited: Gateway) -> None:
    cid = collection(limited.url, limited.key, "big-no")
    one = upload(limited.url, limited.key, cid, {"four-mib.txt": text_file(4 * MIB, "x")})
    assert one.status_code == 413, one.text
    error = one.json()["error"]
    assert error["code"] == "PAYLOAD_TOO_LARGE" and error["details"] == {"field": "files", "max_bytes": 3 * MIB}
    assert "four-mib.txt" in error["message"]
    both = upload(limited.url, limited.key, cid, {"a.txt": text_file(3 * MIB, "a"), "b.txt": text_file(3 * MIB, "b")})
    assert both.status_code == 413 and both.json()["error"]["details"]["max_bytes"] == 5 * MIB  # the request

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        boundary = b"cgboundary"
        yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="files"; filename="c.txt"\r\n\r\n'
        for _ in range(7):
            yield text_file(MIB, "c")
        yield b"\r\n--" + boundary + b"--\r\n"

    streamed = httpx.post(
        f"{limited.url}/api/v1/collections/{cid}/documents",
        content=chunked(),
        headers={**h(limited.key), "Content-Type": "multipart/form-data; boundary=cgboundary"},
    )
    assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert httpx.get(f"{limited.url}/api/v1/collections/{cid}/documents", headers=h(limited.key)).json()["data"] == []


# ---- deletions where the index is read-only ----------------------------------------------------------


def test_a_collection_deleted_by_a_reader_loses_its_vectors(tmp_path: Path, fake_a: Fake) -> None:
    """Two processes on one data directory: the first writes the embedded Chroma index, the second only
    reads it. A collection deleted through the reader loses its rows at once and its vectors once the
    writer drains the deletion queue."""
    cfg = single_config(fake_a)
    writer = start_gateway(tmp_path / "writer", cfg)
    reader: Gateway | None = None
    try:
        keep, doomed = collection(writer.url, writer.key, "kept"), collection(writer.url, writer.key, "doomed")
        for cid in (keep, doomed):
            resp = upload(writer.url, writer.key, cid, {"a.md": GOOD})
            assert wait_done(writer.url, writer.key, resp.json()["job_id"])["added"] == 1
        # Same data directory (the same SQLite store and Chroma directory), whose Chroma lock the writer holds.
        reader = start_gateway(tmp_path / "reader", cfg, env={"CHATGATE_DATA_DIR": str(writer.data_dir)})
        assert httpx.delete(f"{reader.url}/api/v1/collections/{doomed}", headers=h(reader.key)).status_code == 200
        snapshot = httpx.get(reader.url + "/admin/metrics", headers=h(reader.key)).json()["rag"]
        assert snapshot["index_open"] is True and snapshot["writer"] is False
        assert httpx.get(f"{writer.url}/api/v1/collections/{doomed}", headers=h(writer.key)).status_code == 404
        for _ in range(300):  # the writer's runner drains the queue at its next poll
            if any(e["msg"].startswith("removed the vectors of 1 deletions") for e in events(writer)):
                break
            time.sleep(0.05)
    finally:
        if reader is not None:
            stop(reader.proc)
        stop(writer.proc)
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    client = chromadb.PersistentClient(
        path=str(writer.data_dir / "chroma"), settings=ChromaSettings(anonymized_telemetry=False)
    )
    names = [c.name for c in client.list_collections()]
    assert f"cg_{doomed}_1" not in names and f"cg_{keep}_1" in names


# ---- two instances -------------------------------------------------------------------------------


def test_six_concurrent_uploads_over_two_instances_all_end_done(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory(2)
    a, b = cluster.a, cluster.b
    cid = collection(a.url, a.key, "spread")
    words = ["aardvark", "bison", "camel", "dingo", "emu", "ferret"]
    targets = [a, b, a, b, a, b]

    def send(i: int) -> str:
        files = {f"{words[i]}.md": f"# {words[i]}\n\nThe {words[i]} lives in zone {i}.\n".encode()}
        resp = upload(targets[i].url, targets[i].key, cid, files)
        assert resp.status_code == 202, resp.text
        return str(resp.json()["job_id"])

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        job_ids = list(pool.map(send, range(6)))
    for job_id in job_ids:
        state = wait_done(b.url, b.key, job_id)
        assert state["status"] == "done" and (state["added"], state["failed"]) == (1, 0), state
    for inst in (a, b):
        for word in words:
            for mode in ("dense", "lexical"):
                hits = search(inst.url, inst.key, cid, f"{word} zone", mode)
                assert hits and hits[0]["document"] == f"{word}.md", (inst.name, word, mode, hits)
    done = [e["job_id"] for inst in (a, b) for e in inst.events("ingestion job done")]
    assert sorted(done) == sorted(job_ids)  # each job ran to the end exactly once, on one instance or the other
    assert cluster.sql("SELECT count(*) AS n FROM rag_uploads")[0]["n"] == 0  # the stored files went with them


def runner_of(inst: Instance) -> str:
    return f":{inst.pid}:"


def test_a_job_of_an_instance_killed_mid_job_is_taken_over(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory(
        2,
        config={
            "rag": {
                "retrieval": {"job_lease": 2.0, "job_heartbeat": 0.5, "ingest_batch_size": 2},
                "embeddings": {"batch_size": 2, "concurrency": 1},
            }
        },
    )
    a, b = cluster.a, cluster.b
    cid = collection(a.url, a.key, "takeover")
    slow = " ".join(f"[fake:slow-embed] Sentence {j} about the topic." for j in range(40))
    files = {f"doc{i}.md": f"# Doc {i}\n\nKeyword{i} {slow}\n".encode() for i in range(6)}
    resp = upload(a.url, a.key, cid, files)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    for _ in range(600):  # until one instance is running it and has indexed something
        row = cluster.sql("SELECT status, claimed_by, added FROM rag_jobs WHERE id = $1", job_id)[0]
        if row["status"] == "processing" and row["added"] >= 1:
            break
        time.sleep(0.05)
    assert row["status"] == "processing" and row["added"] < 6, row
    first = a if runner_of(a) in row["claimed_by"] else b
    second = b if first is a else a
    assert runner_of(first) in row["claimed_by"]
    first.kill()
    state = wait_done(second.url, second.key, job_id)
    assert state["status"] == "done" and state["added"] + state["unchanged"] == 6 and state["failed"] == 0, state
    row = cluster.sql("SELECT claimed_by, attempts FROM rag_jobs WHERE id = $1", job_id)[0]
    assert runner_of(second) in row["claimed_by"] and row["attempts"] == 2
    taken = second.events("ingestion job taken over")
    assert [(e["job_id"], runner_of(first) in e["taken_over_from"]) for e in taken] == [(job_id, True)]
    assert [e["job_id"] for e in second.events("ingestion job done")] == [job_id]
    leftovers = cluster.sql(
        "SELECT count(*) AS n FROM rag_documents WHERE collection_id = $1 AND status <> 'ready'", cid
    )
    assert leftovers[0]["n"] == 0  # what the killed instance had half-indexed is gone
    first.start()  # back, on its own data directory: it finds the documents the other indexed
    for i in range(6):
        hits = search(first.url, first.key, cid, f"Keyword{i}", "lexical")
        assert hits and hits[0]["document"] == f"doc{i}.md"
    dense = search(first.url, first.key, cid, "Doc 2 Keyword2 sentence about the topic", "dense")
    assert dense and {hit["document"] for hit in dense} <= set(files)  # the vectors the other instance wrote


def test_malformed_uploads_are_400_with_the_unified_body(limited: Gateway) -> None:
    cid = collection(limited.url, limited.key, "malformed")
    url = f"{limited.url}/api/v1/collections/{cid}/documents"
    cases = [
        ({"Content-Type": "multipart/form-data"}, b"--x\r\n"),  # no boundary
        ({"Content-Type": "multipart/form-data; boundary=x"}, b"this is not multipart at all"),
    ]
    for headers, body in cases:
        resp = httpx.post(url, content=body, headers={**h(limited.key), **headers})
        assert resp.status_code == 400 and resp.json()["error"]["details"]["field"] == "files", resp.text
    other_field = httpx.post(url, files=[("document", ("a.md", GOOD))], headers=h(limited.key))
    assert other_field.status_code == 400 and "No file in the upload" in other_field.json()["error"]["message"]
    many = [("files", (f"f{i}.md", b"x")) for i in range(101)]
    too_many = httpx.post(url, files=many, headers=h(limited.key))
    assert too_many.status_code == 400 and "Too many files" in too_many.json()["error"]["message"]
    same = httpx.post(url, files=[("files", ("a.md", GOOD)), ("files", ("a.md", GOOD))], headers=h(limited.key))
    assert same.status_code == 202 and same.json()["files"] == ["a.md", "a (2).md"]  # one name twice: both kept
