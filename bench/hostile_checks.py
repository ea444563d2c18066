#!/usr/bin/env python3
"""What the hostile-input defences cost per request.

    .venv/bin/python bench/hostile_checks.py [--calls 50000] [--requests 20000]

1. ``check_chat`` (the shape and range checks of ``api/checks.py``) on three bodies: a one-line chat, an
   Open WebUI turn (10 messages, stream options, metadata) and a tool call turn (5 tools, tool calls,
   tool results, image parts). Baseline, measured in the same run: ``orjson.loads`` of the same bytes,
   which every request pays anyway. Prints p50 / mean in microseconds and the ratio to the parse.
2. The HTTP server: the same keep-alive connection served ``--requests`` times by uvicorn's
   ``HttpToolsProtocol`` and by ``LimitedHttpTools`` (head limits, ``api/httpserver.py``), each request a
   typical chat POST (12 headers) answered by a minimal ASGI app over a transport that discards what
   is written. Prints CPU microseconds per request (this process's CPU time, the best of 9 rounds,
   alternating the two so that drift hits both alike) for both and their ratio.

Figures only, never a verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import orjson  # noqa: E402
import uvicorn  # noqa: E402
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # noqa: E402
from uvicorn.server import ServerState  # noqa: E402

from chatgate.api.httpserver import GatewayConfig, HeadLimits, LimitedHttpTools  # noqa: E402
from chatgate.api.protocol import check_chat  # noqa: E402

SMALL = {"model": "fake-model", "temperature": 0.7, "messages": [{"role": "user", "content": "Hello there!"}]}
OWUI = {
    "model": "fake-model",
    "stream": True,
    "stream_options": {"include_usage": True},
    "metadata": {"user_id": "u-1", "chat_id": "c-1", "message_id": "m-1", "session_id": "s-1"},
    "messages": [{"role": "system", "content": "You are helpful."}]
    + [{"role": "user" if i % 2 else "assistant", "content": f"turn {i} " * 40} for i in range(9)],
}
TOOLS = {
    "model": "fake-model",
    "tools": [
        {
            "type": "function",
            "function": {
                "name": f"tool_{i}",
                "description": "Does a thing.",
                "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}},
            },
        }
        for i in range(5)
    ],
    "tool_choice": "auto",
    "messages": [
        {"role": "system", "content": "Use tools."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": f"c{i}", "type": "function", "function": {"name": f"tool_{i}", "arguments": '{"x": 1}'}}
                for i in range(3)
            ],
        },
        *({"role": "tool", "tool_call_id": f"c{i}", "content": "42"} for i in range(3)),
    ],
}


def timed(fn: Callable[[], Any], calls: int) -> list[float]:
    for _ in range(min(calls, 2000)):
        fn()
    out = []
    clock = time.perf_counter_ns
    for _ in range(calls):
        t0 = clock()
        fn()
        out.append((clock() - t0) / 1000)
    return out


def bench_checks(calls: int) -> None:
    print(f"check_chat, {calls} calls each (microseconds)")
    print(f"{'body':<10} {'bytes':>6} {'parse p50':>10} {'check p50':>10} {'check mean':>11} {'check/parse':>12}")
    for name, body in (("small", SMALL), ("owui", OWUI), ("tools", TOOLS)):
        raw = orjson.dumps(body)
        data = orjson.loads(raw)
        parse = timed(lambda raw=raw: orjson.loads(raw), calls)
        check = timed(lambda data=data: check_chat(data), calls)
        p50p, p50c = statistics.median(parse), statistics.median(check)
        print(
            f"{name:<10} {len(raw):>6} {p50p:>10.2f} {p50c:>10.2f} {statistics.fmean(check):>11.2f} "
            f"{p50c / p50p:>11.2f}x"
        )


BODY = b'{"model":"fake-model","temperature":0.7,"messages":[{"role":"user","content":"Hello there"}]}'
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: chatgate:8080\r\nUser-Agent: OpenAI/Python 1.40.0\r\n"
    b"Accept: application/json\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n"
    b"Authorization: Bearer cg-user-0123456789abcdefghijklmnopqrstuvwxyz0123\r\nContent-Type: application/json\r\n"
    b"X-Stainless-Lang: python\r\nX-Stainless-Package-Version: 1.40.0\r\nX-Stainless-Os: Linux\r\n"
    b"X-Request-Id: bench-0001\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


class Sink(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def write(self, data: Any) -> None:
        self.written += len(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def settle(state: ServerState) -> None:
    while state.tasks:
        await asyncio.wait(list(state.tasks))
        await asyncio.sleep(0)  # their done callbacks


async def serve_round(cls: type[HttpToolsProtocol], config: uvicorn.Config, requests: int) -> float:
    loop = asyncio.get_running_loop()
    state = ServerState()
    proto = cls(config, state, {}, _loop=loop)
    proto.connection_made(Sink())
    start = time.process_time()  # this process's CPU time: other processes on the machine do not count
    for _ in range(requests):
        proto.data_received(REQUEST)
        await settle(state)
    elapsed = time.process_time() - start
    proto.connection_lost(None)
    return elapsed / requests * 1e6


ROUNDS = 9


async def bench_server(requests: int) -> None:
    config = GatewayConfig(app, head_limits=HeadLimits(), lifespan="off", log_config=None, access_log=False)
    config.load()
    plain: list[float] = []
    limited: list[float] = []
    for _ in range(ROUNDS):
        plain.append(await serve_round(HttpToolsProtocol, config, requests))
        limited.append(await serve_round(LimitedHttpTools, config, requests))
    p, q = min(plain), min(limited)
    print(f"\nHTTP server, {requests} keep-alive requests x {ROUNDS} rounds (CPU microseconds per request, best round)")
    print(f"uvicorn HttpToolsProtocol {p:.2f}   LimitedHttpTools {q:.2f}   ratio {q / p:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, {platform.processor() or '?'}")
    bench_checks(args.calls)
    asyncio.run(bench_server(args.requests))


if __name__ == "__main__":
    main()
