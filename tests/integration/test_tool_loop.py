"""The tool loop through real ``chatgate serve`` processes (two workers), driven by the openai SDK (sync, async,
streams) and the chat API: the fake upstream plays the model with a ``script`` (tool calls, then content),
custom tools (``tests/integration/server_tools.py``) fail, time out, hang and meet each other.

The search path runs on SQLite and on PostgreSQL (``test_search_*``, parametrised by the ``gw`` fixture)."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Fake, Gateway, start_gateway, stop
from tests.fake_upstream import _usage
from tests.integration.test_rag import EXPENSES, POLICY, SECRET, h, make_collection, sse_events
from tests.integration.test_sessions import _pg_database, _psql

ROOT = Path(__file__).parents[2]
CUSTOM = [
    {
        "name": "meet",
        "description": "Meet the other side.",
        "parameters": {"type": "object", "properties": {"key": {}, "me": {}, "other": {}}},
        "callable": "tests.integration.server_tools:meet",
    },
    {"name": "broken", "description": "Always fails.", "callable": "tests.integration.server_tools:broken"},
    {"name": "slow", "description": "Never in time.", "callable": "tests.integration.server_tools:slow"},
    {"name": "hang", "description": "Runs until cancelled.", "callable": "tests.integration.server_tools:hang"},
    {
        "name": "whoami",
        "description": "The caller.",
        "callable": "tests.integration.server_tools:whoami",
        "deterministic": True,
    },
]


def config(fake: Fake, **extra: Any) -> dict[str, Any]:
    return {
        "upstreams": [{"name": "a", "base_url": fake.base_url, "api_key": "upstream-secret-a"}],
        "retry": {"max_retries": 1, "base": 0.01, "cap": 0.05},
        "rag": {
            "embeddings": {
                "backend": "openai",
                "base_url": fake.base_url,
                "api_key": "upstream-secret-a",
                "model": "fake-word-hash",
            },
            "retrieval": {"job_poll_interval": 0.2},
        },
        "limits": {"user_tokens_per_hour": 1_000_000},
        "tools": {"timeout": 2, "custom": CUSTOM},
        "assistants": [
            {
                "name": "hr-tools",
                "model": "fake-model",
                "collections": ["hr"],
                "retrieval": "tool",
                "tools": ["current_time"],
            },
            {
                "name": "all-tools",
                "model": "fake-model",
                "collections": ["hr"],
                "retrieval": "tool",
                "tools": ["current_time", "meet", "broken", "slow", "hang", "whoami"],
                "max_steps": 2,
            },
            {"name": "notes-tools", "model": "fake-model", "collections": ["notes"], "retrieval": "tool"},
        ],
        **extra,
    }


def start(tmp: Path, fake: Fake, env: dict[str, str] | None = None, **extra: Any) -> Gateway:
    """Two workers sharing their limits and cache through Redis (keys under a prefix of their own)."""
    prefix = "cg-tools-" + secrets.token_hex(4)
    env = {
        "PYTHONPATH": str(ROOT),
        "CHATGATE_TEST_TOOL_LOG": str(tmp / "tools.log"),
        "CHATGATE_REDIS_URL": "redis://127.0.0.1:6379/0",
        "CHATGATE_LIMITS__REDIS_PREFIX": prefix + ":limits",
        "CHATGATE_CACHE__REDIS_PREFIX": prefix + ":cache",
        **(env or {}),
    }
    gw = start_gateway(tmp, config(fake, **extra), env=env, args=["--workers", "2"])
    gw.extra["tool_log"] = tmp / "tools.log"
    gw.extra["env"] = {k: v for k, v in env.items() if k == "CHATGATE_DATABASE_URL"}
    return gw


def new_key(gw: Gateway, user_id: str) -> str:
    """A user key, made with the CLI against the gateway's own store."""
    cli = str(Path(sys.executable).with_name("chatgate"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGATE_")}
    env |= {"CHATGATE_DATA_DIR": str(gw.data_dir), **gw.extra["env"]}
    subprocess.run([cli, "users", "create", user_id, "--id", user_id], check=True, env=env, capture_output=True)
    out = subprocess.run(
        [cli, "keys", "create", "--user", user_id], check=True, env=env, capture_output=True, text=True
    )
    return next(word for word in out.stdout.split() if word.startswith("cg-"))


class Gateways:
    """The module's gateways, one per store, started when a test first needs one."""

    def __init__(self, tmp: pytest.TempPathFactory, fake: Fake) -> None:
        self.tmp, self.fake = tmp, fake
        self.started: dict[str, Gateway] = {}
        self.databases: list[str] = []

    def get(self, backend: str) -> Gateway:
        if backend in self.started:
            return self.started[backend]
        env = {}
        if backend == "postgresql":
            dbname, url = _pg_database()
            _psql(f"CREATE DATABASE {dbname}")
            self.databases.append(dbname)
            env["CHATGATE_DATABASE_URL"] = url
        g = self.started[backend] = start(self.tmp.mktemp(f"tools-{backend}"), self.fake, env)
        files = {"policy.md": POLICY.encode(), "expenses.md": EXPENSES.encode()}
        cid, job = make_collection(g, g.key, "hr", "admin", files)
        assert job["status"] == "done" and job["added"] == 2, job
        g.extra["hr"] = cid
        return g

    def close(self) -> None:
        for g in self.started.values():
            stop(g.proc)
        for dbname in self.databases:
            _psql(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory, fake_a: Fake) -> Iterator[Gateways]:
    made = Gateways(tmp_path_factory, fake_a)
    yield made
    made.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def gw(request: pytest.FixtureRequest, gateways: Gateways) -> Gateway:
    """The search path, on both stores."""
    return gateways.get(request.param)


@pytest.fixture
def sqlite_gw(gateways: Gateways) -> Gateway:
    """The loop itself is the same on every store: its tests run on the embedded one."""
    return gateways.get("sqlite")


def client(gw: Gateway, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key or gw.key, max_retries=0)


def knobs(tag: str, script: list[dict[str, Any]]) -> dict[str, Any]:
    return {"fake": {"id": tag, "script": script}}


def search(query: str, **more: Any) -> dict[str, Any]:
    return {"name": "search_documents", "arguments": {"query": query, **more}}


def tag() -> str:
    return "tl-" + secrets.token_hex(4)


def question(text: str = "How long is parental leave?") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def tool_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body["messages"] if m.get("role") == "tool"]


def metric(gw: Gateway, name: str, **labels: str) -> float:
    text = httpx.get(gw.url + "/metrics", headers=h(gw.key)).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def metric_reaches(gw: Gateway, name: str, at_least: float, **labels: str) -> float:
    """The metric once it is ``at_least`` (each worker publishes its values every few seconds), or as it is."""
    deadline = time.monotonic() + 15
    while (value := metric(gw, name, **labels)) < at_least and time.monotonic() < deadline:
        time.sleep(0.2)
    return value


def exported(gw: Gateway, user_id: str, count: int) -> list[dict[str, Any]]:
    """The user's analytics rows, once ``count`` have been written (the workers write behind)."""
    deadline = time.monotonic() + 30
    while True:
        rows = httpx.get(
            gw.url + "/admin/analytics/export", params={"user_id": user_id, "format": "json"}, headers=h(gw.key)
        ).json()
        if len(rows) >= count or time.monotonic() > deadline:
            return rows  # type: ignore[no-any-return]
        time.sleep(0.2)


# ---- the search path, on both stores ----------------------------------------------------------------------


def test_search_one_step(gw: Gateway, fake_a: Fake) -> None:
    t = tag()
    script = [{"call": [search("parental leave")]}, {"answer": "Sixteen? No: {results}"}]
    done = client(gw).chat.completions.create(model="hr-tools", messages=question(), extra_body=knobs(t, script))
    assert "twenty six weeks" in done.choices[0].message.content
    assert done.choices[0].finish_reason == "stop" and not done.choices[0].message.tool_calls
    sources = done.model_extra["sources"]
    assert sources[0]["index"] == 1 and sources[0]["document"] == "policy.md"
    assert "twenty six weeks" in sources[0]["text"]
    first, second = fake_a.stats(t)["bodies"]
    offered = {tool["function"]["name"]: tool["function"] for tool in first["tools"]}
    assert set(offered) == {"search_documents", "current_time"}
    parameters = offered["search_documents"]["parameters"]
    assert parameters["required"] == ["query"] and "collection" not in parameters["properties"]  # one collection
    asked = second["messages"][-2]
    assert asked["role"] == "assistant" and asked["tool_calls"][0]["function"]["name"] == "search_documents"
    result = tool_messages(second)[0]
    assert result["tool_call_id"] == asked["tool_calls"][0]["id"] and result["content"].startswith("[1] ")
    # every step's tokens: the answer's usage is the two calls' together
    steps = [_usage(first, ""), _usage(second, done.choices[0].message.content)]
    assert done.usage.prompt_tokens == steps[0]["prompt_tokens"] + steps[1]["prompt_tokens"]
    assert done.usage.total_tokens == sum(s["prompt_tokens"] for s in steps) + done.usage.completion_tokens


def test_search_two_steps_number_sources_on(gw: Gateway, fake_a: Fake) -> None:
    t = tag()
    script = [
        {"call": [search("parental leave")]},
        {"call": [search("taxi receipts refunded")]},
        {"answer": "{results}"},
    ]

    async def ask() -> Any:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=gw.key, max_retries=0) as c:
            return await c.chat.completions.create(model="hr-tools", messages=question(), extra_body=knobs(t, script))

    done = asyncio.run(ask())
    bodies = fake_a.stats(t)["bodies"]
    assert len(bodies) == 3
    results = [m["content"] for m in tool_messages(bodies[2])]
    assert results[0].startswith("[1] ")
    n = len(done.model_extra["sources"])
    sources = done.model_extra["sources"]
    assert [s["index"] for s in sources] == list(range(1, n + 1))  # one numbering across the steps
    first_search = results[0].count("\n\n[") + 1
    assert results[1].startswith(f"[{first_search + 1}] ")  # the second search's numbers follow the first's
    assert sources[first_search]["document"] == "expenses.md" and "Taxi" in sources[first_search]["text"]


def test_search_private_collection_stays_its_owners(gw: Gateway, fake_a: Fake) -> None:
    bob_id, alice_id = "bob-" + secrets.token_hex(3), "alice-" + secrets.token_hex(3)
    bob, alice = new_key(gw, bob_id), new_key(gw, alice_id)
    _, job = make_collection(gw, bob, "notes", "private", {"secret.md": SECRET.encode()})
    assert job["status"] == "done"
    script = [{"call": [search("vault combination")]}, {"answer": "{results}"}]
    tb, ta = tag(), tag()
    as_bob = client(gw, bob).chat.completions.create(
        model="notes-tools", messages=question("What is the vault combination?"), extra_body=knobs(tb, script)
    )
    assert "zebra-4921" in as_bob.choices[0].message.content
    assert as_bob.model_extra["sources"][0]["document"] == "secret.md"
    as_alice = client(gw, alice).chat.completions.create(
        model="notes-tools", messages=question("What is the vault combination?"), extra_body=knobs(ta, script)
    )
    assert "zebra-4921" not in orjson.dumps(fake_a.stats(ta)["bodies"]).decode()
    assert "zebra-4921" not in as_alice.choices[0].message.content
    assert not as_alice.model_extra.get("sources")


def test_search_stream_on_the_chat_api_shows_the_steps(gw: Gateway, fake_a: Fake) -> None:
    t = tag()
    script = [{"call": [search("parental leave")]}, {"answer": "Leave: {results}"}]
    message = "How long is parental leave? [fake:" + orjson.dumps({"id": t, "script": script}).decode() + "]"
    with httpx.stream(
        "POST",
        gw.url + "/api/v1/chat",
        json={"message": message, "model": "hr-tools", "stream": True},
        headers=h(gw.key),
        timeout=30,
    ) as resp:
        assert resp.status_code == 200
        events = sse_events(resp.read().decode())
    assert events[-1] == "[DONE]"
    kinds = [e["type"] for e in events[:-1]]
    assert kinds.index("tool") < kinds.index("tool_result") < kinds.index("delta") < kinds.index("done")
    call = next(e for e in events[:-1] if e["type"] == "tool")
    assert call == {"type": "tool", "step": 1, "name": "search_documents", "arguments": {"query": "parental leave"}}
    result = next(e for e in events[:-1] if e["type"] == "tool_result")
    assert result["sources"] >= 1 and result["outcome"] == "ok" and "reason" not in result
    done = events[-2]
    assert "twenty six weeks" in done["response"] and done["sources"][0]["document"] == "policy.md"
    deltas = "".join(e["content"] for e in events[:-1] if e["type"] == "delta")
    assert deltas == done["response"]
    # the stored conversation has the answer, not the tool steps
    history = httpx.get(f"{gw.url}/api/v1/chat/sessions/{done['session_id']}", headers=h(gw.key)).json()
    assert [m["role"] for m in history["messages"]] == ["user", "assistant"]


# ---- the loop itself (on SQLite) ----------------------------------------------------------------------------


def test_a_first_answer_without_tool_calls_streams_straight_through(sqlite_gw: Gateway, fake_a: Fake) -> None:
    t = tag()
    stream = client(sqlite_gw).chat.completions.create(
        model="hr-tools",
        messages=question("Hello"),
        stream=True,
        stream_options={"include_usage": True},
        extra_body=knobs(t, [{"answer": "Hello there, how can I help"}]),
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == "Hello there, how can I help"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert len(fake_a.stats(t)["bodies"]) == 1


def test_stream_with_steps_streams_only_the_answer(sqlite_gw: Gateway, fake_a: Fake) -> None:
    t = tag()
    script = [{"call": [search("parental leave")]}, {"answer": "It is twenty six weeks [1]"}]
    body = {
        "model": "hr-tools",
        "messages": question(),
        "stream": True,
        "stream_options": {"include_usage": True},
        **knobs(t, script),
    }
    with httpx.stream("POST", sqlite_gw.base_url + "/chat/completions", json=body, headers=h(sqlite_gw.key)) as r:
        raw = r.read().decode()
    assert ": tool search_documents" in raw.split("data:")[1]  # a comment before the answer's first chunk
    events = sse_events(raw)
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    chunks = events[:-1]
    assert not any(c["choices"] and c["choices"][0]["delta"].get("tool_calls") for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.strip() == "It is twenty six weeks [1]"
    sources = next(c["sources"] for c in chunks if "sources" in c)
    assert sources[0]["document"] == "policy.md"
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert len(usage) == 1  # the steps' usage together, once
    bodies = fake_a.stats(t)["bodies"]
    assert usage[0]["prompt_tokens"] == sum(_usage(b, "")["prompt_tokens"] for b in bodies)


def test_parallel_calls_run_together(sqlite_gw: Gateway, fake_a: Fake) -> None:
    t = tag()
    meet = [
        {"name": "meet", "arguments": {"key": t, "me": "left", "other": "right"}},
        {"name": "meet", "arguments": {"key": t, "me": "right", "other": "left"}},
        search("parental leave"),
        search("taxi receipts"),
    ]
    script = [{"call": meet}, {"answer": "{results}"}]
    done = client(sqlite_gw).chat.completions.create(
        model="all-tools", messages=question(), extra_body=knobs(t, script)
    )
    bodies = fake_a.stats(t)["bodies"]
    assert len(bodies) == 2
    asked = bodies[1]["messages"][-5]
    assert [c["function"]["name"] for c in asked["tool_calls"]] == [
        "meet",
        "meet",
        "search_documents",
        "search_documents",
    ]
    results = tool_messages(bodies[1])
    assert [r["tool_call_id"] for r in results] == [c["id"] for c in asked["tool_calls"]]
    # each waited for the other: they met only because they ran at the same time
    assert results[0]["content"] == "left met right" and results[1]["content"] == "right met left"
    n = results[2]["content"].count("\n\n[") + 1
    assert results[2]["content"].startswith("[1] ") and results[3]["content"].startswith(f"[{n + 1}] ")
    assert [s["index"] for s in done.model_extra["sources"]] == list(range(1, len(done.model_extra["sources"]) + 1))


def test_max_steps_then_an_answer_without_tools(sqlite_gw: Gateway, fake_a: Fake) -> None:
    t = tag()
    script = [{"call": [search("parental leave")]}]  # it would search for ever
    stream = client(sqlite_gw).chat.completions.create(
        model="all-tools", messages=question(), stream=True, extra_body=knobs(t, script)
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.strip() == "done after 2 steps"
    bodies = fake_a.stats(t)["bodies"]
    assert len(bodies) == 3  # all-tools: max_steps 2, then the answer
    assert [b.get("tool_choice") for b in bodies] == [None, None, "none"]


def test_a_tool_error_and_a_timeout_are_results_the_model_reads(sqlite_gw: Gateway, fake_a: Fake) -> None:
    t = tag()
    failed_before = metric(sqlite_gw, "chatgate_tool_calls_total", tool="broken", outcome="error")
    script = [{"call": [{"name": "broken"}, {"name": "slow"}, {"name": "current_time", "arguments": {}}]}]
    script.append({"answer": "{results}"})
    done = client(sqlite_gw).chat.completions.create(
        model="all-tools", messages=question("What time is it?"), extra_body=knobs(t, script)
    )
    broken, slow, now = (m["content"] for m in tool_messages(fake_a.stats(t)["bodies"][1]))
    assert broken == "The tool failed; try other arguments, or answer without it."
    assert "broken on purpose" not in done.choices[0].message.content  # the model is not told the server's error
    assert slow == "The tool did not finish within 2 seconds."
    assert str(time.gmtime().tm_year) in now
    wanted = failed_before + 1
    assert metric_reaches(sqlite_gw, "chatgate_tool_calls_total", wanted, tool="broken", outcome="error") == wanted
    assert metric_reaches(sqlite_gw, "chatgate_tool_calls_total", 1, tool="slow", outcome="timeout") >= 1
    assert metric_reaches(sqlite_gw, "chatgate_tool_duration_seconds_count", 1, tool="current_time") >= 1
    assert metric_reaches(sqlite_gw, "chatgate_tool_loop_steps_count", 1) >= 1
    assert "broken on purpose" in sqlite_gw.logs()  # the operator is


def test_a_client_tool_is_passed_through(sqlite_gw: Gateway, fake_a: Fake) -> None:
    weather = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {}}}},
    }
    script = [{"call": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}]
    t = tag()
    done = client(sqlite_gw).chat.completions.create(
        model="hr-tools", messages=question("Weather?"), tools=[weather], extra_body=knobs(t, script)
    )
    call = done.choices[0].message.tool_calls[0]
    assert done.choices[0].finish_reason == "tool_calls" and len(done.choices[0].message.tool_calls) == 1
    assert (call.id, call.function.name, call.function.arguments) == ("call_0_0", "get_weather", '{"city": "Paris"}')
    names = [tool["function"]["name"] for tool in fake_a.stats(t)["bodies"][0]["tools"]]
    assert names == ["get_weather", "search_documents", "current_time"]  # the client's first
    t = tag()
    stream = client(sqlite_gw).chat.completions.create(
        model="hr-tools", messages=question("Weather?"), tools=[weather], stream=True, extra_body=knobs(t, script)
    )
    parts = [c.choices[0].delta.tool_calls for c in stream if c.choices and c.choices[0].delta.tool_calls]
    args = "".join(p[0].function.arguments or "" for p in parts)
    assert parts[0][0].function.name == "get_weather" and args == '{"city": "Paris"}'
    assert len(fake_a.stats(t)["bodies"]) == 1


def test_mixed_calls_run_the_servers_then_give_the_client_its_own(sqlite_gw: Gateway, fake_a: Fake) -> None:
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    script = [{"call": [search("parental leave"), {"name": "get_weather", "arguments": {"city": "Oslo"}}]}]
    for stream in (False, True):
        t = tag()
        body = {"model": "hr-tools", "messages": question(), "tools": [weather], "stream": stream, **knobs(t, script)}
        resp = httpx.post(sqlite_gw.base_url + "/chat/completions", json=body, headers=h(sqlite_gw.key), timeout=30)
        assert resp.status_code == 200
        if stream:
            assert ": tool search_documents" in resp.text
            chunks = [c for c in sse_events(resp.text)[:-1] if c["choices"]]
            calls = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls") or []]
            assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
        else:
            calls = resp.json()["choices"][0]["message"]["tool_calls"]
            assert resp.json()["choices"][0]["finish_reason"] == "tool_calls"
        assert [c["function"]["name"] for c in calls] == ["get_weather"]
        assert orjson.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo"}
        assert len(fake_a.stats(t)["bodies"]) == 1  # the search ran; the client answers the rest


def test_a_client_tool_named_like_a_server_tool_is_a_400(sqlite_gw: Gateway, fake_a: Fake) -> None:
    clash = {"type": "function", "function": {"name": "search_documents", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as caught:
        client(sqlite_gw).chat.completions.create(model="hr-tools", messages=question(), tools=[clash])
    error = caught.value.body
    assert error["code"] == "BAD_REQUEST" and "search_documents" in error["message"]
    assert error["details"] == {"assistant": "hr-tools", "tool": "search_documents"}


def test_every_step_is_charged_to_the_users_limits(sqlite_gw: Gateway, fake_a: Fake) -> None:
    user_id = "lim-" + secrets.token_hex(3)
    key = new_key(sqlite_gw, user_id)
    t = tag()
    script = [{"call": [search("parental leave")]}, {"call": [search("holidays")]}, {"answer": "{results}"}]
    done = client(sqlite_gw, key).chat.completions.create(
        model="hr-tools", messages=question(), extra_body=knobs(t, script)
    )
    bodies = fake_a.stats(t)["bodies"]
    assert len(bodies) == 3
    assert done.usage.prompt_tokens == sum(_usage(b, "")["prompt_tokens"] for b in bodies)
    limits = httpx.get(f"{sqlite_gw.url}/admin/users/{user_id}/limits", headers=h(sqlite_gw.key)).json()["limits"]
    hourly = next(line for line in limits if line["unit"] == "tokens" and line["window_seconds"] == 3600)
    assert hourly["used"] == done.usage.total_tokens
    row = exported(sqlite_gw, user_id, 1)[-1]
    assert (row["kind"], row["tool_steps"], row["tool_calls"]) == ("tool", 3, 2)
    assert row["tokens_in"] == done.usage.prompt_tokens


def test_an_upstream_failure_mid_loop_fails_and_charges_what_was_spent(sqlite_gw: Gateway, fake_a: Fake) -> None:
    user_id = "fail-" + secrets.token_hex(3)
    key = new_key(sqlite_gw, user_id)
    script = [{"call": [search("parental leave")]}, {"status": 500}]
    t = tag()
    with pytest.raises(openai.InternalServerError) as caught:
        client(sqlite_gw, key).chat.completions.create(
            model="hr-tools", messages=question(), extra_body=knobs(t, script)
        )
    assert caught.value.status_code == 502 and caught.value.body["code"] == "UPSTREAM_ERROR"
    first = _usage(fake_a.stats(t)["bodies"][0], "")
    limits = httpx.get(f"{sqlite_gw.url}/admin/users/{user_id}/limits", headers=h(sqlite_gw.key)).json()["limits"]
    hourly = next(line for line in limits if line["unit"] == "tokens" and line["window_seconds"] == 3600)
    assert hourly["used"] == first["prompt_tokens"], limits  # the first step's tokens (its completion: no words)
    # streamed: the steps before it went by as comments; then the unified error body as an event, and the end
    t = tag()
    stream = client(sqlite_gw, key).chat.completions.create(
        model="hr-tools", messages=question(), stream=True, extra_body=knobs(t, script)
    )
    with pytest.raises(openai.APIError) as broke:
        list(stream)
    assert broke.value.body["code"] == "UPSTREAM_ERROR"
    limits = httpx.get(f"{sqlite_gw.url}/admin/users/{user_id}/limits", headers=h(sqlite_gw.key)).json()["limits"]
    hourly = next(line for line in limits if line["unit"] == "tokens" and line["window_seconds"] == 3600)
    assert hourly["used"] == 2 * first["prompt_tokens"]
    rows = exported(sqlite_gw, user_id, 2)
    assert sorted((r["status"], r["error_code"], r["stream"]) for r in rows) == [
        (200, "UPSTREAM_ERROR", True),
        (502, "UPSTREAM_ERROR", False),
    ]


def test_a_client_that_hangs_up_cancels_the_loop(sqlite_gw: Gateway, fake_a: Fake) -> None:
    t = tag()
    script = [{"call": [{"name": "hang", "arguments": {"tag": t}}]}, {"answer": "never"}]
    body = {"model": "all-tools", "messages": question(), "stream": True, **knobs(t, script)}
    with httpx.stream("POST", sqlite_gw.base_url + "/chat/completions", json=body, headers=h(sqlite_gw.key)) as r:
        for line in r.iter_lines():
            if line.startswith(": tool hang"):
                break  # the tool is running: hang up
    log: Path = sqlite_gw.extra["tool_log"]
    deadline = time.monotonic() + 20
    while f"cancelled {t}" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f"started {t}\ncancelled {t}" in log.read_text()
    assert len(fake_a.stats(t)["bodies"]) == 1  # no step after it


def test_a_custom_tool_runs_as_the_caller(sqlite_gw: Gateway, fake_a: Fake) -> None:
    user_id = "who-" + secrets.token_hex(3)
    key = new_key(sqlite_gw, user_id)
    t = tag()
    done = client(sqlite_gw, key).chat.completions.create(
        model="all-tools",
        messages=question("Who am I?"),
        extra_body=knobs(t, [{"call": [{"name": "whoami"}]}, {"answer": "{results}"}]),
    )
    assert orjson.loads(done.choices[0].message.content) == {"user_id": user_id, "assistant": "all-tools"}


def test_cache_holds_deterministic_loops_until_the_documents_change(sqlite_gw: Gateway, fake_a: Fake) -> None:
    t = tag()
    script = [{"call": [search("holidays booked")]}, {"answer": "{results}"}]
    body = {"model": "hr-tools", "messages": question("Holidays?"), "temperature": 0, **knobs(t, script)}

    def ask(**kw: Any) -> httpx.Response:
        resp = httpx.post(sqlite_gw.base_url + "/chat/completions", json={**body, **kw}, headers=h(sqlite_gw.key))
        assert resp.status_code == 200, resp.text
        return resp

    first, again = ask(), ask()
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("MISS", "HIT")
    assert again.json()["sources"] == first.json()["sources"]
    assert len(fake_a.stats(t)["bodies"]) == 2
    streamed = ask(stream=True)
    assert streamed.headers["x-cache"] == "HIT" and "thirty holidays" in streamed.text
    # a document added to the collection: the search could find something else, so the answer is not served
    auth = h(sqlite_gw.key)
    files = [("files", ("more.md", b"# More\n\nHolidays can be carried over into the next year.\n"))]
    resp = httpx.post(
        f"{sqlite_gw.url}/api/v1/collections/{sqlite_gw.extra['hr']}/documents", files=files, headers=auth
    )
    job_id = resp.json()["job_id"]
    deadline = time.monotonic() + 30
    while httpx.get(f"{sqlite_gw.url}/api/v1/jobs/{job_id}", headers=auth).json()["status"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert ask().headers["x-cache"] == "MISS"
    # a loop that read the clock is never kept
    t2 = tag()
    clock = {**body, **knobs(t2, [{"call": [{"name": "current_time"}]}, {"answer": "{results}"}])}
    for _ in range(2):
        resp = httpx.post(sqlite_gw.base_url + "/chat/completions", json=clock, headers=auth)
        assert resp.headers["x-cache"] == "MISS"
    assert len(fake_a.stats(t2)["bodies"]) == 4


def test_with_the_cache_off_every_loop_runs(tmp_path: Path, fake_a: Fake) -> None:
    gw = start(tmp_path, fake_a, env={"CHATGATE_CACHE__ENABLED": "false"})
    try:
        t = tag()
        body = {"model": "hr-tools", "messages": question(), "temperature": 0}
        body |= knobs(t, [{"call": [{"name": "current_time"}]}, {"answer": "{results}"}])
        for _ in range(2):
            resp = httpx.post(gw.base_url + "/chat/completions", json=body, headers=h(gw.key))
            assert resp.status_code == 200 and "x-cache" not in resp.headers
        assert len(fake_a.stats(t)["bodies"]) == 4
    finally:
        stop(gw.proc)


def test_tool_results_are_cut_to_the_window(tmp_path: Path, fake_a: Fake) -> None:
    """A small window: the result is cut to the room left, so the next step still fits."""
    gw = start(tmp_path, fake_a, context={"windows": {"fake-model": 700}, "strategy": "truncate"})
    try:
        files = {"policy.md": (POLICY * 20).encode()}
        _, job = make_collection(gw, gw.key, "hr", "admin", files)
        assert job["status"] == "done"
        t = tag()
        script = [{"call": [search("parental leave holidays", top_k=10)]}, {"answer": "{results}"}]
        done = client(gw).chat.completions.create(
            model="hr-tools", messages=question(), max_tokens=100, extra_body=knobs(t, script)
        )
        assert done.choices[0].finish_reason == "stop"
        second = fake_a.stats(t)["bodies"][1]
        assert len(str(tool_messages(second)[0]["content"]).split()) < 700
    finally:
        stop(gw.proc)
