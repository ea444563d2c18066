"""Relaying upstream SSE: usage handling, odd framings, and failures mid-stream."""

import uuid
from typing import Any

import orjson
import pytest

from chatgate.settings import RetrySettings, TimeoutSettings
from chatgate.upstream.client import CallTrace, UpstreamClient
from chatgate.upstream.routing import Router, Upstream
from chatgate.upstream.sse import SSEDecoder
from chatgate.upstream.stream import Relay, ReplyBuffer, ask_for_usage


async def run(fake: Any, client_options: dict[str, Any] | None = None, **knobs: Any) -> tuple[list[Any], list[Any]]:
    up = Upstream(name="b", base_url=fake.base_url, configured_models=("fake-model",))
    client = UpstreamClient(Router([up]), RetrySettings(), TimeoutSettings())
    payload: dict[str, Any] = {
        "model": "fake-model",
        "stream": True,
        "messages": [{"role": "user", "content": "one two three"}],
        "fake": {"id": uuid.uuid4().hex, **knobs},
    }
    if client_options is not None:
        payload["stream_options"] = client_options
    sent, wanted = ask_for_usage(payload)
    usages: list[Any] = []
    try:
        opened = await client.open("/chat/completions", sent, None, CallTrace())
        out = b"".join([c async for c in Relay(opened, include_usage=wanted, on_usage=usages.append)])
    finally:
        await client.close()
    assert up.in_flight == 0
    dec = SSEDecoder()
    events = dec.feed(out) + dec.flush()
    return events, usages


def texts(events: list[Any]) -> str:
    out = ""
    for e in events:
        if e.data and not e.is_done:
            chunk = orjson.loads(e.data)
            for choice in chunk.get("choices", []):
                out += choice["delta"].get("content") or ""
    return out


def test_ask_for_usage_keeps_client_options():
    payload = {"model": "m", "stream_options": {"other": 1}}
    sent, wanted = ask_for_usage(payload)
    assert sent["stream_options"] == {"other": 1, "include_usage": True} and not wanted
    assert payload["stream_options"] == {"other": 1}  # the client's dict is not mutated
    same, wanted = ask_for_usage({"stream_options": {"include_usage": True}})
    assert wanted and same["stream_options"] == {"include_usage": True}


async def test_usage_chunk_dropped_when_client_did_not_ask(fake_b):
    events, usages = await run(fake_b)
    assert events[-1].is_done
    assert not any(e.data and b'"usage"' in e.data for e in events)
    assert usages == [{"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}]
    assert texts(events) == "echo: one two three "


async def test_usage_chunk_forwarded_when_client_asked(fake_b):
    events, usages = await run(fake_b, {"include_usage": True})
    usage_events = [orjson.loads(e.data) for e in events if e.data and b'"usage"' in e.data]
    assert usage_events[-1]["choices"] == [] and usage_events[-1]["usage"]["total_tokens"] == 7
    assert usages


@pytest.mark.parametrize("style", ["multiline", "crlf", "keepalive"])
async def test_odd_framings_arrive_intact(fake_b, style):
    events, _ = await run(fake_b, style=style)
    assert texts(events) == "echo: one two three "
    assert events[-1].is_done
    if style == "keepalive":
        assert any(e.comments == [b"keep-alive"] for e in events)


async def test_abort_mid_stream_becomes_error_event_then_done(fake_b):
    events, _ = await run(fake_b, abort_after=2)
    assert texts(events) == "echo: "  # what arrived before the cut was passed on
    error = orjson.loads(events[-2].data)
    assert error["error"]["code"] == "UPSTREAM_ERROR" and error["error"]["message"]
    assert events[-1].is_done


async def test_stream_without_done_is_ended_for_the_client(fake_b):
    events, _ = await run(fake_b, no_done=True)
    assert texts(events) == "echo: one two three " and events[-1].is_done
    assert not any(e.data and b'"error"' in e.data for e in events)


async def test_relay_closed_before_its_first_chunk_frees_the_upstream(fake_b):
    up = Upstream(name="b", base_url=fake_b.base_url, configured_models=("fake-model",))
    client = UpstreamClient(Router([up]), RetrySettings(), TimeoutSettings())
    payload = {"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    try:
        relay = Relay(await client.open("/chat/completions", payload, None, CallTrace()), include_usage=False)
        assert up.in_flight == 1
        await relay.aclose()  # the client left before anything was sent
        assert up.in_flight == 0
        await relay.aclose()  # idempotent
        assert up.in_flight == 0
    finally:
        await client.close()


def test_reply_buffer_merges_text_and_tool_call_deltas():
    from chatgate.upstream.stream import ReplyBuffer

    reply = ReplyBuffer()
    chunks = [
        {"choices": [{"delta": {"role": "assistant", "content": ""}}]},
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "get_", "arguments": ""},
                            }
                        ]
                    }
                }
            ]
        },
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": "weather", "arguments": '{"ci'}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}]}}]},
        {"choices": [{"delta": {"content": "Checking."}}]},
        {"choices": [], "usage": {"total_tokens": 3}},
    ]
    texts = [reply.feed(orjson.dumps(c)) for c in chunks]
    assert texts == ["", "", "", "", "Checking.", ""]
    assert reply.content() == [
        {
            "type": "tool_calls",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"type": "text", "text": "Checking."},
    ]
    plain = ReplyBuffer()
    plain.feed(b'{"choices": [{"delta": {"content": "hi"}}]}')
    assert plain.content() == "hi" and plain.text == "hi" and plain.feed(b"not json") == ""


class StopAt:
    """A ``Cap`` that asks to be asked after the ``n``-th data chunk and then says stop (or not)."""

    def __init__(self, n: int, stop: bool = True) -> None:
        self.n, self.stop, self.fed, self.asked = n, stop, 0, 0

    def feed(self, data: bytes) -> bool:
        self.fed += 1
        return self.fed == self.n

    async def spent(self) -> bool:
        self.asked += 1
        return self.stop


@pytest.mark.parametrize("stop", [True, False])
async def test_a_cap_stops_the_stream_between_events_with_a_length_chunk(fake_b: Any, stop: bool) -> None:
    """The upstream writes 300 words quickly (many events per read): the stop comes right after the chunk the
    cap asked about, not at the end of the read; the stream still ends as a completed one."""
    up = Upstream(name="b", base_url=fake_b.base_url, configured_models=("fake-model",))
    client = UpstreamClient(Router([up]), RetrySettings(), TimeoutSettings())
    payload = {"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    cap = StopAt(10, stop)
    try:
        opened = await client.open("/chat/completions", payload | {"fake": {"words": 300}}, None, CallTrace())
        relay = Relay(opened, include_usage=False, reply=ReplyBuffer(lazy=True), cap=cap)
        out = b"".join([c async for c in relay])
        await relay.aclose()
    finally:
        await client.close()
    assert up.in_flight == 0
    events = [e.data for e in SSEDecoder().feed(out)]
    assert events[-1] == b"[DONE]" and relay.completed and cap.asked == 1
    chunks = [orjson.loads(d) for d in events[:-1]]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
    if stop:
        assert relay.stopped and len(chunks) == 11 and finishes == ["length"]  # 10 relayed, then the end
        assert chunks[-1]["id"] == chunks[0]["id"]  # named after the stream's own chunks
    else:
        assert not relay.stopped and finishes == ["stop"]
        assert sum(1 for c in chunks if c["choices"][0]["delta"].get("content")) == 300
