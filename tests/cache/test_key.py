"""The cache key: what makes two requests the same answer, what keeps them apart, and who opts out."""

from __future__ import annotations

from typing import Any

import pytest

from chatgate.cache import Scope, cache_key, cacheability, normalise_text


def body(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": "m",
        "temperature": 0,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
    }
    payload.update(overrides)
    return payload


def key(payload: dict[str, Any], scope: Scope | None = None) -> str:
    k = cache_key(payload, scope=scope)
    assert k is not None
    return k


def test_the_key_is_a_stable_sha256_hex() -> None:
    k = key(body())
    assert len(k) == 64 and int(k, 16) >= 0
    assert key(body()) == k


def test_whitespace_equivalent_requests_share_a_key() -> None:
    messy = body(
        messages=[
            {"role": "system", "content": "  Be   brief.\r\n"},
            {"role": "user", "content": [{"type": "text", "text": "What\tis the  capital of\u00a0France?  "}]},
        ]
    )
    assert key(messy) == key(body())


def test_indentation_and_line_breaks_are_kept() -> None:
    a = "if x:\n  a\nb"
    b = "if x:\n  a\n  b"
    assert normalise_text(a) != normalise_text(b)
    assert normalise_text("x  =  1 \r\n\r\n\r\n\n  y\t\t= 2  \n\n") == "x = 1\n\n  y = 2"
    assert normalise_text("one\ntwo") != normalise_text("one two")
    user = lambda text: body(messages=[{"role": "user", "content": text}])  # noqa: E731
    assert key(user(a)) != key(user(b))


def test_stream_user_metadata_and_use_cache_are_ignored() -> None:
    plain = key(body())
    noisy = body(
        stream=True,
        stream_options={"include_usage": True},
        user="alice",
        metadata={"chat_id": "c1"},
        use_cache=True,
        store=False,
    )
    assert key(noisy) == plain


def test_written_out_defaults_hash_like_absent_ones() -> None:
    plain = key(body())
    assert key(body(n=1, top_p=1.0, presence_penalty=0, frequency_penalty=0.0, logprobs=False, stop=None)) == plain
    assert key(body(temperature=0.0)) == plain
    assert key(body(max_completion_tokens=50)) == key(body(max_tokens=50))
    assert key(body(stop="END")) == key(body(stop=["END"]))


@pytest.mark.parametrize(
    "change",
    [
        {"model": "other"},
        {"max_tokens": 10},
        {"top_p": 0.5},
        {"seed": 7},
        {"n": 2},
        {"stop": ["\n"]},
        {"presence_penalty": 0.5},
        {"frequency_penalty": 0.5},
        {"logit_bias": {"42": -100}},
        {"logprobs": True, "top_logprobs": 2},
        {"response_format": {"type": "json_object"}},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"tool_choice": "none"},
        {"parallel_tool_calls": False},
        {"top_k": 5},  # a parameter the key does not know still changes it
        {"messages": [{"role": "user", "content": "What is the capital of Spain?"}]},
    ],
)
def test_anything_that_changes_the_answer_changes_the_key(change: dict[str, Any]) -> None:
    assert key(body(**change)) != key(body())


def test_message_fields_other_than_text_are_part_of_the_key() -> None:
    def with_history(**assistant: Any) -> dict[str, Any]:
        msgs = [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, **assistant},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ]
        return body(messages=msgs)

    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}
    other_args = {**call, "function": {"name": "weather", "arguments": '{"city":"Rome"}'}}
    base = key(with_history(tool_calls=[call]))
    assert key(with_history(tool_calls=[other_args])) != base
    assert key(with_history(tool_calls=[call], name="bot")) != base
    # the tool result is text: whitespace-normalised, but its value counts
    msgs = with_history(tool_calls=[call])["messages"]
    msgs[2] = {**msgs[2], "content": "  sunny "}
    assert key(body(messages=msgs)) == base
    msgs[2] = {**msgs[2], "content": "rainy"}
    assert key(body(messages=msgs)) != base
    assert key(body(messages=[{"role": "assistant", "content": "hi"}])) != key(
        body(messages=[{"role": "user", "content": "hi"}])
    )


def test_image_parts_are_part_of_the_key() -> None:
    def with_image(url: str) -> dict[str, Any]:
        parts = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]
        return body(messages=[{"role": "user", "content": parts}])

    assert key(with_image("data:image/png;base64,AAAA")) != key(with_image("data:image/png;base64,AAAB"))
    assert key(with_image("https://x/a.png")) == key(with_image("https://x/a.png"))
    assert key(with_image("https://x/a.png")) != key(body(messages=[{"role": "user", "content": "What is this?"}]))


def test_scope_separates_assistants_collections_and_private_users() -> None:
    shared = Scope(assistant="support", collections=("faq", "manuals"))
    assert key(body(), Scope(assistant="support", collections=("manuals", "faq"))) == key(body(), shared)
    assert key(body(), shared) != key(body())
    assert key(body(), Scope(assistant="sales", collections=("faq", "manuals"))) != key(body(), shared)
    assert key(body(), Scope(assistant="support", collections=("faq",))) != key(body(), shared)
    alice = Scope(assistant="support", collections=("faq",), private_user="alice")
    bob = Scope(assistant="support", collections=("faq",), private_user="bob")
    assert key(body(), alice) != key(body(), bob)
    assert key(body(), alice) != key(body(), Scope(assistant="support", collections=("faq",)))


def test_sampling_is_not_cached_unless_allowed() -> None:
    hot = cacheability(body(temperature=0.7))
    assert hot.key is None and not hot and "temperature > 0" in (hot.reason or "")
    unset = body()
    del unset["temperature"]
    result = cacheability(unset)
    assert result.key is None and "unset" in (result.reason or "")
    assert cacheability(body(temperature=0.7), allow_sampling=True).key is not None
    assert cacheability(unset, allow_sampling=True).key is not None
    assert (
        cacheability(body(temperature=0.7), allow_sampling=True).key
        != cacheability(body(temperature=0.2), allow_sampling=True).key
    )
    ok = cacheability(body())
    assert ok and ok.reason is None


@pytest.mark.parametrize(
    "payload",
    [
        {"model": "m", "temperature": 0},
        {"messages": [], "temperature": 0},
        {"model": "m", "messages": [], "temperature": "0"},
        {"model": "m", "messages": [], "temperature": 0, "modalities": ["text", "audio"]},
    ],
)
def test_malformed_or_audio_requests_are_not_cacheable(payload: dict[str, Any]) -> None:
    result = cacheability(payload, allow_sampling=True)
    assert result.key is None and result.reason
