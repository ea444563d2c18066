"""End to end with the real local embedder (all-MiniLM-L6-v2 on CPU): `chatgate ingest` from the command
line, then `chatgate serve` grounds an assistant's answers in what it indexed (and indexes an upload)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import ADMIN_KEY, Fake, start_gateway, stop

SAMPLES = Path(__file__).parents[1] / "rag" / "samples"


def test_ingest_then_serve_grounded_answers_with_the_local_model(tmp_path: Path, fake_a: Fake) -> None:
    data = tmp_path / "data"
    cli = str(Path(sys.executable).with_name("chatgate"))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CHATGATE_")}, "CHATGATE_DATA_DIR": str(data)}
    done = subprocess.run(
        [cli, "ingest", str(SAMPLES / "handbook.md"), "--collection", "handbook"],  # admin-managed
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    config = {
        "upstreams": [{"name": "a", "base_url": fake_a.base_url, "api_key": "upstream-secret-a"}],
        "assistants": [{"name": "handbook-bot", "model": "fake-model", "collections": ["handbook"], "mode": "dense"}],
        "rag": {"retrieval": {"job_poll_interval": 0.2}},
    }
    gw = start_gateway(tmp_path, config)  # /health answers while the model loads in the background
    try:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        tag = "e2e-" + secrets.token_hex(4)
        body = {
            "model": "handbook-bot",
            "temperature": 0,
            "messages": [{"role": "user", "content": "How many weeks off do new parents get?"}],
            "fake": {"id": tag},
        }
        resp = httpx.post(gw.base_url + "/chat/completions", json=body, headers=headers, timeout=120)
        assert resp.status_code == 200, resp.text
        sources = resp.json()["sources"]
        assert sources and sources[0]["document"].endswith("handbook.md")
        system = fake_a.stats(tag)["bodies"][0]["messages"][0]["content"]
        assert "sixteen weeks" in system and "[1] " in system
        # an upload through the API is indexed by the gateway (the index's writer) with the same model
        cid = next(c["id"] for c in httpx.get(gw.url + "/api/v1/collections", headers=headers).json()["data"])
        files = [("files", ("canteen.txt", b"The canteen serves vegetarian lasagne every Thursday at noon."))]
        job_id = httpx.post(f"{gw.url}/api/v1/collections/{cid}/documents", files=files, headers=headers).json()[
            "job_id"
        ]
        deadline = time.monotonic() + 60
        while (job := httpx.get(f"{gw.url}/api/v1/jobs/{job_id}", headers=headers).json())["status"] != "done":
            assert job["status"] in ("queued", "processing") and time.monotonic() < deadline, job
            time.sleep(0.2)
        hits = httpx.post(
            f"{gw.url}/api/v1/collections/{cid}/search",
            json={"query": "what food is served for lunch", "mode": "dense", "top_k": 1},
            headers=headers,
        ).json()["data"]
        assert hits[0]["document"] == "canteen.txt"
    finally:
        stop(gw.proc)


def test_an_off_topic_question_gets_no_sources_an_on_topic_one_does(tmp_path: Path, fake_a: Fake) -> None:
    """The default relevance floor (rag.retrieval.relevance_floor: auto, tuned for this model): "What is 2+2?"
    asked of a handbook assistant (hybrid search, the default) gets no sources and nothing grounded upstream."""
    data = tmp_path / "data"
    cli = str(Path(sys.executable).with_name("chatgate"))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CHATGATE_")}, "CHATGATE_DATA_DIR": str(data)}
    done = subprocess.run(
        [cli, "ingest", str(SAMPLES / "handbook.md"), "--collection", "handbook"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    config = {
        "upstreams": [{"name": "a", "base_url": fake_a.base_url, "api_key": "upstream-secret-a"}],
        "assistants": [{"name": "handbook-bot", "model": "fake-model", "collections": ["handbook"]}],
        "rag": {"retrieval": {"lexical_while_loading": False}},  # hybrid, not BM25 alone while the model loads
    }
    gw = start_gateway(tmp_path, config)
    try:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}

        def ask(question: str) -> tuple[dict, str]:
            tag = "floor-" + secrets.token_hex(4)
            body = {"model": "handbook-bot", "messages": [{"role": "user", "content": question}], "fake": {"id": tag}}
            resp = httpx.post(gw.base_url + "/chat/completions", json=body, headers=headers, timeout=120)
            assert resp.status_code == 200, resp.text
            return resp.json(), str(fake_a.stats(tag)["bodies"][0]["messages"][0]["content"])

        for question in ("What is 2+2?", "Tell me a joke about penguins.", "Hello!"):
            answer, system = ask(question)
            assert "sources" not in answer, (question, answer.get("sources"))
            assert "[1] " not in system and "sixteen weeks" not in system
        answer, system = ask("How long is parental leave?")
        assert answer["sources"] and answer["sources"][0]["document"].endswith("handbook.md")
        assert "[1] " in system and "sixteen weeks" in system
        api = httpx.post(
            gw.url + "/api/v1/chat", json={"message": "What is 2+2?", "model": "handbook-bot"}, headers=headers
        )
        assert api.status_code == 200 and api.json()["sources"] == []
    finally:
        stop(gw.proc)
