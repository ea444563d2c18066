#!/usr/bin/env python3
"""Time to serve a response-cache hit, measured at the client on loopback.

    .venv/bin/python bench/cache_hit.py [--requests 2000] [--redis redis://127.0.0.1:6379/0]

Starts the fake upstream (``tests/fake_upstream.py``) and ``chatgate serve`` (1 worker, memory
cache, or Redis with ``--redis``), primes one deterministic request (``temperature: 0``), then sends
it ``--requests`` times, one after another over one keep-alive connection, and prints the latency
percentiles of the hits, next to the same client's misses (``use_cache: false``: the upstream
call) measured in the same run. Prints figures, never a verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
KEY = "cg-bench-admin-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the process exited")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer")


def percentiles(ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=100)
    return f"p50 {statistics.median(ms):.3f}  p90 {q[89]:.3f}  p99 {q[98]:.3f}  min {min(ms):.3f} ms"


class RawClient:
    """One keep-alive HTTP/1.1 connection over a plain socket: the client's own cost stays in the
    microseconds, so the figures are the server's (httpx adds ~0.5 ms per request)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.port = port
        self.buf = b""

    def post(self, path: str, body: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nx-api-key: {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.sock.sendall(head + body)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        raw_head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw_head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        length = int(headers[b"content-length"])
        while len(self.buf) < length:
            self.buf += self.sock.recv(65536)
        answer, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, answer

    def close(self) -> None:
        self.sock.close()


def timed(client: RawClient, body: dict[str, object], n: int, expect: str) -> list[float]:
    data = json.dumps(body).encode()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        status, headers, _ = client.post("/v1/chat/completions", data)
        out.append((time.perf_counter() - start) * 1000)
        if status != 200 or headers.get(b"x-cache") != expect.encode():
            raise SystemExit(f"unexpected answer: {status} x-cache={headers.get(b'x-cache')!r}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--redis", help="Redis URL: the cache on Redis instead of in memory")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="chatgate-cache-bench-") as tmp:
        up_port, gw_port = free_port(), free_port()
        fake = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "fake_upstream.py"), "--port", str(up_port), "--models", "m"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        cfg = Path(tmp) / "chatgate.yaml"
        lines = [
            f"upstreams: [{{name: f, base_url: 'http://127.0.0.1:{up_port}/v1', models: [m]}}]",
            "limits: {user_requests_per_minute: 1000000000, user_tokens_per_hour: 1000000000000}",
        ]
        if args.redis:
            lines += [f"redis_url: '{args.redis}'", f"cache: {{redis_prefix: 'bench:{os.getpid()}:'}}"]
        cfg.write_text("\n".join(lines) + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGATE_")}
        env.update(CHATGATE_ADMIN_KEY=KEY, CHATGATE_DATA_DIR=str(Path(tmp) / "data"), CHATGATE_LOG__LEVEL="warning")
        gw = subprocess.Popen(
            [str(BIN / "chatgate"), "serve", "--port", str(gw_port), "--config", str(cfg)],
            env=env,
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait(f"http://127.0.0.1:{up_port}/_stats/ping", fake)
            wait(f"http://127.0.0.1:{gw_port}/health", gw)
            body: dict[str, object] = {
                "model": "m",
                "temperature": 0,
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}],
            }
            client = RawClient(gw_port)
            try:
                timed(client, body, 1, "MISS")  # primes the cache
                timed(client, body, 200, "HIT")  # warm-up
                hits = timed(client, body, args.requests, "HIT")
                misses = timed(client, {**body, "use_cache": False}, max(200, args.requests // 4), "MISS")
            finally:
                client.close()
            backend = "redis" if args.redis else "memory"
            version = sys.version.split()[0]
            print(f"python {version}; chatgate serve, 1 worker, cache on {backend}; raw keep-alive socket")
            print(f"cache hit  ({len(hits)} sequential): {percentiles(hits)}")
            print(f"cache miss ({len(misses)}, upstream call): {percentiles(misses)}")
        finally:
            for proc in (gw, fake):
                proc.terminate()
                proc.wait(15)


if __name__ == "__main__":
    main()
