"""UpstreamClient against the fake upstream over real HTTP: retries, backoff, breakers, fallbacks."""

import asyncio
import logging
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
        breaker=kw.pop("breaker", CircuitBreaker(minimum_calls=5, failure_rate=1.0, reset_timeout=30)),
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
    up = upstream(fake_b, breaker=CircuitBreaker(minimum_calls=2, failure_rate=1.0, reset_timeout=60))
    client, _ = make_client(up, max_retries=1)
    for _ in range(2):  # two requests failing: two failures (each request's retries fail the same way)
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
        breaker=CircuitBreaker(minimum_calls=100, reset_timeout=30),
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


# ---- the breaker's bookkeeping, first-byte timeouts, streams before their first event, retry logs -----------


async def test_a_request_failing_the_same_way_on_every_attempt_counts_once(fake_b):
    up = upstream(fake_b, breaker=CircuitBreaker(minimum_calls=100))
    client, _ = make_client(up, max_retries=3)
    s = sid()
    with pytest.raises(UpstreamError):
        await call(client, chat(id=s, fail=[500, 500, 500, 500]))
    assert fake_b.stats(s)["attempts"] == 4
    assert up.breaker.counts() == (1, 1)
    await call(client, chat(id=sid(), fail=[500, 502]))  # two different failures, then an answer
    assert up.breaker.counts() == (4, 3)
    with pytest.raises(UpstreamRejected):
        await call(client, chat(id=sid(), fail=[400]))  # the request's fault: a healthy answer
    assert up.breaker.counts() == (5, 3)


async def test_first_byte_timeout_is_not_retried_on_the_same_upstream(fake_b):
    client, sleeps = make_client(upstream(fake_b), max_retries=3, first_byte=0.3)
    s = sid()
    with pytest.raises(UpstreamTimeout):
        await call(client, chat(id=s, delay=1))
    assert fake_b.stats(s)["attempts"] == 1 and not sleeps


async def test_first_byte_timeout_goes_once_to_another_upstream(fake_a, fake_b):
    a, b = upstream(fake_a), upstream(fake_b)
    client, _ = make_client(a, b, max_retries=3, first_byte=0.3)
    for _ in range(4):  # whichever is picked first, the slow one is tried at most once
        s = sid()
        body, trace = await call(client, chat(id=s, delay=1, on=["a"]))
        assert trace.upstream == "b" and body["system_fingerprint"] == "b"
        assert fake_a.stats(s)["attempts"] <= 1 and fake_b.stats(s)["attempts"] == 1


async def test_first_byte_timeout_then_a_failure_elsewhere_ends_the_call(fake_a):
    primary = upstream(fake_a, name="primary", models=("fake-model",))
    backup = Upstream(name="backup", base_url=f"http://127.0.0.1:{free_port()}/v1", configured_models=("fake-other",))
    client, _ = make_client(primary, backup, fallbacks={"fake-model": ["fake-other"]}, max_retries=3, first_byte=0.3)
    s = sid()
    with pytest.raises(UpstreamError):
        await call(client, chat(id=s, delay=1))
    assert fake_a.stats(s)["attempts"] == 1  # one attempt each: the slow one, then the (dead) fallback


@pytest.mark.parametrize(("policy", "attempts"), [("same", 3), ("never", 1)])
async def test_first_byte_timeout_policy(fake_b, policy, attempts):
    client = UpstreamClient(
        Router([upstream(fake_b)]),
        RetrySettings(max_retries=2, base=0.01, cap=0.02, first_byte_timeout=policy),
        TimeoutSettings(connect=1, first_byte=0.2, total=30),
    )
    s = sid()
    with pytest.raises(UpstreamTimeout):
        await call(client, chat(id=s, delay=0.5))
    assert fake_b.stats(s)["attempts"] == attempts


async def relay_text(client: UpstreamClient, payload: dict[str, Any]) -> tuple[bytes, CallTrace]:
    from chatgate.upstream.stream import Relay

    trace = CallTrace()
    try:
        opened = await client.open("/chat/completions", payload, None, trace)
        assert opened.first_at is not None and opened.head.startswith(b"data: ")
        return b"".join([c async for c in Relay(opened, include_usage=False)]), trace
    finally:
        await client.close()


async def test_stream_cut_before_its_first_event_is_retried(fake_b):
    client, sleeps = make_client(upstream(fake_b))
    s = sid()
    out, trace = await relay_text(client, chat(id=s, abort_after=0, abort_attempts=2) | {"stream": True})
    assert b"echo: " in out and b'"error"' not in out and out.endswith(b"data: [DONE]\n\n")
    assert fake_b.stats(s)["attempts"] == 3 and trace.retries == 2 and len(sleeps) == 2


async def test_error_as_the_first_event_is_a_failed_attempt(fake_b):
    up = upstream(fake_b, breaker=CircuitBreaker(minimum_calls=100))
    client, _ = make_client(up)
    s = sid()
    out, trace = await relay_text(client, chat(id=s, stream_error=1) | {"stream": True})
    assert b"echo: " in out and b'"error"' not in out
    assert fake_b.stats(s)["attempts"] == 2 and trace.retries == 1
    assert up.breaker.counts() == (2, 1)


async def test_client_error_as_the_first_event_is_not_retried(fake_b):
    client, _ = make_client(upstream(fake_b))
    s = sid()
    with pytest.raises(UpstreamRejected) as err:
        await client.open(
            "/chat/completions", chat(id=s, stream_error=5, stream_error_code=400) | {"stream": True}, None, CallTrace()
        )
    await client.close()
    assert err.value.status == 400 and "fake error event" in err.value.message
    assert fake_b.stats(s)["attempts"] == 1


async def test_stream_cut_after_its_first_event_is_not_retried(fake_b):
    client, _ = make_client(upstream(fake_b))
    s = sid()
    out, _ = await relay_text(client, chat(id=s, abort_after=2) | {"stream": True})
    assert b'"error"' in out and out.endswith(b"data: [DONE]\n\n")  # bytes had gone out: an error event
    assert fake_b.stats(s)["attempts"] == 1


async def test_every_retry_is_logged_with_its_reason(fake_b, caplog):
    client, sleeps = make_client(upstream(fake_b))
    with caplog.at_level(logging.INFO, logger="chatgate.upstream"):
        await call(client, chat(id=sid(), fail=[503], reset=0))
        await call(client, chat(id=sid(), reset=1))
    retries = [r for r in caplog.records if r.getMessage() == "upstream retry"]
    assert [(r.upstream, r.attempt, r.reason) for r in retries] == [("b", 1, "status_503"), ("b", 1, "connect_failed")]
    assert [r.wait_s for r in retries] == [round(w, 3) for w in sleeps]
    assert retries[0].upstream_status == 503 and retries[0].retry_upstream == "b"
