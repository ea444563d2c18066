#!/usr/bin/env python3
"""Several chatgate instances behind nginx on this machine, on the local PostgreSQL and Redis and a Chroma
server it starts: the scale-out setup of deploy/compose.yaml as real processes. An instance that exits is
started again a second later (compose's ``restart: unless-stopped``). Ctrl-C stops everything.

    .venv/bin/python deploy/cluster.py                       # 2 instances, load balancer on :8080
    .venv/bin/python deploy/cluster.py --instances 3 --port 9000 --config my.yaml

What it runs (everything under --dir, default ./cluster):

- ``chroma run`` (the installed chromadb) on --chroma-port, data in <dir>/chroma;
- N ``chatgate serve`` on the ports after --port, each with its own data directory (<dir>/<name>/data)
  and log (<dir>/<name>/gateway.log), all on one PostgreSQL database (--database-url; created when
  missing), one Redis (--redis-url) under one key prefix, the Chroma server, and one admin key
  (CHATGATE_ADMIN_KEY, or one generated once and kept in <dir>/admin_key);
- nginx (``nginx-light``: ``apt-get install nginx-light``) on --port, spreading requests over the
  instances (least connections), streaming uploads and answers through without buffering.

--config is a chatgate YAML file the instances share (upstreams, models, limits...): without an upstream,
each instance starts the bundled local model. The script sets only what scale-out needs: the database,
Redis and its prefix, the Chroma server, the ports, and nginx as the one trusted proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

BIN = Path(sys.executable).parent
NAMES = "abcdefghij"


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"cluster: {what} exited with {proc.returncode} (see its log)")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"cluster: {what} did not answer {url} within {timeout:.0f} s")


def ensure_database(url: str) -> None:
    """Create the PostgreSQL database of ``url`` when it does not exist."""
    import asyncpg
    from sqlalchemy import make_url

    target = make_url(url)
    admin = target.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)

    async def run() -> None:
        conn = await asyncpg.connect(admin, timeout=10)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", target.database):
                await conn.execute(f'CREATE DATABASE "{target.database}"')
                print(f"cluster: created database {target.database}")
        finally:
            await conn.close()

    asyncio.run(run())


def nginx_config(root: Path, port: int, backends: list[int], max_body: int) -> str:
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;" for p in backends)
    temp = "\n".join(f"    {k}_temp_path {root}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""daemon off;
worker_processes 1;
error_log {root}/error.log warn;
pid {root}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log {root}/access.log;
{temp}
    upstream chatgate {{
        least_conn;
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size {max_body};
        location / {{
            proxy_pass http://chatgate;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_request_buffering off;   # uploads stream through: chatgate's limits apply as they arrive
            proxy_buffering off;           # streamed answers (SSE) pass as they come
            proxy_read_timeout 600s;
            proxy_next_upstream error timeout;  # a dead instance: idempotent requests go to the next one
        }}
    }}
}}
"""


def redis_prefixes(model: Any = None, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The paths of the ``redis_prefix`` settings (``limits.redis_prefix``, ...)."""
    from pydantic import BaseModel

    from chatgate.settings import Settings

    found = []
    for name, info in (model or Settings).model_fields.items():
        if name == "redis_prefix":
            found.append((*path, name))
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            found += redis_prefixes(info.annotation, (*path, name))
    return found


def admin_key(root: Path) -> str:
    if os.environ.get("CHATGATE_ADMIN_KEY"):
        return os.environ["CHATGATE_ADMIN_KEY"]
    path = root / "admin_key"
    if not path.exists():
        path.write_text("cg-" + secrets.token_urlsafe(32))
        path.chmod(0o600)
        print(f"cluster: generated the admin key, kept in {path}")
    return path.read_text().strip()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", type=int, default=2, help="chatgate instances (default 2)")
    p.add_argument("--port", type=int, default=8080, help="nginx's port; the instances take the next ones")
    p.add_argument("--chroma-port", type=int, default=8000)
    p.add_argument("--dir", type=Path, default=Path("cluster"), help="where everything is kept (./cluster)")
    p.add_argument("--database-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/chatgate_cluster")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--redis-prefix", default="chatgate-cluster:", help="prefix of every Redis key they use")
    p.add_argument("--config", type=Path, help="a chatgate YAML file the instances share")
    args = p.parse_args()
    if not 1 <= args.instances <= len(NAMES):
        raise SystemExit(f"cluster: --instances must be 1 to {len(NAMES)}")
    nginx = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    chroma = shutil.which("chroma", path=str(BIN))
    if nginx is None:
        raise SystemExit("cluster: nginx is not installed (apt-get install nginx-light)")
    if chroma is None:
        raise SystemExit("cluster: the chroma command is missing (pip package chromadb)")
    root = args.dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    ensure_database(args.database_url)

    config: dict[str, Any] = yaml.safe_load(args.config.read_text()) if args.config else {}
    rag = config.setdefault("rag", {}).setdefault("retrieval", {})
    rag.update(chroma_host="127.0.0.1", chroma_port=args.chroma_port)
    for path in redis_prefixes():  # every setting that names a Redis key prefix, under one prefix
        node = config
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = args.redis_prefix + ".".join(path[:-1]) + ":"
    config.setdefault("identity", {})["trusted_proxies"] = ["127.0.0.1"]  # nginx: its X-Forwarded-For counts
    (root / "chatgate.yaml").write_text(yaml.safe_dump(config))
    max_body = int(rag.get("upload_max_request_bytes", 200 * 1024 * 1024))

    procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    launched: dict[str, tuple[list[str], Path, dict[str, str] | None]] = {}

    def launch(
        name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None, keep: bool = True
    ) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        if keep:
            procs.append((name, proc))
        launched[name] = (cmd, log, env)
        return proc

    def shutdown(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)  # also when started in the background (where SIGINT is ignored)
    try:
        proc = launch(
            "chroma",
            [chroma, "run", "--path", str(root / "chroma"), "--host", "127.0.0.1", "--port", str(args.chroma_port)],
            root / "chroma.log",
            {**os.environ, "ANONYMIZED_TELEMETRY": "False"},
        )
        wait_http(f"http://127.0.0.1:{args.chroma_port}/api/v2/heartbeat", proc, 60, "chroma")
        key = admin_key(root)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGATE_")}
        env.update(CHATGATE_DATABASE_URL=args.database_url, CHATGATE_REDIS_URL=args.redis_url, CHATGATE_ADMIN_KEY=key)
        ports = [args.port + 1 + i for i in range(args.instances)]
        for name, port in zip(NAMES, ports, strict=False):
            cmd = [str(BIN / "chatgate"), "serve", "--port", str(port), "--config", str(root / "chatgate.yaml")]
            inst_env = {**env, "CHATGATE_DATA_DIR": str(root / name / "data")}
            proc = launch(f"chatgate-{name}", cmd, root / name / "gateway.log", inst_env)
            # one after another: the first applies the migrations (and, without an upstream, assembles the model)
            wait_http(f"http://127.0.0.1:{port}/health", proc, 300, f"chatgate-{name}")
        nginx_root = root / "nginx"
        nginx_root.mkdir(exist_ok=True)
        (nginx_root / "nginx.conf").write_text(nginx_config(nginx_root, args.port, ports, max_body))
        conf = nginx_root / "nginx.conf"
        proc = launch("nginx", [nginx, "-p", str(nginx_root), "-c", str(conf)], nginx_root / "nginx.log")
        wait_http(f"http://127.0.0.1:{args.port}/health", proc, 30, "nginx")
        backends = ", ".join(f"{n}:{p}" for n, p in zip(NAMES, ports, strict=False))
        print(f"cluster: http://127.0.0.1:{args.port} -> {backends}")
        print(f"cluster: admin key {key[:6]}... (CHATGATE_ADMIN_KEY or {root / 'admin_key'}); logs under {root}")
        print("cluster: Ctrl-C stops everything")
        down_since: dict[str, float] = {}
        while True:  # an instance that exits is started again a second later, as compose's `restart: unless-stopped`
            for i, (name, proc) in enumerate(procs):
                if proc.poll() is None:
                    continue
                if name not in down_since:
                    down_since[name] = time.monotonic()
                    again = "starting it again" if name.startswith("chatgate-") else "the others go on"
                    print(f"cluster: {name} exited with {proc.returncode}; {again}", flush=True)
                elif name.startswith("chatgate-") and time.monotonic() - down_since[name] >= 1.0:
                    with contextlib.suppress(ProcessLookupError):  # what the dead one left behind (its model server)
                        os.killpg(proc.pid, signal.SIGKILL)
                    cmd, log, inst_env = launched[name]
                    procs[i] = (name, launch(name, cmd, log, inst_env, keep=False))
                    del down_since[name]
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\ncluster: stopping")
    finally:
        for _, proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in reversed(procs):
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                print(f"cluster: {name} did not stop in time: killed")
                proc.kill()
                proc.wait()
            with contextlib.suppress(ProcessLookupError):  # what it left behind (killed -9: its model server)
                os.killpg(proc.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
