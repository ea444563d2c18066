"""Every overflow strategy through the gateway's public interface: a real `chatgate serve`, the openai
SDK, the fake upstream stating (and enforcing) ``max_model_len`` 300, the brief in the SQLite store."""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import WINDOW, Fake, Gateway, start_gateway, stop
from tests.context.test_end_to_end import MAX_TOKENS, conversation

OWUI_CHAT = "x-openwebui-chat-id"


def gateway(tmp_path_factory: pytest.TempPathFactory, fake: Fake, **context: Any) -> Gateway:
    cfg = {
        "upstreams": [{"name": "w", "base_url": fake.base_url}],  # models and window discovered
        "context": {"summarizer": {"brief_max_tokens": 60, "input_max_tokens": 256}, **context},
        "limits": {"user_requests_per_minute": 10_000},
    }
    return start_gateway(tmp_path_factory.mktemp("ctx"), cfg)


@pytest.fixture(scope="module")
def summarizing(tmp_path_factory: pytest.TempPathFactory, fake_window: Fake) -> Iterator[Gateway]:
    g = gateway(tmp_path_factory, fake_window)  # summarize is the default strategy
    yield g
    stop(g.proc)


def client(gw: Gateway, chat_id: str | None = None) -> openai.OpenAI:
    headers = {OWUI_CHAT: chat_id} if chat_id else {}
    return openai.OpenAI(base_url=gw.base_url, api_key=gw.key, max_retries=0, default_headers=headers)


def ask(gw: Gateway, messages: list[dict[str, Any]], tag: str, chat_id: str | None = None, **kw: Any) -> Any:
    return client(gw, chat_id).chat.completions.create(
        model="ctx-model",
        messages=messages,  # type: ignore[arg-type]
        max_tokens=MAX_TOKENS,
        extra_body={"fake": {"id": tag}},
        **kw,
    )


def sent(fake: Fake, tag: str) -> list[dict[str, Any]]:
    """The messages the upstream got for the last call tagged ``tag``."""
    return fake.stats(tag)["bodies"][-1]["messages"]  # type: ignore[no-any-return]


def summaries(fake: Fake) -> list[str]:
    return list(fake.stats("summarizer")["bodies"])


def test_unfitted_the_upstream_itself_refuses(fake_window: Fake) -> None:
    """The premise: without fitting, this conversation fails at the upstream."""
    body = {"model": "ctx-model", "messages": conversation(30), "max_tokens": MAX_TOKENS}
    resp = httpx.post(fake_window.base_url + "/chat/completions", json=body)
    assert resp.status_code == 400 and "maximum context length" in resp.text


def test_reject_is_a_400_with_the_numbers_and_refunds(tmp_path_factory, fake_window: Fake) -> None:
    g = gateway(tmp_path_factory, fake_window, strategy="reject")
    try:
        tag = "rej-" + secrets.token_hex(3)
        with pytest.raises(openai.BadRequestError) as caught:
            ask(g, conversation(30), tag, user="rejected")
        err = caught.value.body
        assert isinstance(err, dict) and err["code"] == "CONTEXT_LENGTH"
        details = err["details"]
        assert details["window"] == WINDOW and details["max_tokens"] == MAX_TOKENS and details["model"] == "ctx-model"
        assert details["prompt_tokens"] + MAX_TOKENS > WINDOW
        assert fake_window.stats(tag)["attempts"] == 0  # never sent
        limits = httpx.get(f"{g.url}/admin/users/admin/rejected/limits", headers={"x-api-key": g.key}).json()
        used = {line["scope"]: line["used"] for line in limits["limits"]}
        assert used["user:tokens_per_hour"] == 0 and used["user:requests_per_minute"] == 1
        # A conversation that fits goes through untouched.
        small = conversation(2)
        assert ask(g, small, tag).choices[0].message.content == "echo: " + small[-1]["content"]
        assert sent(fake_window, tag) == small
    finally:
        stop(g.proc)


def test_truncate_keeps_the_system_prompt_and_the_last_turn(tmp_path_factory, fake_window: Fake) -> None:
    g = gateway(tmp_path_factory, fake_window, strategy="truncate")
    try:
        tag = "trunc-" + secrets.token_hex(3)
        messages = conversation(30)
        answer = ask(g, messages, tag)
        assert answer.choices[0].message.content == "echo: " + messages[-1]["content"]
        got = sent(fake_window, tag)
        assert got[0] == messages[0] and got[-1] == messages[-1]
        assert len(got) < len(messages) and got[1]["role"] == "user"
        assert got[1:] == messages[len(messages) - len(got) + 1 :]  # the newest turns, whole, in order
        scraped = httpx.get(g.url + "/metrics", headers={"x-api-key": g.key}).text
        assert 'chatgate_context_overflows_total{action="truncated"} 1.0' in scraped
        assert not summaries(fake_window) or all("q29" not in s for s in summaries(fake_window))
    finally:
        stop(g.proc)


def test_summarize_folds_into_a_stored_brief_and_extends_it(summarizing: Gateway, fake_window: Fake) -> None:
    chat_id, tag = "chat-" + secrets.token_hex(4), "sum-" + secrets.token_hex(3)
    before = len(summaries(fake_window))
    messages = conversation(30)
    answer = ask(summarizing, messages, tag, chat_id=chat_id)
    assert answer.choices[0].message.content == "echo: " + messages[-1]["content"]
    got = sent(fake_window, tag)
    assert got[0] == messages[0] and got[-1] == messages[-1]
    assert got[1]["role"] == "system" and got[1]["content"].startswith("Summary of the earlier conversation:\n- ")
    assert "q0w0" in got[1]["content"]  # the oldest turn lives on in the brief
    first_calls = summaries(fake_window)[before:]
    assert first_calls

    with sqlite3.connect(summarizing.data_dir / "chatgate.db") as db:
        for _ in range(50):
            row = db.execute(
                "select brief, brief_upto from conversations where brief is not null and brief like ?",
                (f"%{'q0w0'}%",),
            ).fetchall()
            if row:
                break
            time.sleep(0.05)
    assert row and row[-1][1] > 0  # stored with how many messages it covers

    # The next turn extends the brief with the turns it does not cover yet; it is not rewritten.
    longer = [*messages[:-1], *conversation(45)[len(messages) - 1 :]]
    before = len(summaries(fake_window))
    ask(summarizing, longer, tag, chat_id=chat_id)
    new_calls = summaries(fake_window)[before:]
    assert new_calls, "the brief was extended"
    assert "<brief>\n- " in new_calls[0] and "q0w0" not in new_calls[0].split("<turns>")[1]
    got = sent(fake_window, tag)
    assert got[-1] == longer[-1] and got[1]["content"].startswith("Summary of the earlier conversation:")

    # The same request again: the brief as stored does; no summariser call at all.
    before = len(summaries(fake_window))
    ask(summarizing, longer, tag, chat_id=chat_id)
    assert len(summaries(fake_window)) == before


def test_summarizer_tokens_are_charged_to_the_user(summarizing: Gateway, fake_window: Fake) -> None:
    user, tag = "u-" + secrets.token_hex(3), "charge-" + secrets.token_hex(3)
    answer = ask(summarizing, conversation(30), tag, user=user)  # ephemeral: summarised, not stored
    limits = httpx.get(f"{summarizing.url}/admin/users/admin/{user}/limits", headers={"x-api-key": summarizing.key})
    used = {line["scope"]: line["used"] for line in limits.json()["limits"]}
    assert answer.usage is not None and used["user:tokens_per_hour"] > answer.usage.total_tokens


def test_summarizer_failure_falls_back_to_truncation(summarizing: Gateway, fake_window: Fake) -> None:
    tag = "fail-" + secrets.token_hex(3)
    messages = conversation(30, first="[fake:fail] hello")
    answer = ask(summarizing, messages, tag, chat_id="chat-" + secrets.token_hex(4))
    assert answer.choices[0].message.content == "echo: " + messages[-1]["content"]
    got = sent(fake_window, tag)
    assert got[0] == messages[0] and got[-1] == messages[-1] and len(got) < len(messages)
    assert not any(str(m["content"]).startswith("Summary of") for m in got)
    assert "summariser failed" in summarizing.logs()


def test_streaming_requests_are_fitted_too(summarizing: Gateway, fake_window: Fake) -> None:
    tag = "stream-" + secrets.token_hex(3)
    messages = conversation(30)
    stream = ask(summarizing, messages, tag, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.strip() == "echo: " + messages[-1]["content"]  # the fake streams word by word
    assert len(sent(fake_window, tag)) < len(messages)
