"""ContextFitter with a word-counting tokenizer (one token per word), so every number is exact.

A 10-word message costs 14 tokens (3 per message, 1 for the role); the system prompt "be brief"
6; the reply priming 3. ``history(5)`` is 163 tokens; a 200-token window with max_tokens 50
leaves 150.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from chatgate.context import SUMMARY_PREFIX, ContextFitter, WindowResolver
from chatgate.context.history import digest
from chatgate.errors import ContextLengthExceeded
from chatgate.sessions.manager import Session
from chatgate.settings import ContextSettings

from .helpers import RecordingSummariser, fitter, history, turn, word_counter, words


def session(key: str | None = "chat-1") -> Session:
    return Session(id="c1", user_id="u1", key=key, source="openai", created_at=datetime.now(UTC))


async def test_a_request_that_fits_is_sent_as_it_is():
    messages = history(2)
    fitted = await fitter().fit(messages, model="m", max_tokens=50)
    assert fitted.messages is messages
    assert (fitted.prompt_tokens, fitted.window, fitted.max_tokens, fitted.action) == (3 + 6 + 5 * 14, 200, 50, None)


async def test_no_known_window_sends_unfitted_and_counts_it():
    f = fitter()
    messages = history(50)
    fitted = await f.fit(messages, model="other", max_tokens=None)
    assert fitted.messages is messages and fitted.window is None and fitted.action is None
    assert fitted.max_tokens == 1024  # context.reserve_completion_tokens
    assert f.stats["unknown_window"] == 1 and f.stats["overflows"] == 0


async def test_default_window_applies_to_unknown_models():
    ctx = ContextSettings(default_window=100, strategy="truncate")
    f = ContextFitter(ctx, word_counter(), WindowResolver(ctx))
    fitted = await f.fit(history(5), model="anything", max_tokens=10)
    assert fitted.window == 100 and fitted.action == "truncated" and fitted.prompt_tokens <= 90


async def test_reject_raises_400_with_the_numbers():
    f = fitter(strategy="reject")
    with pytest.raises(ContextLengthExceeded) as caught:
        await f.fit(history(5), model="m", max_tokens=50)
    err = caught.value
    assert err.status == 400
    assert err.body()["error"]["code"] == "CONTEXT_LENGTH"
    assert err.body()["error"]["type"] == "invalid_request_error"
    assert err.details == {"window": 200, "prompt_tokens": 163, "max_tokens": 50, "model": "m"}
    assert "200" in err.message and "163" in err.message
    assert f.stats["overflows"] == 1 and f.stats["rejected"] == 1


async def test_max_completion_tokens_budget_decides_overflow():
    f = fitter(strategy="reject")
    messages = history(5)  # 163 tokens
    assert (await f.fit(messages, model="m", max_tokens=37)).action is None  # 163 + 37 = 200
    with pytest.raises(ContextLengthExceeded):
        await f.fit(messages, model="m", max_tokens=38)


async def test_truncate_drops_oldest_whole_turns_keeping_system_and_last_turn():
    f = fitter(strategy="truncate")
    messages = history(5)
    fitted = await f.fit(messages, model="m", max_tokens=50)
    assert fitted.action == "truncated"
    # 150 left: the system prompt (9 with priming) and 10 of 11 messages would be 149 -- but that would
    # split the first turn, so its reply goes too.
    assert fitted.messages == [messages[0], *messages[3:]]
    assert fitted.messages[1]["role"] == "user"
    assert fitted.dropped == 2 and fitted.prompt_tokens == 9 + 9 * 14 == 135
    assert fitted.prompt_tokens == word_counter().count_messages(fitted.messages)
    assert f.stats["truncated"] == 1 and f.stats["messages_dropped"] == 2


async def test_truncate_keeps_a_tool_call_with_its_results():
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
    messages = [
        {"role": "system", "content": "be brief"},
        *turn(0, 30),
        {"role": "user", "content": words(10, "q1")},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": words(10, "r1")},
        {"role": "assistant", "content": words(10, "a1")},
        {"role": "user", "content": words(10, "q2")},
    ]
    f = fitter(strategy="truncate", window=130)
    fitted = await f.fit(messages, model="m", max_tokens=10)
    assert fitted.messages == [messages[0], *messages[3:]]  # the first turn went, the tool turn stayed whole
    fitted = await fitter(strategy="truncate", window=70).fit(messages, model="m", max_tokens=10)
    assert fitted.messages == [messages[0], messages[-1]]  # never the tool call without its result
    assert [m["role"] for m in fitted.messages] == ["system", "user"]


async def test_truncate_keeps_what_follows_the_last_user_message():
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        *turn(0, 40),
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    fitted = await fitter(strategy="truncate", window=100).fit(messages, model="m", max_tokens=10)
    assert fitted.messages == messages[2:]


@pytest.mark.parametrize("strategy", ["truncate", "summarize", "reject"])
async def test_a_last_turn_too_large_is_refused_whatever_the_strategy(strategy):
    messages = [{"role": "system", "content": "be brief"}, *turn(0), {"role": "user", "content": words(300, "x")}]
    summariser = RecordingSummariser()
    f = fitter(strategy=strategy, summariser=summariser)
    with pytest.raises(ContextLengthExceeded) as caught:
        await f.fit(messages, model="m", max_tokens=50)
    assert caught.value.details["prompt_tokens"] == word_counter().count_messages(messages)
    assert summariser.calls == []


async def test_max_tokens_as_large_as_the_window_is_refused():
    with pytest.raises(ContextLengthExceeded) as caught:
        await fitter(strategy="truncate").fit([{"role": "user", "content": "hi"}], model="m", max_tokens=200)
    assert caught.value.details["max_tokens"] == 200


async def test_tool_definitions_take_room():
    tools = [{"type": "function", "function": {"name": "f", "description": words(60, "d")}}]
    f = fitter(strategy="reject")
    messages = history(3)  # 3 + 6 + 7 * 14 = 107
    assert (await f.fit(messages, model="m", max_tokens=50)).action is None
    with pytest.raises(ContextLengthExceeded) as caught:
        await f.fit(messages, model="m", max_tokens=50, tools=tools)
    assert caught.value.details["prompt_tokens"] == 107 + 60


async def test_summarize_folds_older_turns_into_a_brief_on_the_session():
    summariser = RecordingSummariser()
    f = fitter(summariser=summariser)
    s = session()
    messages = history(5)
    fitted = await f.fit(messages, model="m", max_tokens=50, session=s)
    assert fitted.action == "summarized"
    # Folded beyond what this request needed (fold_target), keeping the last 2 turns (keep_last_turns).
    assert summariser.calls == [(None, messages[1:9])]
    assert fitted.messages == [
        messages[0],
        {"role": "system", "content": SUMMARY_PREFIX + "brief#1 of 8"},
        *messages[9:],
    ]
    assert fitted.folded == 8 and fitted.dropped == 0
    assert fitted.prompt_tokens == word_counter().count_messages(fitted.messages) <= 150
    assert fitted.summary_usage == {"calls": 1, "prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
    assert (s.brief, s.brief_upto, s.brief_digest) == ("brief#1 of 8", 8, digest(messages[1:9]))
    assert f.stats["summarized"] == 1 and f.stats["messages_folded"] == 8 and f.stats["summarize_calls"] == 1


async def test_the_brief_is_reused_then_extended_with_new_turns_only():
    summariser = RecordingSummariser()
    f = fitter(summariser=summariser)
    s = session()
    await f.fit(history(5), model="m", max_tokens=50, session=s)
    for n in (6, 7, 8):  # the brief and the newer turns fit: no call
        fitted = await f.fit(history(n), model="m", max_tokens=50, session=s)
        assert fitted.action == "summarized" and fitted.summary_usage is None
        assert fitted.messages[1]["content"] == SUMMARY_PREFIX + "brief#1 of 8"
        assert fitted.messages[2:] == history(n)[9:]
    assert len(summariser.calls) == 1 and f.stats["briefs_reused"] == 3
    messages = history(9)
    fitted = await f.fit(messages, model="m", max_tokens=50, session=s)
    assert summariser.calls[1] == ("brief#1 of 8", messages[9:17])  # only what the brief did not cover
    assert s.brief_upto == 16 and s.brief == "brief#2 of 8"
    assert fitted.messages == [
        messages[0],
        {"role": "system", "content": SUMMARY_PREFIX + "brief#2 of 8"},
        *messages[17:],
    ]


async def test_an_edited_history_gets_a_new_brief():
    summariser = RecordingSummariser()
    f = fitter(summariser=summariser)
    s = session()
    await f.fit(history(5), model="m", max_tokens=50, session=s)
    edited = history(6)
    edited[3] = {"role": "user", "content": words(10, "edited")}
    fitted = await f.fit(edited, model="m", max_tokens=50, session=s)
    assert summariser.calls[1][0] is None  # not extended: rewritten from the start
    assert summariser.calls[1][1][0] == edited[1] and edited[3] in summariser.calls[1][1]
    assert f.stats["briefs_invalidated"] == 1
    assert s.brief == "brief#2 of 10" and s.brief_digest == digest(edited[1 : 1 + s.brief_upto])
    assert fitted.messages[1]["content"] == SUMMARY_PREFIX + "brief#2 of 10"


async def test_a_shorter_history_than_the_brief_covers_gets_a_new_brief():
    summariser = RecordingSummariser()
    f = fitter(summariser=summariser)
    s = session()
    await f.fit(history(8), model="m", max_tokens=50, session=s)
    assert s.brief_upto == 14
    fitted = await f.fit(history(1), model="m", max_tokens=50, session=s)  # an earlier branch: fits as it is
    assert fitted.action is None and s.brief_upto == 14
    messages = history(5)  # another earlier branch, too long: the brief covers more than it has
    fitted = await f.fit(messages, model="m", max_tokens=50, session=s)
    assert f.stats["briefs_invalidated"] == 1
    assert summariser.calls[1] == (None, messages[1:9]) and s.brief_upto == 8


async def test_summariser_failure_falls_back_to_truncation_and_is_logged_without_content(caplog):
    summariser = RecordingSummariser(fail="HTTP 500")
    f = fitter(summariser=summariser)
    s = session()
    messages = history(5)
    with caplog.at_level(logging.WARNING, logger="chatgate.context"):
        fitted = await f.fit(messages, model="m", max_tokens=50, session=s)
    assert fitted.action == "summarize_failed_truncated"
    assert fitted.messages == [messages[0], *messages[3:]]  # what truncate would send
    assert fitted.summary_usage == {"calls": 1, "prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
    assert s.brief is None
    assert f.stats["summarize_failures"] == 1 and f.stats["truncated"] == 1 and f.stats["summarized"] == 0
    records = [r for r in caplog.records if r.name == "chatgate.context"]
    assert len(records) == 1
    assert records[0].__dict__["error"] == "HTTP 500" and records[0].__dict__["session_id"] == "c1"
    text = records[0].getMessage() + str(records[0].__dict__)
    assert "q0w1" not in text and "a0w1" not in text


async def test_summariser_failure_keeps_a_still_valid_brief():
    summariser = RecordingSummariser()
    f = fitter(summariser=summariser)
    s = session()
    await f.fit(history(5), model="m", max_tokens=50, session=s)
    summariser.fail = "timed out"
    messages = history(9)
    fitted = await f.fit(messages, model="m", max_tokens=50, session=s)
    assert fitted.action == "summarize_failed_truncated"
    assert fitted.messages[:2] == [messages[0], {"role": "system", "content": SUMMARY_PREFIX + "brief#1 of 8"}]
    assert fitted.messages[-1] == messages[-1] and fitted.prompt_tokens <= 150
    assert fitted.dropped > 0 and (s.brief, s.brief_upto) == ("brief#1 of 8", 8)


async def test_requests_without_a_stored_conversation_are_summarised_from_scratch():
    summariser = RecordingSummariser()
    f = fitter(summariser=summariser)
    messages = history(5)
    for s in (session(key=None), None):  # ephemeral (a new one each request), or none at all
        fitted = await f.fit(messages, model="m", max_tokens=50, session=s)
        assert fitted.action == "summarized"
    assert summariser.calls == [(None, messages[1:9]), (None, messages[1:9])]


async def test_keep_last_turns_is_honoured_when_it_fits():
    summariser = RecordingSummariser()
    f = fitter(summariser=summariser, window=400, keep_last_turns=4, fold_target=0.1)
    messages = history(20)
    fitted = await f.fit(messages, model="m", max_tokens=50)
    assert summariser.calls[0][1] == messages[1:35]  # 17 turns folded, the last 4 (3 and the new one) kept
    assert fitted.messages[2:] == messages[35:]


async def test_summarize_without_a_summariser_truncates():
    f = fitter(summariser=None)
    fitted = await f.fit(history(5), model="m", max_tokens=50)
    assert fitted.action == "truncated"
