"""Tracing in process: log records inside a span carry its ids; with tracing off nothing is made."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
from pathlib import Path

from opentelemetry.trace import format_span_id, format_trace_id
from starlette.testclient import TestClient

from chatgate.api.tracing import TraceRequests
from chatgate.app import create_app
from chatgate.observe.logging import AccessLog, JSONFormatter
from chatgate.observe.tracing import Tracing, step
from chatgate.settings import Settings, TracingSettings
from tests.conftest import ADMIN_KEY, Fake
from tests.observe.otlp import Collector

STEPS = {"identify", "admit", "session", "fit", "cache", "call", "account", "settle"}
UPSTREAM = "upstream /chat/completions"
SERVER, CLIENT = 2, 3  # Span.SpanKind values in the protocol


def test_log_records_inside_a_span_carry_its_ids(collector: Collector) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        tracing = Tracing.start(TracingSettings(enabled=True, endpoint=collector.url))
        assert tracing is not None and handler.filters  # the log handlers got the trace-id filter
        log = logging.getLogger("chatgate.test.tracing")
        with tracing.tracer.start_as_current_span("outer") as span:
            log.warning("inside")
        log.warning("outside")
        asyncio.run(tracing.close())
        assert not handler.filters  # and lost it at close
    finally:
        root.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    inside, outside = [line for line in lines if line["logger"] == "chatgate.test.tracing"]
    context = span.get_span_context()
    assert inside["msg"] == "inside" and inside["trace_id"] == format_trace_id(context.trace_id)
    assert inside["span_id"] == format_span_id(context.span_id)
    assert outside["msg"] == "outside" and "trace_id" not in outside


# ---- tracing off ------------------------------------------------------------------------------------


def test_off_by_default_and_nothing_is_made(tmp_path: Path, fake_b: Fake) -> None:
    assert Tracing.start(TracingSettings()) is None
    assert step(None, "identify") is step(None, "admit")  # one shared do-nothing context manager
    access = io.BytesIO()
    settings = Settings(data_dir=tmp_path, admin_key=ADMIN_KEY, upstream_base_url=fake_b.base_url)
    app = create_app(settings, access_stream=access)
    assert not any(m.cls is TraceRequests for m in app.user_middleware)
    assert type(app.state.access_log) is AccessLog
    tag = "off-" + secrets.token_hex(4)
    with TestClient(app) as client:
        assert app.state.tracing is None
        services = app.state.services
        assert services.tracing is None and services.upstream.tracer is None
        trace_id = secrets.token_hex(16)
        resp = client.post(
            "/v1/chat/completions",
            json={"model": "fake-model", "messages": [{"role": "user", "content": f"trace {tag}"}]},
            headers={"x-api-key": ADMIN_KEY, "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
        )
        assert resp.status_code == 200
    assert "traceparents" not in fake_b.stats(tag)  # nothing propagated
    assert b"trace_id" not in access.getvalue()
