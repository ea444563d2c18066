"""Analytics through the gateway: 1,000 mixed requests (plain, streaming, errors, cache hits, the chat
API, embeddings) become exactly 1,000 rows; the summaries (from the hourly rollups) and the export
(raw rows, JSON and CSV) agree with what was sent; non-admins do not see the routes."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Fake, Gateway, start_gateway, stop


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_a: Fake) -> Iterator[Gateway]:
    cfg = {
        "upstreams": [{"name": "a", "base_url": fake_a.base_url, "api_key": "upstream-secret-a"}],
        "limits": {"user_requests_per_minute": 100_000, "user_tokens_per_hour": 10**9},
        "retry": {"max_retries": 0},
        "breaker": {"minimum_calls": 10_000},  # the 50 upstream failures must not open the circuit
    }
    g = start_gateway(tmp_path_factory.mktemp("analytics"), cfg)
    yield g
    stop(g.proc)


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": content}], **extra}


def test_a_thousand_mixed_requests_are_recorded_exactly(gw: Gateway) -> None:
    run = secrets.token_hex(4)
    plan: list[tuple[str, dict[str, Any], str]] = []  # (path, body, what)
    plan += [("/v1/chat/completions", chat(f"plain {run} {i}"), "ok") for i in range(400)]
    plan += [("/v1/chat/completions", chat(f"stream {run} {i}", stream=True), "stream") for i in range(200)]
    plan += [("/v1/chat/completions", chat("x", model="no-such-model"), "error") for _ in range(50)]
    plan += [("/v1/chat/completions", b'{"model": "fake-model", "messages": [', "error") for _ in range(25)]  # bad JSON
    plan += [("/v1/chat/completions", {"model": "fake-model", "messages": "hi"}, "error") for _ in range(25)]
    plan += [
        ("/v1/chat/completions", chat(f"fail {run} {i}", fake={"fail": [500], "id": f"fail-{run}-{i}"}), "error")
        for i in range(50)
    ]
    plan += [("/v1/chat/completions", chat(f"cached {run}", temperature=0), "cache") for _ in range(150)]
    plan += [("/api/v1/chat", {"message": f"api {run} {i}", "model": "fake-model"}, "ok") for i in range(50)]
    plan += [("/v1/embeddings", {"model": "fake-model", "input": f"emb {run} {i}"}, "ok") for i in range(50)]
    assert len(plan) == 1000

    async def send() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=gw.url, headers={"x-api-key": gw.key}, timeout=60, limits=limits) as c:

            def post(path: str, body: Any) -> Any:
                if isinstance(body, bytes):
                    return c.post(path, content=body, headers={"content-type": "application/json"})
                return c.post(path, json=body)

            first = await post(plan[750][0], plan[750][1])  # the cache is primed by the first of its kind
            rest = await asyncio.gather(*(post(path, body) for path, body, _ in plan[:750] + plan[751:]))
            return [first, *rest]

    responses = asyncio.run(send())
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 850 and statuses.count(404) == 50 and statuses.count(400) == 50
    assert statuses.count(502) == 50
    hits = sum(r.headers.get("x-cache") == "HIT" for r in responses)
    assert hits == 149

    admin = {"x-api-key": gw.key}
    summary = httpx.get(gw.url + "/admin/analytics/global", headers=admin, timeout=30).json()
    assert summary["requests"] == 1000
    assert summary["errors"] == 150 and summary["error_rate"] == pytest.approx(0.15)
    assert summary["cached"] == 149 and summary["streams"] == 200
    assert sum(k["requests"] for k in summary["by_kind"].values()) == 1000
    assert sum(h["requests"] for h in summary["by_hour"]) == 1000
    assert summary["latency_ms"]["p50"] is not None and summary["latency_ms"]["p95"] >= summary["latency_ms"]["p50"]

    exported = httpx.get(gw.url + "/admin/analytics/export", headers=admin, params={"format": "csv"}, timeout=30)
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert len(rows) == 1000  # raw rows == requests sent; the rollups above said the same
    assert sum(int(r["tokens_in"]) for r in rows) == summary["tokens_in"]
    assert {r["error_code"] for r in rows if r["status"] == "404"} == {"MODEL_NOT_FOUND"}
    assert sum(r["status"] == "400" for r in rows) == 50  # refused before they became requests: recorded too
    assert sum(r["stream"] in ("True", "1", "true") for r in rows) == 200

    as_json = httpx.get(gw.url + "/admin/analytics/export", headers=admin, timeout=30).json()
    assert len(as_json) == 1000

    user = httpx.get(gw.url + "/admin/analytics/users/admin", headers=admin, timeout=30).json()
    assert user["user_id"] == "admin" and user["requests"] == 1000


def test_a_conversation_summary_and_the_routes_are_hidden_from_others(gw: Gateway) -> None:
    admin = {"x-api-key": gw.key}
    first = httpx.post(gw.url + "/api/v1/chat", json={"message": "one", "model": "fake-model"}, headers=admin)
    sid = first.json()["session_id"]
    httpx.post(
        gw.url + "/api/v1/chat", json={"message": "two", "model": "fake-model", "session_id": sid}, headers=admin
    )
    chat_summary = httpx.get(f"{gw.url}/admin/analytics/chats/{sid}", headers=admin).json()
    assert chat_summary["chat_id"] == sid and chat_summary["requests"] == 2 and chat_summary["errors"] == 0
    bad = httpx.get(gw.url + "/admin/analytics/global", headers=admin, params={"from": "yesterday"})
    assert bad.status_code == 400 and bad.json()["error"]["details"]["field"] == "from"
    assert httpx.get(gw.url + "/admin/analytics/global").status_code == 401


def test_usage_counted_by_the_gateway_is_marked_so(gw: Gateway) -> None:
    """An upstream that streams no usage (llama.cpp's server): the gateway counts the tokens with the model's
    tokenizer, sends the client its usage chunk, and its analytics row says the usage was counted, not reported."""
    admin = {"x-api-key": gw.key}
    rows = {}
    for knob in ("no_usage", "reported"):
        body = chat(f"count me {knob}", stream=True, stream_options={"include_usage": True}, fake={knob: True})
        with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, headers=admin, timeout=30) as resp:
            lines = [line for line in resp.iter_lines() if line.startswith("data: {")]
        usage = [e["usage"] for e in (json.loads(line[6:]) for line in lines) if e.get("usage")]
        assert len(usage) == 1 and usage[0]["completion_tokens"] > 0, lines
        rows[knob] = usage[0]
    for _ in range(100):  # the rows are written behind
        exported = httpx.get(gw.url + "/admin/analytics/export", headers=admin, timeout=30).json()
        mine = [r for r in exported[-10:] if r["stream"] and r["tokens_out"] > 0]
        if len(mine) >= 2:
            break
        asyncio.run(asyncio.sleep(0.1))
    counted, reported = mine[-2], mine[-1]
    assert (counted["usage_counted"], reported["usage_counted"]) == (True, False), mine
    assert counted["tokens_out"] == rows["no_usage"]["completion_tokens"]
