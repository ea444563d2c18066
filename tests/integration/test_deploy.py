"""``deploy/cluster.py`` as docs/operations.md runs it: nginx in front of two instances on PostgreSQL, Redis
and the Chroma server it starts. Through the balancer, a conversation goes on whichever instance answers and
a document uploaded is found; an instance killed with ``kill -9`` is started again by the script with no
manual step, while the balancer keeps answering; SIGTERM stops everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from tests.conftest import ROOT, Fake, free_port, wait_http
from tests.integration.cluster import REDIS_URL, descendants, drop_database, fake_config, scratch_database
from tests.integration.conversations import turns

KEY = "cg-deploy-test-admin-key"


def free_run(n: int) -> int:
    """A port with the ``n`` after it free too (the script puts the instances on the ports after nginx's)."""
    for _ in range(100):
        port = free_port()
        if port + n < 65536 and all(_free(port + i) for i in range(1, n + 1)):
            return port
    raise RuntimeError("no run of free ports")


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def serving(port: int) -> int | None:
    """The pid of the ``chatgate serve`` on ``port`` (read from /proc), or None."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in argv and b"--port" in argv and argv[argv.index(b"--port") + 1] == str(port).encode():
                return int(entry.name)
    return None


@pytest.fixture
def deployed(tmp_path: Path, fake_a: Fake):  # type: ignore[no-untyped-def]
    port, chroma = free_run(2), free_port()
    database, prefix = scratch_database(), f"cgtest-deploy-{os.getpid()}-{port}:"
    config = tmp_path / "chatgate.yaml"
    config.write_text(yaml.safe_dump({**fake_config(fake_a), "limits": {"user_requests_per_minute": 10_000}}))
    cmd = [
        sys.executable,
        str(ROOT / "deploy" / "cluster.py"),
        *("--dir", str(tmp_path / "cluster"), "--port", str(port), "--chroma-port", str(chroma)),
        *("--database-url", database, "--redis-prefix", prefix),
        *("--config", str(config)),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGATE_")} | {"CHATGATE_ADMIN_KEY": KEY}
    with open(tmp_path / "cluster.out", "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=180, proc=proc)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                for pid in [*descendants(proc.pid), proc.pid]:
                    os.kill(pid, signal.SIGKILL)
        print((tmp_path / "cluster.out").read_text(errors="replace"))
        drop_database(database)
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_the_scripted_cluster_works_as_documented(deployed, fake_a: Fake) -> None:  # type: ignore[no-untyped-def]
    proc, port = deployed
    lb = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {KEY}"}
    http = httpx.Client(timeout=30)  # a loaded machine: 30 s per request rather than httpx's 5
    turns([lb], KEY, fake_a, [f"t{i}" for i in range(1, 13)])  # over the balancer: either instance, exact history

    made = http.post(f"{lb}/api/v1/collections", json={"name": "handbook", "visibility": "shared"}, headers=auth)
    assert made.status_code == 201, made.text
    cid = made.json()["id"]
    doc = b"# Leave\n\nParental leave is twenty six weeks at full pay.\n"
    up = http.post(f"{lb}/api/v1/collections/{cid}/documents", files=[("files", ("handbook.md", doc))], headers=auth)
    assert up.status_code == 202, up.text
    for _ in range(300):
        job = http.get(f"{lb}/api/v1/jobs/{up.json()['job_id']}", headers=auth).json()
        if job["status"] in ("done", "failed"):
            break
        time.sleep(0.1)
    assert job["status"] == "done", job
    for _ in range(4):  # whichever instance answers
        hits = http.post(
            f"{lb}/api/v1/collections/{cid}/search", json={"query": "parental leave"}, headers=auth
        ).json()["data"]
        assert hits and hits[0]["document"] == "handbook.md"

    first = serving(port + 1)
    assert first is not None and serving(port + 2) is not None
    os.kill(first, signal.SIGKILL)
    for _ in range(20):  # the other instance answers through the balancer meanwhile
        assert http.get(f"{lb}/health", timeout=10).status_code == 200
    for _ in range(600):  # started again by the script
        again = serving(port + 1)
        if again is not None and again != first:
            break
        time.sleep(0.1)
    assert again is not None and again != first
    wait_http(f"http://127.0.0.1:{port + 1}/health", timeout=120)
    resp = http.post(f"http://127.0.0.1:{port + 1}/api/v1/chat", json={"message": "back"}, headers=auth, timeout=30)
    assert resp.status_code == 200, resp.text
    assert proc.poll() is None
    http.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    assert serving(port + 1) is None and serving(port + 2) is None  # nothing left behind
