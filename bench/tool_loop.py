#!/usr/bin/env python3
"""The tool loop's own cost: a one-step loop against an upstream that answers at once.

    .venv/bin/python bench/tool_loop.py [--requests 300] [--docs 400] [--quick]

Starts, as child processes in a temporary directory, an upstream that answers at once (aiohttp, in this file:
a first call gets one tool call, a call that carries its result gets the answer; embeddings are hashed words)
and ``chatgate serve`` (one worker, SQLite, access logs on) with two assistants in front of it: ``clock``
(``current_time``) and ``docs`` (``retrieval: tool`` over ``--docs`` BEIR SciFact abstracts, lexical search).
Then, one request at a time (keep-alive), three kinds of request:

- ``plain``: the model without tools (one upstream call): the baseline;
- ``clock``: a one-step loop calling ``current_time`` (a tool that costs nothing);
- ``docs``: a one-step loop calling ``search_documents``.

The upstream notes when it finished answering a loop's first call and when the second arrived (one clock:
``CLOCK_MONOTONIC`` is shared by processes), so the gap is the gateway's time for the step: reading the tool
call, running the tool, building the next request and sending it. With ``current_time`` that is the gateway's
own time per step (the target: at most 1 ms p50); ``docs``' gap less ``clock``'s is the search's own time.
Prints figures, never a verdict; results also go to ``bench/results/tool_loop-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
SCIFACT = ROOT.parent / "shared" / "datasets" / "scifact" / "corpus.jsonl"
ADMIN_KEY = "bench-tool-loop-key"
TARGET_STEP_MS = 1.0  # the gateway's own time per tool step, p50, at most (shown for reference)


# ---- the upstream (run as a child: ``tool_loop.py --upstream PORT``) ---------------------------------------


def upstream(port: int) -> None:
    from aiohttp import web

    gaps: dict[str, dict[str, int]] = {}

    def this_turn(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
        return messages[last + 1 :]

    async def chat(request: web.Request) -> web.Response:
        arrived = time.monotonic_ns()
        body = await request.json()
        messages = body["messages"]
        question = next(m["content"] for m in reversed(messages) if m.get("role") == "user")
        tag, _, tool = question.partition(" ")
        base = {"id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": body["model"]}
        usage = {"usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}}
        if body.get("tools") and not this_turn(messages):
            arguments = json.dumps({"timezone": "UTC"} if tool == "current_time" else {"query": "cancer cells"})
            call = {"id": "call_1", "type": "function", "function": {"name": tool, "arguments": arguments}}
            message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
            choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
            gaps.setdefault(tag, {})["answered"] = time.monotonic_ns()
            return web.json_response({**base, "choices": [choice], **usage})
        gaps.setdefault(tag, {})["asked_again"] = arrived
        message = {"role": "assistant", "content": "Hello from the benchmark upstream."}
        return web.json_response(
            {**base, "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], **usage}
        )

    async def embeddings(request: web.Request) -> web.Response:
        body = await request.json()
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = []
        for i, text in enumerate(texts):
            vector = [0.0] * 64
            for word in str(text).lower().split():
                vector[int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1.0
            norm = sum(v * v for v in vector) ** 0.5 or 1.0
            data.append({"object": "embedding", "index": i, "embedding": [v / norm for v in vector]})
        return web.json_response({"object": "list", "data": data, "model": body["model"], "usage": {}})

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "bench-model", "object": "model"}]})

    async def get_gaps(request: web.Request) -> web.Response:
        return web.json_response(gaps)

    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/_gaps", get_gaps)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# ---- the run ------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code < 500:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def config(upstream_url: str) -> str:
    import yaml

    return yaml.safe_dump(
        {
            "upstreams": [{"name": "fast", "base_url": upstream_url, "models": ["bench-model"]}],
            "limits": {"user_requests_per_minute": 1_000_000, "user_tokens_per_hour": 10**12},
            "cache": {"enabled": False},
            "rag": {
                "embeddings": {"backend": "openai", "base_url": upstream_url, "model": "bench-hash"},
                "retrieval": {"job_poll_interval": 0.2},
            },
            "assistants": [
                {"name": "clock", "model": "bench-model", "tools": ["current_time"]},
                {
                    "name": "docs",
                    "model": "bench-model",
                    "collections": ["scifact"],
                    "retrieval": "tool",
                    "mode": "lexical",
                },
            ],
        }
    )


def load_docs(gw: str, n: int) -> None:
    import httpx

    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    cid = httpx.post(f"{gw}/api/v1/collections", json={"name": "scifact", "visibility": "admin"}, headers=auth).json()
    docs = [json.loads(line) for line, _ in zip(SCIFACT.open(), range(n), strict=False)]
    for start in range(0, len(docs), 100):
        files = [
            ("files", (f"{d['_id']}.md", f"# {d['title']}\n\n{d['text']}\n".encode()))
            for d in docs[start : start + 100]
        ]
        job = httpx.post(f"{gw}/api/v1/collections/{cid['id']}/documents", files=files, headers=auth, timeout=60).json()
        while (state := httpx.get(f"{gw}/api/v1/jobs/{job['job_id']}", headers=auth).json())["status"] not in (
            "done",
            "failed",
        ):
            time.sleep(0.2)
        assert state["status"] == "done", state


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(requests: int, docs: int) -> dict[str, Any]:
    import httpx

    tmp = Path(tempfile.mkdtemp(prefix="bench-tool-loop-"))
    up_port, gw_port = free_port(), free_port()
    procs = [subprocess.Popen([sys.executable, __file__, "--upstream", str(up_port)])]
    try:
        wait_http(f"http://127.0.0.1:{up_port}/v1/models")
        (tmp / "chatgate.yaml").write_text(config(f"http://127.0.0.1:{up_port}/v1"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGATE_")}
        env |= {"CHATGATE_DATA_DIR": str(tmp / "data"), "CHATGATE_ADMIN_KEY": ADMIN_KEY, "CHATGATE_LOG__FORMAT": "json"}
        chatgate = str(Path(sys.executable).with_name("chatgate"))
        with open(tmp / "gateway.log", "wb") as log:
            cmd = [chatgate, "serve", "--port", str(gw_port), "--workers", "1", "--config", str(tmp / "chatgate.yaml")]
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp))
        gw = f"http://127.0.0.1:{gw_port}"
        wait_http(gw + "/health")
        load_docs(gw, docs)
        auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
        figures: dict[str, Any] = {}
        with httpx.Client(base_url=gw, headers=auth, timeout=30) as client:
            for kind, model, tool in (
                ("plain", "bench-model", ""),
                ("clock", "clock", "current_time"),
                ("docs", "docs", "search_documents"),
            ):
                times: list[float] = []
                tags: list[str] = []
                for i in range(requests + requests // 10):  # the first tenth warms up
                    tag = f"{kind}-{i}"
                    body = {"model": model, "messages": [{"role": "user", "content": f"{tag} {tool}"}]}
                    started = time.perf_counter()
                    resp = client.post("/v1/chat/completions", json=body)
                    elapsed = time.perf_counter() - started
                    assert resp.status_code == 200, resp.text
                    if i >= requests // 10:
                        times.append(elapsed * 1000)
                        tags.append(tag)
                gaps = httpx.get(f"http://127.0.0.1:{up_port}/_gaps").json()
                steps = [
                    (gaps[t]["asked_again"] - gaps[t]["answered"]) / 1e6
                    for t in tags
                    if t in gaps and "answered" in gaps[t]
                ]
                figures[kind] = {
                    "e2e_p50_ms": round(statistics.median(times), 3),
                    "e2e_p95_ms": round(percentile(times, 0.95), 3),
                    **(
                        {
                            "step_p50_ms": round(statistics.median(steps), 3),
                            "step_p95_ms": round(percentile(steps, 0.95), 3),
                        }
                        if steps
                        else {}
                    ),
                }
        figures["search_p50_ms"] = round(figures["docs"]["step_p50_ms"] - figures["clock"]["step_p50_ms"], 3)
        figures["docs"]["step_excluding_search_p50_ms"] = figures["clock"]["step_p50_ms"]
        return {
            "requests": requests,
            "documents": docs,
            "machine": platform.platform(),
            "cpus": os.cpu_count(),
            **figures,
        }
    finally:
        for proc in reversed(procs):
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--docs", type=int, default=400)
    parser.add_argument("--quick", action="store_true", help="100 requests over 200 documents")
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        upstream(args.upstream)
        return
    requests, docs = (100, 200) if args.quick else (args.requests, args.docs)
    result = run(requests, docs)
    plain, clock, docs_ = result["plain"], result["clock"], result["docs"]
    print(f"one request at a time, {requests} of each kind; {result['documents']} SciFact documents (lexical search)")
    print(f"{'':28}{'e2e p50':>10}{'e2e p95':>10}{'step p50':>10}{'step p95':>10}   (ms)")
    for name, row in (("plain (no tools)", plain), ("loop: current_time", clock), ("loop: search_documents", docs_)):
        step50, step95 = row.get("step_p50_ms"), row.get("step_p95_ms")
        print(
            f"{name:28}{row['e2e_p50_ms']:>10.3f}{row['e2e_p95_ms']:>10.3f}"
            f"{step50 if step50 is not None else '-':>10}{step95 if step95 is not None else '-':>10}"
        )
    print(
        f"gateway's own time per tool step (current_time's step), p50: {clock['step_p50_ms']:.3f} ms "
        f"(target <= {TARGET_STEP_MS} ms)"
    )
    print(f"the search's own p50 (search step less current_time step): {result['search_p50_ms']:.3f} ms")
    print(
        f"a one-step loop costs {clock['e2e_p50_ms'] / plain['e2e_p50_ms']:.2f}x a plain request end to end "
        f"({clock['e2e_p50_ms'] - plain['e2e_p50_ms']:.3f} ms more: the step and the second upstream call)"
    )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"tool_loop-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"results: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
