#!/usr/bin/env python3
"""chatgate's overhead: chatgate vs a minimal Python pass-through vs the upstream itself.

    .venv/bin/python bench/overhead.py [--duration S] [--concurrency 1,16,64] [--workers 2] [--quick]

Starts, as child processes in a temporary directory:

- the upstream: nginx answering ``POST /v1/chat/completions`` with fixed content, on two ports
  ("json": a chat completion; "sse": a fixed event stream) -- as close to zero cost as it gets;
- the baseline: ``bench/baseline_passthrough.py`` (Starlette + aiohttp + orjson) under uvicorn,
  one instance, choosing the SSE upstream when the body has ``"stream": true``;
- chatgate: ``chatgate serve`` with access logs on (JSON, info level, written to a file).

Then drives each with ``wrk`` (non-streaming throughput and latency at each concurrency) and with
a small sequential keep-alive socket client (streaming time to first byte at concurrency 1), and
prints the figures and their ratios. It prints figures, never a verdict; the targets are shown for
reference. With ``--sessions`` a second chatgate (``cg-durable``, ``store.durability: every_turn``) is measured
in the same rounds, so that what committing every turn before its answer costs is read against writing it
behind, same run, same load. Results also go to ``bench/results/overhead-<timestamp>.json``.

Needs ``wrk`` and ``nginx`` (``make bench-deps``).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
VENV_BIN = ROOT / ".venv" / "bin"

ADMIN_KEY = "bench-key"
MODEL = "bench-model"  # routed by chatgate to the "json" nginx port
STREAM_MODEL = "bench-stream"  # routed by chatgate to the "sse" nginx port
ANSWER = "Hello from the benchmark upstream."
TARGETS = ("direct", "baseline", "chatgate")
DURABLE = "cg-durable"  # with --sessions: chatgate with store.durability every_turn (the default writes behind)

# Targets shown next to the figures (for reference only; nothing here passes or fails).
TARGET_RPS_RATIO = 0.60  # chatgate RPS / baseline RPS at c=64, at least
TARGET_ADDED_P50_MS = 0.5  # chatgate p50 - direct p50 at c=1, at most
TARGET_ADDED_TTFB_MS = 1.0  # chatgate TTFB p50 - direct TTFB p50, at most

# ---- fixed upstream content --------------------------------------------------------------------


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


COMPLETION = _compact(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
    }
)
MODELS = _compact({"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}]})


def _sse_body() -> str:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": STREAM_MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    events = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hello"}),
        chunk({"content": " from the"}),
        chunk({"content": " benchmark upstream."}),
        chunk({}, "stop"),
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": STREAM_MODEL,
            "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
        },
    ]
    return "".join(f"data: {_compact(e)}\n\n" for e in events) + "data: [DONE]\n\n"


SSE_BODY = _sse_body()


def chat_request(stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": STREAM_MODEL if stream else MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello."},
        ],
        "max_tokens": 16,
    }
    if stream:
        body["stream"] = True
    return _compact(body).encode()


# ---- child processes ---------------------------------------------------------------------------


class Child:
    """A child process in its own process group (so its workers go down with it), output to a file."""

    started: list[Child] = []  # every one ever started, for the clean-up

    def __init__(self, name: str, argv: list[str], *, log: Path, cwd: Path, env: dict[str, str] | None = None):
        self.name = name
        self.argv = argv
        self.log_path = log
        self._log = log.open("wb")
        self.popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pgid = self.popen.pid
        Child.started.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pgid, signal.SIGKILL)
                self.popen.wait(5)
        # Anything left in the group (a worker that outlived its master) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)
        self._log.close()

    def cpu_seconds(self) -> float:
        """User + system CPU time of every live process in the group."""
        ticks = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            if int(fields[2]) == self.pgid:
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def processes(self) -> int:
        n = 0
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    stat = Path(entry.path, "stat").read_text()
                except OSError:
                    continue
                n += int(stat[stat.rfind(")") + 2 :].split()[2]) == self.pgid
        return n

    def tail(self, lines: int = 25) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def system_cpu() -> list[int]:
    """The machine-wide CPU time counters (first line of /proc/stat)."""
    try:
        with open("/proc/stat") as fh:
            return [int(x) for x in fh.readline().split()[1:]]
    except OSError:
        return []


def cpu_split(before: list[int], after: list[int]) -> tuple[float, float]:
    """(busy %, steal %) of all CPUs between two ``system_cpu`` readings."""
    if len(before) < 8 or len(after) < 8:
        return float("nan"), float("nan")
    delta = [
        b - a for a, b in zip(before[:8], after[:8], strict=True)
    ]  # user nice system idle iowait irq softirq steal
    total = sum(delta) or 1
    return 100 * (total - delta[3] - delta[4]) / total, 100 * delta[7] / total


class SetupError(RuntimeError):
    pass


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def http_call(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 5.0
) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()


def wait_ready(child: Child, port: int, method: str, path: str, body: bytes | None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not child.alive():
            raise SetupError(f"{child.name} exited (code {child.popen.returncode}):\n{child.tail()}")
        try:
            status, _, data = http_call(port, method, path, body, timeout=2.0)
            if status == 200:
                return
            last = f"HTTP {status}: {data[:200]!r}"
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    raise SetupError(f"{child.name} not ready on port {port} after {timeout:.0f}s ({last}):\n{child.tail()}")


def nginx_quote(text: str) -> str:
    assert "$" not in text, "nginx would expand variables in the body"
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def nginx_config(tmp: Path, json_port: int, sse_port: int) -> str:
    def server(port: int, chat_type: str, chat_body: str) -> str:
        return f"""
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /v1/chat/completions {{
            default_type {chat_type};
            return 200 {nginx_quote(chat_body)};
        }}
        location = /v1/models {{
            default_type application/json;
            return 200 {nginx_quote(MODELS)};
        }}
        location / {{
            return 404;
        }}
    }}"""

    temp = {k: tmp / "nginx" / k for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    return f"""daemon off;
master_process on;
worker_processes 1;
error_log {tmp}/error.log warn;
pid {tmp}/nginx.pid;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    tcp_nodelay on;
{server(json_port, "application/json", COMPLETION)}
{server(sse_port, "text/event-stream", SSE_BODY)}
}}
"""


# ---- wrk -------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    target: str
    concurrency: int
    threads: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: dict[str, int]
    cpu_us_per_req: float | None = None
    machine_busy_pct: float = float("nan")  # all CPUs, everything on the machine, during the run
    steal_pct: float = float("nan")  # CPU time the hypervisor gave to others
    runs: int = 1
    rps_min: float | None = None
    rps_max: float | None = None
    raw: str = field(default="", repr=False)

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


def combine(runs: list[WrkResult]) -> WrkResult:
    """Several runs of one cell: medians of the figures, sums of the counts and errors."""
    if len(runs) == 1:
        return runs[0]

    def med(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    first = runs[0]
    sock: dict[str, int] = {}
    for r in runs:
        for k, v in r.socket_errors.items():
            sock[k] = sock.get(k, 0) + v
    return WrkResult(
        target=first.target,
        concurrency=first.concurrency,
        threads=first.threads,
        duration_s=sum(r.duration_s for r in runs),
        requests=sum(r.requests for r in runs),
        rps=statistics.median(r.rps for r in runs),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p75_ms=statistics.median(r.p75_ms for r in runs),
        p90_ms=statistics.median(r.p90_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        non_2xx=sum(r.non_2xx for r in runs),
        socket_errors=sock,
        cpu_us_per_req=med([r.cpu_us_per_req for r in runs]),
        machine_busy_pct=statistics.median(r.machine_busy_pct for r in runs),
        steal_pct=max(r.steal_pct for r in runs),
        runs=len(runs),
        rps_min=min(r.rps for r in runs),
        rps_max=max(r.rps for r in runs),
        raw="\n".join(r.raw for r in runs),
    )


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def wrk_lua(path: Path, body: bytes, sessions: bool = False) -> Path:
    """The request, the same bytes for every target. With ``sessions``: Open WebUI's identity headers
    (50 users, 1,000 conversations in rotation, a message id never sent before), so that chatgate resolves
    the user, loads or creates the session and persists every message (the bench's key, chatgate's
    bootstrap admin key, may forward identity); the other targets ignore the headers."""
    text = body.decode()
    assert "]==]" not in text
    script = (
        'wrk.method = "POST"\n'
        f"wrk.body = [==[{text}]==]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {ADMIN_KEY}"\n'
    )
    if sessions:
        script += (
            "local threads = 0\n"
            "function setup(thread)\n"
            "  threads = threads + 1\n"
            '  thread:set("tid", threads)\n'
            "end\n"
            "function init(args)\n"
            "  n = 0\n"
            '  run = tid .. "-" .. os.time() .. "-" .. math.random(1, 1000000)  -- message ids new in every run\n'
            "end\n"
            "request = function()\n"
            "  n = n + 1\n"
            '  wrk.headers["X-OpenWebUI-User-Id"] = "bench-user-" .. (n % 50)\n'
            '  wrk.headers["X-OpenWebUI-Chat-Id"] = "bench-chat-" .. (n % 1000)\n'
            '  wrk.headers["X-OpenWebUI-Message-Id"] = "bench-msg-" .. run .. "-" .. n\n'
            "  return wrk.format()\n"
            "end\n"
        )
    path.write_text(script)
    return path


def parse_wrk(out: str) -> dict[str, Any]:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    total = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h),", out, re.M)
    if not rps or not total:
        raise RuntimeError(f"could not parse wrk output:\n{out}")
    pct = {int(p): _ms(v, u) for p, v, u in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", out, re.M)}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(rps.group(1)),
        "requests": int(total.group(1)),
        "duration_s": _ms(total.group(2), total.group(3)) / 1e3,
        "p50_ms": pct.get(50, float("nan")),
        "p75_ms": pct.get(75, float("nan")),
        "p90_ms": pct.get(90, float("nan")),
        "p99_ms": pct.get(99, float("nan")),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()), strict=True))
        if sock
        else {},
    }


def run_wrk(wrk: str, url: str, lua: Path, conc: int, seconds: float) -> tuple[dict[str, Any], str, int]:
    threads = min(conc, 2)
    argv = [
        wrk,
        "-t",
        str(threads),
        "-c",
        str(conc),
        "-d",
        f"{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(lua),
        url,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {' '.join(argv)}\n{proc.stdout}\n{proc.stderr}")
    return parse_wrk(proc.stdout), proc.stdout, threads


# ---- streaming time to first byte ------------------------------------------------------------


class RawClient:
    """HTTP/1.1 over one keep-alive socket, timing the first body byte. The same code for every target."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.reconnects = 0

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def request(self, raw: bytes) -> tuple[int, dict[str, str], bytes, float, float]:
        """(status, headers, body, seconds to first body byte, seconds to last byte)."""
        if self.sock is None:
            self.sock = self._connect()
            self.reconnects += 1
        sock = self.sock
        perf = time.perf_counter
        t0 = perf()
        sock.sendall(raw)
        buf = bytearray()
        now = t0

        def more() -> None:
            nonlocal now
            data = sock.recv(65536)
            now = perf()
            if not data:
                raise ConnectionError("connection closed mid-response")
            buf.extend(data)

        while (end := buf.find(b"\r\n\r\n")) < 0:
            more()
        head = bytes(buf[:end]).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        pos = end + 4
        first: float | None = None
        body = bytearray()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                while (eol := buf.find(b"\r\n", pos)) < 0:
                    more()
                size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
                pos = eol + 2
                if size == 0:
                    while True:  # trailers, then the blank line
                        while (eol := buf.find(b"\r\n", pos)) < 0:
                            more()
                        blank = eol == pos
                        pos = eol + 2
                        if blank:
                            break
                    break
                if first is None:
                    if len(buf) <= pos:
                        more()
                    first = now
                while len(buf) < pos + size + 2:
                    more()
                body += buf[pos : pos + size]
                pos += size + 2
        else:
            length = int(headers.get("content-length", "0"))
            if length:
                if len(buf) <= pos:
                    more()
                first = now
                while len(buf) < pos + length:
                    more()
            body += buf[pos : pos + length]
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, bytes(body), (first if first is not None else now) - t0, now - t0


def http_request(port: int, body: bytes) -> bytes:
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nAuthorization: Bearer {ADMIN_KEY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def check_stream(status: int, headers: dict[str, str], body: bytes) -> str | None:
    if status != 200:
        return f"HTTP {status}: {body[:300]!r}"
    if not headers.get("content-type", "").startswith("text/event-stream"):
        return f"content-type {headers.get('content-type')!r}"
    if not body.endswith(b"data: [DONE]\n\n"):
        return f"stream does not end with [DONE]: {body[-200:]!r}"
    text = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in body.decode().split("\n")
        if line.startswith("data: {") and json.loads(line[6:]).get("choices")
    )
    if text != ANSWER:
        return f"streamed text {text!r}"
    return None


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def measure_ttfb(port: int, n: int, warmup: int) -> dict[str, Any]:
    import gc

    raw = http_request(port, chat_request(stream=True))
    client = RawClient(port)
    ttfb: list[float] = []
    total: list[float] = []
    bad: list[str] = []
    events = 0
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for i in range(warmup + n):
            status, headers, body, first, last = client.request(raw)
            problem = check_stream(status, headers, body)
            if problem:
                bad.append(problem)
                client.close()
                continue
            if i >= warmup:
                ttfb.append(first * 1e3)
                total.append(last * 1e3)
                events = body.count(b"data: ")
    finally:
        client.close()
        if gc_was:
            gc.enable()
    ttfb.sort()
    total.sort()
    return {
        "requests": len(ttfb),
        "errors": len(bad),
        "first_error": bad[0] if bad else None,
        "reconnects": client.reconnects - 1,
        "ttfb_p50_ms": percentile(ttfb, 50),
        "ttfb_p90_ms": percentile(ttfb, 90),
        "ttfb_p99_ms": percentile(ttfb, 99),
        "ttfb_min_ms": ttfb[0] if ttfb else float("nan"),
        "total_p50_ms": percentile(total, 50),
        "total_p99_ms": percentile(total, 99),
        "events": events,
    }


# ---- the run -----------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    port: int  # non-streaming
    stream_port: int
    child: Child

    def url(self, stream: bool) -> str:
        return f"http://127.0.0.1:{self.stream_port if stream else self.port}/v1/chat/completions"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check_json_target(t: Target) -> None:
    status, ctype, data = http_call(t.port, "POST", "/v1/chat/completions", chat_request(stream=False))
    if status != 200 or not ctype.startswith("application/json"):
        raise SetupError(f"{t.name}: non-streaming check got HTTP {status} {ctype}: {data[:300]!r}\n{t.child.tail()}")
    content = json.loads(data)["choices"][0]["message"]["content"]
    if content != ANSWER:
        raise SetupError(f"{t.name}: non-streaming check got content {content!r}")
    client = RawClient(t.stream_port)
    try:
        problem = check_stream(*client.request(http_request(t.stream_port, chat_request(stream=True)))[:3])
    finally:
        client.close()
    if problem:
        raise SetupError(f"{t.name}: streaming check failed: {problem}\n{t.child.tail()}")


def tool_version(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError as exc:
        return f"unavailable ({exc})"
    return (p.stdout + p.stderr).strip().splitlines()[0] if (p.stdout + p.stderr).strip() else "?"


def machine_info(python: str) -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "python": tool_version([python, "-VV"]),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
    }


def fmt(v: float | None, spec: str = ".2f") -> str:
    if v is None or v != v:  # None or NaN
        return "n/a"
    return format(v, spec)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, help="seconds per measurement (default 10; 3 with --quick)")
    p.add_argument("--concurrency", default="1,16,64", help="wrk connections, comma-separated (default 1,16,64)")
    p.add_argument(
        "--workers", type=int, default=2, help="server worker processes for baseline and chatgate (default 2)"
    )
    p.add_argument("--quick", action="store_true", help="short runs, for development")
    p.add_argument("--warmup", type=float, help="seconds of warm-up before each measurement (default 2; 1 quick)")
    p.add_argument(
        "--ttfb-requests", type=int, help="sequential streaming requests per target (default 1000; 300 quick)"
    )
    p.add_argument(
        "--repeat", type=int, default=1, help="rounds of the non-streaming matrix, interleaved; medians reported"
    )
    p.add_argument("--no-stream-rps", action="store_true", help="skip streaming throughput at the top concurrency")
    p.add_argument(
        "--no-limits", action="store_true", help="chatgate with rate limits and token counting off (default: on)"
    )
    p.add_argument(
        "--no-analytics",
        action="store_true",
        help="chatgate with request analytics and the response cache off (default: on)",
    )
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs) for inspection")
    p.add_argument(
        "--sessions",
        action="store_true",
        help="requests carry Open WebUI identity headers: chatgate resolves users and persists every message; "
        "also measures cg-durable (store.durability every_turn) against it",
    )
    args = p.parse_args(argv)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    args.ttfb_requests = args.ttfb_requests or (300 if args.quick else 1000)
    try:
        args.concurrency = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    except ValueError:
        p.error("--concurrency takes comma-separated integers")
    if args.repeat < 1 or args.workers < 1:
        p.error("--repeat and --workers need positive integers")
    if not args.concurrency or min(args.concurrency) < 1:
        p.error("--concurrency needs positive integers")
    return args


def start_all(tmp: Path, args: argparse.Namespace, python: str, chatgate: str, nginx: str) -> dict[str, Target]:
    json_port, sse_port, base_port, cg_port, durable_port = free_ports(5)
    children: dict[str, Target] = {}

    # nginx
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / "nginx" / d).mkdir(parents=True, exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_config(tmp, json_port, sse_port))
    argv = [nginx, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)]
    ngx = Child("nginx", argv, log=tmp / "nginx.out", cwd=tmp)
    children["direct"] = Target("direct", json_port, sse_port, ngx)
    wait_ready(ngx, json_port, "GET", "/v1/models", None, timeout=15)
    wait_ready(ngx, sse_port, "GET", "/v1/models", None, timeout=15)

    # baseline
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATGATE_", "BENCH_"))}
    env["BENCH_UPSTREAM"] = f"http://127.0.0.1:{json_port}/v1"
    env["BENCH_UPSTREAM_STREAM"] = f"http://127.0.0.1:{sse_port}/v1"
    argv = [
        python,
        "-m",
        "uvicorn",
        "bench.baseline_passthrough:app",
        "--workers",
        str(args.workers),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
        "--host",
        "127.0.0.1",
        "--port",
        str(base_port),
    ]
    base = Child("baseline", argv, log=tmp / "baseline.log", cwd=ROOT, env=env)
    children["baseline"] = Target("baseline", base_port, base_port, base)

    # chatgate
    (tmp / "chatgate.yaml").write_text(
        "upstreams:\n"
        f"  - {{name: json, base_url: 'http://127.0.0.1:{json_port}/v1', models: [{MODEL}]}}\n"
        f"  - {{name: sse, base_url: 'http://127.0.0.1:{sse_port}/v1', models: [{STREAM_MODEL}]}}\n"
        # Limits on (every request is counted and checked) but high enough never to refuse the load.
        f"limits: {{enabled: {'false' if args.no_limits else 'true'}, user_requests_per_minute: 1000000000, "
        "user_tokens_per_hour: 1000000000000}\n"
        + ("analytics: {enabled: false}\ncache: {enabled: false}\n" if args.no_analytics else "")
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATGATE_", "BENCH_"))}
    env.update(
        CHATGATE_ADMIN_KEY=ADMIN_KEY,
        CHATGATE_DATA_DIR=str(tmp / "data"),
        CHATGATE_LOG__FORMAT="json",
        CHATGATE_LOG__LEVEL="info",
        CHATGATE_LOCAL__ENABLED="never",
    )
    argv = [
        chatgate,
        "serve",
        "--port",
        str(cg_port),
        "--workers",
        str(args.workers),
        "--config",
        str(tmp / "chatgate.yaml"),
    ]
    # cwd is the temp dir, so no stray ./.env is read.
    cg = Child("chatgate", argv, log=tmp / "chatgate.log", cwd=tmp, env=env)
    children["chatgate"] = Target("chatgate", cg_port, cg_port, cg)
    if args.sessions:  # the same, every turn committed before its answer: the cost of durability, same run
        durable_argv = [*argv[:3], str(durable_port), *argv[4:]]
        durable_env = {
            **env,
            "CHATGATE_DATA_DIR": str(tmp / "data-durable"),
            "CHATGATE_STORE__DURABILITY": "every_turn",
        }
        dur = Child(DURABLE, durable_argv, log=tmp / "chatgate-durable.log", cwd=tmp, env=durable_env)
        children[DURABLE] = Target(DURABLE, durable_port, durable_port, dur)

    wait_ready(base, base_port, "POST", "/v1/chat/completions", chat_request(stream=False))
    wait_ready(cg, cg_port, "GET", "/health", None)
    if args.sessions:
        wait_ready(children[DURABLE].child, durable_port, "GET", "/health", None)
    for t in children.values():
        check_json_target(t)
    return children


def run(args: argparse.Namespace, tmp: Path, report: dict[str, Any]) -> None:
    python = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
    chatgate = str(VENV_BIN / "chatgate") if (VENV_BIN / "chatgate").exists() else shutil.which("chatgate")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    wrk = shutil.which("wrk")
    if not wrk or not Path(nginx).exists() or not chatgate:
        raise SetupError("needs wrk, nginx and chatgate: run `make install bench-deps`")
    report["machine"] = machine_info(python)
    report["versions"] = {
        "chatgate": tool_version([chatgate, "version"]),
        "nginx": tool_version([nginx, "-v"]),
        "wrk": tool_version([wrk, "-v"]),
    }

    log(f"starting nginx, baseline and chatgate in {tmp} ...")
    targets = start_all(tmp, args, python, chatgate, nginx)
    report["processes"] = {
        name: {"argv": t.child.argv, "processes": t.child.processes()} for name, t in targets.items()
    }
    report["baseline_mode"] = "one instance; upstream chosen by body['stream'] is True (orjson.loads)"
    log("all up; each answered one non-streaming and one streaming request correctly\n")

    lua_json = wrk_lua(tmp / "chat.lua", chat_request(stream=False), sessions=args.sessions)
    lua_sse = wrk_lua(tmp / "chat-stream.lua", chat_request(stream=True), sessions=args.sessions)

    def measure(t: Target, conc: int, stream: bool) -> WrkResult:
        lua = lua_sse if stream else lua_json
        if args.warmup > 0:
            run_wrk(wrk, t.url(stream), lua, conc, args.warmup)
        cpu0, sys0 = t.child.cpu_seconds(), system_cpu()
        parsed, raw, threads = run_wrk(wrk, t.url(stream), lua, conc, args.duration)
        cpu, machine = t.child.cpu_seconds() - cpu0, cpu_split(sys0, system_cpu())
        if not t.child.alive():
            raise SetupError(f"{t.name} died during the run (code {t.child.popen.returncode}):\n{t.child.tail()}")
        r = WrkResult(target=t.name, concurrency=conc, threads=threads, raw=raw, **parsed)
        r.cpu_us_per_req = cpu / r.requests * 1e6 if r.requests else None
        r.machine_busy_pct, r.steal_pct = machine
        flag = f"   !!! {r.non_2xx} non-2xx, socket errors {r.socket_errors}" if r.errors else ""
        log(
            f"  {'stream ' if stream else ''}c={conc:<3} {t.name:<9} {r.rps:>9.0f} req/s  p50 {r.p50_ms:7.3f} ms"
            f"  p99 {r.p99_ms:7.3f} ms  cpu {fmt(r.cpu_us_per_req, '.0f')} us/req"
            f"  (machine busy {r.machine_busy_pct:.0f}%, steal {r.steal_pct:.1f}%){flag}"
        )
        return r

    names = (*TARGETS, DURABLE) if args.sessions else TARGETS
    log("non-streaming (wrk):")
    every: list[WrkResult] = []
    for round_ in range(args.repeat):
        if args.repeat > 1:
            log(f" round {round_ + 1} of {args.repeat}")
        for conc in args.concurrency:
            for name in names:
                every.append(measure(targets[name], conc, stream=False))
    rows = [
        combine([r for r in every if r.target == name and r.concurrency == conc])
        for conc in args.concurrency
        for name in names
    ]
    report["non_streaming"] = [asdict(r) for r in rows]
    if args.repeat > 1:
        report["non_streaming_runs"] = [asdict(r) for r in every]

    stream_rows: list[WrkResult] = []
    if not args.no_stream_rps:
        top = max(args.concurrency)
        log(f"streaming throughput (wrk, c={top}):")
        for name in names:
            stream_rows.append(measure(targets[name], top, stream=True))
    report["streaming_throughput"] = [asdict(r) for r in stream_rows]

    log(f"streaming time to first byte (c=1, {args.ttfb_requests} sequential requests each):")
    ttfb: dict[str, dict[str, Any]] = {}
    for name in TARGETS:
        t = targets[name]
        ttfb[name] = measure_ttfb(t.stream_port, args.ttfb_requests, warmup=max(20, args.ttfb_requests // 10))
        m = ttfb[name]
        log(
            f"  {name:<9} TTFB p50 {m['ttfb_p50_ms']:.3f} ms  p99 {m['ttfb_p99_ms']:.3f} ms"
            + (f"   !!! {m['errors']} errors: {m['first_error']}" if m["errors"] else "")
        )
    report["streaming_ttfb"] = ttfb

    access_lines = sum(1 for line in (tmp / "chatgate.log").open("rb") if b'"chatgate.access"' in line)
    report["chatgate_access_log_lines"] = access_lines
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    report["summary"] = summarise(rows, stream_rows, ttfb, args)
    print_report(report, rows, stream_rows, ttfb, args)


def _row(rows: list[WrkResult], target: str, conc: int) -> WrkResult | None:
    return next((r for r in rows if r.target == target and r.concurrency == conc), None)


def durability_cost(durable: WrkResult, behind: WrkResult) -> dict[str, Any]:
    """Every turn committed before its answer against the same turns written behind (the same run)."""
    return {
        "durable_over_write_behind_rps": durable.rps / behind.rps if behind.rps else None,
        "durable_added_p50_ms": durable.p50_ms - behind.p50_ms,
        "durable_added_p99_ms": durable.p99_ms - behind.p99_ms,
        "durable_minus_write_behind_cpu_us_per_req": (durable.cpu_us_per_req or 0) - (behind.cpu_us_per_req or 0),
    }


def summarise(
    rows: list[WrkResult], stream_rows: list[WrkResult], ttfb: dict[str, dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    out: dict[str, Any] = {"per_concurrency": {}}
    for conc in args.concurrency:
        d, b, c = (_row(rows, t, conc) for t in TARGETS)
        assert d and b and c
        out["per_concurrency"][str(conc)] = {
            "chatgate_over_baseline_rps": c.rps / b.rps if b.rps else None,
            "chatgate_over_direct_rps": c.rps / d.rps if d.rps else None,
            "baseline_over_direct_rps": b.rps / d.rps if d.rps else None,
            "chatgate_added_p50_ms": c.p50_ms - d.p50_ms,
            "baseline_added_p50_ms": b.p50_ms - d.p50_ms,
            "chatgate_added_p99_ms": c.p99_ms - d.p99_ms,
            "baseline_added_p99_ms": b.p99_ms - d.p99_ms,
            "chatgate_minus_baseline_cpu_us_per_req": (c.cpu_us_per_req or 0) - (b.cpu_us_per_req or 0),
        }
        if (durable := _row(rows, DURABLE, conc)) is not None:
            out["per_concurrency"][str(conc)].update(durability_cost(durable, c))
    hi, lo = str(max(args.concurrency)), str(min(args.concurrency))
    out["headline"] = {
        "rps_ratio_concurrency": int(hi),
        "chatgate_over_baseline_rps": out["per_concurrency"][hi]["chatgate_over_baseline_rps"],
        "rps_ratio_target_min": TARGET_RPS_RATIO,
        "added_p50_concurrency": int(lo),
        "chatgate_added_p50_ms": out["per_concurrency"][lo]["chatgate_added_p50_ms"],
        "baseline_added_p50_ms": out["per_concurrency"][lo]["baseline_added_p50_ms"],
        "added_p50_target_max_ms": TARGET_ADDED_P50_MS,
        "chatgate_added_ttfb_p50_ms": ttfb["chatgate"]["ttfb_p50_ms"] - ttfb["direct"]["ttfb_p50_ms"],
        "baseline_added_ttfb_p50_ms": ttfb["baseline"]["ttfb_p50_ms"] - ttfb["direct"]["ttfb_p50_ms"],
        "added_ttfb_target_max_ms": TARGET_ADDED_TTFB_MS,
    }
    if stream_rows:
        b, c = _row(stream_rows, "baseline", int(hi)), _row(stream_rows, "chatgate", int(hi))
        out["headline"]["stream_chatgate_over_baseline_rps"] = c.rps / b.rps if b and c and b.rps else None
        durable = _row(stream_rows, DURABLE, int(hi))
        if durable is not None and c is not None:
            out["stream_durability"] = durability_cost(durable, c)
    errors = [
        f"{r.target} c={r.concurrency}{' stream' if r in stream_rows else ''}: {r.non_2xx} non-2xx, "
        f"socket errors {r.socket_errors}"
        for r in [*rows, *stream_rows]
        if r.errors
    ]
    errors += [f"{k} TTFB: {v['errors']} bad responses ({v['first_error']})" for k, v in ttfb.items() if v["errors"]]
    out["errors"] = errors
    return out


def print_report(
    report: dict[str, Any],
    rows: list[WrkResult],
    stream_rows: list[WrkResult],
    ttfb: dict[str, dict[str, Any]],
    args: argparse.Namespace,
) -> None:
    m, s = report["machine"], report["summary"]
    h = s["headline"]
    out: list[str] = []
    w = out.append
    w("")
    w("=" * 100)
    w("chatgate overhead benchmark")
    w("=" * 100)
    w(f"command:   {report['command']}")
    w(f"started:   {report['started']}")
    w(f"machine:   nproc={m['nproc']} (usable {m['cpus_usable']}), {m['cpu']}")
    w(f"           {m['python']}; {m['platform']}")
    w(
        f"load avg:  start {' '.join(f'{x:.2f}' for x in m['loadavg_start'])}, "
        f"end {' '.join(f'{x:.2f}' for x in m['loadavg_end'])}  (1/5/15 min; others on the machine skew figures)"
    )
    steals = [(r.target, r.concurrency, r.steal_pct) for r in [*rows, *stream_rows] if r.steal_pct == r.steal_pct]
    worst = max(steals, key=lambda x: x[2], default=None)
    if worst is not None:
        w(
            f"CPU steal: worst {worst[2]:.1f}% ({worst[0]} c={worst[1]})"
            + ("   !!! the hypervisor took CPU time: figures are noisy" if worst[2] >= 5 else "")
        )
    v = report["versions"]
    w(f"versions:  {v['chatgate']}; {v['nginx']}; {v['wrk']}")
    w(
        f"settings:  {args.duration:g}s per measurement after {args.warmup:g}s warm-up, {args.repeat} round(s); "
        f"wrk threads = min(c, 2); server workers {args.workers}; nginx 1 worker"
    )
    w("targets:   direct   = nginx, fixed answers (JSON port / SSE port)")
    w(
        f"           baseline = bench/baseline_passthrough.py under uvicorn, {args.workers} workers; one instance, "
        "SSE upstream when body has stream: true"
    )
    w(
        f"           chatgate = chatgate serve, {args.workers} workers, API key auth, JSON access log at info "
        f"({report['chatgate_access_log_lines']} access-log lines written)"
        + (
            ", Open WebUI identity headers: users resolved, sessions kept, every message persisted (SQLite)"
            if report["settings"].get("sessions")
            else ""
        )
        + (
            ", rate limits on (prompt counted, limits checked and reconciled per request; memory backend)"
            if report["settings"].get("limits", True)
            else ", rate limits off"
        )
        + (
            ", analytics and response cache on"
            if report["settings"].get("analytics", True)
            else ", analytics and response cache off"
        )
    )

    if s["errors"]:
        w("")
        w("!" * 100)
        w("!!! ERRORS: these measurements had failed requests; their figures do not measure what they claim:")
        for e in s["errors"]:
            w(f"!!!   {e}")
        w("!" * 100)

    w("")
    several = args.repeat > 1
    w(
        "Non-streaming POST /v1/chat/completions (wrk --latency)"
        + (f"; medians of {args.repeat} interleaved rounds" if several else "")
    )
    w(
        f"{'conc':>5}  {'target':<9} {'req/s':>9} {'p50 ms':>8} {'p75 ms':>8} {'p90 ms':>8} {'p99 ms':>8}"
        f" {'CPU us/req':>10} {'busy%':>5} {'errors':>7}" + (f" {'req/s min-max':>15}" if several else "")
    )
    for conc in args.concurrency:
        for r in (x for x in rows if x.concurrency == conc):
            spread = f" {fmt(r.rps_min, '.0f'):>7}-{fmt(r.rps_max, '.0f'):<7}" if several else ""
            w(
                f"{conc:>5}  {r.target:<9} {r.rps:>9.0f} {r.p50_ms:>8.3f} {r.p75_ms:>8.3f} {r.p90_ms:>8.3f}"
                f" {r.p99_ms:>8.3f} {fmt(r.cpu_us_per_req, '.0f'):>10} {fmt(r.machine_busy_pct, '.0f'):>5}"
                f" {r.errors:>7}{spread}" + ("  <-- !!!" if r.errors else "")
            )
    w("  (CPU us/req: CPU time of the target's own processes per request, not counting nginx or wrk;")
    w("   busy%: all CPUs of the machine during the run -- wrk, nginx and the target share them)")

    w("")
    w("Ratios and added latency (added = target p50/p99 - direct p50/p99)")
    w(
        f"{'conc':>5}  {'cg/base RPS':>11} {'cg/direct':>9} {'base/direct':>11} {'cg +p50 ms':>10} {'base +p50':>9}"
        f" {'cg +p99 ms':>10} {'base +p99':>9} {'cg-base CPU us':>14}"
    )
    for conc in args.concurrency:
        p = s["per_concurrency"][str(conc)]
        w(
            f"{conc:>5}  {fmt(p['chatgate_over_baseline_rps']):>11} {fmt(p['chatgate_over_direct_rps']):>9}"
            f" {fmt(p['baseline_over_direct_rps']):>11} {p['chatgate_added_p50_ms']:>+10.3f}"
            f" {p['baseline_added_p50_ms']:>+9.3f} {p['chatgate_added_p99_ms']:>+10.3f}"
            f" {p['baseline_added_p99_ms']:>+9.3f} {p['chatgate_minus_baseline_cpu_us_per_req']:>+14.0f}"
        )

    if args.sessions:
        w("")
        w(
            f"Durable turns: {DURABLE} = chatgate with store.durability every_turn (each answer waits for the commit"
            " of its turn) against chatgate writing behind (the default for this door)"
        )
        w(f"{'conc':>5}  {'durable/behind RPS':>18} {'+p50 ms':>8} {'+p99 ms':>8} {'+CPU us/req':>11}")
        for conc in args.concurrency:
            p = s["per_concurrency"][str(conc)]
            w(
                f"{conc:>5}  {fmt(p.get('durable_over_write_behind_rps')):>18} {p['durable_added_p50_ms']:>+8.3f}"
                f" {p['durable_added_p99_ms']:>+8.3f} {p['durable_minus_write_behind_cpu_us_per_req']:>+11.0f}"
            )
        if "stream_durability" in s:
            p = s["stream_durability"]
            w(
                f"{'stream':>5}  {fmt(p['durable_over_write_behind_rps']):>18} {p['durable_added_p50_ms']:>+8.3f}"
                f" {p['durable_added_p99_ms']:>+8.3f} {p['durable_minus_write_behind_cpu_us_per_req']:>+11.0f}"
                f"   (c={max(args.concurrency)})"
            )

    if stream_rows:
        w("")
        w(f"Streaming throughput, POST with stream: true, c={max(args.concurrency)} (wrk; extra, no target)")
        w(f"{'target':<9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>10} {'errors':>7}")
        for r in stream_rows:
            w(
                f"{r.target:<9} {r.rps:>9.0f} {r.p50_ms:>8.3f} {r.p99_ms:>8.3f} {fmt(r.cpu_us_per_req, '.0f'):>10}"
                f" {r.errors:>7}{'  <-- !!!' if r.errors else ''}"
            )

    w("")
    w(
        f"Streaming time to first body byte, c=1, {args.ttfb_requests} sequential keep-alive requests per target"
        " (same raw-socket client for all)"
    )
    w(
        f"{'target':<9} {'TTFB p50':>9} {'p90':>7} {'p99':>7} {'min':>7} {'full p50':>9} {'full p99':>9}"
        f" {'events':>6} {'errors':>6}   (ms)"
    )
    for name in TARGETS:
        t = ttfb[name]
        w(
            f"{name:<9} {t['ttfb_p50_ms']:>9.3f} {t['ttfb_p90_ms']:>7.3f} {t['ttfb_p99_ms']:>7.3f}"
            f" {t['ttfb_min_ms']:>7.3f}"
            f" {t['total_p50_ms']:>9.3f} {t['total_p99_ms']:>9.3f} {t['events']:>6} {t['errors']:>6}"
            f"{'  <-- !!!' if t['errors'] else ''}"
        )
    w("  (events: data: lines seen; chatgate drops the upstream's usage-only chunk unless the client asks for it)")

    w("")
    w("Headline figures (targets for reference)")
    w(
        f"  chatgate RPS / baseline RPS at c={h['rps_ratio_concurrency']}: "
        f"{fmt(h['chatgate_over_baseline_rps'])}   (target >= {TARGET_RPS_RATIO:.2f})"
    )
    w(
        f"  added p50 over direct at c={h['added_p50_concurrency']}: chatgate {h['chatgate_added_p50_ms']:+.3f} ms"
        f"   (target <= {TARGET_ADDED_P50_MS} ms); baseline {h['baseline_added_p50_ms']:+.3f} ms"
    )
    w(
        f"  added streaming TTFB p50 over direct: chatgate {h['chatgate_added_ttfb_p50_ms']:+.3f} ms"
        f"   (target <= {TARGET_ADDED_TTFB_MS} ms); baseline {h['baseline_added_ttfb_p50_ms']:+.3f} ms"
    )
    if "stream_chatgate_over_baseline_rps" in h:
        w(
            f"  streaming chatgate RPS / baseline RPS at c={h['rps_ratio_concurrency']}: "
            f"{fmt(h['stream_chatgate_over_baseline_rps'])}   (no target)"
        )
    if 64 not in args.concurrency or 1 not in args.concurrency:
        w("  (the targets are stated for c=64 and c=1; these figures use the highest and lowest concurrency run)")
    if s["errors"]:
        w(f"  !!! {len(s['errors'])} measurement(s) had errors, some of these figures may be among them:")
        w("  !!! see the ERRORS block above")
    w(f"results:   {report['results_file']}")
    w("=" * 100)
    print("\n".join(out), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.strftime("%Y%m%d-%H%M%S")
    report: dict[str, Any] = {
        "command": shlex.join(sys.orig_argv),
        "python": sys.executable,
        "cwd": os.getcwd(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency,
            "workers": args.workers,
            "quick": args.quick,
            "ttfb_requests": args.ttfb_requests,
            "repeat": args.repeat,
            "sessions": args.sessions,
            "limits": not args.no_limits,
            "analytics": not args.no_analytics,
        },
        "results_file": str(RESULTS_DIR / f"overhead-{started}.json"),
    }

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    tmp = Path(tempfile.mkdtemp(prefix="chatgate-bench-"))
    code = 0
    try:
        run(args, tmp, report)
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        Path(report["results_file"]).write_text(json.dumps(report, indent=2, default=str) + "\n")
    except KeyboardInterrupt:
        log("\ninterrupted; stopping the servers")
        code = 130
    except SetupError as exc:
        log(f"\nsetup failed: {exc}")
        code = 2
    except BaseException:
        code = 1  # the traceback follows; keep the logs for it
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the clean-up
        for child in reversed(Child.started):
            child.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if args.keep_tmp or code in (1, 2):
            log(f"temp dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
