"""Several real ``chatgate serve`` instances sharing real servers, for scale-out tests.

``cluster_factory(n=2, config=..., per_instance=..., workers=1)`` starts, for one test:

- a scratch PostgreSQL database (created on the server at ``CHATGATE_TEST_PG_URL``, dropped after),
- a fresh Redis key prefix on ``CHATGATE_TEST_REDIS_URL`` (every ``redis_prefix`` setting; its keys are
  deleted after, never the rest of the database),
- the session's Chroma server (``chroma run`` from the installed chromadb, offline),
- the fake upstream ``fake_a`` for chat and embeddings (``fake-word-hash``),
- ``n`` instances, each with its own data directory, port and log, all on the same admin key.

No load balancer: each instance is addressed directly (``cluster.a.url``, ``cluster[1].client()``,
``cluster.each()``). ``Instance.kill()`` is ``kill -9``; ``restart()`` starts it again on the same port and
data directory; ``events()`` reads its JSON log lines. When the test fails, every instance's log (and
Chroma's) is printed with the failure.

The fixtures are registered by ``tests/integration/conftest.py``; other directories can import them the
same way (``from tests.integration.cluster import cluster_factory, chroma_server``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis
import yaml
from pydantic import BaseModel
from sqlalchemy import make_url

from chatgate.settings import Settings
from tests.conftest import ADMIN_KEY, Fake, free_port, stop, wait_http

PG_URL = os.environ.get("CHATGATE_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CHATGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CHATGATE = str(Path(sys.executable).with_name("chatgate"))
EMBED_MODEL = "fake-word-hash"


# ---- Chroma ------------------------------------------------------------------------------------


@dataclass
class ChromaServer:
    host: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


def start_chroma(path: Path, port: int | None = None) -> ChromaServer:
    """``chroma run`` on ``path`` (a free port unless given), answering its heartbeat."""
    exe = shutil.which("chroma", path=str(Path(sys.executable).parent))
    assert exe, "the chroma command (package chromadb) is not installed"
    port = port or free_port()
    path.mkdir(parents=True, exist_ok=True)
    log_path = path.parent / f"{path.name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [exe, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=60, proc=proc)
    except Exception:
        stop(proc)
        raise RuntimeError("chroma did not start:\n" + log_path.read_text(errors="replace")) from None
    return ChromaServer("127.0.0.1", port, proc, log_path)


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    """A real Chroma server for the session (collections are named by id: tests never collide)."""
    server = start_chroma(tmp_path_factory.mktemp("chroma") / "data")
    yield server
    assert server.proc is not None
    stop(server.proc)


# ---- PostgreSQL and Redis ------------------------------------------------------------------------


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _admin_sql(sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(_dsn(PG_URL), timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def scratch_database() -> str:
    """A new, empty PostgreSQL database; its URL (drop it with ``drop_database``)."""
    name = f"chatgate_cluster_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        _admin_sql(f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.fail(f"PostgreSQL not reachable at {PG_URL}: the cluster tests need it ({exc})")
    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    _admin_sql(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')


def redis_prefix_paths(model: type[BaseModel] = Settings, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Where the settings have a ``redis_prefix`` (found, not listed: a new one is covered too)."""
    found = []
    for name, info in model.model_fields.items():
        if name == "redis_prefix":
            found.append((*path, name))
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            found += redis_prefix_paths(sub, (*path, name))
    return found


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, nested dicts merged."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# ---- instances ---------------------------------------------------------------------------------


@dataclass
class Instance:
    name: str
    root: Path
    config: dict[str, Any]
    env: dict[str, str]
    workers: int = 1
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    key: str = ADMIN_KEY
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "gateway.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, ready_timeout: float = 60.0) -> Instance:
        self.root.mkdir(parents=True, exist_ok=True)
        cfg = self.root / "chatgate.yaml"
        cfg.write_text(yaml.safe_dump(self.config))
        cmd = [CHATGATE, "serve", "--port", str(self.port), "--workers", str(self.workers), "--config", str(cfg)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGATE_")}
        env.update({"CHATGATE_DATA_DIR": str(self.data_dir), "CHATGATE_ADMIN_KEY": self.key}, **self.env)
        with open(self.log_path, "ab") as out:
            out.write(f"---- start {self.starts + 1} ----\n".encode())
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.root)
        self.starts += 1
        try:
            wait_http(self.url + "/health", timeout=ready_timeout, proc=self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"instance {self.name} did not start:\n" + self.logs()) from None
        return self

    def stop(self) -> None:
        """SIGTERM: drain and exit."""
        if self.proc is not None:
            stop(self.proc)

    def kill(self) -> None:
        """``kill -9``: no shutdown, no cleanup (children it started are orphaned, as in a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self, ready_timeout: float = 60.0) -> Instance:
        self.stop()
        return self.start(ready_timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, msg: str | None = None) -> list[dict[str, Any]]:
        """Its JSON log lines (``msg``: those whose message starts with it)."""
        out = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if msg is None or str(entry.get("msg", "")).startswith(msg):
                        out.append(entry)
        return out

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def client(self, key: str | None = None, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(key), timeout=timeout)

    def rss_kib(self) -> int:
        """Resident memory of the server and every process under it, KiB (``/proc/<pid>/status`` VmRSS)."""
        return sum(vm(pid, "VmRSS") for pid in [self.pid, *descendants(self.pid)])


def vm(pid: int, field_name: str) -> int:
    """A ``Vm*`` figure of a process, KiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    found.append(int(child))
                    todo.append(int(child))
    return found


@dataclass
class Cluster:
    instances: list[Instance]
    database_url: str
    redis_url: str
    redis_prefix: str
    chroma: ChromaServer

    def __getitem__(self, i: int) -> Instance:
        return self.instances[i]

    def __len__(self) -> int:
        return len(self.instances)

    @property
    def a(self) -> Instance:
        return self.instances[0]

    @property
    def b(self) -> Instance:
        return self.instances[1]

    def each(self) -> list[Instance]:
        return list(self.instances)

    def sql(self, query: str, *args: Any) -> list[dict[str, Any]]:
        """Rows of a query on the cluster's database (tests read what the instances wrote)."""

        async def run() -> list[dict[str, Any]]:
            conn = await asyncpg.connect(_dsn(self.database_url), timeout=5)
            try:
                return [dict(r) for r in await conn.fetch(query, *args)]
            finally:
                await conn.close()

        return asyncio.run(run())

    def logs(self, access: bool = False) -> str:
        """Every instance's log (without the access log lines unless ``access``), then the end of Chroma's."""
        parts = []
        for i in self.instances:
            lines = [line for line in i.logs().splitlines() if access or '"logger":"chatgate.access"' not in line]
            parts.append(f"==== {i.name} (port {i.port}) ====\n" + "\n".join(lines[-300:]))
        parts.append(f"==== chroma ====\n{self.chroma.logs()[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        for i in self.instances:
            i.stop()


def fake_config(fake: Fake) -> dict[str, Any]:
    """The fake upstream for chat and for embeddings (``fake-word-hash``), JSON logs, quick job polls."""
    return {
        "upstreams": [{"name": "a", "base_url": fake.base_url, "api_key": "upstream-secret-a"}],
        "log": {"format": "json"},
        "rag": {
            "embeddings": {
                "backend": "openai",
                "base_url": fake.base_url,
                "api_key": "upstream-secret-a",
                "model": EMBED_MODEL,
                "dimension": 64,  # known from the start: a dense search right after a start need not wait
            },
            "retrieval": {"job_poll_interval": 0.2},
        },
    }


def base_config(fake: Fake, chroma: ChromaServer, prefix: str) -> dict[str, Any]:
    """Every instance: ``fake_config``, the Chroma server, the Redis prefix."""
    config = merge(fake_config(fake), {"rag": {"retrieval": {"chroma_host": chroma.host, "chroma_port": chroma.port}}})
    for path in redis_prefix_paths():
        node = config
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = f"{prefix}{'.'.join(path[:-1])}:"
    return config


ClusterFactory = Callable[..., Cluster]


@contextlib.contextmanager
def clusters(root: Path, chroma: ChromaServer, fake: Fake, failed: Callable[[], bool]) -> Iterator[ClusterFactory]:
    """``make(n=2, config=None, per_instance=None, workers=1, start=True, redis_url=None)``: clusters under
    ``root``, stopped and their database and Redis keys removed at the end (their logs printed if ``failed()``).
    ``redis_url``: another Redis server than the session's (one a test may stop)."""
    made: list[Cluster] = []

    def make(
        n: int = 2,
        config: dict[str, Any] | None = None,
        per_instance: list[dict[str, Any]] | None = None,
        workers: int = 1,
        start: bool = True,
        redis_url: str | None = None,
    ) -> Cluster:
        url = scratch_database()
        prefix = f"cgtest:{secrets.token_hex(4)}:"
        common = merge(base_config(fake, chroma, prefix), config or {})
        instances = []
        for i in range(n):
            own = merge(common, (per_instance or [{}] * n)[i] if per_instance else {})
            env = {"CHATGATE_DATABASE_URL": url, "CHATGATE_REDIS_URL": redis_url or REDIS_URL}
            instances.append(Instance(chr(ord("a") + i), root / f"cluster{len(made)}-{i}", own, env, workers))
        cluster = Cluster(instances, url, redis_url or REDIS_URL, prefix, chroma)
        made.append(cluster)
        if start:
            for inst in instances:  # one after another: the first applies the migrations
                inst.start()
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            if failed():
                print(cluster.logs())  # shown with the failure
            cluster.stop()
            drop_database(cluster.database_url)
            client = redis.Redis.from_url(cluster.redis_url, socket_timeout=5)
            try:
                keys = list(client.scan_iter(match=cluster.redis_prefix + "*", count=1000))
                if keys:
                    client.delete(*keys)
            except redis.RedisError:
                pass  # a test's own Redis, gone with it
            finally:
                client.close()


@pytest.fixture
def cluster_factory(
    request: pytest.FixtureRequest, tmp_path: Path, chroma_server: ChromaServer, fake_a: Fake
) -> Iterator[ClusterFactory]:
    """``make(n=2, config=None, per_instance=None, workers=1, start=True, redis_url=None)``: clusters for this
    test (``clusters``)."""

    def failed() -> bool:
        return getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed

    with clusters(tmp_path, chroma_server, fake_a, failed) as make:
        yield make
