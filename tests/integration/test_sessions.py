"""Identity, sessions and the chat API through a real `chatgate serve`, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import openai
import pytest

from tests.conftest import Gateway, start_gateway, stop
from tests.integration.cluster import descendants
from tests.integration.conversations import follow_ups, session_misses_per_worker, turns

CHATGATE = str(Path(sys.executable).with_name("chatgate"))


def cli(gw: Gateway, *args: str, env: dict[str, str] | None = None) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHATGATE_")}
    base.update({"CHATGATE_DATA_DIR": str(gw.data_dir), **gw.extra.get("env", {}), **(env or {})})
    out = subprocess.run([CHATGATE, *args], capture_output=True, text=True, env=base, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def new_key(gw: Gateway, name: str, *scopes: str) -> str:
    user_id = cli(gw, "users", "create", name, "--id", f"u-{name}").split(":")[1].strip()
    args = ["keys", "create", "--user", user_id]
    for scope in scopes or ("user",):
        args += ["--scope", scope]
    out = cli(gw, *args)
    return next(line.strip() for line in out.splitlines() if line.strip().startswith("cg-"))


def _pg_database() -> tuple[str, str]:
    name = "chatgate_it_" + uuid.uuid4().hex[:10]
    return name, f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


def _psql(sql: str) -> None:
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-v", "ON_ERROR_STOP=1", "-c", sql],
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gw(request, tmp_path_factory, fake_b) -> Iterator[Gateway]:
    env = {"CHATGATE_SESSIONS__MAX_CONCURRENT_PER_USER": "150", "CHATGATE_IDENTITY__KEY_CACHE_TTL": "0.5"}
    dbname = None
    if request.param == "postgresql":
        dbname, url = _pg_database()
        _psql(f"CREATE DATABASE {dbname}")
        env["CHATGATE_DATABASE_URL"] = url
    config = {
        "upstreams": [{"name": "b", "base_url": fake_b.base_url, "models": ["fake-model"]}],
        "retry": {"base": 0.01, "cap": 0.1},
        "limits": {"user_requests_per_minute": 10_000},  # 100 concurrent requests from one user below
    }
    gateway = start_gateway(
        tmp_path_factory.mktemp(f"sess-{request.param}"), config, env=env, args=["--workers", "2"], ready_timeout=120
    )
    gateway.extra["env"] = {k: v for k, v in env.items() if k == "CHATGATE_DATABASE_URL"}
    gateway.extra["backend"] = request.param
    yield gateway
    stop(gateway.proc)
    if dbname:
        _psql(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")


@pytest.fixture(scope="module")
def alice(gw) -> str:
    return new_key(gw, "alice" + uuid.uuid4().hex[:6])


@pytest.fixture(scope="module")
def bob(gw) -> str:
    return new_key(gw, "bob" + uuid.uuid4().hex[:6])


@pytest.fixture(scope="module")
def forwarder(gw) -> str:
    return new_key(gw, "owui" + uuid.uuid4().hex[:6], "user", "trusted_forwarder")


def api(gw: Gateway, key: str) -> httpx.Client:
    return httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_chat_api_keeps_history_server_side(gw, alice, fake_b):
    with api(gw, alice) as c:
        first = c.post("/api/v1/chat", json={"message": "my name is Ada", "model": "fake-model"}).json()
        assert first["response"] == "echo: my name is Ada" and first["cached"] is False and first["sources"] == []
        sid = first["session_id"]
        second = c.post("/api/v1/chat", json={"message": "what is my name", "session_id": sid, "model": "fake-model"})
        assert second.status_code == 200, second.text
        assert second.json()["session_id"] == sid and second.json()["usage"]["total_tokens"] > 0
        info = c.get(f"/api/v1/chat/sessions/{sid}").json()
        assert info["message_count"] == 4 and info["source"] == "chat-api"
        assert [m["role"] for m in info["messages"]] == ["user", "assistant", "user", "assistant"]
        assert info["messages"][0]["content"] == "my name is Ada"
        page = c.get(f"/api/v1/chat/sessions/{sid}", params={"limit": 1, "offset": 1}).json()
        assert [m["content"] for m in page["messages"]] == ["echo: my name is Ada"] and page["total_messages"] == 4
        assert sid in {s["session_id"] for s in c.get("/api/v1/chat/sessions").json()["data"]}


def test_a_follow_up_right_after_the_reply_that_made_its_session_finds_it_on_either_worker(gw, alice):
    before = session_misses_per_worker(gw.url, gw.key)
    statuses = asyncio.run(follow_ups([gw.url], alice, tries=200))
    assert statuses == {200: 200}  # not one 404 No such session
    after = session_misses_per_worker(gw.url, gw.key)
    assert set(after) == set(before) and all(after[pid] > before[pid] for pid in after)  # both workers answered


def test_twenty_sequential_turns_go_upstream_with_exactly_the_last_turns_in_order(gw, alice, fake_b):
    turns([gw.url], alice, fake_b, [f"t{i}" for i in range(1, 21)])


def test_one_worker_is_correct_too(tmp_path, fake_b):
    config = {"upstreams": [{"name": "b", "base_url": fake_b.base_url}], "limits": {"user_requests_per_minute": 1000}}
    gateway = start_gateway(tmp_path, config, args=["--workers", "1"], ready_timeout=120)
    try:
        assert asyncio.run(follow_ups([gateway.url], gateway.key, tries=50)) == {200: 50}
        turns([gateway.url], gateway.key, fake_b, [f"t{i}" for i in range(1, 21)])
    finally:
        stop(gateway.proc)


def test_chat_api_streams_sse(gw, alice):
    with (
        api(gw, alice) as c,
        c.stream("POST", "/api/v1/chat", json={"message": "stream me", "model": "fake-model", "stream": True}) as r,
    ):
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    assert "".join(p["content"] for p in parsed if p["type"] == "delta") == "echo: stream me "
    done = parsed[-1]
    assert done["type"] == "done" and done["response"] == "echo: stream me " and done["session_id"]


def test_other_users_sessions_are_404_everywhere(gw, alice, bob):
    with api(gw, alice) as a, api(gw, bob) as b:
        sid = a.post("/api/v1/chat", json={"message": "private", "model": "fake-model"}).json()["session_id"]
        for resp in (
            b.get(f"/api/v1/chat/sessions/{sid}"),
            b.delete(f"/api/v1/chat/sessions/{sid}"),
            b.post("/api/v1/chat", json={"message": "let me in", "session_id": sid, "model": "fake-model"}),
        ):
            assert resp.status_code == 404, resp.text
            assert resp.json()["error"]["code"] == "NOT_FOUND" and "private" not in resp.text
        assert sid not in {s["session_id"] for s in b.get("/api/v1/chat/sessions").json()["data"]}
        assert a.get(f"/api/v1/chat/sessions/{sid}").status_code == 200  # untouched
        assert a.delete(f"/api/v1/chat/sessions/{sid}").status_code == 200
        assert a.get(f"/api/v1/chat/sessions/{sid}").status_code == 404


def test_stats_for_self_and_admin(gw, alice):
    with api(gw, alice) as a, api(gw, gw.key) as admin:
        a.post("/api/v1/chat", json={"message": "count me", "model": "fake-model"})
        mine = a.get("/api/v1/chat/sessions/stats").json()
        assert mine["user"]["conversations"] >= 1 and "global" not in mine
        everyone = admin.get("/api/v1/chat/sessions/stats").json()
        assert everyone["global"]["conversations"] >= mine["user"]["conversations"]
        assert {"active", "created", "evicted", "hit_rate"} <= set(everyone["hot"])


def test_untrusted_key_cannot_claim_identity_and_metadata_never_goes_upstream(gw, alice, fake_b):
    scenario = uuid.uuid4().hex
    chat = str(uuid.uuid4())
    client = openai.OpenAI(base_url=gw.base_url, api_key=alice, max_retries=0)
    client.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"X-OpenWebUI-User-Id": "victim", "X-OpenWebUI-Chat-Id": chat},
        extra_body={"metadata": {"user_id": "victim", "chat_id": chat}, "fake": {"id": scenario}},
    )
    assert "metadata" not in fake_b.stats(scenario)["bodies"][0]
    with api(gw, alice) as a:  # no session was made from the untrusted chat id
        assert all(s["source"] != "openwebui" for s in a.get("/api/v1/chat/sessions").json()["data"])


def test_openwebui_forwarder_history_is_not_duplicated(gw, forwarder):
    chat = str(uuid.uuid4())
    headers = {
        "X-OpenWebUI-User-Id": "owui-user-1",
        "X-OpenWebUI-User-Name": "J%C3%BCrgen",
        "X-OpenWebUI-Chat-Id": chat,
    }
    client = openai.OpenAI(base_url=gw.base_url, api_key=forwarder, max_retries=0, default_headers=headers)
    history: list[dict[str, Any]] = []
    for text in ("one", "two", "three"):
        history.append({"role": "user", "content": text})
        reply = client.chat.completions.create(model="fake-model", messages=history).choices[0].message.content
        history.append({"role": "assistant", "content": reply})
    # the whole history resent once more, unchanged
    client.chat.completions.create(model="fake-model", messages=history[:-1])
    rows = _rows_for_chat(gw, "owui:owui-user-1", chat)
    assert [r[0] for r in rows] == ["user", "assistant"] * 3


def test_hundred_concurrent_requests_on_one_conversation(gw, forwarder):
    chat = str(uuid.uuid4())
    headers = {"X-OpenWebUI-User-Id": "conc-user", "X-OpenWebUI-Chat-Id": chat}

    async def run() -> None:
        client = openai.AsyncOpenAI(base_url=gw.base_url, api_key=forwarder, max_retries=0, default_headers=headers)
        await asyncio.gather(
            *(
                client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": f"m{i}"}])
                for i in range(100)
            )
        )
        await client.close()

    asyncio.run(run())
    rows = _rows_for_chat(gw, "owui:conc-user", chat)
    assert len(rows) == 200 and len(set(rows)) == 200
    conv = _conversation(gw, "owui:conc-user", chat)
    assert conv["message_count"] == 200 and conv["request_counts"]["standard"] == 100
    assert conv["tokens_in"] == 100 and conv["tokens_out"] == 200  # fake usage: 1 prompt word, 2 answer words


def test_concurrent_cap_per_user_gives_429(tmp_path, fake_b):
    gateway = start_gateway(
        tmp_path,
        {"upstreams": [{"name": "b", "base_url": fake_b.base_url}]},
        env={"CHATGATE_SESSIONS__MAX_CONCURRENT_PER_USER": "2"},
    )
    try:

        async def run() -> list[int]:
            async with httpx.AsyncClient(base_url=gateway.base_url, headers={"x-api-key": gateway.key}) as c:
                body = {"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "fake": {"delay": 1}}
                results = await asyncio.gather(*(c.post("/chat/completions", json=body, timeout=10) for _ in range(4)))
                return sorted(r.status_code for r in results)

        assert asyncio.run(run()) == [200, 200, 429, 429]
    finally:
        stop(gateway.proc)


def test_jwt_sign_in_and_its_failures(tmp_path, fake_b):
    secret = "s3cret-for-tests-only-0123456789abcdef"
    gateway = start_gateway(
        tmp_path,
        {"upstreams": [{"name": "b", "base_url": fake_b.base_url}]},
        env={
            "CHATGATE_IDENTITY__JWT__SECRET": secret,
            "CHATGATE_IDENTITY__JWT__ISSUER": "https://idp.example",
            "CHATGATE_IDENTITY__JWT__AUDIENCE": "chatgate",
        },
    )
    try:
        now = int(time.time())
        good = {"sub": "carol", "iss": "https://idp.example", "aud": "chatgate", "exp": now + 60, "name": "Carol"}
        cases = {
            "ok": jwt.encode(good, secret, algorithm="HS256"),
            "bad_signature": jwt.encode(good, "another-secret-of-the-same-length-000000", algorithm="HS256"),
            "expired": jwt.encode({**good, "exp": now - 3600}, secret, algorithm="HS256"),
            "issuer": jwt.encode({**good, "iss": "https://evil.example"}, secret, algorithm="HS256"),
            "audience": jwt.encode({**good, "aud": "someone-else"}, secret, algorithm="HS256"),
        }
        for reason, token in cases.items():
            r = httpx.post(
                gateway.url + "/api/v1/chat",
                json={"message": "hi", "model": "fake-model"},
                headers={"Authorization": f"Bearer {token}"},
            )
            if reason == "ok":
                assert r.status_code == 200, r.text
                sessions = httpx.get(
                    gateway.url + "/api/v1/chat/sessions", headers={"Authorization": f"Bearer {token}"}
                )
                assert len(sessions.json()["data"]) == 1
            else:
                assert r.status_code == 401, (reason, r.text)
                assert r.json()["error"]["details"]["reason"] == reason and r.json()["error"]["message"]
    finally:
        stop(gateway.proc)


def test_personalised_system_prompt_and_anonymous_callers(tmp_path, fake_b):
    gateway = start_gateway(
        tmp_path,
        {
            "upstreams": [{"name": "b", "base_url": fake_b.base_url}],
            "sessions": {"system_prompt_template": "You help {name} ({timezone})."},
            "identity": {"allow_anonymous": True},
        },
    )
    try:
        scenario = uuid.uuid4().hex
        r = httpx.post(
            gateway.base_url + "/chat/completions",
            json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "fake": {"id": scenario}},
        )
        assert r.status_code == 200, r.text  # no key: anonymous, by IP
        sent = fake_b.stats(scenario)["bodies"][0]["messages"]
        assert sent[0] == {"role": "system", "content": "You help the user (UTC)."} and sent[1]["content"] == "hi"
        assert httpx.get(gateway.url + "/api/v1/chat/sessions").status_code == 401  # sessions need a key
    finally:
        stop(gateway.proc)


def test_clean_shutdown_under_load_loses_no_write(tmp_path, fake_b):
    gateway = start_gateway(
        tmp_path,
        {
            "upstreams": [{"name": "b", "base_url": fake_b.base_url}],
            "store": {"flush_interval": 1.0, "batch_size": 100000},
            "limits": {"user_requests_per_minute": 1000},  # 300 requests from one user
        },
    )
    ok = 0

    async def load() -> int:
        done = 0
        async with httpx.AsyncClient(base_url=gateway.url, headers={"x-api-key": gateway.key}, timeout=30) as c:

            async def one(i: int) -> int:
                r = await c.post("/api/v1/chat", json={"message": f"n{i}", "model": "fake-model"})
                return 1 if r.status_code == 200 else 0

            tasks = [asyncio.create_task(one(i)) for i in range(300)]
            # Stop once answers flow, most requests still in flight (a fixed sleep is flaky on a busy machine).
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED, timeout=20)
            gateway.proc.send_signal(signal.SIGTERM)  # clean shutdown while requests are in flight
            for t in tasks:
                try:
                    done += await t
                except httpx.HTTPError:
                    pass
        return done

    ok = asyncio.run(load())
    gateway.proc.wait(30)
    assert gateway.proc.returncode == 0
    with sqlite3.connect(gateway.data_dir / "chatgate.db") as db:
        messages = db.execute("select count(*) from messages").fetchone()[0]
        conversations = db.execute("select count(*) from conversations").fetchone()[0]
    assert ok > 0 and messages == 2 * ok and conversations == ok


def kill_9(proc: subprocess.Popen[bytes]) -> None:
    """A crash: SIGKILL to the server and every worker at once (no shutdown, no drain)."""
    for pid in [*descendants(proc.pid), proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("door", ["chat-api", "openai-every-turn"])
def test_kill_9_under_load_loses_no_acknowledged_turn(tmp_path, fake_b, door):
    """32 clients in conversations (half streaming) until 300 turns are answered, then kill -9: every turn whose
    answer a client received in full is in the store after a restart. The chat API commits its turns before
    it answers; the OpenAI door does with ``store.durability: every_turn``. Writes behind would be flushed
    only every second here."""
    config = {
        "upstreams": [{"name": "b", "base_url": fake_b.base_url}],
        "limits": {"user_requests_per_minute": 100_000},
        "store": {"flush_interval": 1.0, **({"durability": "every_turn"} if door != "chat-api" else {})},
    }
    gateway = start_gateway(tmp_path, config, args=["--workers", "2"], ready_timeout=120)
    run = uuid.uuid4().hex[:8]
    acknowledged: dict[str, list[str]] = {}  # conversation (session id / chat id) -> the texts answered, in order
    enough = asyncio.Event()

    async def one_turn(c: httpx.AsyncClient, i: int, n: int, sid: str | None, history: list[Any]) -> str | None:
        """The turn's conversation when its answer arrived in full, else None."""
        text, stream = f"{run} c{i} n{n}", i % 2 == 1
        if door == "chat-api":
            body: dict[str, Any] = {"message": text, "model": "fake-model", "stream": stream}
            if sid:
                body["session_id"] = sid
            url, headers = "/api/v1/chat", {}
        else:
            history.append({"role": "user", "content": text})
            body = {"model": "fake-model", "messages": history, "stream": stream}
            url, headers = "/v1/chat/completions", {"X-OpenWebUI-User-Id": f"u{i}", "X-OpenWebUI-Chat-Id": sid or ""}
        async with c.stream("POST", url, json=body, headers=headers) as resp:
            raw = (await resp.aread()).decode()
        if resp.status_code != 200:
            return None
        if not stream:
            answer = json.loads(raw)
            reply = answer["response"] if door == "chat-api" else answer["choices"][0]["message"]["content"]
            got = answer.get("session_id", sid)
        else:  # answered in full: the last event, then [DONE]
            events = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
            if events[-1:] != ["[DONE]"]:
                return None
            parsed = [json.loads(e) for e in events[:-1]]
            if door == "chat-api":
                done = parsed[-1]
                if done.get("type") != "done":
                    return None
                reply, got = done["response"], done["session_id"]
            else:
                reply = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in parsed if ch.get("choices"))
                got = sid
        assert reply.strip() == f"echo: {text}"
        if door != "chat-api":
            history.append({"role": "assistant", "content": reply})
        return got

    async def client_loop(i: int) -> None:
        sid = None if door == "chat-api" else f"chat-{run}-{i}"
        history: list[Any] = []
        async with httpx.AsyncClient(base_url=gateway.url, headers={"x-api-key": gateway.key}, timeout=30) as c:
            for n in range(10_000):
                try:
                    got = await one_turn(c, i, n, sid, history)
                except (httpx.HTTPError, json.JSONDecodeError, IndexError, KeyError):
                    return  # the server died under this request: not acknowledged
                if got is None:
                    return
                sid = got
                acknowledged.setdefault(sid, []).append(f"{run} c{i} n{n}")
                if sum(map(len, acknowledged.values())) >= 300:
                    enough.set()

    async def load() -> None:
        tasks = [asyncio.create_task(client_loop(i)) for i in range(32)]
        await asyncio.wait_for(enough.wait(), 120)
        kill_9(gateway.proc)  # mid-flight: 32 requests are out
        await asyncio.gather(*tasks)

    asyncio.run(load())
    answered = sum(map(len, acknowledged.values()))
    assert answered >= 300
    restarted = start_gateway(
        tmp_path, config, args=["--workers", "1"], ready_timeout=120
    )  # the same data directory, as it was left
    try:
        with sqlite3.connect(restarted.data_dir / "chatgate.db") as db:
            rows = db.execute("select conversation_id, role, content from messages order by id").fetchall()
        stored: dict[str, list[tuple[str, Any]]] = {}
        for cid, role, content in rows:
            stored.setdefault(cid, []).append((role, json.loads(content).strip()))  # a streamed echo ends in " "
        lost = []
        for conv, texts in acknowledged.items():
            cid = conv if door == "chat-api" else next((c for c in stored if (("user", texts[0]) in stored[c])), None)
            have = stored.get(cid or "", [])
            lost += [t for t in texts if ("user", t) not in have or ("assistant", f"echo: {t}") not in have]
        assert lost == [], f"{len(lost)} of {answered} acknowledged turns lost: {lost[:5]}"
        if door == "chat-api":  # and the chat API serves them from the restarted server
            sid, texts = next(iter(acknowledged.items()))
            with api(restarted, restarted.key) as c:
                info = c.get(f"/api/v1/chat/sessions/{sid}", params={"limit": 500}).json()
            users = [m["content"] for m in info["messages"] if m["role"] == "user"]
            assert users[: len(texts)] == texts
    finally:
        stop(restarted.proc)


# ---- reading the store directly --------------------------------------------------------------


def _conversation_id(user_id: str, key: str) -> str:
    from chatgate.sessions.manager import conversation_id

    return conversation_id(user_id, key)


def _query(gw: Gateway, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    time.sleep(0.3)  # the write-behind flushes every 50 ms
    url = gw.extra.get("env", {}).get("CHATGATE_DATABASE_URL")
    if url is None:
        with sqlite3.connect(gw.data_dir / "chatgate.db") as db:
            return list(db.execute(sql.replace("%s", "?"), params).fetchall())
    import asyncpg

    async def fetch() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            pg_sql = sql
            for i in range(sql.count("%s")):
                pg_sql = pg_sql.replace("%s", f"${i + 1}", 1)
            return [tuple(r) for r in await conn.fetch(pg_sql, *params)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def _rows_for_chat(gw: Gateway, user_id: str, key: str) -> list[tuple[Any, ...]]:
    return _query(
        gw,
        "select role, dedupe_key from messages where conversation_id = %s order by id",
        _conversation_id(user_id, key),
    )


def _conversation(gw: Gateway, user_id: str, key: str) -> dict[str, Any]:
    from chatgate.store.db import Store

    time.sleep(0.3)
    url = gw.extra.get("env", {}).get("CHATGATE_DATABASE_URL") or f"sqlite+aiosqlite:///{gw.data_dir}/chatgate.db"

    async def fetch() -> Any:
        store = await Store.open(url, migrate=False)
        try:
            return await store.conversations.get(_conversation_id(user_id, key))
        finally:
            await store.close()

    row = asyncio.run(fetch())
    assert row is not None
    return {
        "message_count": row.message_count,
        "tokens_in": row.tokens_in,
        "tokens_out": row.tokens_out,
        "request_counts": row.request_counts,
    }


def test_streamed_reply_is_stored_once_the_stream_ends(gw, forwarder):
    chat = str(uuid.uuid4())
    headers = {"X-OpenWebUI-User-Id": "streamer", "X-OpenWebUI-Chat-Id": chat, "X-OpenWebUI-Message-Id": "mid-1"}
    client = openai.OpenAI(base_url=gw.base_url, api_key=forwarder, max_retries=0, default_headers=headers)
    stream = client.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "tell me"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "echo: tell me "
    rows = _query(
        gw,
        "select role, content, client_message_id from messages where conversation_id = %s order by id",
        _conversation_id("owui:streamer", chat),
    )
    assert [(r[0], r[2]) for r in rows] == [("user", "mid-1"), ("assistant", None)]
    assert "echo: tell me " in str(rows[1][1])
    conv = _conversation(gw, "owui:streamer", chat)
    assert conv["message_count"] == 2 and conv["tokens_out"] == 3  # usage from the stream's usage chunk


def test_revoked_keys_and_disabled_users_are_refused(gw):
    name = "eve" + uuid.uuid4().hex[:6]
    key = new_key(gw, name)
    second = next(
        line.strip()
        for line in cli(gw, "keys", "create", "--user", f"u-{name}").splitlines()
        if line.strip().startswith("cg-")
    )
    with api(gw, key) as c:
        assert c.get("/api/v1/chat/sessions").status_code == 200
    prefix = key[:11]
    cli(gw, "keys", "revoke", prefix)
    time.sleep(0.7)  # identity.key_cache_ttl is 0.5 s here
    with api(gw, key) as c:
        r = c.get("/api/v1/chat/sessions")
        assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"
    with api(gw, second) as c:
        assert c.get("/api/v1/chat/sessions").status_code == 200
    cli(gw, "users", "disable", f"u-{name}")
    time.sleep(0.7)
    with api(gw, second) as c:
        assert c.get("/api/v1/chat/sessions").status_code == 401


def test_streamed_tool_calls_are_stored(gw, forwarder):
    chat = str(uuid.uuid4())
    headers = {"X-OpenWebUI-User-Id": "tooler", "X-OpenWebUI-Chat-Id": chat}
    client = openai.OpenAI(base_url=gw.base_url, api_key=forwarder, max_retries=0, default_headers=headers)
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    chunks = list(
        client.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "use a tool"}], tools=tools, stream=True
        )
    )
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    rows = _query(
        gw,
        "select role, content from messages where conversation_id = %s order by id",
        _conversation_id("owui:tooler", chat),
    )
    assert rows[-1][0] == "assistant"
    stored = rows[-1][1] if isinstance(rows[-1][1], list) else json.loads(rows[-1][1])
    assert stored[0]["type"] == "tool_calls" and stored[0]["tool_calls"][0]["function"]["name"] == "lookup"
    conv = _conversation(gw, "owui:tooler", chat)
    assert conv["request_counts"]["tool"] == 1
