"""A cached answer replayed as a stream: the openai SDK reads it back to the same answer, content,
tool calls, finish reason and usage; and ``Entry`` keeps only whole answers, byte for byte."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest

from chatgate.cache import Entry, replay_sse
from chatgate.upstream.sse import DONE_EVENT, SSEDecoder

USAGE = {"prompt_tokens": 20, "completion_tokens": 40, "total_tokens": 60}
TEXT = "Paris is the capital of France. " * 10 + "Ünïcödé ✓ 日本語."
CALLS = [
    {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris", "days": 3}'}},
    {"id": "call_b", "type": "function", "function": {"name": "time", "arguments": "{}"}},
]


def completion(*choices: dict[str, Any], **extra: Any) -> bytes:
    body = {
        "id": "chatcmpl-xyz",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "served-model",
        "system_fingerprint": "fp_1",
        "choices": list(choices),
        "usage": USAGE,
        **extra,
    }
    return orjson.dumps(body)


def choice(index: int = 0, finish: str = "stop", **message: Any) -> dict[str, Any]:
    return {"index": index, "message": {"role": "assistant", **message}, "logprobs": None, "finish_reason": finish}


def entry_of(body: bytes) -> Entry:
    entry = Entry.from_response(body)
    assert entry is not None
    return entry


def sdk_client(events: list[bytes]) -> openai.OpenAI:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=b"".join(events))

    return openai.OpenAI(
        api_key="x", base_url="http://cache.test/v1", http_client=httpx.Client(transport=httpx.MockTransport(handler))
    )


def decode(events: list[bytes]) -> list[dict[str, Any]]:
    dec = SSEDecoder()
    parsed = dec.feed(b"".join(events)) + dec.flush()
    assert parsed[-1].is_done and events[-1] == DONE_EVENT
    return [orjson.loads(e.data or b"") for e in parsed[:-1]]


def test_content_replays_to_the_exact_text_in_several_chunks() -> None:
    entry = entry_of(completion(choice(content=TEXT)))
    events = replay_sse(entry, chunk_chars=50)
    chunks = decode(events)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks]
    assert "".join(pieces) == TEXT and len([p for p in pieces if p]) == -(-len(TEXT) // 50)
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-xyz" for c in chunks)
    assert all(c["model"] == "served-model" and c["system_fingerprint"] == "fp_1" for c in chunks)
    assert not any("usage" in c for c in chunks)  # not asked for


def test_the_openai_sdk_reassembles_content_and_usage() -> None:
    entry = entry_of(completion(choice(content=TEXT, finish="stop")))
    client = sdk_client(replay_sse(entry, include_usage=True, chunk_chars=16))
    with client.chat.completions.stream(model="m", messages=[{"role": "user", "content": "q"}]) as stream:
        final = stream.get_final_completion()
    assert final.id == "chatcmpl-xyz" and final.model == "served-model"
    assert final.choices[0].message.content == TEXT
    assert final.choices[0].finish_reason == "stop"
    assert final.usage is not None and final.usage.model_dump(exclude_none=True) == USAGE


def test_the_openai_sdk_reassembles_tool_calls() -> None:
    entry = entry_of(completion(choice(content=None, finish="tool_calls", tool_calls=CALLS)))
    events = replay_sse(entry, chunk_chars=7)
    tools = [
        {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}},
        {"type": "function", "function": {"name": "time", "parameters": {"type": "object", "properties": {}}}},
    ]
    with sdk_client(events).chat.completions.stream(
        model="m", messages=[{"role": "user", "content": "q"}], tools=tools
    ) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls" and not message.content
    got = [(c.id, c.type, c.function.name, c.function.arguments) for c in message.tool_calls or []]
    assert got == [(c["id"], c["type"], c["function"]["name"], c["function"]["arguments"]) for c in CALLS]
    # the arguments really were split
    assert sum(1 for c in decode(events) if c["choices"][0]["delta"].get("tool_calls")) > len(CALLS) + 2


def test_several_choices_refusal_reasoning_and_logprobs() -> None:
    logprobs = {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]}
    first = choice(0, content="Hi", reasoning_content="thinking...")
    first["logprobs"] = logprobs
    body = completion(first, choice(1, content=None, refusal="I can't help with that."))
    chunks = decode(replay_sse(entry_of(body), include_usage=True))
    by_index: dict[int, dict[str, str]] = {0: {}, 1: {}}
    finishes: dict[int, str] = {}
    seen_logprobs = []
    for c in chunks[:-1]:
        (ch,) = c["choices"]
        for field in ("content", "refusal", "reasoning_content"):
            if ch["delta"].get(field):
                by_index[ch["index"]][field] = by_index[ch["index"]].get(field, "") + ch["delta"][field]
        if ch["finish_reason"]:
            finishes[ch["index"]] = ch["finish_reason"]
        if ch["logprobs"]:
            seen_logprobs.append(ch["logprobs"])
    assert by_index == {
        0: {"content": "Hi", "reasoning_content": "thinking..."},
        1: {"refusal": "I can't help with that."},
    }
    assert finishes == {0: "stop", 1: "stop"} and seen_logprobs == [logprobs]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == USAGE


def test_the_sdk_iterates_the_raw_chunks() -> None:
    entry = entry_of(completion(choice(content="short answer", finish="length")))
    stream = sdk_client(replay_sse(entry, include_usage=True)).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "q"}], stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "short answer"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 60
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"error": {"message": "overloaded"}}',
        orjson.dumps({"object": "chat.completion", "choices": []}),
        orjson.dumps({"object": "chat.completion.chunk", "choices": [{"index": 0}]}),
        completion(choice(content="x"))[:-5],  # truncated
    ],
)
def test_only_whole_answers_become_entries(body: bytes) -> None:
    assert Entry.from_response(body) is None


def test_an_entry_keeps_the_body_byte_for_byte_and_round_trips() -> None:
    body = b'{"object":"chat.completion",  "model":"m","choices":[{"index":0,"message":{"content":"a"}}]}'
    entry = entry_of(body)
    assert entry.body == body and entry.model == "m" and entry.usage is None and entry.size == len(body)
    assert Entry.decode(entry.encode()) == entry
    with pytest.raises(ValueError):
        Entry.decode(b"no header line")
    with pytest.raises(ValueError):
        Entry.decode(b'{"x": 1}\n{}')
