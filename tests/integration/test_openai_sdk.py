"""A real `chatgate serve` process in front of fake upstreams, driven by the official openai SDK."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Fake, Gateway, fast_retry_config, free_port, start_fake, start_gateway, stop

MESSAGES = [{"role": "user", "content": "hello gateway"}]


@pytest.fixture(scope="module")
def gw(tmp_path_factory, fake_a, fake_b) -> Iterator[Gateway]:
    config = fast_retry_config(
        {"name": "a", "base_url": fake_a.base_url, "api_key": "upstream-secret-a"},  # models discovered
        {"name": "b", "base_url": fake_b.base_url, "models": ["fake-model"]},
        aliases={"pretty": "fake-other"},
    )
    gateway = start_gateway(tmp_path_factory.mktemp("gw"), config, args=["--workers", "2"])
    yield gateway
    stop(gateway.proc)


def client(gw: Gateway, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=gw.key, max_retries=0, **kw)


def knobs(**kw: Any) -> dict[str, Any]:
    return {"fake": {"id": uuid.uuid4().hex, **kw}}


def test_sync_chat(gw):
    resp = client(gw).chat.completions.create(model="fake-model", messages=MESSAGES)
    assert resp.choices[0].message.content == "echo: hello gateway"
    assert resp.usage is not None and resp.usage.total_tokens == 5


async def test_async_chat_concurrently(gw):
    aclient = openai.AsyncOpenAI(base_url=gw.base_url, api_key=gw.key, max_retries=0)
    results = await asyncio.gather(
        *(
            aclient.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": f"n{i}"}])
            for i in range(20)
        )
    )
    assert sorted(r.choices[0].message.content for r in results) == sorted(f"echo: n{i}" for i in range(20))
    assert {r.system_fingerprint for r in results} == {"a", "b"}  # balanced over both upstreams
    await aclient.close()


def test_streaming_and_usage_only_when_asked(gw):
    c = client(gw)
    chunks = list(c.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "echo: hello gateway "
    assert all(ch.usage is None for ch in chunks)
    chunks = list(
        c.chat.completions.create(
            model="fake-model", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 5


async def test_async_streaming(gw):
    aclient = openai.AsyncOpenAI(base_url=gw.base_url, api_key=gw.key, max_retries=0)
    stream = await aclient.chat.completions.create(model="pretty", messages=MESSAGES, stream=True)
    text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
    assert text == "echo: hello gateway "
    await aclient.close()


def test_tools_and_options_pass_through(gw, fake_a):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    extra = knobs()
    resp = client(gw).chat.completions.create(
        model="fake-other",
        messages=MESSAGES,
        tools=tools,
        tool_choice="auto",
        n=1,
        stop=["\n\n"],
        seed=7,
        logprobs=False,
        response_format={"type": "text"},
        extra_body={**extra, "vendor_knob": {"x": [1]}},
    )
    call = resp.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and resp.choices[0].finish_reason == "tool_calls"
    sent = fake_a.stats(extra["fake"]["id"])["bodies"][0]
    assert sent["tools"] == tools and sent["tool_choice"] == "auto" and sent["seed"] == 7
    assert sent["stop"] == ["\n\n"] and sent["response_format"] == {"type": "text"}
    assert sent["vendor_knob"] == {"x": [1]}  # unknown fields unchanged


def test_alias_routes_to_target_model(gw, fake_a):
    extra = knobs()
    resp = client(gw).chat.completions.create(model="pretty", messages=MESSAGES, extra_body=extra)
    assert resp.system_fingerprint == "a"
    assert fake_a.stats(extra["fake"]["id"])["bodies"][0]["model"] == "fake-other"


def test_unknown_model_is_not_found_error(gw):
    with pytest.raises(openai.NotFoundError) as err:
        client(gw).chat.completions.create(model="gpt-nonexistent", messages=MESSAGES)
    assert err.value.status_code == 404 and err.value.code == "MODEL_NOT_FOUND"
    assert "gpt-nonexistent" in err.value.message


def test_upstream_429_is_rate_limit_error_with_retry_after(gw):
    with pytest.raises(openai.RateLimitError) as err:
        client(gw).chat.completions.create(
            model="fake-other", messages=MESSAGES, extra_body=knobs(fail=[429] * 6, retry_after=0)
        )
    assert err.value.status_code == 429 and err.value.response.headers.get("retry-after") is not None
    assert err.value.code == "RATE_LIMIT"


def test_retry_hides_transient_failures(gw, fake_a):
    extra = knobs(fail=[500, 503])
    resp = client(gw).chat.completions.create(model="fake-other", messages=MESSAGES, extra_body=extra)
    assert resp.choices[0].message.content.startswith("echo")
    assert fake_a.stats(extra["fake"]["id"])["attempts"] == 3


def test_upstream_failure_is_api_status_error_with_our_message(gw):
    with pytest.raises(openai.APIStatusError) as err:
        client(gw).chat.completions.create(model="fake-other", messages=MESSAGES, extra_body=knobs(fail=[500] * 10))
    assert err.value.status_code == 502
    assert err.value.message.startswith("Error code: 502") and "The model's server failed (HTTP 500)." in str(err.value)
    assert err.value.body["code"] == "UPSTREAM_ERROR" and err.value.body["type"] == "api_error"


def test_bad_request_is_bad_request_error(gw):
    with pytest.raises(openai.BadRequestError) as err:
        client(gw).chat.completions.create(model="fake-model", messages="nope")  # type: ignore[arg-type]
    assert err.value.body["details"]["field"] == "messages"


def test_wrong_key_is_authentication_error(gw):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.base_url, api_key="wrong", max_retries=0).models.list()


def test_mid_stream_failure_raises_in_the_sdk(gw):
    stream = client(gw).chat.completions.create(
        model="fake-other", messages=MESSAGES, stream=True, extra_body=knobs(abort_after=2)
    )
    got = []
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            got.append(chunk)
    assert got  # what arrived before the cut was delivered
    assert err.value.body["code"] == "UPSTREAM_ERROR"


def test_models_listing_and_lookup(gw):
    c = client(gw)
    ids = {m.id for m in c.models.list()}
    assert {"fake-model", "fake-other", "pretty"} <= ids
    assert c.models.retrieve("pretty").owned_by == "chatgate"
    assert c.models.retrieve("fake-other").owned_by == "a"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("nope")


def test_embeddings_pass_through(gw):
    resp = client(gw).embeddings.create(model="fake-model", input=["one", "two"])
    assert len(resp.data) == 2 and len(resp.data[0].embedding) == 8


def test_health_ready_and_request_id(gw):
    health = httpx.get(gw.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    ready = httpx.get(gw.url + "/ready", headers={"x-api-key": gw.key, "X-Request-ID": "ready-check-1"})
    assert ready.status_code == 200 and ready.headers["x-request-id"] == "ready-check-1"
    assert ready.json()["upstreams"]["a"] == {"reachable": True, "circuit": "closed", "in_flight": 0}


def test_client_disconnect_cancels_the_upstream_call(gw, fake_a, fake_b):
    scenario = uuid.uuid4().hex
    body = {"model": "fake-model", "messages": MESSAGES, "fake": {"id": scenario, "hang": True}}

    def call() -> None:
        try:
            httpx.post(gw.base_url + "/chat/completions", json=body, headers={"x-api-key": gw.key}, timeout=0.5)
        except httpx.TimeoutException:
            pass  # we hang up

    t = threading.Thread(target=call)
    t.start()
    t.join()
    deadline = time.monotonic() + 5
    cancelled = 0
    while time.monotonic() < deadline:
        cancelled = fake_a.stats(scenario)["cancelled"] + fake_b.stats(scenario)["cancelled"]
        if cancelled:
            break
        time.sleep(0.05)
    assert cancelled == 1


def test_client_disconnect_mid_stream_cancels_upstream(gw, fake_a):
    scenario = uuid.uuid4().hex
    body = {
        "model": "fake-other",
        "messages": [{"role": "user", "content": " ".join(["w"] * 200)}],
        "stream": True,
        "fake": {"id": scenario, "chunk_delay": 0.05},
    }
    with httpx.stream("POST", gw.base_url + "/chat/completions", json=body, headers={"x-api-key": gw.key}) as r:
        for _ in r.iter_bytes():
            break  # first chunk, then hang up
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not fake_a.stats(scenario)["cancelled"]:
        time.sleep(0.05)
    stats = fake_a.stats(scenario)
    assert stats["cancelled"] == 1 and stats["completed"] == 0


def test_access_log_is_json_lines_with_request_facts(gw):
    client(gw).chat.completions.create(
        model="fake-model", messages=MESSAGES, extra_headers={"X-Request-ID": "log-check-42"}
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in gw.logs().splitlines() if line.startswith("{")]
        hits = [entry for entry in lines if entry.get("request_id") == "log-check-42"]
        if hits:
            break
        time.sleep(0.05)
    entry = hits[0]
    assert entry["route"] == "/v1/chat/completions" and entry["status"] == 200
    assert entry["model"] == "fake-model" and entry["upstream"] in {"a", "b"} and entry["retries"] == 0
    assert entry["latency_ms"] > 0
    assert "upstream-secret-a" not in gw.logs() and gw.key not in gw.logs()


def test_server_survives_garbage(gw):
    headers = {"x-api-key": gw.key, "content-type": "application/json"}
    for payload in [b"{", b"null", b"\xff\xfe", b'{"model": "fake-model", "messages": [1]}']:
        r = httpx.post(gw.base_url + "/chat/completions", content=payload, headers=headers)
        assert r.status_code == 400 and r.json()["error"]["code"] in {"INVALID_JSON", "BAD_REQUEST"}
    assert client(gw).chat.completions.create(model="fake-model", messages=MESSAGES).choices


def test_fallback_to_another_model(tmp_path, fake_a):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    gateway = start_gateway(
        tmp_path,
        fast_retry_config(
            {"name": "dead", "base_url": dead, "models": ["primary"]},
            {"name": "a", "base_url": fake_a.base_url, "api_key": "upstream-secret-a", "models": ["fake-other"]},
            fallbacks={"primary": ["fake-other"]},
        ),
    )
    try:
        resp = client(gateway).chat.completions.create(model="primary", messages=MESSAGES)
        assert resp.system_fingerprint == "a" and resp.model == "fake-other"
    finally:
        stop(gateway.proc)


def test_single_upstream_from_env(tmp_path, fake_b: Fake):
    gateway = start_gateway(tmp_path, env={"CHATGATE_UPSTREAM_BASE_URL": fake_b.base_url})
    try:
        # and the local embedding model, offline (tests/integration/test_local_embeddings.py)
        assert {m.id for m in client(gateway).models.list()} == {"fake-model", "all-MiniLM-L6-v2", "local-embed"}
        assert client(gateway).chat.completions.create(model="fake-model", messages=MESSAGES).choices
    finally:
        stop(gateway.proc)


def test_upstream_that_comes_up_later_is_discovered(tmp_path):
    port = free_port()
    gateway = start_gateway(tmp_path, {"upstreams": [{"name": "late", "base_url": f"http://127.0.0.1:{port}/v1"}]})
    fake = None
    try:
        with pytest.raises(openai.NotFoundError):
            client(gateway).chat.completions.create(model="late-model", messages=MESSAGES)
        fake = start_fake("late", "late-model", port=port)
        deadline = time.monotonic() + 10
        while True:  # failed discovery is retried after a few seconds
            try:
                resp = client(gateway).chat.completions.create(model="late-model", messages=MESSAGES)
                break
            except openai.NotFoundError:
                assert time.monotonic() < deadline
                time.sleep(0.5)
        assert resp.system_fingerprint == "late"
    finally:
        stop(gateway.proc)
        if fake:
            stop(fake.proc)
