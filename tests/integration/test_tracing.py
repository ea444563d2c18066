"""Tracing through the gateway: a real `chatgate serve` exporting to a real OTLP/HTTP receiver (protobuf
``ExportTraceServiceRequest``s decoded with the ``opentelemetry-proto`` classes), over the fake upstream."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Fake, Gateway, start_gateway, stop
from tests.observe.otlp import Collector

STEPS = {"identify", "admit", "session", "fit", "cache", "call", "account", "settle"}
UPSTREAM = "upstream /chat/completions"
SERVER, CLIENT = 2, 3  # Span.SpanKind values in the protocol


def traced_config(fake: Fake, collector: Collector, **tracing: Any) -> dict[str, Any]:
    return {
        "upstreams": [{"name": "a", "base_url": fake.base_url, "api_key": "upstream-secret-a"}],
        "retry": {"max_retries": 2, "base": 0.01, "cap": 0.05},
        "tracing": {
            "enabled": True,
            "endpoint": collector.url,
            "service_name": "chatgate-test",
            "batch_delay": 0.05,
            **tracing,
        },
    }


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_a: Fake, collector: Collector) -> Iterator[Gateway]:
    g = start_gateway(tmp_path_factory.mktemp("tracing"), traced_config(fake_a, collector))
    yield g
    stop(g.proc)


def body(tag: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "fake-model",
        "temperature": 0,
        "messages": [{"role": "user", "content": f"trace {tag}"}],
        "fake": {"id": tag},
        **extra,
    }


def post(gw: Gateway, payload: dict[str, Any], **headers: str) -> httpx.Response:
    resp = httpx.post(gw.base_url + "/chat/completions", json=payload, headers={"x-api-key": gw.key, **headers})
    assert resp.status_code == 200, resp.text
    return resp


def by_name(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    names = [s["name"] for s in spans]
    assert len(names) == len(set(names)), names  # one span per step and one upstream call
    return {s["name"]: s for s in spans}


def whole_trace(collector: Collector, server: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every span of the server span's trace, by name, once the upstream span (the last) is in too."""
    collector.wait(lambda _: {UPSTREAM, *STEPS} <= {s["name"] for s in collector.trace(server["trace_id"])})
    return by_name(collector.trace(server["trace_id"]))


def assert_tree(spans: dict[str, dict[str, Any]], server_name: str) -> dict[str, Any]:
    server = spans[server_name]
    assert server["kind"] == SERVER and server["service"] == "chatgate-test" and server["scope"] == "chatgate"
    for name in STEPS:
        assert spans[name]["parent"] == server["span_id"], name  # every step is a child of the request
    upstream = spans[UPSTREAM]
    assert upstream["kind"] == CLIENT and upstream["parent"] == spans["call"]["span_id"]
    assert set(spans) == {server_name, UPSTREAM, *STEPS}
    return upstream


def propagated(fake: Fake, tag: str) -> list[tuple[str, str]]:
    """(trace id, parent span id) of each ``traceparent`` the upstream got for ``tag``'s requests."""
    return [(tp.split("-")[1], tp.split("-")[2]) for tp in fake.stats(tag)["traceparents"]]


def log_lines(gw: Gateway, request_id: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The gateway's JSON log lines of one request (the access log is written every 100 ms)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(line) for line in gw.logs().splitlines() if line.startswith("{")]
        mine = [line for line in lines if line.get("request_id") == request_id]
        if mine or time.monotonic() > deadline:
            return mine
        time.sleep(0.05)


def test_a_completion_is_one_trace_continuing_the_callers(gw: Gateway, fake_a: Fake, collector: Collector) -> None:
    tag, trace_id, parent = "t-" + secrets.token_hex(4), secrets.token_hex(16), secrets.token_hex(8)
    resp = post(gw, body(tag, user="alice"), traceparent=f"00-{trace_id}-{parent}-01")
    rid = resp.headers["x-request-id"]

    server = collector.server_span(rid)
    assert server["trace_id"] == trace_id and server["parent"] == parent  # the caller's trace goes on
    spans = whole_trace(collector, server)
    upstream = assert_tree(spans, "POST /v1/chat/completions")
    attrs = server["attributes"]
    assert attrs["http.route"] == "/v1/chat/completions" and attrs["http.request.method"] == "POST"
    assert attrs["http.response.status_code"] == 200 and attrs["chatgate.cache"] == "MISS"
    assert attrs["user.id"].endswith("alice") and attrs["gen_ai.request.model"] == "fake-model"
    assert upstream["attributes"] == {
        "gen_ai.request.model": "fake-model",
        "chatgate.upstream": "a",
        "chatgate.upstream.model": "fake-model",
        "chatgate.upstream.attempts": 1,
        "http.response.status_code": 200,
    }
    assert not any("secret" in json.dumps(s) for s in spans.values())  # no keys on spans
    # the upstream was told the trace, with the upstream span as the parent
    assert propagated(fake_a, tag) == [(trace_id, upstream["span_id"])]
    access = [line for line in log_lines(gw, rid) if line["msg"] == "request"]
    assert len(access) == 1 and access[0]["trace_id"] == trace_id and access[0]["span_id"] == server["span_id"]


def test_a_stream_is_traced_with_its_time_to_first_token(gw: Gateway, fake_a: Fake, collector: Collector) -> None:
    tag = "s-" + secrets.token_hex(4)
    with httpx.stream(
        "POST", gw.base_url + "/chat/completions", json=body(tag, stream=True), headers={"x-api-key": gw.key}
    ) as resp:
        assert resp.status_code == 200
        events = "".join(resp.iter_text())
        rid = resp.headers["x-request-id"]
    assert "echo: trace" in events or "echo:" in events

    server = collector.server_span(rid)
    assert server["parent"] == ""  # no traceparent came in: a new trace
    spans = whole_trace(collector, server)
    upstream = assert_tree(spans, "POST /v1/chat/completions")
    assert upstream["attributes"]["chatgate.upstream.ttft_ms"] >= 0
    assert [name for name, _ in upstream["events"]] == ["first_token"]
    assert propagated(fake_a, tag) == [(server["trace_id"], upstream["span_id"])]
    assert log_lines(gw, rid)[0]["trace_id"] == server["trace_id"]


def test_retries_are_events_of_one_upstream_span(gw: Gateway, fake_a: Fake, collector: Collector) -> None:
    tag = "r-" + secrets.token_hex(4)
    first = post(gw, body(tag, fake={"id": tag, "fail": [503]}))
    second = post(gw, body("other-" + tag))
    one = collector.server_span(first.headers["x-request-id"])
    two = collector.server_span(second.headers["x-request-id"])
    assert one["trace_id"] != two["trace_id"]  # one trace per request

    upstream = whole_trace(collector, one)[UPSTREAM]
    assert upstream["attributes"]["chatgate.upstream.attempts"] == 2
    assert upstream["attributes"]["http.response.status_code"] == 200
    (name, failed), *rest = upstream["events"]
    assert not rest and name == "attempt failed"
    assert failed["http.response.status_code"] == 503 and failed["chatgate.upstream"] == "a"
    # both attempts carried the same trace context
    assert propagated(fake_a, tag) == [(one["trace_id"], upstream["span_id"])] * 2


def test_the_chat_api_is_traced_too(gw: Gateway, collector: Collector) -> None:
    resp = httpx.post(
        gw.url + "/api/v1/chat", json={"message": "hello", "model": "fake-model"}, headers={"x-api-key": gw.key}
    )
    assert resp.status_code == 200, resp.text
    server = collector.server_span(resp.headers["x-request-id"])
    steps = STEPS - {"cache"}  # the same steps as every door; a sampling request: no cache lookup
    collector.wait(lambda _: {UPSTREAM, *steps} <= {s["name"] for s in collector.trace(server["trace_id"])})
    spans = by_name(collector.trace(server["trace_id"]))
    assert set(spans) == {"POST /api/v1/chat", UPSTREAM, *steps}
    assert all(spans[name]["parent"] == server["span_id"] for name in steps)
    assert spans[UPSTREAM]["parent"] == spans["call"]["span_id"]
    assert server["attributes"]["chatgate.session_id"] == resp.json()["session_id"]


def test_failures_and_other_routes_are_traced(gw: Gateway, collector: Collector) -> None:
    resp = httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "no-such-model", "messages": []},
        headers={"x-api-key": gw.key},
    )
    assert resp.status_code in (400, 404)
    server = collector.server_span(resp.headers["x-request-id"])
    assert server["attributes"]["http.response.status_code"] == resp.status_code
    assert server["attributes"]["error.type"] == resp.json()["error"]["code"]
    health = httpx.get(gw.url + "/health")
    assert collector.server_span(health.headers["x-request-id"])["name"] == "GET /health"


def test_spans_queued_at_shutdown_are_exported(
    tmp_path_factory: pytest.TempPathFactory, fake_a: Fake, collector: Collector
) -> None:
    g = start_gateway(tmp_path_factory.mktemp("flush"), traced_config(fake_a, collector, batch_delay=60))
    try:
        rid = post(g, body("f-" + secrets.token_hex(4))).headers["x-request-id"]
        time.sleep(0.3)
        assert not any(s["attributes"].get("chatgate.request_id") == rid for s in collector.spans)  # still queued
    finally:
        stop(g.proc)
    assert collector.server_span(rid, timeout=1)["name"] == "POST /v1/chat/completions"


def test_a_malformed_traceparent_starts_a_new_trace(gw: Gateway, collector: Collector) -> None:
    resp = post(gw, body("m-" + secrets.token_hex(4)), traceparent="00-not-a-trace-01")
    server = collector.server_span(resp.headers["x-request-id"])
    assert server["parent"] == "" and len(server["trace_id"]) == 32
