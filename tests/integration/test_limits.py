"""Limits through the gateway's public interface: real `chatgate serve` processes, the fake upstream,
the official openai SDK, the admin API, and Redis (real, and lost mid-test behind a proxy we stop)."""

from __future__ import annotations

import asyncio
import json
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
import pytest
from redis import Redis

from tests.conftest import Fake, Gateway, start_gateway, stop, user_key
from tests.limits.test_contract import REDIS_URL

MESSAGES = [{"role": "user", "content": "hello there"}]


def upstream(fake: Fake) -> dict[str, Any]:
    return {"name": "a", "base_url": fake.base_url, "api_key": "upstream-secret-a"}


def config(fake: Fake, **limits: Any) -> dict[str, Any]:
    return {"upstreams": [upstream(fake)], "limits": limits}


def auth(gw: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gw.key}"}


def new_user() -> str:
    """A fresh end user (the admin key forwards identity: ``user`` names a sub-identity ``admin/<user>``)."""
    return "t-" + secrets.token_hex(4)


def chat_body(user: str, **extra: Any) -> dict[str, Any]:
    return {"model": "fake-model", "messages": MESSAGES, "user": user, **extra}


def usage_of(gw: Gateway, user: str) -> dict[str, dict[str, Any]]:
    """The admin view of the sub-identity ``admin/<user>``'s limit lines, by scope."""
    return usage_of_user(gw, f"admin/{user}")


async def burst(gw: Gateway, bodies: list[dict[str, Any]], url: str | None = None) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(headers=auth(gw), timeout=60, limits=limits) as client:
        return await asyncio.gather(*(client.post(url or gw.base_url + "/chat/completions", json=b) for b in bodies))


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_a: Fake) -> Iterator[Gateway]:
    cfg = config(
        fake_a,
        user_requests_per_minute=60,
        user_tokens_per_hour=100_000,
        default_max_tokens_reservation=100,
        routes={"/v1/models": 3},
    )
    g = start_gateway(tmp_path_factory.mktemp("limits"), cfg)
    yield g
    stop(g.proc)


# ---- exactness ------------------------------------------------------------------------------------


def test_200_concurrent_requests_against_60_admit_exactly_60(gw: Gateway) -> None:
    user = new_user()
    responses = asyncio.run(burst(gw, [chat_body(user) for _ in range(200)]))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 60 and statuses.count(429) == 140
    usage = usage_of(gw, user)["user:requests_per_minute"]
    assert usage["used"] == 60 and usage["remaining"] == 0
    counters = httpx.get(gw.url + "/ready", headers=auth(gw)).json()["limits"]
    assert counters["backend"] == "memory" and counters["limited_by_scope"]["user:requests_per_minute"] >= 140


def test_two_gateways_sharing_redis_admit_exactly_60(tmp_path, fake_a: Fake) -> None:
    prefix = f"cgtest:{secrets.token_hex(6)}:"
    cfg = {**config(fake_a, user_requests_per_minute=60, redis_prefix=prefix), "redis_url": REDIS_URL}
    gws = [start_gateway(tmp_path / f"gw{i}", cfg) for i in range(2)]
    redis = Redis.from_url(REDIS_URL)
    try:
        user = new_user()

        async def both() -> list[httpx.Response]:
            halves = await asyncio.gather(*(burst(g, [chat_body(user) for _ in range(100)]) for g in gws))
            return [r for half in halves for r in half]

        statuses = [r.status_code for r in asyncio.run(both())]
        assert statuses.count(200) == 60 and statuses.count(429) == 140
        for g in gws:  # each sees the shared count
            assert usage_of(g, user)["user:requests_per_minute"]["used"] == 60
            assert httpx.get(g.url + "/admin/users/x/limits", headers=auth(g)).json()["backend"] == "redis"
        assert redis.keys(prefix + "*"), "the counters live under the configured prefix"
        httpx.post(f"{gws[0].url}/admin/users/admin/{user}/limits/reset", headers=auth(gws[0]))
        assert not redis.keys(prefix + "*")
    finally:
        for g in gws:
            stop(g.proc)
        redis.close()


def test_token_limit_overshoots_by_at_most_one_reservation(tmp_path, fake_a: Fake) -> None:
    limit, max_tokens = 500, 40
    g = start_gateway(tmp_path, config(fake_a, user_tokens_per_hour=limit, user_requests_per_minute=1000))
    try:
        user = new_user()
        # The fake's usage is words of the prompt + the echo; our estimate is tiktoken's prompt + max_tokens.
        body = chat_body(user, max_tokens=max_tokens, messages=[{"role": "user", "content": "one two three " * 10}])
        responses = asyncio.run(burst(g, [body for _ in range(40)]))
        ok = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code == 429]
        assert ok and refused and len(ok) + len(refused) == 40
        used = usage_of(g, user)["user:tokens_per_hour"]["used"]
        real = sum(r.json()["usage"]["total_tokens"] for r in ok)
        assert used == real  # every admitted call was reconciled to its real usage
        reservation = max(r.json()["usage"]["prompt_tokens"] for r in ok) + max_tokens
        assert used <= limit + reservation
        err = refused[0].json()["error"]
        assert err["code"] == "RATE_LIMIT" and err["details"]["scope"] == "user:tokens_per_hour"
        assert err["details"]["limit"] == limit
    finally:
        stop(g.proc)


# ---- the 429 and the headers --------------------------------------------------------------------


def test_429_body_and_headers(gw: Gateway) -> None:
    user = new_user()
    responses = asyncio.run(burst(gw, [chat_body(user) for _ in range(61)]))
    ok = next(r for r in responses if r.status_code == 200)
    assert ok.headers["x-ratelimit-limit-requests"] == "60"
    assert int(ok.headers["x-ratelimit-remaining-requests"]) < 60
    assert ok.headers["x-ratelimit-limit-tokens"] == "100000"
    assert 0 < int(ok.headers["x-ratelimit-remaining-tokens"]) < 100_000
    assert ok.headers["x-ratelimit-reset-requests"].endswith("s")
    refused = next(r for r in responses if r.status_code == 429)
    err = refused.json()["error"]
    assert err["code"] == "RATE_LIMIT" and err["type"] == "rate_limit_error"
    assert "user:requests_per_minute" in err["message"]
    details = err["details"]
    assert details["scope"] == "user:requests_per_minute" and details["limit"] == 60 and details["remaining"] == 0
    assert 0 < details["reset_in_seconds"] <= 63
    retry = int(refused.headers["retry-after"])
    assert 0 < retry <= 63 and abs(int(refused.headers["retry-after-ms"]) / 1000 - retry) < 1
    assert refused.headers["x-ratelimit-limit"] == "60" and refused.headers["x-ratelimit-remaining"] == "0"
    assert 0 < int(refused.headers["x-ratelimit-reset"]) <= 63
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    scraped = httpx.get(gw.url + "/metrics", headers=auth(gw)).text
    assert 'chatgate_rate_limit_decisions_total{decision="rejected",scope="user:requests_per_minute"}' in scraped


def test_openai_sdk_sees_rate_limit_error_and_retries_after_our_retry_after(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = new_user()
    asyncio.run(burst(gw, [chat_body(user) for _ in range(60)]))
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="fake-model", messages=MESSAGES, user=user)  # type: ignore[arg-type]
    assert caught.value.status_code == 429 and caught.value.code == "RATE_LIMIT"
    announced = int(caught.value.response.headers["retry-after-ms"]) / 1000

    # With retries on, the SDK sleeps as long as we said, then retries. The sleep is where the wait
    # would pass; we record it and clear the user's window instead of waiting a minute.
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        httpx.post(f"{gw.url}/admin/users/admin/{user}/limits/reset", headers=auth(gw), timeout=10)

    monkeypatch.setattr(openai._base_client.time, "sleep", sleep)
    retrying = openai.OpenAI(base_url=gw.base_url, api_key=gw.key, max_retries=2)
    answer = retrying.chat.completions.create(model="fake-model", messages=MESSAGES, user=user)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "echo: hello there"
    assert len(slept) == 1 and abs(slept[0] - announced) < 1.5  # the SDK waited what retry-after-ms said


def test_route_limit_outside_the_pipeline(gw: Gateway) -> None:
    statuses = [httpx.get(gw.base_url + "/models", headers=auth(gw)).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    httpx.post(f"{gw.url}/admin/users/admin/limits/reset", headers=auth(gw))
    assert httpx.get(gw.base_url + "/models", headers=auth(gw)).status_code == 200
    assert httpx.get(gw.url + "/health").status_code == 200  # unlisted: unlimited


def test_user_field_on_an_ordinary_key_does_not_mint_new_limits(tmp_path, fake_a: Fake) -> None:
    g = start_gateway(tmp_path, config(fake_a, user_requests_per_minute=5))
    try:
        key = user_key(g, "carol")
        statuses = [
            httpx.post(
                g.base_url + "/chat/completions",
                json=chat_body(f"sub{i}"),
                headers={"Authorization": f"Bearer {key}"},
                timeout=10,
            ).status_code
            for i in range(7)
        ]
        assert statuses == [200] * 5 + [429] * 2  # seven `user` values, one owner: limited as carol
        assert usage_of_user(g, "carol")["user:requests_per_minute"]["used"] == 5
    finally:
        stop(g.proc)


def key_id_of(gw: Gateway, user_id: str) -> str:
    """The id of ``user_id``'s one key, as ``chatgate keys list --json`` shows it."""
    cli = str(Path(sys.executable).with_name("chatgate"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATGATE_")} | {
        "CHATGATE_DATA_DIR": str(gw.data_dir)
    }
    out = subprocess.run(
        [cli, "keys", "list", "--user", user_id, "--json"], check=True, env=env, capture_output=True, text=True
    ).stdout
    (key,) = json.loads(out)
    return str(key["id"])


def test_admin_view_shows_the_lines_enforced_with_a_keys_override(tmp_path, fake_a: Fake) -> None:
    """The key's overrides (``limits.keys``) and a listed model's lines, as the admit step enforced them."""
    limits: dict[str, Any] = {"user_requests_per_minute": 60, "models": {"fake-other": {"requests_per_minute": 2}}}
    g = start_gateway(tmp_path, config(fake_a, **limits))
    key = user_key(g, "erin")
    key_id = key_id_of(g, "erin")
    stop(g.proc)
    limits["keys"] = {key_id: {"requests_per_minute": 3, "tokens_per_day": 50_000}}
    g = start_gateway(tmp_path, config(fake_a, **limits))  # the same data directory: the key is there
    try:

        def post(model: str) -> int:
            body = {"model": model, "messages": MESSAGES}
            headers = {"Authorization": f"Bearer {key}"}
            return httpx.post(g.base_url + "/chat/completions", json=body, headers=headers, timeout=10).status_code

        assert [post("fake-model") for _ in range(2)] + [post("fake-other") for _ in range(2)] == [200, 200, 200, 429]
        view = usage_of_user(g, "erin")
        assert (
            view["user:requests_per_minute"] | {"limit": 3, "used": 3, "remaining": 0, "key_ids": [key_id]}
            == (view["user:requests_per_minute"])
        )
        assert view["key:tokens_per_day"]["limit"] == 50_000 and view["key:tokens_per_day"]["used"] > 0
        assert (
            view["model:fake-other:requests_per_minute"] | {"limit": 2, "used": 1}
            == (view["model:fake-other:requests_per_minute"])
        )
        assert view["user:tokens_per_hour"]["limit"] == 100_000  # not overridden: the user's own
        one = httpx.get(f"{g.url}/admin/users/erin/limits", params={"key_id": key_id}, headers=auth(g)).json()
        assert {line["scope"]: line["limit"] for line in one["limits"]}["user:requests_per_minute"] == 3
        other = httpx.get(f"{g.url}/admin/users/erin/limits", params={"key_id": "k-other"}, headers=auth(g)).json()
        assert {line["scope"]: line["limit"] for line in other["limits"]}["user:requests_per_minute"] == 60
    finally:
        stop(g.proc)


def usage_of_user(gw: Gateway, user_id: str) -> dict[str, dict[str, Any]]:
    resp = httpx.get(f"{gw.url}/admin/users/{user_id}/limits", headers=auth(gw), timeout=10)
    assert resp.status_code == 200, resp.text
    return {line["scope"]: line for line in resp.json()["limits"]}


# ---- reservation lifecycle ------------------------------------------------------------------------


def test_non_streaming_call_is_reconciled_to_its_usage(gw: Gateway) -> None:
    user = new_user()
    resp = httpx.post(gw.base_url + "/chat/completions", json=chat_body(user, max_tokens=500), headers=auth(gw))
    assert resp.status_code == 200
    usage = usage_of(gw, user)
    assert usage["user:tokens_per_hour"]["used"] == resp.json()["usage"]["total_tokens"]  # 500 reserved, given back
    assert usage["user:requests_per_minute"]["used"] == 1


def test_streaming_call_is_reconciled_from_the_usage_chunk(gw: Gateway) -> None:
    user = new_user()
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.key, max_retries=0)
    stream = client.chat.completions.create(
        model="fake-model",
        messages=MESSAGES,  # type: ignore[arg-type]
        user=user,
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=300,
    )
    chunks = list(stream)
    total = next(c.usage for c in chunks if c.usage is not None).total_tokens
    deadline = time.monotonic() + 5
    while usage_of(gw, user)["user:tokens_per_hour"]["used"] != total and time.monotonic() < deadline:
        time.sleep(0.05)  # the stream's end settles just after the last byte went out
    assert usage_of(gw, user)["user:tokens_per_hour"]["used"] == total


def test_streaming_without_usage_for_the_client_still_reconciles(gw: Gateway) -> None:
    user = new_user()
    with httpx.stream(
        "POST", gw.base_url + "/chat/completions", json=chat_body(user, stream=True), headers=auth(gw)
    ) as resp:
        assert resp.status_code == 200 and resp.headers["x-ratelimit-limit-requests"] == "60"
        text = "".join(resp.iter_text())
    assert '"usage"' not in text  # the client did not ask for it; we asked upstream anyway
    deadline = time.monotonic() + 5
    while usage_of(gw, user)["user:tokens_per_hour"]["used"] > 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    used = usage_of(gw, user)["user:tokens_per_hour"]["used"]
    assert 0 < used <= 10  # the fake's words, not the 100-token default reservation


def test_failed_call_is_refunded_but_still_counts_as_a_request(gw: Gateway) -> None:
    user = new_user()
    body = chat_body(user, fake={"fail": [500, 500, 500, 500, 500], "id": "lim-fail-" + user})
    resp = httpx.post(gw.base_url + "/chat/completions", json=body, headers=auth(gw), timeout=30)
    assert resp.status_code == 502
    usage = usage_of(gw, user)
    assert usage["user:tokens_per_hour"]["used"] == 0 and usage["user:requests_per_minute"]["used"] == 1


def test_cancelled_calls_are_refunded(gw: Gateway, fake_a: Fake) -> None:
    user = new_user()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            gw.base_url + "/chat/completions",
            json=chat_body(user, fake={"hang": True, "id": "lim-hang-" + user}),
            headers=auth(gw),
            timeout=0.5,
        )
    with pytest.raises(httpx.ReadTimeout):  # a stream left after its first chunk
        with httpx.stream(
            "POST",
            gw.base_url + "/chat/completions",
            json=chat_body(user, stream=True, fake={"chunk_delay": 5, "id": "lim-slow-" + user}),
            headers=auth(gw),
            timeout=httpx.Timeout(10, read=0.5),
        ) as resp:
            for _ in resp.iter_bytes():
                pass
    deadline = time.monotonic() + 5
    while usage_of(gw, user)["user:tokens_per_hour"]["used"] != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    usage = usage_of(gw, user)
    assert usage["user:tokens_per_hour"]["used"] == 0 and usage["user:requests_per_minute"]["used"] == 2


def test_embeddings_are_charged_their_input_tokens(gw: Gateway) -> None:
    user = new_user()
    resp = httpx.post(
        gw.base_url + "/embeddings",
        json={"model": "fake-model", "input": ["a b c", "d e"], "user": user},
        headers=auth(gw),
    )
    assert resp.status_code == 200
    assert usage_of(gw, user)["user:tokens_per_hour"]["used"] == resp.json()["usage"]["total_tokens"]


def test_chat_api_is_limited_too(gw: Gateway) -> None:
    resp = httpx.post(gw.url + "/api/v1/chat", json={"message": "hi", "model": "fake-model"}, headers=auth(gw))
    assert resp.status_code == 200 and resp.headers["x-ratelimit-limit-requests"] == "60"


# ---- admin ---------------------------------------------------------------------------------------


def test_admin_limits_need_an_admin_key_and_reset_clears(gw: Gateway) -> None:
    user = new_user()
    httpx.post(gw.base_url + "/chat/completions", json=chat_body(user), headers=auth(gw))
    before = usage_of(gw, user)
    assert set(before) >= {"user:requests_per_minute", "user:tokens_per_hour"}
    assert before["user:requests_per_minute"] | {"used": 1} == before["user:requests_per_minute"]
    assert before["user:requests_per_minute"]["window_seconds"] == 60
    reset = httpx.post(f"{gw.url}/admin/users/admin/{user}/limits/reset", headers=auth(gw)).json()
    assert reset["reset"] is True and reset["counters_cleared"] >= 2
    assert usage_of(gw, user)["user:requests_per_minute"]["used"] == 0
    # An anonymous caller's usage is under ip:<address>.
    assert "ip:requests_per_minute" in usage_of_user(gw, "ip:127.0.0.1")


def test_admin_limits_are_hidden_from_a_non_admin_key(tmp_path, fake_a: Fake) -> None:
    g = start_gateway(tmp_path, config(fake_a))
    try:
        key = user_key(g, "dave")
        for resp in (
            httpx.get(g.url + "/admin/users/dave/limits", headers={"Authorization": f"Bearer {key}"}),
            httpx.post(g.url + "/admin/users/dave/limits/reset", headers={"Authorization": f"Bearer {key}"}),
        ):
            assert resp.status_code == 404 and resp.json()["error"]["code"] == "NOT_FOUND"  # not revealed
    finally:
        stop(g.proc)


# ---- Redis lost mid-test ----------------------------------------------------------------------------


class Proxy:
    """A TCP proxy to Redis in its own thread's loop; ``stop`` cuts every connection, like Redis dying.
    ``delay``: seconds each of Redis's answers is held back (a Redis slow to answer)."""

    def __init__(self, target_port: int = 6379, delay: float = 0.0) -> None:
        self.delay = delay
        import socket
        import threading

        self.target_port = target_port
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(5)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(5)

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

    async def _stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay: float = 0.0) -> None:
            try:
                while data := await src.read(65536):
                    if delay:
                        await asyncio.sleep(delay)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer, self.delay))


@pytest.mark.parametrize("fail_open", [True, False])
def test_redis_stopped_mid_test(tmp_path, fake_a: Fake, fail_open: bool) -> None:
    proxy = Proxy()
    proxy.start()
    cfg = {
        **config(fake_a, user_requests_per_minute=3, fail_open=fail_open),
        "redis_url": f"redis://127.0.0.1:{proxy.port}/0",
    }
    g = start_gateway(tmp_path, cfg)
    try:
        user = new_user()

        def post() -> httpx.Response:
            return httpx.post(g.base_url + "/chat/completions", json=chat_body(user), headers=auth(g), timeout=10)

        assert post().status_code == 200  # counted in Redis
        proxy.stop()
        down = [post() for _ in range(4)]
        if fail_open:
            # The local limiter takes over (its own count, from zero): 3 admitted, then 429.
            assert [r.status_code for r in down] == [200, 200, 200, 429]
        else:
            assert {r.status_code for r in down} == {503}
            assert down[0].json()["error"]["code"] == "LIMITER_UNAVAILABLE"
        assert "Redis unreachable" in g.logs()
        assert httpx.get(g.url + "/ready", headers=auth(g)).json()["limits"]["redis_errors"] >= 1
        proxy.start()
        deadline = time.monotonic() + 5
        while (resp := post()).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.1)
        # Redis again: it had counted 1 before the outage (fail-closed refusals charged nothing).
        assert resp.status_code == 200
        assert [post().status_code for _ in range(2)] == [200, 429]
        assert httpx.get(g.url + "/health").status_code == 200  # served throughout
    finally:
        stop(g.proc)
        proxy.stop()


@pytest.mark.parametrize("redis_timeout", [0.2, 5.0])
def test_redis_timeout_is_the_setting(tmp_path, fake_a: Fake, redis_timeout: float) -> None:
    """Redis answers 0.6 s late: below ``redis_timeout`` the limiter and the cache go on using it, above it
    both take it for an outage (the limiter falls back, the cache misses)."""
    proxy = Proxy(delay=0.6)
    proxy.start()
    prefix = f"cgtest:{secrets.token_hex(6)}:"
    cfg = {
        **config(fake_a, user_requests_per_minute=100, redis_prefix=prefix),
        "redis_url": f"redis://127.0.0.1:{proxy.port}/0",
        "redis_timeout": redis_timeout,
        "cache": {"enabled": True, "redis_prefix": prefix + "cache:"},
    }
    g = start_gateway(tmp_path, cfg)
    redis = Redis.from_url(REDIS_URL)
    try:
        body = chat_body(new_user(), temperature=0)
        answers = [
            httpx.post(g.base_url + "/chat/completions", json=body, headers=auth(g), timeout=30) for _ in range(2)
        ]
        assert [r.status_code for r in answers] == [200, 200]
        errors = httpx.get(g.url + "/ready", headers=auth(g), timeout=30).json()["limits"]["redis_errors"]
        logs = g.logs()
        if redis_timeout > 0.6:
            assert errors == 0 and "Redis unreachable" not in logs
            assert redis.keys(prefix + "u:*"), "the limiter counted in Redis"
            assert answers[1].headers["x-cache"] == "HIT"  # the cache kept the answer in Redis
        else:
            assert errors >= 2
            assert "rate limiter: Redis unreachable" in logs and "response cache: Redis unreachable" in logs
            assert answers[1].headers["x-cache"] == "MISS"
    finally:
        stop(g.proc)
        proxy.stop()
        for key in redis.keys(prefix + "*"):
            redis.delete(key)
        redis.close()


def test_anonymous_callers_are_limited_per_ip(tmp_path, fake_a: Fake) -> None:
    cfg = {**config(fake_a, anonymous_ip_requests_per_minute=3), "identity": {"allow_anonymous": True}}
    g = start_gateway(tmp_path, cfg)
    try:
        responses = [
            httpx.post(g.base_url + "/chat/completions", json={"model": "fake-model", "messages": MESSAGES})
            for _ in range(4)
        ]
        assert [r.status_code for r in responses] == [200, 200, 200, 429]
        assert responses[0].headers["x-ratelimit-limit-requests"] == "3"
        assert responses[3].json()["error"]["details"]["scope"] == "ip:requests_per_minute"
        assert usage_of_user(g, "ip:127.0.0.1")["ip:requests_per_minute"]["used"] == 3
        # A caller with a key is not limited as the IP.
        assert (
            httpx.post(g.base_url + "/chat/completions", json=chat_body(new_user()), headers=auth(g)).status_code == 200
        )
    finally:
        stop(g.proc)


# ---- the workers of one server: one limiter without Redis ----------------------------------------------


def per_worker(g: Gateway, tries: int = 100) -> dict[int, tuple[int, int]]:
    """Each worker's (admitted, refused) counts (``/admin/metrics`` answers for the worker that took the
    connection: asked on new connections until both answered)."""
    seen: dict[int, tuple[int, int]] = {}
    for _ in range(tries):
        limits = httpx.get(g.url + "/admin/metrics", headers=auth(g), timeout=10).json()
        seen[limits["pid"]] = (limits["limits"]["admitted"], limits["limits"]["limited"])
        if len(seen) == 2:
            break
    assert len(seen) == 2, seen
    return seen


def test_two_workers_without_redis_admit_exactly_60_of_200(tmp_path, fake_a: Fake) -> None:
    g = start_gateway(tmp_path, config(fake_a, user_requests_per_minute=60), args=["--workers", "2"], ready_timeout=90)
    try:
        before = per_worker(g)
        for _ in range(5):  # until a burst was spread over both workers (the kernel deals the connections)
            user = new_user()
            responses = asyncio.run(burst(g, [chat_body(user) for _ in range(200)]))
            statuses = [r.status_code for r in responses]
            assert statuses.count(200) == 60 and statuses.count(429) == 140
            after = per_worker(g)
            admitted = {pid: after[pid][0] - before[pid][0] for pid in after}
            served = {pid: sum(after[pid]) - sum(before[pid]) for pid in after}
            assert sum(admitted.values()) == 60
            before = after
            if all(served.values()):
                break
        else:
            raise AssertionError(f"every burst went to one worker: {served}")
        view = httpx.get(f"{g.url}/admin/users/admin/{user}/limits", headers=auth(g)).json()
        assert view["backend"] == "shared"
        assert {line["scope"]: line["used"] for line in view["limits"]}["user:requests_per_minute"] == 60
        for name in ("limits.sqlite", "limits.sqlite-wal", "limits.sqlite-shm", "limits.sqlite.lock"):
            assert (g.data_dir / name).stat().st_mode & 0o777 == 0o600, name
        assert "per worker process" not in g.logs()
    finally:
        stop(g.proc)


def test_two_workers_without_redis_hold_a_token_budget_exactly(tmp_path, fake_a: Fake) -> None:
    """Admitted calls hang (their reservations held), so the budget admits exactly ``limit // reservation``."""
    g = start_gateway(
        tmp_path,
        config(fake_a, user_tokens_per_hour=5000, user_requests_per_minute=10_000),
        args=["--workers", "2"],
        ready_timeout=90,
    )

    async def scenario() -> None:
        def body(user: str) -> dict[str, Any]:
            return chat_body(user, max_tokens=90, fake={"hang": True, "id": "lim-hang-" + user})

        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with httpx.AsyncClient(headers=auth(g), timeout=120, limits=limits) as client:
            probe = new_user()
            one = asyncio.create_task(client.post(g.base_url + "/chat/completions", json=body(probe)))
            reservation = 0
            while not reservation:  # what one call reserves: the prompt as counted + max_tokens
                await asyncio.sleep(0.05)
                resp = await client.get(f"{g.url}/admin/users/admin/{probe}/limits")
                reservation = {line["scope"]: line["used"] for line in resp.json()["limits"]}["user:tokens_per_hour"]
            one.cancel()
            expected = 5000 // reservation
            user = new_user()
            tasks = [
                asyncio.create_task(client.post(g.base_url + "/chat/completions", json=body(user))) for _ in range(200)
            ]
            done: set[asyncio.Task[httpx.Response]] = set()
            pending = set(tasks)
            while len(done) < 200 - expected:  # the refusals come back at once; the admitted calls hang
                finished, pending = await asyncio.wait(pending, timeout=60, return_when=asyncio.FIRST_COMPLETED)
                assert finished, f"only {len(done)} answers, expected {200 - expected} refusals"
                done |= finished
            assert [t.result().status_code for t in done] == [429] * (200 - expected)
            assert len(pending) == expected
            resp = await client.get(f"{g.url}/admin/users/admin/{user}/limits")
            used = {line["scope"]: line["used"] for line in resp.json()["limits"]}["user:tokens_per_hour"]
            assert used == expected * reservation <= 5000
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        stop(g.proc)


def test_redis_fail_open_falls_back_to_the_workers_shared_limiter(tmp_path, fake_a: Fake) -> None:
    proxy = Proxy()
    proxy.start()
    cfg = {
        **config(fake_a, user_requests_per_minute=60, fail_open=True),
        "redis_url": f"redis://127.0.0.1:{proxy.port}/0",
    }
    g = start_gateway(tmp_path, cfg, args=["--workers", "2"], ready_timeout=90)
    try:
        proxy.stop()
        user = new_user()
        statuses = [r.status_code for r in asyncio.run(burst(g, [chat_body(user) for _ in range(200)]))]
        assert statuses.count(200) == 60 and statuses.count(429) == 140  # the local fallback is one for both
        # Each worker says what it met: ask (new connections) until one that served part of the burst answers.
        seen = [httpx.get(g.url + "/ready", headers=auth(g)).json()["limits"] for _ in range(20)]
        assert all(r["backend"] == "redis" and r["fallback"] == "shared" for r in seen), seen
        assert any(r["redis_errors"] >= 1 for r in seen), seen
    finally:
        stop(g.proc)
        proxy.stop()


# ---- an upstream that ignores max_tokens -------------------------------------------------------------------


def sse_events(resp: httpx.Response) -> list[Any]:
    """The data events of a stream, JSON-decoded; ``[DONE]`` as the string."""
    events: list[Any] = []
    for line in resp.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_a_stream_past_its_reservation_stops_once_the_token_limit_is_spent(tmp_path, fake_a: Fake) -> None:
    limit = 2000
    g = start_gateway(tmp_path, config(fake_a, user_tokens_per_hour=limit, user_requests_per_minute=1000))
    try:
        user = new_user()
        options = {"stream_options": {"include_usage": True}, "fake": {"words": 3000}, "temperature": 0}
        body = chat_body(user, stream=True, max_tokens=50, **options)
        with httpx.stream("POST", g.base_url + "/chat/completions", json=body, headers=auth(g), timeout=60) as resp:
            assert resp.status_code == 200
            events = sse_events(resp)
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        finishes = [
            c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]
        ]
        assert finishes == ["length"]  # one end, the gateway's: the upstream's own "stop" never came
        assert 0 < len(text.split()) < 3000
        usage = chunks[-1]["usage"]  # counted by the gateway (the upstream's usage chunk was never read)
        charged = usage_of(g, user)["user:tokens_per_hour"]["used"]
        assert charged == usage["total_tokens"]  # what was sent is what was charged
        # Stopped within CHECK_EVERY (16) chunks of the limit being spent: a word is at most 3 tokens here.
        assert limit - 50 <= charged <= limit + 16 * 3
        refused = httpx.post(g.base_url + "/chat/completions", json=chat_body(user), headers=auth(g), timeout=10)
        assert refused.status_code == 429
        # A stopped answer is not whole: not cached for the next caller asking the same.
        again = chat_body(new_user(), stream=True, max_tokens=50, **options)
        with httpx.stream("POST", g.base_url + "/chat/completions", json=again, headers=auth(g), timeout=60) as resp:
            assert resp.headers["x-cache"] == "MISS"
            assert [e for e in sse_events(resp) if e != "[DONE]" and e["choices"]][-1]["choices"][0][
                "finish_reason"
            ] == ("length")

        # The chat API's stream ends the same way: its done event says why.
        chat = {"message": '[fake:{"words": 3000}] go', "model": "fake-model", "stream": True, "max_tokens": 50}
        other = user_key(g, "frank")
        with httpx.stream(
            "POST", g.url + "/api/v1/chat", json=chat, headers={"Authorization": f"Bearer {other}"}, timeout=60
        ) as resp:
            assert resp.status_code == 200
            events = sse_events(resp)
        assert events[-1] == "[DONE]"
        done = events[-2]
        assert done["type"] == "done" and done["finish_reason"] == "length"
        assert 0 < len(done["response"].split()) < 3000
        charged = usage_of_user(g, "frank")["user:tokens_per_hour"]["used"]
        assert charged == done["usage"]["total_tokens"] and limit - 50 <= charged <= limit + 16 * 3
    finally:
        stop(g.proc)


def test_a_long_stream_within_the_limit_is_not_stopped(gw: Gateway) -> None:
    user = new_user()
    body = chat_body(user, stream=True, max_tokens=50, fake={"words": 3000})
    with httpx.stream("POST", gw.base_url + "/chat/completions", json=body, headers=auth(gw), timeout=60) as resp:
        events = sse_events(resp)
    chunks = [c for c in events[:-1] if c["choices"]]
    assert len("".join(c["choices"][0]["delta"].get("content") or "" for c in chunks).split()) == 3000
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]] == ["stop"]
