"""The summariser against the fake upstream over real HTTP: routed and direct, chunks, caps, failures."""

from __future__ import annotations

from typing import Any

import pytest

from chatgate.context import Summariser, SummaryFailed, SummaryUsage
from chatgate.settings import RetrySettings, SummarizerSettings, TimeoutSettings, TokenSettings
from chatgate.tokens.counter import TokenCounter
from chatgate.upstream.client import UpstreamClient
from chatgate.upstream.routing import Router, Upstream
from tests.conftest import SUMMARY_KEY, Fake, free_port

from .helpers import turn, words


def counter() -> TokenCounter:
    return TokenCounter(TokenSettings())


def summariser(fake: Fake, sleeps: list[float] | None = None, **settings: Any) -> Summariser:
    async def sleep(seconds: float) -> None:
        if sleeps is not None:
            sleeps.append(seconds)

    up = Upstream(name=fake.name, base_url=fake.base_url, configured_models=("ctx-model", "ctx-other"))
    upstream = UpstreamClient(
        Router([up]), RetrySettings(max_retries=1, base=0.01, cap=0.05), TimeoutSettings(), sleep=sleep
    )
    return Summariser(SummarizerSettings(**settings), counter(), upstream, sleep=sleep)


@pytest.fixture
async def closing() -> Any:
    made: list[Summariser] = []
    yield made.append
    for s in made:
        await s.upstream.close()


def summaries(fake: Fake) -> list[str]:
    return list(fake.stats("summarizer")["bodies"])


async def test_routed_call_folds_turns_into_a_brief(fake_window: Fake, closing):
    s = summariser(fake_window)
    closing(s)
    before = len(summaries(fake_window))
    usage = SummaryUsage()
    brief = await s.extend(None, [*turn(0, 8), *turn(1, 8)], model="ctx-model", usage=usage)
    assert brief.splitlines() == [
        "- user: q0w0 q0w1 q0w2 q0w3 q0w4",
        "- assistant: a0w0 a0w1 a0w2 a0w3 a0w4",
        "- user: q1w0 q1w1 q1w2 q1w3 q1w4",
        "- assistant: a1w0 a1w1 a1w2 a1w3 a1w4",
    ]
    sent = summaries(fake_window)[before:]
    assert len(sent) == 1
    assert "<brief>\n(none yet)\n</brief>" in sent[0] and "user: " + words(8, "q0") in sent[0]
    assert usage.calls == 1 and usage.prompt_tokens > 0 and usage.completion_tokens == len(brief.split())


async def test_extending_sends_the_brief_so_far_and_only_the_new_turns(fake_window: Fake, closing):
    s = summariser(fake_window)
    closing(s)
    first = await s.extend(None, turn(0, 8), model="ctx-model")
    before = len(summaries(fake_window))
    second = await s.extend(first, turn(1, 8), model="ctx-model")
    (sent,) = summaries(fake_window)[before:]
    assert f"<brief>\n{first}\n</brief>" in sent
    assert "q0w7" not in sent.split("<turns>")[1]  # the old turn is not sent again
    assert second.startswith(first) and "q1w0" in second


async def test_long_histories_are_folded_in_chunks_each_on_the_last_brief(fake_window: Fake, closing):
    s = summariser(fake_window, input_max_tokens=300, brief_max_tokens=100)
    closing(s)
    turns = [m for i in range(12) for m in turn(i, 20)]
    before = len(summaries(fake_window))
    brief = await s.extend(None, turns, model="ctx-model")
    sent = summaries(fake_window)[before:]
    assert len(sent) >= 3
    assert len(s.chunks(turns, "ctx-model")) == len(sent)
    for request in sent:
        assert counter().count(request) < 300
    assert "(none yet)" in sent[0] and "(none yet)" not in sent[1]
    assert sent[1].split("<brief>\n")[1].startswith("- user: q0w0")  # the first chunk's brief came along
    assert counter().count(brief) <= 100


async def test_the_brief_is_cut_to_brief_max_tokens(fake_window: Fake, closing):
    s = summariser(fake_window, brief_max_tokens=16)
    closing(s)
    brief = await s.extend(None, [m for i in range(6) for m in turn(i, 8)], model="ctx-model")
    assert 0 < counter().count(brief) <= 16
    assert brief.startswith("- user: q0w0")


async def test_a_configured_model_writes_the_brief(fake_window: Fake, closing):
    s = summariser(fake_window, model="ctx-other")
    closing(s)
    assert s.model_for("ctx-model") == "ctx-other"
    before = fake_window.stats("summarizer")["attempts"]
    await s.extend(None, turn(0), model="ctx-model")
    stats = fake_window.stats("summarizer")
    assert stats["attempts"] == before + 1 and stats["models"][-1] == "ctx-other"


async def test_own_endpoint_with_its_key(fake_plain: Fake, closing):
    s = summariser(fake_plain, base_url=fake_plain.base_url, api_key=SUMMARY_KEY, model="plain-model")
    closing(s)
    assert "q0w0" in await s.extend(None, turn(0), model="whatever")
    bad = summariser(fake_plain, [], base_url=fake_plain.base_url, api_key="wrong", retries=3)
    closing(bad)
    with pytest.raises(SummaryFailed, match="HTTP 401"):
        await bad.extend(None, turn(0), model="plain-model")


async def test_own_endpoint_retries_5xx_then_fails(fake_plain: Fake, closing):
    sleeps: list[float] = []
    s = summariser(fake_plain, sleeps, base_url=fake_plain.base_url, api_key=SUMMARY_KEY, retries=2)
    closing(s)
    before = fake_plain.stats("summarizer")["attempts"]
    failing = [{"role": "user", "content": "[fake:fail] please"}]
    with pytest.raises(SummaryFailed, match="HTTP 500"):
        await s.extend(None, failing, model="plain-model")
    assert fake_plain.stats("summarizer")["attempts"] == before + 3
    assert len(sleeps) == 2


async def test_own_endpoint_unreachable(closing, fake_plain: Fake):
    sleeps: list[float] = []
    s = summariser(fake_plain, sleeps, base_url=f"http://127.0.0.1:{free_port()}/v1", retries=1)
    closing(s)
    with pytest.raises(SummaryFailed, match="Client"):
        await s.extend(None, turn(0), model="m")
    assert len(sleeps) == 1


async def test_routed_failure_after_the_upstream_retries(fake_window: Fake, closing):
    s = summariser(fake_window)
    closing(s)
    before = fake_window.stats("summarizer")["attempts"]
    with pytest.raises(SummaryFailed, match="UPSTREAM_ERROR"):
        await s.extend(None, [{"role": "user", "content": "[fake:fail]"}], model="ctx-model")
    assert fake_window.stats("summarizer")["attempts"] == before + 2  # retry.max_retries = 1


async def test_timeout(fake_window: Fake, closing):
    s = summariser(fake_window, timeout=0.3)
    closing(s)
    with pytest.raises(SummaryFailed, match="timed out"):
        await s.extend(None, [{"role": "user", "content": "[fake:slow]"}], model="ctx-model")


async def test_an_empty_answer_fails_but_its_cost_is_counted(fake_window: Fake, closing):
    s = summariser(fake_window)
    closing(s)
    usage = SummaryUsage()
    with pytest.raises(SummaryFailed, match="empty"):
        await s.extend(None, [{"role": "user", "content": "[fake:empty]"}], model="ctx-model", usage=usage)
    assert usage.calls == 1 and usage.prompt_tokens > 0


def test_reasoning_blocks_are_not_part_of_the_brief():
    from chatgate.context.summarize import _answer

    body = b'{"choices":[{"message":{"content":"<think>hmm</think>\\n- fact"}}],"usage":{"prompt_tokens":3}}'
    assert _answer(body) == ("- fact", {"prompt_tokens": 3})
    with pytest.raises(SummaryFailed, match="unreadable"):
        _answer(b'{"choices": []}')
