"""Two instances on PostgreSQL, Redis and a Chroma server behave as one server (``cluster.py``): a chat-API
conversation continued on either instance (follow-ups at once, turns alternating A/B with the exact history at
the upstream, a repeated text stored every time), limits exact over both, the response cache shared, analytics
summed; one instance killed under load (only its in-flight requests fail, none of its acknowledged turns is
lost, and it comes back as it was started); Redis killed and restarted (the fail-open instance limits locally,
the fail-closed one refuses, both recover). A document uploaded on one instance and searched on the other:
``test_uploads.py``."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import Fake, free_port
from tests.integration.cluster import ChromaServer, Cluster, Instance, clusters
from tests.integration.conversations import follow_ups, turns

LIMITED_MODEL = "fake-other"  # 60 requests per minute per caller on this model, in the module's cluster
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, chroma_server: ChromaServer, fake_a: Fake
) -> Iterator[Cluster]:
    """Two instances for the tests that leave them as they were."""
    failures = request.session.testsfailed
    config = {
        "limits": {
            "user_requests_per_minute": 100_000,
            "user_tokens_per_hour": 10**9,
            "models": {LIMITED_MODEL: {"requests_per_minute": 60}},
        }
    }
    with clusters(
        tmp_path_factory.mktemp("cluster"), chroma_server, fake_a, lambda: request.session.testsfailed > failures
    ) as make:
        yield make(2, config=config)


def chat(inst: Instance, user: str, content: str, model: str = "fake-model", **extra: Any) -> httpx.Response:
    """An OpenAI-door request as ``admin/<user>`` (the admin key names a sub-identity with ``user``)."""
    body = {"model": model, "messages": [{"role": "user", "content": content}], "user": user, **extra}
    return httpx.post(inst.base_url + "/chat/completions", json=body, headers=inst.headers(), timeout=30)


def new_user() -> str:
    return "u-" + secrets.token_hex(4)


# ---- sessions ------------------------------------------------------------------------------------------


def test_a_follow_up_on_the_other_instance_right_after_the_reply_finds_the_session(cluster: Cluster) -> None:
    statuses = asyncio.run(follow_ups([cluster.a.url, cluster.b.url], cluster.a.key, tries=100))
    assert statuses == {200: 100}  # made on one, continued at once on the other: never 404


def test_turns_alternating_a_b_go_upstream_with_the_exact_history(cluster: Cluster, fake_a: Fake) -> None:
    turns([cluster.a.url, cluster.b.url], cluster.a.key, fake_a, [f"t{i}" for i in range(1, 21)])


def test_a_repeated_text_is_stored_every_time(cluster: Cluster, fake_a: Fake) -> None:
    sid = turns([cluster.a.url, cluster.b.url], cluster.a.key, fake_a, ["continue"] * 8)
    rows = cluster.sql("SELECT message_count FROM conversations WHERE id = $1", sid)
    assert rows == [{"message_count": 16}]  # 8 turns: 16 messages, none taken for a duplicate
    assert cluster.sql("SELECT count(*) AS n FROM messages WHERE conversation_id = $1", sid) == [{"n": 16}]


# ---- limits, cache, analytics ----------------------------------------------------------------------------


def test_limits_are_exact_over_both_instances(cluster: Cluster) -> None:
    user = new_user()

    async def burst(inst: Instance) -> list[int]:
        # 20 at a time per instance: with 100 at once on this shared 2-core machine, the limiter's Redis pool
        # (0.5 s to get a connection) ran dry and the instances fell back to their local limiters (fail-open).
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(headers=inst.headers(), timeout=60, limits=limits) as c:
            body = {"model": LIMITED_MODEL, "messages": [{"role": "user", "content": "hi"}], "user": user}
            responses = await asyncio.gather(
                *(c.post(inst.base_url + "/chat/completions", json=body) for _ in range(100))
            )
        return [r.status_code for r in responses]

    async def both() -> list[int]:
        a, b = await asyncio.gather(burst(cluster.a), burst(cluster.b))
        return a + b

    statuses = asyncio.run(both())
    assert statuses.count(200) == 60 and statuses.count(429) == 140, Counter(statuses)
    for inst in cluster.each():  # each instance sees the one count
        limits = httpx.get(f"{inst.url}/admin/users/admin/{user}/limits", headers=inst.headers()).json()
        assert limits["backend"] == "redis"
        used = {line["scope"]: line["used"] for line in limits["limits"]}
        assert used["user:requests_per_minute"] == 60  # the 140 refused were charged nowhere


def test_the_cache_is_shared(cluster: Cluster, fake_a: Fake) -> None:
    tag = "cache-" + secrets.token_hex(4)
    first = chat(cluster.a, new_user(), f"what is {tag}?", temperature=0, fake={"id": tag})
    again = chat(cluster.b, new_user(), f"what is {tag}?", temperature=0, fake={"id": tag})
    assert (first.status_code, again.status_code) == (200, 200)
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("MISS", "HIT")
    assert again.json()["choices"] == first.json()["choices"]
    assert fake_a.stats(tag)["attempts"] == 1  # the upstream was asked once, by A


def test_analytics_are_summed_over_both_instances(cluster: Cluster) -> None:
    user = new_user()
    for i in range(7):
        assert chat(cluster.a, user, f"a {i}").status_code == 200
    for i in range(5):
        assert chat(cluster.b, user, f"b {i}").status_code == 200
    for inst in cluster.each():
        for _ in range(100):  # each instance writes its rows behind: until the other's are in too
            summary = httpx.get(f"{inst.url}/admin/analytics/users/admin/{user}", headers=inst.headers()).json()
            if summary["requests"] >= 12:
                break
            time.sleep(0.1)
        assert summary["requests"] == 12 and summary["errors"] == 0


# ---- an instance killed under load -------------------------------------------------------------------------


def test_an_instance_killed_under_load(cluster_factory: Any) -> None:
    """16 chat-API conversations on each instance; A is killed (kill -9) once 200 turns are answered: only A's
    in-flight requests fail, B serves on, every turn A acknowledged is in the store, and A started again as
    before serves its conversations (and B continues them)."""
    cluster = cluster_factory(2, config={"limits": {"user_requests_per_minute": 100_000}})
    a, b = cluster.a, cluster.b
    answered: dict[str, list[tuple[str, str]]] = {"a": [], "b": []}  # (session id, text) of every answered turn
    failed: dict[str, list[str]] = {"a": [], "b": []}
    killed, enough = asyncio.Event(), asyncio.Event()
    after_kill = {"b": 0}
    run = secrets.token_hex(3)

    async def conversation(inst: Instance, i: int) -> None:
        sid: str | None = None
        async with httpx.AsyncClient(base_url=inst.url, headers=inst.headers(), timeout=30) as c:
            for n in range(10_000):
                text = f"{run} {inst.name}{i} n{n}"
                body: dict[str, Any] = {"message": text, "model": "fake-model", **({"session_id": sid} if sid else {})}
                try:
                    resp = await c.post("/api/v1/chat", json=body)
                except httpx.HTTPError as exc:
                    failed[inst.name].append(type(exc).__name__)
                    return
                if resp.status_code != 200:
                    failed[inst.name].append(str(resp.status_code))
                    return
                sid = resp.json()["session_id"]
                answered[inst.name].append((sid, text))
                if len(answered["a"]) + len(answered["b"]) >= 200:
                    enough.set()
                if killed.is_set() and inst is b:
                    after_kill["b"] += 1
                    if after_kill["b"] >= 200:
                        return  # B served 200 more turns after A went
                if inst is a and killed.is_set():
                    return

    async def load() -> None:
        tasks = [asyncio.create_task(conversation(inst, i)) for inst in (a, b) for i in range(16)]
        await asyncio.wait_for(enough.wait(), 120)
        a.kill()
        killed.set()
        await asyncio.gather(*tasks)

    asyncio.run(load())
    assert failed["b"] == [] and after_kill["b"] >= 200  # B never failed a request
    assert 1 <= len(failed["a"]) <= 16 and set(failed["a"]) <= {"ConnectError", "ReadError", "RemoteProtocolError"}
    stored = {
        (r["conversation_id"], r["content"])
        for r in cluster.sql("SELECT conversation_id, content #>> '{}' AS content FROM messages WHERE role = 'user'")
    }
    lost = [t for t in answered["a"] + answered["b"] if t not in stored]
    assert lost == [], f"{len(lost)} acknowledged turns lost"
    a.start()  # the same command, data directory and port: nothing to repair first
    sid, text = answered["a"][-1]
    for inst in (a, b):
        resp = httpx.post(
            inst.url + "/api/v1/chat", json={"message": "still there?", "session_id": sid}, headers=inst.headers()
        )
        assert resp.status_code == 200, resp.text
    history = httpx.get(f"{a.url}/api/v1/chat/sessions/{sid}", params={"limit": 500}, headers=a.headers()).json()
    users = [m["content"] for m in history["messages"] if m["role"] == "user"]
    assert users[-3:] == [text, "still there?", "still there?"]


# ---- Redis killed and restarted ------------------------------------------------------------------------------


class RedisServer:
    """A private ``redis-server`` (nothing saved) this test may kill and start again on the same port."""

    def __init__(self, root: Path) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed"
        self.exe, self.root, self.port = exe, root, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with open(self.root / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        try:
            for _ in range(100):
                with contextlib.suppress(redis.RedisError):
                    if client.ping():
                        return
                time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError("redis-server did not start: " + (self.root / "redis.log").read_text())

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


def test_redis_killed_and_restarted(cluster_factory: Any, own_redis: RedisServer, fake_a: Fake) -> None:
    """A limits with its local limiter while Redis is away (fail-open), B refuses (fail-closed); both go back to
    the shared count and the shared cache once Redis is back."""
    cluster = cluster_factory(
        2,
        config={"limits": {"user_requests_per_minute": 5}},
        per_instance=[{"limits": {"fail_open": True}}, {"limits": {"fail_open": False}}],
        redis_url=own_redis.url,
    )
    a, b = cluster.a, cluster.b
    user = new_user()
    assert [chat(inst, user, "up").status_code for inst in (a, b, a, b)] == [200] * 4  # 4 of 5, counted in Redis
    tag = "redis-" + secrets.token_hex(4)
    assert chat(a, new_user(), tag, temperature=0).headers["x-cache"] == "MISS"
    assert chat(b, new_user(), tag, temperature=0).headers["x-cache"] == "HIT"

    own_redis.kill()
    down_a = [chat(a, user, f"down {i}") for i in range(6)]
    assert [r.status_code for r in down_a] == [200] * 5 + [429]  # A's own count, from zero: 5, then refused
    down_b = [chat(b, user, f"down {i}") for i in range(2)]
    assert [r.status_code for r in down_b] == [503, 503]
    assert {r.json()["error"]["code"] for r in down_b} == {"LIMITER_UNAVAILABLE"} and "Retry-After" in down_b[0].headers
    for inst in (a, b):
        assert httpx.get(inst.url + "/health").status_code == 200  # served throughout
        assert httpx.get(inst.url + "/ready", headers=inst.headers()).json()["limits"]["redis_errors"] >= 1
        assert inst.events("rate limiter: Redis unreachable"), inst.name  # logged

    own_redis.start()  # the same port, empty (nothing was saved)
    probe = new_user()
    for inst in (a, b):  # until each uses Redis again (B: no more 503)
        for _ in range(100):
            if chat(inst, probe, "back?").status_code == 200:
                break
            time.sleep(0.1)
    assert all(inst.events("rate limiter: Redis reachable again") for inst in (a, b))
    fresh = new_user()
    statuses = [chat(inst, fresh, f"back {i}").status_code for i, inst in enumerate([a, b] * 4)]
    assert sorted(statuses) == [200] * 5 + [429] * 3  # one count over both again: exactly 5 of 8
    tag = "redis-back-" + secrets.token_hex(4)
    assert chat(b, new_user(), tag, temperature=0).headers["x-cache"] == "MISS"
    assert chat(a, new_user(), tag, temperature=0).headers["x-cache"] == "HIT"  # the cache shared again
