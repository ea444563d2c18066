"""UpstreamClient against the fake upstream over real HTTP: retries, backoff, breakers, fallbacks."""

import asyncio
import uuid
from typing import Any

import orjson
import pytest

from chatgate.errors import (
    RateLimited,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from chatgate.settings import RetrySettings, TimeoutSettings
from chatgate.upstream.breaker import CircuitBreaker
from chatgate.upstream.client import CallTrace, UpstreamClient
from chatgate.upstream.routing import Router, Upstream
from tests.conftest import free_port


def make_client(
    *ups: Upstream,
    fallbacks: dict[str, list[str]] | None = None,
    max_retries: int = 3,
    first_byte: float = 5.0,
    total: float = 30.0,
) -> tuple[UpstreamClient, list[float]]:
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    client = UpstreamClient(
        Router(ups, fallbacks=fallbacks),
        RetrySettings(max_retries=max_retries, base=0.5, cap=8),
        TimeoutSettings(connect=1, first_byte=first_byte, total=total),
        sleep=sleep,
    )
    return client, sleeps


def upstream(fake: Any, name: str | None = None, models: tuple[str, ...] = ("fake-model",), **kw: Any) -> Upstream:
    key = "upstream-secret-a" if fake.name == "a" else None
    return Upstream(
        name=name or fake.name,
        base_url=fake.base_url,
        api_key=key,
        configured_models=models,
        breaker=kw.pop("breaker", CircuitBreaker(threshold=5, reset_timeout=30)),
        **kw,
    )


def chat(model: str = "fake-model", **fake: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi there"}], "fake": fake}


async def call(client: UpstreamClient, payload: dict[str, Any]) -> tuple[dict[str, Any], CallTrace]:
    trace = CallTrace()
    try:
        return orjson.loads(await client.call("/chat/completions", payload, orjson.dumps(payload), trace)), trace
    finally:
        await client.close()


def sid() -> str:
    return uuid.uuid4().hex


async def test_success_sends_the_upstream_key_and_body_unchanged(fake_a):
    client, sleeps = make_client(upstream(fake_a))
    s = sid()
    payload = chat(id=s) | {"custom_field": {"keep": [1, 2]}}
    body, trace = await call(client, payload)
    assert body["choices"][0]["message"]["content"] == "echo: hi there"
    assert trace.retries == 0 and trace.upstream == "a" and not sleeps
    assert fake_a.stats(s)["bodies"][0]["custom_field"] == {"keep": [1, 2]}


async def test_5xx_retried_with_backoff_until_success(fake_b):
    client, sleeps = make_client(upstream(fake_b))
    s = sid()
    body, trace = await call(client, chat(id=s, fail=[500, 502, 503]))
    assert body["choices"][0]["message"]["content"].startswith("echo")
    assert trace.retries == 3 and len(sleeps) == 3
    assert all(0 <= d <= c for d, c in zip(sleeps, [0.5, 1.0, 2.0], strict=True))
    assert fake_b.stats(s)["attempts"] == 4


async def test_retries_exhausted_gives_502_with_details(fake_b):
    client, sleeps = make_client(upstream(fake_b), max_retries=2)
    s = sid()
    with pytest.raises(UpstreamError) as err:
        await call(client, chat(id=s, fail=[500, 500, 500, 500]))
    assert err.value.status == 502 and err.value.details["upstream_status"] == 500
    assert fake_b.stats(s)["attempts"] == 3 and len(sleeps) == 2


async def test_429_honours_retry_after_then_surfaces_rate_limit(fake_b):
    client, sleeps = make_client(upstream(fake_b), max_retries=1)
    s = sid()
    with pytest.raises(RateLimited) as err:
        await call(client, chat(id=s, fail=[429, 429], retry_after=3))
    assert sleeps == [3.0]
    assert err.value.status == 429 and err.value.retry_after == 3


async def test_retry_after_beyond_cap_is_capped(fake_b):
    client, sleeps = make_client(upstream(fake_b), max_retries=1)
    await call(client, chat(id=sid(), fail=[503], retry_after=120))
    assert sleeps == [8.0]


async def test_400_is_not_retried_and_keeps_upstream_message(fake_b):
    client, sleeps = make_client(upstream(fake_b))
    s = sid()
    with pytest.raises(UpstreamRejected) as err:
        await call(client, chat(id=s, fail=[400]))
    assert err.value.status == 400 and "fake failure 400" in err.value.message
    assert fake_b.stats(s)["attempts"] == 1 and not sleeps


async def test_connection_reset_is_retried(fake_b):
    client, _ = make_client(upstream(fake_b))
    s = sid()
    body, trace = await call(client, chat(id=s, reset=2))
    assert trace.retries == 2 and body["choices"]


async def test_connect_refused_retries_then_502():
    dead = Upstream(name="dead", base_url=f"http://127.0.0.1:{free_port()}/v1", configured_models=("fake-model",))
    client, sleeps = make_client(dead, max_retries=2)
    with pytest.raises(UpstreamError) as err:
        await call(client, chat())
    assert err.value.status == 502 and len(sleeps) == 2


async def test_slow_first_byte_times_out_as_504(fake_b):
    client, _ = make_client(upstream(fake_b), max_retries=0, first_byte=0.3)
    with pytest.raises(UpstreamTimeout) as err:
        await call(client, chat(id=sid(), delay=2))
    assert err.value.status == 504


async def test_total_timeout_stops_retrying(fake_b):
    client, _ = make_client(upstream(fake_b), max_retries=5, first_byte=0.2, total=0.5)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(UpstreamTimeout):
        await call(client, chat(id=sid(), delay=2))
    assert loop.time() - start < 1.5


async def test_breaker_opens_and_fails_fast_with_503(fake_b):
    up = upstream(fake_b, breaker=CircuitBreaker(threshold=2, reset_timeout=60))
    client, _ = make_client(up, max_retries=1)
    with pytest.raises(UpstreamError):
        await call(client, chat(id=sid(), fail=[500, 500, 500]))
    s = sid()
    with pytest.raises(UpstreamUnavailable) as err:
        await call(client, chat(id=s))
    assert err.value.status == 503 and err.value.retry_after is not None and err.value.retry_after >= 59
    assert fake_b.stats(s)["attempts"] == 0  # failed fast, never sent


async def test_failing_upstream_is_avoided_on_retry(fake_b):
    dead = Upstream(
        name="dead",
        base_url=f"http://127.0.0.1:{free_port()}/v1",
        configured_models=("fake-model",),
        breaker=CircuitBreaker(threshold=100, reset_timeout=30),
    )
    client, _ = make_client(dead, upstream(fake_b))
    retries = []
    for _ in range(12):
        body, trace = await call(client, chat(id=sid()))
        assert trace.upstream == "b" and body["system_fingerprint"] == "b"
        retries.append(trace.retries)
    assert set(retries) <= {0, 1}  # a failed upstream is never tried twice while another is left
    assert 1 in retries  # and the dead one was really tried first some of the time


async def test_fallback_model_after_retries(fake_a):
    primary = Upstream(name="primary", base_url=f"http://127.0.0.1:{free_port()}/v1", configured_models=("fake-model",))
    backup = upstream(fake_a, name="backup", models=("fake-other",))
    client, _ = make_client(primary, backup, fallbacks={"fake-model": ["fake-other"]}, max_retries=1)
    s = sid()
    body, trace = await call(client, chat(id=s))
    assert trace.upstream == "backup" and trace.model == "fake-other" and trace.retries == 2
    assert body["model"] == "fake-other"  # the body was rewritten for the fallback model
    assert fake_a.stats(s)["bodies"][-1]["model"] == "fake-other"


async def test_least_in_flight_spreads_concurrent_calls(fake_a, fake_b):
    a, b = upstream(fake_a), upstream(fake_b)
    client, _ = make_client(a, b)
    s = sid()

    async def one() -> str:
        trace = CallTrace()
        payload = chat(id=s, delay=0.3)
        await client.call("/chat/completions", payload, None, trace)
        return trace.upstream or ""

    names = await asyncio.gather(*(one() for _ in range(10)))
    await client.close()
    assert names.count("a") == 5 and names.count("b") == 5
    assert a.in_flight == 0 and b.in_flight == 0


async def test_chat_defaults_fill_only_missing_fields(fake_b):
    s = sid()
    for extra in ({}, {"max_tokens": 7}, {"max_completion_tokens": 9}):
        client, _ = make_client(upstream(fake_b, chat_defaults={"max_tokens": 512}))
        await call(client, chat(id=s) | extra)
    sent = fake_b.stats(s)["bodies"]
    assert sent[0]["max_tokens"] == 512
    assert sent[1]["max_tokens"] == 7
    assert "max_tokens" not in sent[2] and sent[2]["max_completion_tokens"] == 9


async def test_answer_cut_while_reading_is_retried(fake_b):
    client, _ = make_client(upstream(fake_b))
    s = sid()
    body, trace = await call(client, chat(id=s, truncate=2))
    assert trace.retries == 2 and body["choices"]
    assert fake_b.stats(s)["attempts"] == 3


async def test_streams_are_opened_not_read(fake_b):
    client, _ = make_client(upstream(fake_b))
    payload = chat(id=sid()) | {"stream": True}
    opened = await client.open("/chat/completions", payload, None, CallTrace())
    try:
        assert opened.response.headers["Content-Type"].startswith("text/event-stream")
        assert opened.upstream.in_flight == 1  # until the stream is closed
    finally:
        opened.close()
        await client.close()
    assert opened.upstream.in_flight == 0
