"""The response cache through the gateway: a real `chatgate serve`, the fake upstream (counting the
calls it gets), the openai SDK; memory and Redis backends."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Fake, Gateway, start_gateway, stop
from tests.limits.test_contract import REDIS_URL

CHAT = "/v1/chat/completions"


def gateway(tmp_path_factory: pytest.TempPathFactory, fake: Fake, **extra: Any) -> Gateway:
    cfg = {"upstreams": [{"name": "a", "base_url": fake.base_url, "api_key": "upstream-secret-a"}], **extra}
    return start_gateway(tmp_path_factory.mktemp("cache"), cfg)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_a: Fake) -> Iterator[Gateway]:
    g = gateway(tmp_path_factory, fake_a)
    yield g
    stop(g.proc)


def body(tag: str, **extra: Any) -> dict[str, Any]:
    """A deterministic request (temperature 0); ``tag`` makes it unique and names its upstream counter."""
    return {
        "model": "fake-model",
        "temperature": 0,
        "messages": [{"role": "user", "content": f"what is {tag}?"}],
        "fake": {"id": tag},
        **extra,
    }


def post(gw: Gateway, payload: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(gw.base_url + "/chat/completions", json=payload, headers={"x-api-key": gw.key, **headers})


def test_miss_then_hit_served_without_the_upstream(gw: Gateway, fake_a: Fake) -> None:
    tag = "c-" + secrets.token_hex(4)
    first = post(gw, body(tag))
    second = post(gw, body(tag, messages=[{"role": "user", "content": f"  what   is {tag}? "}]))  # same, spaced
    assert first.status_code == second.status_code == 200
    assert first.headers["x-cache"] == "MISS" and second.headers["x-cache"] == "HIT"
    assert second.json() == first.json()  # OpenAI-shaped, the upstream's own answer
    assert fake_a.stats(tag)["attempts"] == 1


def test_a_hit_counts_as_a_request_but_costs_no_tokens(gw: Gateway) -> None:
    tag, user = "t-" + secrets.token_hex(4), "u-" + secrets.token_hex(3)
    post(gw, body(tag, user=user))
    post(gw, body(tag, user=user))
    limits = httpx.get(f"{gw.url}/admin/users/admin/{user}/limits", headers={"x-api-key": gw.key}).json()
    used = {line["scope"]: line["used"] for line in limits["limits"]}
    first = post(gw, body("other-" + tag, user=user)).json()["usage"]["total_tokens"]
    assert used["user:requests_per_minute"] == 2
    after = httpx.get(f"{gw.url}/admin/users/admin/{user}/limits", headers={"x-api-key": gw.key}).json()
    tokens = {line["scope"]: line["used"] for line in after["limits"]}["user:tokens_per_hour"]
    assert tokens == used["user:tokens_per_hour"] + first  # the hit added nothing


def test_bypass_and_sampling_are_not_served_from_cache(gw: Gateway, fake_a: Fake) -> None:
    tag = "b-" + secrets.token_hex(4)
    post(gw, body(tag))
    assert post(gw, body(tag, use_cache=False)).headers["x-cache"] == "MISS"
    assert post(gw, body(tag), **{"Cache-Control": "no-cache"}).headers["x-cache"] == "MISS"
    assert fake_a.stats(tag)["attempts"] == 3
    assert "use_cache" not in fake_a.stats(tag)["bodies"][1]  # ours: never sent upstream
    sampling = "s-" + secrets.token_hex(4)
    for _ in range(2):
        resp = post(gw, body(sampling, temperature=0.7))
        assert resp.status_code == 200 and resp.headers["x-cache"] == "MISS"
    assert fake_a.stats(sampling)["attempts"] == 2


def test_a_stream_is_replayed_from_the_cache(gw: Gateway, fake_a: Fake) -> None:
    tag = "r-" + secrets.token_hex(4)
    answer = post(gw, body(tag)).json()["choices"][0]["message"]["content"]
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.key, max_retries=0)
    request = body(tag)
    raw = client.chat.completions.with_raw_response.create(
        model=request["model"],
        messages=request["messages"],
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"fake": request["fake"]},
    )
    assert raw.headers["x-cache"] == "HIT"
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert fake_a.stats(tag)["attempts"] == 1


def test_a_streamed_answer_is_stored_and_served_both_ways(gw: Gateway, fake_a: Fake) -> None:
    tag = "sa-" + secrets.token_hex(4)
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.key, max_retries=0)
    request = body(tag)

    def stream() -> tuple[str, list[Any]]:
        raw = client.chat.completions.with_raw_response.create(
            model=request["model"],
            messages=request["messages"],
            temperature=0,
            stream=True,
            extra_body={"fake": request["fake"]},
        )
        chunks = list(raw.parse())
        return raw.headers["x-cache"], chunks

    status, chunks = stream()
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert status == "MISS" and streamed
    again = post(gw, body(tag))  # the stream's answer, rebuilt as a chat.completion
    assert again.headers["x-cache"] == "HIT"
    answer = again.json()
    assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["content"] == streamed
    assert answer["choices"][0]["finish_reason"] == chunks[-1].choices[0].finish_reason
    assert answer["id"] == chunks[0].id and answer["usage"]["total_tokens"] > 0
    status, replayed = stream()
    assert status == "HIT" and "".join(c.choices[0].delta.content or "" for c in replayed if c.choices) == streamed
    assert fake_a.stats(tag)["attempts"] == 1


def test_a_stream_cut_short_is_not_stored(gw: Gateway, fake_a: Fake) -> None:
    tag = "sc-" + secrets.token_hex(4)
    broken = body(tag, stream=True, fake={"id": tag, "abort_after": 2})
    with httpx.stream("POST", gw.base_url + "/chat/completions", json=broken, headers={"x-api-key": gw.key}) as r:
        text = "".join(r.iter_text())
    assert '"error"' in text
    assert post(gw, body(tag)).headers["x-cache"] == "MISS"


def test_chat_api_marks_a_hit(tmp_path_factory: pytest.TempPathFactory, fake_a: Fake) -> None:
    g = gateway(tmp_path_factory, fake_a, cache={"allow_sampling": True})  # the chat API sets no temperature
    try:
        message = "hello " + secrets.token_hex(4)
        url, headers = g.url + "/api/v1/chat", {"x-api-key": g.key}
        first = httpx.post(url, json={"message": message, "model": "fake-model"}, headers=headers).json()
        second = httpx.post(url, json={"message": message, "model": "fake-model"}, headers=headers).json()
        assert first["cached"] is False and second["cached"] is True
        assert second["response"] == first["response"] and second["session_id"] != first["session_id"]
        off = {"message": message, "model": "fake-model", "use_cache": False}
        assert httpx.post(url, json=off, headers=headers).json()["cached"] is False
    finally:
        stop(g.proc)


def test_admin_stats_and_clear(gw: Gateway) -> None:
    tag = "a-" + secrets.token_hex(4)
    post(gw, body(tag))
    post(gw, body(tag))
    admin = {"x-api-key": gw.key}
    stats = httpx.get(gw.url + "/admin/cache/stats", headers=admin).json()
    assert stats["hits"] >= 1 and stats["valid"] >= 1 and stats["ttl"] == 3600 and stats["bytes"] > 0
    cleared = httpx.delete(gw.url + "/admin/cache", headers=admin).json()
    assert cleared["cleared"] >= 1
    assert httpx.get(gw.url + "/admin/cache/stats", headers=admin).json()["total"] == 0
    assert post(gw, body(tag)).headers["x-cache"] == "MISS"


def test_redis_backend_is_shared_by_two_gateways(tmp_path_factory: pytest.TempPathFactory, fake_a: Fake) -> None:
    prefix = f"cgtest:cache:{secrets.token_hex(4)}:"
    extra = {"redis_url": REDIS_URL, "cache": {"redis_prefix": prefix}}
    gws = [gateway(tmp_path_factory, fake_a, **extra) for _ in range(2)]
    try:
        tag = "x-" + secrets.token_hex(4)
        assert post(gws[0], body(tag)).headers["x-cache"] == "MISS"
        assert post(gws[1], body(tag)).headers["x-cache"] == "HIT"
        assert fake_a.stats(tag)["attempts"] == 1
        assert (
            httpx.get(gws[1].url + "/admin/cache/stats", headers={"x-api-key": gws[1].key}).json()["backend"] == "redis"
        )
        httpx.delete(gws[0].url + "/admin/cache", headers={"x-api-key": gws[0].key})
    finally:
        for g in gws:
            stop(g.proc)
