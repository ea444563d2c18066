"""Retries through a real `chatgate serve`: a stream cut (or failing) before its first event is retried
like any call; a first-byte timeout is not repeated on the same upstream, but goes once elsewhere;
every retry is one JSON log line with its reason."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx

from tests.conftest import Fake, Gateway, fast_retry_config

MESSAGES = [{"role": "user", "content": "one two three"}]


def upstream(fake: Fake, *models: str) -> dict[str, Any]:
    up: dict[str, Any] = {"name": fake.name, "base_url": fake.base_url}
    if fake.name == "a":
        up["api_key"] = "upstream-secret-a"
    if models:
        up["models"] = list(models)
    return up


def post(gw: Gateway, **body: Any) -> httpx.Response:
    return httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "fake-model", "messages": MESSAGES, **body},
        headers={"Authorization": f"Bearer {gw.key}"},
        timeout=30,
    )


def stream_text(resp: httpx.Response) -> tuple[str, list[dict[str, Any]]]:
    """The streamed reply's text, and the error events it carried."""
    text, errors = "", []
    for line in resp.text.splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[6:])
        if "error" in event:
            errors.append(event["error"])
        for choice in event.get("choices", []):
            text += choice["delta"].get("content") or ""
    return text, errors


def retry_lines(gw: Gateway, wanted: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The gateway's ``upstream retry`` log lines, once ``wanted`` of them are written."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(line) for line in gw.logs().splitlines() if line.startswith("{")]
        found = [line for line in lines if line.get("msg") == "upstream retry"]
        if len(found) >= wanted or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_stream_cut_before_its_first_event_is_retried(gateway_factory, fake_b: Fake):
    gw = gateway_factory(fast_retry_config(upstream(fake_b)))
    s = uuid.uuid4().hex
    resp = post(gw, stream=True, fake={"id": s, "abort_after": 0, "abort_attempts": 2})
    assert resp.status_code == 200
    text, errors = stream_text(resp)
    assert text == "echo: one two three " and errors == []
    assert fake_b.stats(s)["attempts"] == 3
    reasons = [line["reason"] for line in retry_lines(gw, 2)]
    assert reasons == ["cut_off", "cut_off"], reasons


def test_an_error_as_a_streams_first_event_is_retried(gateway_factory, fake_b: Fake):
    gw = gateway_factory(fast_retry_config(upstream(fake_b)))
    s = uuid.uuid4().hex
    resp = post(gw, stream=True, fake={"id": s, "stream_error": 1})
    text, errors = stream_text(resp)
    assert resp.status_code == 200 and text == "echo: one two three " and errors == []
    assert fake_b.stats(s)["attempts"] == 2
    assert [line["reason"] for line in retry_lines(gw, 1)] == ["error_event"]


def test_a_first_byte_timeout_is_not_repeated_on_the_same_upstream(gateway_factory, fake_b: Fake):
    gw = gateway_factory(fast_retry_config(upstream(fake_b), timeouts={"first_byte": 0.5}))
    s = uuid.uuid4().hex
    resp = post(gw, fake={"id": s, "delay": 2})
    assert resp.status_code == 504 and resp.json()["error"]["code"] == "UPSTREAM_TIMEOUT"
    assert fake_b.stats(s)["attempts"] == 1  # the first attempt may still be generating: not sent again


def test_a_first_byte_timeout_goes_once_to_the_fallback_and_is_logged(gateway_factory, fake_a: Fake, fake_b: Fake):
    config = fast_retry_config(
        upstream(fake_a, "fake-other"),
        upstream(fake_b, "fake-model"),
        fallbacks={"fake-other": ["fake-model"]},
        timeouts={"first_byte": 0.5},
    )
    gw = gateway_factory(config)
    s = uuid.uuid4().hex
    resp = post(gw, model="fake-other", fake={"id": s, "delay": 2, "on": ["a"]})
    assert resp.status_code == 200 and resp.json()["system_fingerprint"] == "b"
    assert fake_a.stats(s)["attempts"] == 1 and fake_b.stats(s)["attempts"] == 1
    (line,) = retry_lines(gw, 1)
    assert line["upstream"] == "a" and line["attempt"] == 1 and line["reason"] == "first_byte_timeout"
    assert line["wait_s"] == 0 and line["retry_upstream"] == "b" and line["retry_model"] == "fake-model"
    assert line["level"] == "info" and line["logger"] == "chatgate.upstream"


def test_every_retry_is_one_log_line_with_its_reason(gateway_factory, fake_b: Fake):
    gw = gateway_factory(fast_retry_config(upstream(fake_b)))
    s = uuid.uuid4().hex
    assert post(gw, fake={"id": s, "fail": [500, 429, 503]}).status_code == 200
    lines = retry_lines(gw, 3)
    assert [(x["attempt"], x["reason"], x["upstream_status"]) for x in lines] == [
        (1, "status_500", 500),
        (2, "status_429", 429),
        (3, "status_503", 503),
    ]
    assert all(x["upstream"] == "b" and 0 <= x["wait_s"] <= 0.2 for x in lines)
