"""`chatgate ingest` and `chatgate serve` on one data directory: while the server writes the document index, the
command hands its files to it as ingestion jobs (and follows them with --wait) and the documents become
searchable through the server; with no server, it indexes them itself; a server that opened the index while
another process wrote it takes over writing, and runs the jobs, once that process is gone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import Fake, Gateway, start_gateway, stop

CLI = str(Path(sys.executable).with_name("chatgate"))
LEAVE = "# Leave\n\nParental leave is twenty six weeks at full pay for every employee.\n"
EXPENSES = "# Expenses\n\nTaxi receipts are refunded within ten days when filed before the end of the month.\n"
CANTEEN = "# Canteen\n\nThe canteen serves vegetarian lasagne every Thursday at noon.\n"


def config(fake: Fake) -> dict[str, Any]:
    return {
        "upstreams": [{"name": "a", "base_url": fake.base_url, "api_key": "upstream-secret-a"}],
        "rag": {
            "embeddings": {
                "backend": "openai",
                "base_url": fake.base_url,
                "api_key": "upstream-secret-a",
                "model": "fake-word-hash",
            },
            "retrieval": {"job_poll_interval": 0.2},
        },
        # an assistant with collections: the server opens the index (as its writer) at start
        "assistants": [{"name": "hr-assistant", "model": "fake-model", "collections": ["hr"]}],
    }


def handbook(folder: Path) -> Path:
    (folder / "handbook" / "policies").mkdir(parents=True, exist_ok=True)
    (folder / "handbook" / "leave.md").write_text(LEAVE)
    (folder / "handbook" / "policies" / "expenses.md").write_text(EXPENSES)
    return folder / "handbook"


def ingest(tmp: Path, data: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGATE_")} | {"CHATGATE_DATA_DIR": str(data)}
    return subprocess.run(
        [CLI, "ingest", *argv, "--config", str(tmp / "chatgate.yaml")],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=120,
    )


def h(gw: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gw.key}"}


def wait_until(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def writer(gw: Gateway) -> bool:
    return bool(httpx.get(gw.url + "/admin/metrics", headers=h(gw)).json()["rag"]["writer"])


def search(gw: Gateway, collection: str, query: str) -> list[dict[str, Any]]:
    found = httpx.get(gw.url + "/api/v1/collections", headers=h(gw)).json()["data"]
    cid = next(c["id"] for c in found if c["name"] == collection)
    resp = httpx.post(f"{gw.url}/api/v1/collections/{cid}/search", json={"query": query}, headers=h(gw))
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]  # type: ignore[no-any-return]


def test_ingest_hands_its_files_to_the_running_server(tmp_path: Path, fake_a: Fake) -> None:
    gw = start_gateway(tmp_path, config(fake_a))
    try:
        wait_until("the server writes the index", lambda: writer(gw))
        folder = handbook(tmp_path)
        done = ingest(tmp_path, gw.data_dir, str(folder), "--collection", "hr", "--wait")
        assert done.returncode == 0, done.stdout + done.stderr
        out = " ".join(done.stdout.split())
        assert "being written by another process" in out and "handed 2 files to it as 1 ingestion job" in out
        added = next(line for line in done.stdout.splitlines() if " added " in line)
        assert re.search(r"added\W+2\b", added), added
        hits = search(gw, "hr", "parental leave weeks")
        assert hits and hits[0]["document"] == "handbook/leave.md"  # named relative to the ingest root
        assert any(hit["document"] == "handbook/policies/expenses.md" for hit in search(gw, "hr", "taxi receipts"))
        answer = httpx.post(
            gw.base_url + "/chat/completions",
            json={"model": "hr-assistant", "messages": [{"role": "user", "content": "How long is parental leave?"}]},
            headers=h(gw),
        ).json()
        assert answer["sources"][0]["document"] == "handbook/leave.md"

        # without --wait: the job ids, and the server runs them on its own
        (tmp_path / "more").mkdir()
        (tmp_path / "more" / "canteen.md").write_text(CANTEEN)
        queued = ingest(tmp_path, gw.data_dir, str(tmp_path / "more" / "canteen.md"), "--collection", "hr")
        assert queued.returncode == 0, queued.stdout + queued.stderr
        job_id = next(line.split()[1] for line in queued.stdout.splitlines() if line.strip().startswith("job "))
        assert "--wait" in queued.stdout

        def finished() -> dict[str, Any] | None:
            job = httpx.get(f"{gw.url}/api/v1/jobs/{job_id}", headers=h(gw)).json()
            return job if job["status"] in ("done", "failed") else None

        job = wait_until("the handed-over job ends", finished)
        assert job["status"] == "done" and job["added"] == 1
        assert search(gw, "hr", "vegetarian lasagne")[0]["document"] == "canteen.md"
    finally:
        stop(gw.proc)


def test_without_a_server_ingest_indexes_the_files_itself(tmp_path: Path, fake_a: Fake) -> None:
    (tmp_path / "chatgate.yaml").write_text(yaml.safe_dump(config(fake_a)))
    data = tmp_path / "data"
    done = ingest(tmp_path, data, str(handbook(tmp_path)), "--collection", "hr", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "indexing here" in done.stdout and "handed" not in done.stdout
    gw = start_gateway(tmp_path, config(fake_a))
    try:
        assert search(gw, "hr", "parental leave weeks")[0]["document"] == "handbook/leave.md"
    finally:
        stop(gw.proc)


HOLD = """
import sys, time
from pathlib import Path
from chatgate.rag.dense import DenseIndex
from chatgate.settings import RetrievalSettings
index = DenseIndex.open(RetrievalSettings(), Path(sys.argv[1]), write="require")
print("holding", flush=True)
time.sleep(600)
"""


def test_a_server_that_opened_the_index_as_a_reader_takes_over_writing(tmp_path: Path, fake_a: Fake) -> None:
    """Another process (say a long `chatgate ingest`) writes the index while the server starts: the server opens
    it read-only; once that process is gone, the server writes it, and the jobs waiting meanwhile run."""
    data = tmp_path / "data"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(data)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        gw = start_gateway(tmp_path, config(fake_a))
        try:
            wait_until(
                "the index open",
                lambda: httpx.get(gw.url + "/admin/metrics", headers=h(gw)).json()["rag"]["index_open"],
            )
            assert not writer(gw)
            queued = ingest(tmp_path, gw.data_dir, str(handbook(tmp_path)), "--collection", "hr")
            assert queued.returncode == 0 and "handed 2 files" in " ".join(queued.stdout.split()), queued.stdout
            job_id = next(line.split()[1] for line in queued.stdout.splitlines() if line.strip().startswith("job "))
            time.sleep(1.0)  # several poll intervals: nobody may run it while the holder writes the index
            assert httpx.get(f"{gw.url}/api/v1/jobs/{job_id}", headers=h(gw)).json()["status"] == "queued"
            holder.kill()
            holder.wait()
            job = wait_until(
                "the job done",
                lambda: (
                    (j := httpx.get(f"{gw.url}/api/v1/jobs/{job_id}", headers=h(gw)).json())["status"] == "done" and j
                ),
            )
            assert job["added"] == 2
            wait_until("a worker writes the index", lambda: writer(gw))
            assert search(gw, "hr", "parental leave weeks")[0]["document"] == "handbook/leave.md"
        finally:
            stop(gw.proc)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
