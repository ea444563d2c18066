"""Every strategy end to end: the window read from a real upstream, the fitted request accepted by it,
the brief written by the summariser over HTTP, stored through the write-behind queue in SQLite and
found again by a fresh session manager.

The fake upstream states ``max_model_len`` 300 and, like vLLM, refuses longer requests (it counts
words, fewer than the tokens chatgate counts, so what chatgate fits always passes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from chatgate.context import ContextFitter, Fitted, Summariser, WindowResolver
from chatgate.errors import ContextLengthExceeded, UpstreamRejected
from chatgate.identity.model import Identity
from chatgate.sessions.manager import SessionManager
from chatgate.settings import ContextSettings, RetrySettings, SessionSettings, TimeoutSettings, TokenSettings
from chatgate.store import Store, WriteBehind
from chatgate.tokens.counter import TokenCounter
from chatgate.upstream.catalog import ModelCatalog
from chatgate.upstream.client import CallTrace, UpstreamClient
from chatgate.upstream.routing import Router, Upstream
from tests.conftest import WINDOW, Fake

from .helpers import turn, words

MAX_TOKENS = 50
ANN = Identity(
    user_id="key:ann", roles=frozenset({"user"}), display_name="Ann", email=None, variables={}, source="api_key"
)


@dataclass
class World:
    upstream: UpstreamClient
    catalog: ModelCatalog
    counter: TokenCounter
    store: Store
    writer: WriteBehind
    fake: Fake

    def fitter(self, sessions: SessionManager | None = None, **settings: Any) -> ContextFitter:
        ctx = ContextSettings(**{"summarizer": {"brief_max_tokens": 60, "input_max_tokens": 256}, **settings})
        summariser = Summariser(ctx.summarizer, self.counter, self.upstream)
        return ContextFitter(ctx, self.counter, WindowResolver(ctx, self.catalog), summariser, sessions)

    def sessions(self) -> SessionManager:
        return SessionManager(self.store, self.writer, SessionSettings())

    async def send(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        payload = {"model": "ctx-model", "messages": messages, "max_tokens": MAX_TOKENS}
        body = await self.upstream.call("/chat/completions", payload, None, CallTrace())
        return orjson.loads(body)  # type: ignore[no-any-return]

    def summaries(self) -> list[str]:
        return list(self.fake.stats("summarizer")["bodies"])


@pytest.fixture
async def world(fake_window: Fake, tmp_path: Path) -> AsyncIterator[World]:
    up = Upstream(name="w", base_url=fake_window.base_url)  # models and window discovered
    upstream = UpstreamClient(
        Router([up]), RetrySettings(max_retries=0), TimeoutSettings(connect=2, first_byte=10, total=20)
    )
    catalog = ModelCatalog(upstream, ttl=60)
    await catalog.refresh(force=True)
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/chatgate.db")
    writer = WriteBehind(store, flush_interval=0.01)
    await writer.start()
    yield World(upstream, catalog, TokenCounter(TokenSettings()), store, writer, fake_window)
    await writer.close()
    await store.close()
    await upstream.close()


def conversation(turns: int, first: str | None = None) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are terse."}]
    for i in range(turns):
        messages += turn(i, 6)
    if first is not None:
        messages[1] = {"role": "user", "content": first}
    messages.append({"role": "user", "content": "and now? " + words(4, "last")})
    return messages


async def accepted(world: World, fitted: Fitted, messages: list[dict[str, Any]]) -> None:
    assert fitted.window == WINDOW and fitted.prompt_tokens + MAX_TOKENS <= WINDOW
    assert fitted.prompt_tokens == world.counter.count_messages(fitted.messages, "ctx-model")
    answer = await world.send(fitted.messages)
    assert answer["choices"][0]["message"]["content"] == "echo: " + messages[-1]["content"]


async def test_unfitted_the_upstream_refuses_it(world: World):
    with pytest.raises(UpstreamRejected) as caught:
        await world.send(conversation(30))
    assert caught.value.status == 400 and "maximum context length" in caught.value.message


async def test_reject(world: World):
    messages = conversation(30)
    with pytest.raises(ContextLengthExceeded) as caught:
        await world.fitter(strategy="reject").fit(messages, model="ctx-model", max_tokens=MAX_TOKENS)
    details = caught.value.details
    assert details["window"] == WINDOW and details["max_tokens"] == MAX_TOKENS and details["model"] == "ctx-model"
    assert details["prompt_tokens"] == world.counter.count_messages(messages, "ctx-model") > WINDOW


async def test_truncate(world: World):
    messages = conversation(30)
    f = world.fitter(strategy="truncate")
    fitted = await f.fit(messages, model="ctx-model", max_tokens=MAX_TOKENS)
    assert fitted.action == "truncated" and fitted.dropped > 0
    assert fitted.messages[0] == messages[0] and fitted.messages[1]["role"] == "user"
    await accepted(world, fitted, messages)
    assert f.stats["overflows"] == 1 and f.stats["truncated"] == 1


async def test_summarize_stores_the_brief_and_a_fresh_session_extends_it(world: World):
    sessions = world.sessions()
    session = await sessions.get_or_create(ANN, "chat-1", "openai")
    f = world.fitter(sessions)
    messages = conversation(30)
    before = len(world.summaries())
    fitted = await f.fit(messages, model="ctx-model", max_tokens=MAX_TOKENS, session=session)
    assert fitted.action == "summarized" and fitted.folded > 0
    assert fitted.messages[1]["content"].startswith("Summary of the earlier conversation:\n- user: q0w0")
    assert fitted.summary_usage is not None and fitted.summary_usage["calls"] == len(world.summaries()) - before
    await accepted(world, fitted, messages)
    # the turn kept (as the pipeline's account step does): a new conversation is stored with it, brief and all
    await sessions.keep(
        session, "standard", None, rag_applied=False, messages=[], reply=None, reply_at=0, model=None, durable=False
    )

    await world.writer.flush()
    row = await world.store.conversations.get(session.id)
    assert row is not None
    assert (row.brief, row.brief_upto, row.brief_digest) == (session.brief, session.brief_upto, session.brief_digest)
    assert row.brief_upto == fitted.folded

    fresh = world.sessions()  # another worker, or after a restart: loaded from the store
    again = await fresh.get_or_create(ANN, "chat-1", "openai")
    assert again is not session and again.brief == session.brief and again.brief_upto == session.brief_upto
    covered = again.brief_upto
    longer = conversation(40)
    before = len(world.summaries())
    fitted = await world.fitter(fresh).fit(longer, model="ctx-model", max_tokens=MAX_TOKENS, session=again)
    assert fitted.action == "summarized"
    new_calls = world.summaries()[before:]
    assert new_calls, "the brief was extended"
    assert f"<brief>\n{row.brief}\n</brief>" in new_calls[0]  # extended, not rewritten
    sent_turns = "".join(c.split("<turns>")[1] for c in new_calls)
    assert "q0w0" not in sent_turns and longer[1 + covered]["content"] in sent_turns
    assert again.brief_upto > covered
    await accepted(world, fitted, longer)
    await world.writer.flush()
    assert (await world.store.conversations.get(session.id)).brief == again.brief  # type: ignore[union-attr]


async def test_summarizer_failure_truncates_and_the_request_still_goes(world: World):
    sessions = world.sessions()
    session = await sessions.get_or_create(ANN, "chat-2", "openai")
    f = world.fitter(sessions)
    messages = conversation(30, first="[fake:fail] " + words(5, "q0"))
    fitted = await f.fit(messages, model="ctx-model", max_tokens=MAX_TOKENS, session=session)
    assert fitted.action == "summarize_failed_truncated"
    assert all(not str(m["content"]).startswith("Summary of") for m in fitted.messages)
    await accepted(world, fitted, messages)
    assert session.brief is None and f.stats["summarize_failures"] == 1
