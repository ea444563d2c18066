#!/usr/bin/env python3
"""Memory under a long run: chatgate's resident memory per worker while it serves a steady load for a long time.

    .venv/bin/python bench/soak.py [--minutes 30] [--concurrency 32] [--workers 2] [--warmup-minutes N]

Starts, as child processes in a temporary directory, the fixed-answer upstream of ``bench/overhead.py`` (nginx:
as close to zero cost as it gets, so the CPU goes to chatgate) and ``chatgate serve`` (``--workers``, SQLite,
JSON access log, limits, analytics and the response cache on, their defaults otherwise). Then two ``wrk`` runs
side by side for ``--minutes``, ``--concurrency`` connections between them, every request with sessions on and
over bounded sets, so that every cache fills and then turns over:

- the OpenAI door, half the connections: Open WebUI identity headers (50 users, 2,000 conversations: twice
  ``sessions.cache_size``, a message id never sent before), a deterministic request (temperature 0) with one of
  20,000 questions (twice ``cache.max_entries``): the session LRU and the response cache fill, then evict;
- the chat API, the other half: 200 conversations made before the run, turns sent to them in rotation (each
  turn read through the store with its last turns of history, and committed before its answer).

Every cache is bounded by its setting (``--cache-entries``: ``cache.max_entries``; ``--count-cache``:
``tokens.cache_size``, which every new chat-API message adds to): a short run lowers both so that they fill
within its warm-up. Every ``--sample`` seconds it reads the resident memory (``VmRSS``) of ``chatgate serve``
and of each worker.
The figure: each worker's growth from the end of warm-up (``--warmup-minutes``, default a quarter of the run,
when every cache is full; medians of three samples at each end) to the end of the run (the target: at most 5%).
It also prints the request count, errors and the caches' fill (``/admin/metrics`` of each worker) at warm-up's
end and at the end. It prints figures, never a verdict; results also go to ``bench/results/soak-<timestamp>.json``.

Needs ``wrk`` and ``nginx`` (``make bench-deps``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: bench/ is a package here
from bench.overhead import (
    ADMIN_KEY,
    MODEL,
    RESULTS_DIR,
    VENV_BIN,
    Child,
    SetupError,
    free_ports,
    log,
    machine_info,
    nginx_config,
    parse_wrk,
    wait_ready,
)

USERS, CHATS, API_SESSIONS = 50, 2000, 200  # questions: twice --cache-entries


def openai_lua(path: Path, questions: int) -> Path:
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {ADMIN_KEY}"\n'
        "local threads = 0\n"
        "function setup(thread)\n"
        "  threads = threads + 1\n"
        '  thread:set("tid", threads)\n'
        "end\n"
        "function init(args)\n"
        "  n = 0\n"
        '  run = tid .. "-" .. os.time() .. "-" .. math.random(1, 1000000)\n'
        "end\n"
        "request = function()\n"
        "  n = n + 1\n"
        f'  wrk.headers["X-OpenWebUI-User-Id"] = "soak-user-" .. (n % {USERS})\n'
        f'  wrk.headers["X-OpenWebUI-Chat-Id"] = "soak-chat-" .. tid .. "-" .. (n % {CHATS})\n'
        '  wrk.headers["X-OpenWebUI-Message-Id"] = "soak-msg-" .. run .. "-" .. n\n'
        f"  local q = math.random(1, {questions})\n"
        f'  local body = \'{{"model": "{MODEL}", "temperature": 0, "max_tokens": 16, "messages": \' ..\n'
        '    \'[{"role": "user", "content": "question number \' .. q .. \'"}]}\'\n'
        "  return wrk.format(nil, nil, nil, body)\n"
        "end\n"
    )
    return path


def chat_api_lua(path: Path, sessions: list[str]) -> Path:
    ids = ", ".join(f'"{s}"' for s in sessions)
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {ADMIN_KEY}"\n'
        f"local sessions = {{{ids}}}\n"
        "local threads = 0\n"
        "function setup(thread)\n"
        "  threads = threads + 1\n"
        '  thread:set("tid", threads)\n'
        "end\n"
        "function init(args)\n"
        "  n = tid * 7919\n"
        "end\n"
        "request = function()\n"
        "  n = n + 1\n"
        "  local sid = sessions[(n % #sessions) + 1]\n"
        f'  local body = \'{{"model": "{MODEL}", "session_id": "\' .. sid .. \'", "message": "turn \' .. n .. \'"}}\'\n'
        "  return wrk.format(nil, nil, nil, body)\n"
        "end\n"
    )
    return path


def call(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json", "Connection": "close"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def group_pids(pgid: int) -> list[int]:
    """The live processes of ``chatgate serve``'s process group (the server and its workers), oldest first."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2 :].split()[2]) == pgid:
                pids.append(int(entry.name))
    return sorted(pids)


def role(pid: int, server: int) -> str:
    """``server`` (``chatgate serve``), ``worker`` or ``helper`` (multiprocessing's resource tracker)."""
    if pid == server:
        return "server"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "gone"
    return "helper" if b"resource_tracker" in argv else "worker"


def workers_state(port: int, workers: int) -> dict[int, dict[str, Any]]:
    """Each worker's hot sessions and cache fill (``/admin/metrics`` answers for the worker that took the
    connection: asked on new connections until each has answered)."""
    seen: dict[int, dict[str, Any]] = {}
    for _ in range(200):
        snap = call(port, "GET", "/admin/metrics")
        seen[snap["pid"]] = {
            "sessions_hot": snap["sessions"]["active"],
            "sessions_evicted": snap["sessions"]["evicted"],
            "cache_entries": snap["cache"].get("total"),
            "cache_evictions": snap["cache"].get("evictions"),
            "cache_hit_rate": snap["cache"].get("hit_rate"),
            "counts_cached": snap["tokens"].get("size"),
            "counts_evicted": snap["tokens"].get("evictions"),
        }
        if len(seen) >= workers:
            break
    return seen


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="length of the run (default 30)")
    p.add_argument("--warmup-minutes", type=float, help="warm-up before the growth is measured (default: a quarter)")
    p.add_argument("--concurrency", type=int, default=32, help="connections, split over the two doors (default 32)")
    p.add_argument("--workers", type=int, default=2, help="chatgate worker processes (default 2)")
    p.add_argument(
        "--cache-entries",
        type=int,
        default=10_000,
        help="cache.max_entries (default 10,000, chatgate's); the questions asked are twice as many",
    )
    p.add_argument(
        "--count-cache",
        type=int,
        default=50_000,
        help="tokens.cache_size, token counts kept (default 50,000, chatgate's; every chat-API turn adds one)",
    )
    p.add_argument("--sample", type=float, default=10.0, help="seconds between RSS samples (default 10)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs) for inspection")
    args = p.parse_args(argv)
    if args.warmup_minutes is None:
        args.warmup_minutes = args.minutes / 4
    if not 0 <= args.warmup_minutes < args.minutes or args.concurrency < 2 or args.workers < 1:
        p.error("needs 0 <= --warmup-minutes < --minutes, --concurrency >= 2, --workers >= 1")
    return args


def start(tmp: Path, args: argparse.Namespace, chatgate: str, nginx: str) -> tuple[Child, int]:
    json_port, sse_port, cg_port = free_ports(3)
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / "nginx" / d).mkdir(parents=True, exist_ok=True)
    (tmp / "nginx.conf").write_text(nginx_config(tmp, json_port, sse_port))
    ngx = Child(
        "nginx",
        [nginx, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(tmp / "nginx.conf")],
        log=tmp / "nginx.out",
        cwd=tmp,
    )
    wait_ready(ngx, json_port, "GET", "/v1/models", None, timeout=15)
    (tmp / "chatgate.yaml").write_text(
        f"upstreams:\n  - {{name: json, base_url: 'http://127.0.0.1:{json_port}/v1', models: [{MODEL}]}}\n"
        "limits: {user_requests_per_minute: 1000000000, user_tokens_per_hour: 1000000000000}\n"
        f"cache: {{max_entries: {args.cache_entries}}}\n"
        f"tokens: {{cache_size: {args.count_cache}}}\n"
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
    cg = Child("chatgate", argv, log=tmp / "chatgate.log", cwd=tmp, env=env)
    wait_ready(cg, cg_port, "GET", "/health", None)
    return cg, cg_port


def run(args: argparse.Namespace, tmp: Path, report: dict[str, Any]) -> None:
    chatgate = str(VENV_BIN / "chatgate") if (VENV_BIN / "chatgate").exists() else shutil.which("chatgate")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    wrk = shutil.which("wrk")
    if not wrk or not Path(nginx).exists() or not chatgate:
        raise SetupError("needs wrk, nginx and chatgate: run `make install bench-deps`")
    report["machine"] = machine_info(sys.executable)
    cg, port = start(tmp, args, chatgate, nginx)
    sessions = [
        call(port, "POST", "/api/v1/chat", {"model": MODEL, "message": f"hello {i}"})["session_id"]
        for i in range(API_SESSIONS)
    ]
    half = args.concurrency // 2
    seconds = round(args.minutes * 60)
    runs = {
        "openai": (
            openai_lua(tmp / "openai.lua", 2 * args.cache_entries),
            "/v1/chat/completions",
            args.concurrency - half,
        ),
        "chat-api": (chat_api_lua(tmp / "chat.lua", sessions), "/api/v1/chat", half),
    }
    procs = {}
    for name, (lua, path, conc) in runs.items():
        argv = [
            wrk,
            "-t",
            "1",
            "-c",
            str(conc),
            "-d",
            f"{seconds}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(lua),
            f"http://127.0.0.1:{port}{path}",
        ]
        procs[name] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log(
        f"soak: {args.minutes:g} min at c={args.concurrency} ({half} chat API, {args.concurrency - half} OpenAI door), "
        f"{args.workers} workers; warm-up {args.warmup_minutes:g} min; RSS every {args.sample:g} s"
    )
    t0 = time.monotonic()
    samples: list[dict[str, Any]] = []
    warm_state: dict[int, dict[str, Any]] | None = None
    while any(p.poll() is None for p in procs.values()):
        elapsed = time.monotonic() - t0
        pids = group_pids(cg.pgid)
        samples.append({"t": round(elapsed, 1), "rss_kib": {str(pid): rss_kib(pid) for pid in pids}})
        if warm_state is None and elapsed >= args.warmup_minutes * 60:
            warm_state = workers_state(port, args.workers)
            log(f"  warm-up over at {elapsed:.0f} s: {warm_state}")
        if not cg.alive():
            raise SetupError(f"chatgate died during the run:\n{cg.tail()}")
        rss = " ".join(f"{pid}:{kib / 1024:.0f}" for pid, kib in samples[-1]["rss_kib"].items())
        log(f"  {elapsed:6.0f} s  RSS MiB {rss}")
        time.sleep(args.sample)
    end_state = workers_state(port, args.workers)
    outputs = {name: p.communicate()[0] for name, p in procs.items()}
    results = {name: parse_wrk(out) for name, out in outputs.items()}
    report["wrk"] = results
    report["samples"] = samples
    report["state"] = {"warm": warm_state, "end": end_state}
    roles = {str(p): role(p, cg.pgid) for p in group_pids(cg.pgid)}
    report["summary"] = summarise(samples, args, results, roles)
    print_report(report, args)


def summarise(
    samples: list[dict[str, Any]], args: argparse.Namespace, results: dict[str, Any], roles: dict[str, str]
) -> dict[str, Any]:
    warm = [s for s in samples if s["t"] >= args.warmup_minutes * 60]
    per: dict[str, Any] = {}
    for pid in sorted({p for s in samples for p in s["rss_kib"]}, key=int):
        series = [s["rss_kib"][pid] for s in warm if s["rss_kib"].get(pid)]
        if len(series) < 2:
            continue
        start, end = statistics.median(series[:3]), statistics.median(series[-3:])
        per[pid] = {
            "role": roles.get(pid, "gone"),
            "first_kib": next(s["rss_kib"][pid] for s in samples if s["rss_kib"].get(pid)),
            "warm_kib": start,
            "end_kib": end,
            "max_kib": max(series),
            "growth_pct": 100 * (end - start) / start if start else None,
        }
    requests = sum(r["requests"] for r in results.values())
    errors = sum(r["non_2xx"] + sum(r["socket_errors"].values()) for r in results.values())
    return {"per_process": per, "requests": requests, "errors": errors, "rps": sum(r["rps"] for r in results.values())}


def print_report(report: dict[str, Any], args: argparse.Namespace) -> None:
    s = report["summary"]
    w = print
    w("=" * 100)
    w("chatgate soak")
    w("=" * 100)
    w(f"command:   {report['command']}")
    m = report["machine"]
    w(
        f"machine:   nproc={m['nproc']} (usable {m['cpus_usable']}), {m['cpu']}; load at start "
        f"{' '.join(f'{x:.2f}' for x in m['loadavg_start'])}, end {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    w(
        f"run:       {args.minutes:g} min at c={args.concurrency}, {args.workers} workers, "
        f"warm-up {args.warmup_minutes:g} min, cache.max_entries {args.cache_entries}"
    )
    for name, r in report["wrk"].items():
        w(
            f"  {name:<9} {r['requests']:>9} requests  {r['rps']:>7.0f} req/s  p50 {r['p50_ms']:.1f} ms  p99 "
            f"{r['p99_ms']:.1f} ms  non-2xx {r['non_2xx']}  socket errors {r['socket_errors']}"
        )
    w(f"  total     {s['requests']:>9} requests  {s['rps']:>7.0f} req/s  errors {s['errors']}")
    w(f"caches:    at warm-up's end {report['state']['warm']}")
    w(f"           at the end       {report['state']['end']}")
    w("")
    w(f"{'pid':>8} {'role':<7} {'first MiB':>9} {'warm MiB':>9} {'end MiB':>8} {'max MiB':>8} {'growth':>8}")
    for pid, p in s["per_process"].items():
        growth = f"{p['growth_pct']:+.1f}%" if p["growth_pct"] is not None else "n/a"
        w(
            f"{pid:>8} {p['role']:<7} {p['first_kib'] / 1024:>9.1f} {p['warm_kib'] / 1024:>9.1f}"
            f" {p['end_kib'] / 1024:>8.1f} {p['max_kib'] / 1024:>8.1f} {growth:>8}"
        )
    w("  (warm, end: medians of the first and last three samples after warm-up; target: workers' growth <= 5%)")
    w(f"results:   {report['results_file']}")
    w("=" * 100)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.strftime("%Y%m%d-%H%M%S")
    report: dict[str, Any] = {
        "command": shlex.join(sys.orig_argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": vars(args),
        "results_file": str(RESULTS_DIR / f"soak-{started}.json"),
    }
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    tmp = Path(tempfile.mkdtemp(prefix="chatgate-soak-"))
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
    finally:
        for child in reversed(Child.started):
            child.stop()
        if args.keep_tmp or code:
            log(f"temp dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
