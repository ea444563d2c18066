"""RAG through the gateway: a real `chatgate serve`, the fake upstream for chat and for embeddings
(``fake-word-hash``: deterministic bag-of-words vectors); collections, uploads, search, assistants,
grounded answers with their sources on every door, the cache, privacy between users."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import Fake, Gateway, start_gateway, stop, user_key

SAMPLES = Path(__file__).parents[1] / "rag" / "samples"
EMBED_MODEL = "fake-word-hash"
POLICY = (
    "# Leave policy\n\n"
    "Parental leave is twenty six weeks at full pay for every employee.\n\n"
    "## Holidays\n\nEvery employee gets thirty holidays a year, booked through the staff portal.\n"
)
EXPENSES = "# Expenses\n\nTaxi receipts are refunded within ten days when filed before the end of the month.\n"
SECRET = "# Bob's notes\n\nThe vault combination is zebra-4921, known to nobody else.\n"


def config(fake: Fake, **extra: Any) -> dict[str, Any]:
    return {
        "upstreams": [{"name": "a", "base_url": fake.base_url, "api_key": "upstream-secret-a"}],
        "rag": {
            "embeddings": {
                "backend": "openai",
                "base_url": fake.base_url,
                "api_key": "upstream-secret-a",
                "model": EMBED_MODEL,
            },
            "retrieval": {"job_poll_interval": 0.2},
        },
        "assistants": [
            {
                "name": "hr-assistant",
                "model": "fake-model",
                "system_prompt": "You are the HR assistant of Example Corp.",
                "collections": ["hr"],
                "top_k": 3,
                "description": "Answers from the HR handbook",
            },
            {
                "name": "hr-once",
                "model": "fake-model",
                "collections": ["hr"],
                "retrieval": "once_per_conversation",
            },
            {"name": "notes-assistant", "model": "fake-model", "collections": ["notes"], "research": True},
        ],
        **extra,
    }


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_a: Fake) -> Iterator[Gateway]:
    g = start_gateway(tmp_path_factory.mktemp("rag-gw"), config(fake_a))
    yield g
    stop(g.proc)


def h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_job(gw: Gateway, key: str, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{gw.url}/api/v1/jobs/{job_id}", headers=h(key)).json()
        if job["status"] in ("done", "failed"):
            return job  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def make_collection(gw: Gateway, key: str, name: str, visibility: str, files: dict[str, bytes]) -> tuple[str, dict]:
    resp = httpx.post(f"{gw.url}/api/v1/collections", json={"name": name, "visibility": visibility}, headers=h(key))
    assert resp.status_code == 201, resp.text
    cid = resp.json()["id"]
    upload = [("files", (n, data)) for n, data in files.items()]
    resp = httpx.post(f"{gw.url}/api/v1/collections/{cid}/documents", files=upload, headers=h(key))
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "queued"
    return cid, wait_job(gw, key, resp.json()["job_id"])


@pytest.fixture(scope="module")
def hr(gw: Gateway) -> str:
    files = {
        "policy.md": POLICY.encode(),
        "expenses.md": EXPENSES.encode(),
        "corrupt.pdf": (SAMPLES / "corrupt.pdf").read_bytes(),
    }
    cid, job = make_collection(gw, gw.key, "hr", "admin", files)
    assert job["status"] == "done" and job["added"] == 2 and job["failed"] == 1, job
    assert set(job["failures"]) == {"corrupt.pdf"} and job["failures"]["corrupt.pdf"]
    return cid


def chat_body(tag: str, question: str, model: str = "hr-assistant", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "temperature": 0,
        "messages": [{"role": "user", "content": question}],
        "fake": {"id": tag},
        **extra,
    }


def system_of(body: dict[str, Any]) -> str:
    first = body["messages"][0]
    assert first["role"] == "system"
    return str(first["content"])


def sse_events(text: str) -> list[Any]:
    out = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else orjson.loads(data))
    return out


def test_upload_lists_documents_and_reports_the_corrupt_file(gw: Gateway, hr: str) -> None:
    docs = httpx.get(f"{gw.url}/api/v1/collections/{hr}/documents", headers=h(gw.key)).json()["data"]
    by_source = {d["source"]: d for d in docs}
    assert by_source["policy.md"]["status"] == "ready" and by_source["policy.md"]["chunks"] >= 1
    assert by_source["corrupt.pdf"]["status"] == "failed" and by_source["corrupt.pdf"]["error"]
    one = httpx.get(f"{gw.url}/api/v1/collections/{hr}", headers=h(gw.key)).json()
    assert one["name"] == "hr" and one["visibility"] == "admin" and one["documents"]["ready"] == 2
    assert one["embedding_model"] == EMBED_MODEL and one["embedding_dim"] == 64


def test_search_returns_chunks_with_sources(gw: Gateway, hr: str) -> None:
    resp = httpx.post(
        f"{gw.url}/api/v1/collections/{hr}/search",
        json={"query": "parental leave weeks", "top_k": 2},
        headers=h(gw.key),
    )
    assert resp.status_code == 200, resp.text
    hits = resp.json()["data"]
    assert 1 <= len(hits) <= 2
    best = hits[0]
    assert best["document"] == "policy.md" and "twenty six weeks" in best["text"]
    assert {"title", "chunk_id", "page", "headings", "score", "document_id"} <= set(best)
    lexical = httpx.post(
        f"{gw.url}/api/v1/collections/{hr}/search",
        json={"query": "taxi receipts", "mode": "lexical", "filters": {"documents": [best["document_id"]]}},
        headers=h(gw.key),
    ).json()["data"]
    assert lexical == []  # the taxi text is in another document
    bad = httpx.post(
        f"{gw.url}/api/v1/collections/{hr}/search", json={"query": "x", "mode": "fuzzy"}, headers=h(gw.key)
    )
    assert bad.status_code == 400 and bad.json()["error"]["details"]["field"] == "mode"


def test_admin_snapshot_shows_the_index(gw: Gateway, hr: str) -> None:
    rag = httpx.get(gw.url + "/admin/metrics", headers=h(gw.key)).json()["rag"]
    assert rag["index_open"] and rag["writer"] and rag["job_runner"] and rag["embedder"] == EMBED_MODEL
    assert rag["assistants_configured"] == 3
    httpx.post(f"{gw.url}/api/v1/collections/{hr}/search", json={"query": "leave"}, headers=h(gw.key))

    def postings() -> dict[str, Any]:
        return httpx.get(gw.url + "/admin/metrics", headers=h(gw.key)).json()["rag"]["lexical"]

    deadline = time.monotonic() + 10  # built in the background, after the first search at the latest
    while not postings()["ready"] and time.monotonic() < deadline:
        time.sleep(0.05)
    found = postings()
    assert found["ready"], found
    assert found["ranker"] == "bm25_postings" and found["fallback"] == "fts5"
    assert found["chunks"] > 0 and found["postings"] > 0  # lexical ranking in memory


def test_rag_metrics(gw: Gateway, hr: str) -> None:
    text = httpx.get(gw.url + "/metrics", headers=h(gw.key)).text
    assert 'chatgate_rag_documents_ingested_total{outcome="added"}' in text
    assert 'chatgate_rag_documents_ingested_total{outcome="failed"}' in text
    httpx.post(f"{gw.url}/api/v1/collections/{hr}/search", json={"query": "holidays"}, headers=h(gw.key))
    text = httpx.get(gw.url + "/metrics", headers=h(gw.key)).text
    assert 'chatgate_rag_retrievals_total{mode="hybrid"}' in text
    assert 'chatgate_rag_retrieval_seconds_count{mode="hybrid"}' in text


LAZY = """
import sys
from starlette.testclient import TestClient
from chatgate.app import create_app
from chatgate.settings import Settings

app = create_app(Settings(data_dir=sys.argv[1], admin_key="k", upstream_base_url=sys.argv[2]))
with TestClient(app) as client:
    assert client.get("/health").status_code == 200
    models = client.get("/v1/models", headers={"x-api-key": "k"}).json()
    listed = client.get("/api/v1/collections", headers={"x-api-key": "k"}).json()
heavy = ("torch", "chromadb", "sentence_transformers", "numpy", "fastapi")  # fastapi: the OpenAPI page only
print(sorted(m for m in heavy if m in sys.modules), listed["data"])
"""


def test_no_documents_no_index_no_model_loaded(tmp_path: Path, fake_a: Fake) -> None:
    out = subprocess.run(
        [sys.executable, "-c", LAZY, str(tmp_path), fake_a.base_url], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[] []"


def test_assistants_are_models(gw: Gateway) -> None:
    ids = [m["id"] for m in httpx.get(gw.base_url + "/models", headers=h(gw.key)).json()["data"]]
    assert {"fake-model", "hr-assistant", "hr-once", "notes-assistant"} <= set(ids)
    one = httpx.get(gw.base_url + "/models/hr-assistant", headers=h(gw.key)).json()
    assert one["root"] == "fake-model" and one["description"] == "Answers from the HR handbook"


def test_chat_is_grounded_and_cites_its_sources(gw: Gateway, fake_a: Fake, hr: str) -> None:
    tag = "g-" + secrets.token_hex(4)
    question = "How many weeks of parental leave do we get?"
    body = chat_body(
        tag, question, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]
    )
    resp = httpx.post(gw.base_url + "/chat/completions", json=body, headers=h(gw.key))
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["object"] == "chat.completion" and answer["sources"] and "warnings" not in answer
    assert answer["sources"][0]["document"] == "policy.md" and answer["sources"][0]["index"] == 1
    sent = fake_a.stats(tag)["bodies"][0]
    assert sent["model"] == "fake-model"
    system = system_of(sent)
    assert system.startswith("You are the HR assistant of Example Corp.\n\nBe brief.")
    assert "[1] " in system and "twenty six weeks" in system and "cite them" in system
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    again = httpx.post(gw.base_url + "/chat/completions", json=body, headers=h(gw.key))
    assert again.headers["x-cache"] == "HIT" and again.json()["sources"] == answer["sources"]
    assert fake_a.stats(tag)["attempts"] == 1


def test_a_stream_ends_with_its_sources_fresh_and_from_the_cache(gw: Gateway, fake_a: Fake, hr: str) -> None:
    tag = "s-" + secrets.token_hex(4)
    body = chat_body(tag, "Are taxi receipts refunded?", stream=True)
    for expected in ("MISS", "HIT"):
        with httpx.stream("POST", gw.base_url + "/chat/completions", json=body, headers=h(gw.key)) as r:
            assert r.headers["x-cache"] == expected
            events = sse_events(r.read().decode())
        assert events[-1] == "[DONE]"
        last = events[-2]
        assert last["object"] == "chat.completion.chunk" and last["choices"] == []
        assert any(s["document"] == "expenses.md" for s in last["sources"])
        assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-2] if e["choices"])
    assert fake_a.stats(tag)["attempts"] == 1


def test_chat_api_answer_carries_sources(gw: Gateway, hr: str) -> None:
    resp = httpx.post(
        gw.url + "/api/v1/chat",
        json={"message": "How many holidays a year?", "model": "hr-assistant"},
        headers=h(gw.key),
    )
    assert resp.status_code == 200, resp.text
    sources = resp.json()["sources"]
    assert (
        sources and sources[0]["document"] == "policy.md" and {"title", "chunk_id", "page", "score"} <= set(sources[0])
    )
    streamed = httpx.post(
        gw.url + "/api/v1/chat",
        json={"message": "How many holidays a year?", "model": "hr-assistant", "stream": True},
        headers=h(gw.key),
    )
    done = [e for e in sse_events(streamed.text) if isinstance(e, dict) and e.get("type") == "done"]
    assert done and done[0]["sources"] and done[0]["sources"][0]["document"] == "policy.md"


def test_an_assistant_whose_collections_match_nothing_says_so_in_the_answer(gw: Gateway, fake_a: Fake) -> None:
    """``notes-assistant`` names ``notes``: an ordinary user with no collection of that name gets an answer
    that says the collection matched nothing, on every door, whole and streamed; it is logged once (by each of the
    two workers), not on every request."""
    dave = user_key(gw, "dave-" + secrets.token_hex(3))
    tag = "u-" + secrets.token_hex(4)
    whole = httpx.post(
        gw.base_url + "/chat/completions",
        json=chat_body(tag, "What is in my notes?", "notes-assistant"),
        headers=h(dave),
    )
    assert whole.status_code == 200, whole.text
    answer = whole.json()
    assert answer["sources"] == [] and answer["choices"][0]["message"]["content"]
    (warning,) = answer["warnings"]
    assert warning["code"] == "COLLECTION_UNRESOLVED" and warning["collection"] == "notes"
    assert "notes" in warning["message"]
    assert "[1]" not in orjson.dumps(fake_a.stats(tag)["bodies"][0]).decode()  # nothing was grounded
    body = chat_body("us-" + secrets.token_hex(4), "What is in my notes?", "notes-assistant", stream=True)
    with httpx.stream("POST", gw.base_url + "/chat/completions", json=body, headers=h(dave)) as r:
        events = sse_events(r.read().decode())
    assert events[-1] == "[DONE]" and events[-2]["choices"] == [] and events[-2]["sources"] == []
    assert [w["collection"] for w in events[-2]["warnings"]] == ["notes"]
    api = httpx.post(
        gw.url + "/api/v1/chat", json={"message": "My notes?", "model": "notes-assistant"}, headers=h(dave)
    )
    assert api.status_code == 200 and api.json()["sources"] == []
    assert [w["code"] for w in api.json()["warnings"]] == ["COLLECTION_UNRESOLVED"]
    streamed = httpx.post(
        gw.url + "/api/v1/chat",
        json={"message": "My notes?", "model": "notes-assistant", "stream": True},
        headers=h(dave),
    )
    done = [e for e in sse_events(streamed.text) if isinstance(e, dict) and e.get("type") == "done"]
    assert done and [w["collection"] for w in done[0]["warnings"]] == ["notes"]
    logged = [line for line in gw.logs().splitlines() if "matches nothing the caller may read" in line]
    assert 1 <= len([line for line in logged if '"notes-assistant"' in line]) <= 2  # once a worker, not per request


def test_once_per_conversation_retrieves_once(gw: Gateway, fake_a: Fake, hr: str) -> None:
    first = httpx.post(
        gw.url + "/api/v1/chat",
        json={"message": "How long is parental leave?", "model": "hr-once"},
        headers=h(gw.key),
    ).json()
    second = httpx.post(
        gw.url + "/api/v1/chat",
        json={"message": "And the holidays?", "model": "hr-once", "session_id": first["session_id"]},
        headers=h(gw.key),
    ).json()
    assert first["sources"] and second["sources"] == []
    session = httpx.get(f"{gw.url}/api/v1/chat/sessions/{first['session_id']}", headers=h(gw.key)).json()
    assert session["rag_applied"] is True and session["request_counts"]["rag"] == 1


def test_requests_that_retrieved_are_typed_rag(gw: Gateway, hr: str) -> None:
    httpx.post(
        gw.base_url + "/chat/completions",
        json=chat_body("k-" + secrets.token_hex(4), "parental leave?"),
        headers=h(gw.key),
    )
    summary = httpx.get(gw.url + "/admin/analytics/global", headers=h(gw.key)).json()
    assert summary["by_kind"]["rag"]["requests"] >= 1


def test_a_private_collection_is_invisible_to_another_user(gw: Gateway, fake_a: Fake, hr: str) -> None:
    bob, alice = user_key(gw, "bob-" + secrets.token_hex(3)), user_key(gw, "alice-" + secrets.token_hex(3))
    cid, job = make_collection(gw, bob, "notes", "private", {"secret.md": SECRET.encode()})
    assert job["status"] == "done" and job["added"] == 1
    job_id = job["id"]
    base = f"{gw.url}/api/v1/collections/{cid}"
    for method, url, kw in [
        ("GET", base, {}),
        ("DELETE", base, {}),
        ("GET", base + "/documents", {}),
        ("POST", base + "/search", {"json": {"query": "vault combination"}}),
        ("POST", base + "/documents", {"files": [("files", ("x.md", b"# x\n\nhello"))]}),
        ("GET", f"{gw.url}/api/v1/jobs/{job_id}", {}),
    ]:
        resp = httpx.request(method, url, headers=h(alice), **kw)
        assert resp.status_code == 404, (method, url, resp.text)
        assert resp.json()["error"]["code"] == "NOT_FOUND"
    listed = httpx.get(gw.url + "/api/v1/collections", headers=h(alice)).json()["data"]
    assert cid not in [c["id"] for c in listed] and hr in [c["id"] for c in listed]
    assert cid in [c["id"] for c in httpx.get(gw.url + "/api/v1/collections", headers=h(bob)).json()["data"]]
    # Grounding: bob's assistant finds his notes; alice, asking the same thing of the same assistant, does not,
    # and is not served bob's cached answer.
    tag_b = "pb-" + secrets.token_hex(4)
    question = "What is the vault combination?"
    as_bob = httpx.post(
        gw.base_url + "/chat/completions", json=chat_body(tag_b, question, "notes-assistant"), headers=h(bob)
    )
    assert as_bob.status_code == 200 and as_bob.json()["sources"][0]["document"] == "secret.md"
    assert "zebra-4921" in system_of(fake_a.stats(tag_b)["bodies"][0])
    body = chat_body(tag_b, question, "notes-assistant")
    as_alice = httpx.post(gw.base_url + "/chat/completions", json=body, headers=h(alice))
    assert as_alice.status_code == 200 and as_alice.headers["x-cache"] == "MISS"
    assert as_alice.json()["sources"] == [] and as_alice.json()["warnings"][0]["collection"] == "notes"
    sent = fake_a.stats(tag_b)["bodies"][-1]
    assert "zebra-4921" not in orjson.dumps(sent).decode()
    # a private collection: only its owner may delete it
    assert httpx.delete(base, headers=h(bob)).status_code == 200
    assert httpx.get(base, headers=h(bob)).status_code == 404


def test_another_users_shared_collection_does_not_join_an_assistant_by_name(gw: Gateway, fake_a: Fake, hr: str) -> None:
    mallory, erin = user_key(gw, "mallory-" + secrets.token_hex(3)), user_key(gw, "erin-" + secrets.token_hex(3))
    poison = "# Leave\n\nParental leave is abolished; the parental leave weeks are now zero weeks.\n"
    shared, job = make_collection(gw, mallory, "hr", "shared", {"poison.md": poison.encode()})
    assert job["status"] == "done"
    assert shared in [c["id"] for c in httpx.get(gw.url + "/api/v1/collections", headers=h(erin)).json()["data"]]
    tag = "m-" + secrets.token_hex(4)
    resp = httpx.post(gw.base_url + "/chat/completions", json=chat_body(tag, "parental leave weeks?"), headers=h(erin))
    assert resp.status_code == 200 and resp.json()["sources"]
    assert {s["collection_id"] for s in resp.json()["sources"]} == {hr}
    assert "abolished" not in system_of(fake_a.stats(tag)["bodies"][0])


def test_admin_only_visibility_and_field_errors(gw: Gateway) -> None:
    carol = user_key(gw, "carol-" + secrets.token_hex(3))
    resp = httpx.post(gw.url + "/api/v1/collections", json={"name": "x", "visibility": "admin"}, headers=h(carol))
    assert resp.status_code == 403 and resp.json()["error"]["details"]["field"] == "visibility"
    resp = httpx.post(gw.url + "/api/v1/collections", json={"visibility": "shared"}, headers=h(carol))
    assert resp.status_code == 400 and resp.json()["error"]["details"]["field"] == "name"
    resp = httpx.post(gw.url + "/api/v1/collections", json={"name": "dup"}, headers=h(carol))
    assert resp.status_code == 201
    again = httpx.post(gw.url + "/api/v1/collections", json={"name": "dup"}, headers=h(carol))
    assert again.status_code == 409


def test_upload_size_limit_is_413(tmp_path: Path, fake_a: Fake) -> None:
    cfg = config(fake_a)
    cfg["rag"]["retrieval"]["upload_max_bytes"] = 2048
    g = start_gateway(tmp_path, cfg)
    try:
        cid = httpx.post(g.url + "/api/v1/collections", json={"name": "big"}, headers=h(g.key)).json()["id"]
        files = [("files", ("big.txt", b"word " * 1000)), ("files", ("ok.txt", b"small"))]
        resp = httpx.post(f"{g.url}/api/v1/collections/{cid}/documents", files=files, headers=h(g.key))
        assert resp.status_code == 413 and resp.json()["error"]["details"]["field"] == "files"
        none = httpx.post(f"{g.url}/api/v1/collections/{cid}/documents", data={"x": "1"}, headers=h(g.key))
        assert none.status_code == 400
    finally:
        stop(g.proc)


def test_admin_assistant_api(gw: Gateway, fake_a: Fake, hr: str) -> None:
    admin = h(gw.key)
    name = "api-bot-" + secrets.token_hex(3)
    created = httpx.post(
        gw.url + "/admin/assistants",
        json={"name": name, "model": "fake-model", "system_prompt": "First prompt.", "collections": ["hr"]},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    assert (
        httpx.post(gw.url + "/admin/assistants", json={"name": name, "model": "fake-model"}, headers=admin).status_code
        == 409
    )
    listed = httpx.get(gw.url + "/admin/assistants", headers=admin).json()["data"]
    sources = {a["name"]: a["source"] for a in listed}
    assert sources[name] == "api" and sources["hr-assistant"] == "config"
    put = httpx.put(
        f"{gw.url}/admin/assistants/{name}",
        json={
            "model": "fake-model",
            "system_prompt": "Second prompt.",
            "collections": ["hr"],
            "retrieval": "off",
            "max_steps": 3.0,  # JSON Schema's integer: 3.0 is 3
            "top_k": 4.0,
        },
        headers=admin,
    )
    assert put.status_code == 200, put.text
    stored = httpx.get(f"{gw.url}/admin/assistants/{name}", headers=admin).json()
    assert (stored["retrieval"], stored["max_steps"], stored["top_k"]) == ("off", 3, 4)
    not_integral = httpx.put(f"{gw.url}/admin/assistants/{name}", json={"model": "m", "max_steps": 2.5}, headers=admin)
    assert not_integral.status_code == 400 and not_integral.json()["error"]["details"]["field"] == "max_steps"
    assert name in [m["id"] for m in httpx.get(gw.base_url + "/models", headers=admin).json()["data"]]
    tag = "ab-" + secrets.token_hex(4)
    answer = httpx.post(gw.base_url + "/chat/completions", json=chat_body(tag, "parental leave?", name), headers=admin)
    assert answer.status_code == 200 and "sources" not in answer.json()  # retrieval off
    assert system_of(fake_a.stats(tag)["bodies"][0]) == "Second prompt."
    bad = httpx.post(
        gw.url + "/admin/assistants", json={"name": "x", "model": "m", "retrieval": "sometimes"}, headers=admin
    )
    assert bad.status_code == 400 and bad.json()["error"]["details"]["field"] == "retrieval"
    assert httpx.put(f"{gw.url}/admin/assistants/hr-assistant", json={"model": "m"}, headers=admin).status_code == 409
    assert httpx.delete(f"{gw.url}/admin/assistants/hr-assistant", headers=admin).status_code == 409
    assert httpx.delete(f"{gw.url}/admin/assistants/{name}", headers=admin).status_code == 200
    gone = httpx.post(gw.base_url + "/chat/completions", json=chat_body(tag, "hi", name), headers=admin)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "MODEL_NOT_FOUND"
    dave = user_key(gw, "dave-" + secrets.token_hex(3))
    for method in ("GET", "POST"):
        assert httpx.request(method, gw.url + "/admin/assistants", headers=h(dave), json={}).status_code == 404
    assert httpx.get(gw.url + "/admin/assistants/hr-assistant", headers=h(dave)).status_code == 404


def test_a_tiny_window_drops_chunks_rather_than_overflowing(tmp_path: Path, fake_a: Fake) -> None:
    cfg = config(
        fake_a,
        aliases={"tiny-model": "fake-model"},
        context={"windows": {"tiny-model": 400}},
        rag={**config(fake_a)["rag"], "chunking": {"size": 40, "overlap": 0}},
    )
    cfg["assistants"] = [{"name": "tiny", "model": "tiny-model", "collections": ["leave"], "top_k": 8}]
    g = start_gateway(tmp_path, cfg)
    try:
        paragraphs = "\n\n".join(
            f"Leave rule {i}: " + " ".join(f"leave{i} clause{i} detail{j}" for j in range(10)) + "." for i in range(8)
        )
        _, job = make_collection(g, g.key, "leave", "admin", {"leave.md": f"# Leave\n\n{paragraphs}\n".encode()})
        assert job["status"] == "done"
        wide = httpx.post(
            f"{g.url}/api/v1/collections/{job['collection_id']}/search",
            json={"query": "leave rule clause", "top_k": 8},
            headers=h(g.key),
        ).json()["data"]
        assert len(wide) == 8
        tag = "w-" + secrets.token_hex(4)
        resp = httpx.post(
            g.base_url + "/chat/completions",
            json=chat_body(tag, "What does the leave rule say?", "tiny", max_tokens=100),
            headers=h(g.key),
        )
        assert resp.status_code == 200, resp.text
        kept = resp.json()["sources"]
        assert 1 <= len(kept) < 8
        system = system_of(fake_a.stats(tag)["bodies"][0])
        assert f"[{len(kept)}] " in system and f"[{len(kept) + 1}] " not in system
        from chatgate.settings import TokenSettings
        from chatgate.tokens.counter import TokenCounter

        counter = TokenCounter(TokenSettings())
        assert counter.count_messages(fake_a.stats(tag)["bodies"][0]["messages"], "fake-model") + 100 <= 400
    finally:
        stop(g.proc)
