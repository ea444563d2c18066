#!/usr/bin/env python3
"""The ChatKit door's cost: ``threads.add_user_message`` streamed, beside ``/api/v1/chat`` streamed, in one run.

    .venv/bin/python bench/chatkit.py [--requests 400] [--rounds 2] [--quick]

Starts, as child processes in a temporary directory, an upstream that streams at once (aiohttp, in this file:
a role chunk, three content chunks, a finish chunk with usage, ``[DONE]``) and ``chatgate serve`` (one worker,
SQLite, access logs on). Each client (one at c=1, sixteen at c=16) has its own conversation: a chat-API session,
or a ChatKit thread, made before the clock starts; then each sends ``--requests`` messages in all, streamed,
keep-alive, reading each stream to its end. Both doors keep the history server-side and commit each turn before
the answer ends; ChatKit also writes its thread items (the user's message, the assistant's) straight to the store.

Reported per door and concurrency: requests/s, and time to first delta (request sent -> first text delta read:
``{"type": "delta"}`` on the chat API, ``assistant_message.content_part.text_delta`` on ChatKit), p50 and p95.
The doors alternate, ``--rounds`` times; the best round of each counts. Targets (shown, never a verdict):
ChatKit's requests/s at c=16 at least 0.5 of the chat API's; its time to first delta at c=1 at most 2 ms (p50)
over the chat API's. Results also go to ``bench/results/chatkit-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
ADMIN_KEY = "bench-chatkit-key"
TARGET_RPS_RATIO = 0.5
TARGET_TTFD_MS = 2.0


# ---- the upstream (run as a child: ``chatkit.py --upstream PORT``) -------------------------------------------


def upstream(port: int) -> None:
    from aiohttp import web

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        head = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": body["model"],
        }
        chunks: list[dict[str, Any]] = [{"index": 0, "delta": {"role": "assistant", "content": ""}}]
        chunks += [{"index": 0, "delta": {"content": word}} for word in ("Hello ", "from the ", "benchmark.")]
        chunks.append({"index": 0, "delta": {}, "finish_reason": "stop"})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for choice in chunks:
            await resp.write(b"data: " + json.dumps({**head, "choices": [choice]}).encode() + b"\n\n")
        usage = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
        await resp.write(b"data: " + json.dumps({**head, "choices": [], "usage": usage}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "bench-model", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# ---- the gateway -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@contextlib.contextmanager
def servers(tmp: Path) -> Any:
    import yaml

    up_port, gw_port = free_port(), free_port()
    procs = [subprocess.Popen([sys.executable, __file__, "--upstream", str(up_port)])]
    try:
        wait_http(f"http://127.0.0.1:{up_port}/v1/models")
        config = {
            "upstreams": [{"name": "bench", "base_url": f"http://127.0.0.1:{up_port}/v1"}],
            "sessions": {"default_model": "bench-model"},
            "chatkit": {"default_model": "bench-model"},
            "web": {"enabled": False},
            "limits": {"user_requests_per_minute": 10**9, "user_tokens_per_hour": 10**12},
        }
        (tmp / "chatgate.yaml").write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGATE_")}
        env |= {"CHATGATE_DATA_DIR": str(tmp / "data"), "CHATGATE_ADMIN_KEY": ADMIN_KEY, "CHATGATE_LOG__FORMAT": "json"}
        cli = str(Path(sys.executable).with_name("chatgate"))
        cmd = [cli, "serve", "--port", str(gw_port), "--workers", "1", "--config", str(tmp / "chatgate.yaml")]
        with open(tmp / "gateway.log", "wb") as log:
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp))
        wait_http(f"http://127.0.0.1:{gw_port}/health")
        yield f"http://127.0.0.1:{gw_port}"
    finally:
        for proc in reversed(procs):
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)


# ---- the clients -------------------------------------------------------------------------------------------

HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
CHAT_DELTA = b'"type":"delta"'
CHATKIT_DELTA = b'"assistant_message.content_part.text_delta"'


def chatkit_body(thread_id: str) -> bytes:
    content = [{"type": "input_text", "text": "How are you today?"}]
    params = {"thread_id": thread_id, "input": {"content": content, "attachments": [], "inference_options": {}}}
    return json.dumps({"type": "threads.add_user_message", "params": params}).encode()


def chat_body(session_id: str) -> bytes:
    return json.dumps({"message": "How are you today?", "session_id": session_id, "stream": True}).encode()


async def streamed(session: Any, url: str, body: bytes, marker: bytes) -> tuple[float | None, bytes]:
    """(seconds to the first delta, the whole stream)."""
    started = time.perf_counter()
    first: float | None = None
    out = bytearray()
    async with session.post(url, data=body, headers=HEADERS) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url}: {resp.status} {await resp.text()}")
        async for chunk in resp.content.iter_any():
            out += chunk
            if first is None and marker in out:
                first = time.perf_counter() - started
    return first, bytes(out)


async def conversation(session: Any, base: str, door: str) -> str:
    """A conversation to continue: a chat-API session, or a ChatKit thread (its first turn, untimed)."""
    if door == "chat":
        body = json.dumps({"message": "Hello", "stream": True}).encode()
        _, out = await streamed(session, base + "/api/v1/chat", body, CHAT_DELTA)
        done = [json.loads(line[6:]) for line in out.decode().splitlines() if line.startswith('data: {"type":"done"')]
        return str(done[0]["session_id"])
    content = [{"type": "input_text", "text": "Hello"}]
    body = json.dumps(
        {
            "type": "threads.create",
            "params": {"input": {"content": content, "attachments": [], "inference_options": {}}},
        }
    ).encode()
    _, out = await streamed(session, base + "/chatkit", body, CHATKIT_DELTA)
    first = json.loads(out.split(b"\n", 1)[0][6:])
    return str(first["thread"]["id"])


async def measure(base: str, door: str, concurrency: int, requests: int) -> dict[str, Any]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        ids = [await conversation(session, base, door) for _ in range(concurrency)]
        url, marker = (base + "/api/v1/chat", CHAT_DELTA) if door == "chat" else (base + "/chatkit", CHATKIT_DELTA)
        make = chat_body if door == "chat" else chatkit_body
        firsts: list[float] = []
        per_client = requests // concurrency

        async def client(conversation_id: str) -> None:
            body = make(conversation_id)
            for _ in range(per_client):
                first, out = await streamed(session, url, body, marker)
                if first is None or b'"error"' in out:
                    raise RuntimeError(f"{door}: no delta or an error: {out[-400:]!r}")
                firsts.append(first)

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in ids))
        elapsed = time.perf_counter() - started
    firsts.sort()
    return {
        "door": door,
        "concurrency": concurrency,
        "requests": per_client * concurrency,
        "rps": round(per_client * concurrency / elapsed, 1),
        "ttfd_p50_ms": round(statistics.median(firsts) * 1000, 3),
        "ttfd_p95_ms": round(firsts[int(len(firsts) * 0.95) - 1] * 1000, 3),
    }


async def run(base: str, requests: int, rounds: int) -> dict[tuple[str, int], dict[str, Any]]:
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for concurrency in (1, 16):
        await measure(base, "chat", concurrency, min(requests, 64))  # warm-up: both doors, this concurrency
        await measure(base, "chatkit", concurrency, min(requests, 64))
        for _ in range(rounds):
            for door in ("chat", "chatkit"):
                got = await measure(base, door, concurrency, requests)
                key = (door, concurrency)
                if key not in best or got["rps"] > best[key]["rps"]:
                    best[key] = got
                print(
                    f"  {door:8} c={concurrency:<3} {got['rps']:8.1f} req/s"
                    f"   first delta p50 {got['ttfd_p50_ms']:.2f} ms",
                    flush=True,
                )
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="100 requests, one round")
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        upstream(args.upstream)
        return
    requests, rounds = (96, 1) if args.quick else (args.requests, args.rounds)
    with tempfile.TemporaryDirectory(prefix="bench-chatkit-") as tmp, servers(Path(tmp)) as base:
        best = asyncio.run(run(base, requests, rounds))
    print(f"\n{'door':10}{'c':>4}{'req/s':>10}{'first delta p50':>18}{'p95':>10}")
    for (door, c), r in sorted(best.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"{door:10}{c:>4}{r['rps']:>10.1f}{r['ttfd_p50_ms']:>15.2f} ms{r['ttfd_p95_ms']:>7.2f} ms")
    ratio16 = best[("chatkit", 16)]["rps"] / best[("chat", 16)]["rps"]
    ratio1 = best[("chatkit", 1)]["rps"] / best[("chat", 1)]["rps"]
    added = best[("chatkit", 1)]["ttfd_p50_ms"] - best[("chat", 1)]["ttfd_p50_ms"]
    print(
        f"\nChatKit / chat API requests/s: c=1 {ratio1:.2f}, c=16 {ratio16:.2f} (target at c=16: >= {TARGET_RPS_RATIO})"
    )
    print(f"time to first delta added at c=1, p50: {added:+.2f} ms (target: <= {TARGET_TTFD_MS} ms)")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"chatkit-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "requests": requests,
                "rounds": rounds,
                "results": [best[k] for k in sorted(best)],
                "rps_ratio_c1": round(ratio1, 3),
                "rps_ratio_c16": round(ratio16, 3),
                "ttfd_added_ms_c1": round(added, 3),
            },
            indent=2,
        )
    )
    print(f"results: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
