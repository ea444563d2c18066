"""The pipeline in process: the same scenarios through both doors (the OpenAI door and the chat API), with the
services ``app.py`` builds, a real SQLite store and the fake upstream: a miss then a hit, a stream, an upstream
error, a client that leaves mid-stream, a 429, a fitted history, a grounded answer."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from chatgate import pipeline
from chatgate.api.doors import ChatAPIDoor, OpenAIDoor
from chatgate.app import build_services
from chatgate.cache import Scope
from chatgate.errors import RateLimited, UpstreamError
from chatgate.identity.keys import Principal
from chatgate.observe.metrics import Metrics
from chatgate.rag.ground import Grounded
from chatgate.settings import Settings
from chatgate.store.db import Store, database_url
from chatgate.store.writebehind import WriteBehind
from chatgate.turn import Answer, Door, Services, Turn
from tests.conftest import Fake

ALICE = Principal(key_id="k-alice", scopes=frozenset({"user"}), user_id="alice")
FORWARDER = Principal(key_id="k-owui", scopes=frozenset({"user", "trusted_forwarder"}), user_id="owui")


@dataclass
class World:
    services: Services
    store: Store
    writer: WriteBehind
    fake: Fake


@pytest.fixture
async def make_world(tmp_path: Path, fake_a: Fake) -> AsyncIterator[Callable[..., Any]]:
    opened: list[World] = []

    async def make(**config: Any) -> World:
        settings = Settings(
            data_dir=tmp_path / f"w{len(opened)}",
            upstreams=[{"name": "a", "base_url": fake_a.base_url, "api_key": "upstream-secret-a"}],
            retry={"max_retries": 1, "base": 0.01, "cap": 0.02},
            **config,
        )
        settings.data_dir.mkdir(parents=True)
        store = await Store.open(database_url(settings))
        writer = WriteBehind(store, flush_interval=0.01)
        await writer.start()
        services = build_services(settings, store, writer, Metrics())
        await services.catalog.refresh(force=True)
        world = World(services, store, writer, fake_a)
        opened.append(world)
        return world

    yield make
    for w in opened:
        await w.services.upstream.close()
        await w.writer.close()
        await w.store.close()


@dataclass
class Asker:
    """One door, and what a client of it sends: the OpenAI door is sent the history, the chat API one message."""

    door: Door
    history: list[dict[str, Any]] = field(default_factory=list)
    session_id: str | None = None
    chat_id: str | None = None  # the OpenAI door's conversation, named by a trusted forwarder's header

    def turn(self, text: str, *, stream: bool = False, headers: dict[str, str] | None = None, **payload: Any) -> Turn:
        body = {"model": "fake-model", "temperature": 0, "stream": stream, **payload}
        headers = dict(headers or {})
        principal = ALICE
        if self.chat_id is not None:
            principal = FORWARDER
            headers |= {"x-openwebui-user-id": "ann", "x-openwebui-chat-id": self.chat_id}
        if isinstance(self.door, OpenAIDoor):
            self.history.append({"role": "user", "content": text})
            body["messages"] = list(self.history)
            return Turn(payload=body, raw=orjson.dumps(body), principal=principal, headers=headers)
        return Turn(
            payload={**body, "messages": []},
            raw=None,
            principal=principal,
            headers=headers,
            message=text,
            session_id=self.session_id,
        )

    def answered(self, turn: Turn, text: str) -> None:
        """What the client does with an answer: keep the reply in its history, or the session id."""
        if isinstance(self.door, OpenAIDoor):
            self.history.append({"role": "assistant", "content": text})
        elif turn.session is not None:
            self.session_id = turn.session.id


DOORS = {"openai": lambda: OpenAIDoor(), "chat-api": lambda: ChatAPIDoor()}


@pytest.fixture(params=sorted(DOORS))
def asker(request: pytest.FixtureRequest) -> Asker:
    return Asker(DOORS[request.param]())


async def read(answer: Answer) -> tuple[str, list[dict[str, Any]]]:
    """The answer's text and, for a stream, its parsed events (``[DONE]`` last)."""
    if isinstance(answer, bytes):
        data = orjson.loads(answer)
        return (data["response"] if "response" in data else data["choices"][0]["message"]["content"]), [data]
    events: list[dict[str, Any]] = []
    try:
        async for chunk in answer:
            for line in chunk.split(b"\n"):
                if line.startswith(b"data: "):
                    events.append({"done": True} if line == b"data: [DONE]" else orjson.loads(line[6:]))
    finally:
        await answer.aclose()
    text = ""
    for e in events:
        if e.get("type") == "delta":
            text += e["content"]
        for choice in e.get("choices") or ():
            text += choice.get("delta", {}).get("content") or ""
    return text, events


async def ask(world: World, asker: Asker, text: str, **payload: Any) -> tuple[Turn, str, list[dict[str, Any]]]:
    turn = asker.turn(text, **payload)
    answer, events = await read(await pipeline.run(world.services, asker.door, turn))
    asker.answered(turn, answer)
    return turn, answer, events


async def stored(world: World, turn: Turn) -> list[tuple[str, Any]]:
    await world.writer.flush()
    assert turn.session is not None
    rows = await world.store.messages.list(turn.session.id, limit=100, offset=0)
    return [(m.role, m.content) for m in rows]


def attempts(world: World, tag: str) -> int:
    return int(world.fake.stats(tag)["attempts"])


async def test_a_miss_then_a_hit(make_world: Callable[..., Any], asker: Asker) -> None:
    world = await make_world()
    tag = "hit-" + secrets.token_hex(4)
    first, answer, _ = await ask(world, asker, "cache me", fake={"id": tag})
    assert answer == "echo: cache me" and first.cache_status == "MISS"
    repeat = Asker(asker.door)  # a second client asking the very same thing
    again, answer, _ = await ask(world, repeat, "cache me", fake={"id": tag})
    assert answer == "echo: cache me" and again.cache_status == "HIT" and attempts(world, tag) == 1
    assert [role for role, _ in await stored(world, again)] == (
        [] if asker.door.name == "openai" else ["user", "assistant"]  # no chat id on the OpenAI door: ephemeral
    )
    assert world.services.connections.in_flight() == 0


async def test_a_stream_is_relayed_then_kept(make_world: Callable[..., Any], asker: Asker) -> None:
    world = await make_world()
    turn, answer, events = await ask(world, asker, "stream me please", stream=True)
    assert answer.strip() == "echo: stream me please" and events[-1] == {"done": True}
    assert turn.completed and turn.accounted and turn.usage is not None
    if asker.door.name == "chat-api":
        assert events[-2]["type"] == "done" and events[-2]["session_id"] == turn.session.id  # type: ignore[union-attr]
        assert await stored(world, turn) == [("user", "stream me please"), ("assistant", "echo: stream me please ")]
    assert world.services.admission.stats.reconciled == 1 and world.services.connections.in_flight() == 0


async def test_an_upstream_failure_is_refunded_and_keeps_nothing(make_world: Callable[..., Any], asker: Asker) -> None:
    world = await make_world()
    turn = asker.turn("fail me", fake={"id": "fail-" + secrets.token_hex(4), "fail": [500, 500, 500]})
    with pytest.raises(UpstreamError):
        await pipeline.run(world.services, asker.door, turn)
    assert turn.accounted and not turn.completed and world.services.admission.stats.refunded == 1
    assert world.services.connections.in_flight() == 0
    assert await stored(world, turn) == []


async def test_a_client_that_leaves_mid_stream(make_world: Callable[..., Any], asker: Asker) -> None:
    world = await make_world()
    tag = "leave-" + secrets.token_hex(4)
    turn = asker.turn("one two three four five six", stream=True, fake={"id": tag, "chunk_delay": 0.2})
    relay = await pipeline.run(world.services, asker.door, turn)
    assert not isinstance(relay, bytes)
    chunks = aiter(relay)
    await anext(chunks)  # the first chunk arrived; then the client hangs up
    await relay.aclose()
    assert turn.accounted and not turn.completed and not turn.kept_turn
    assert world.services.admission.stats.refunded == 1 and world.services.connections.in_flight() == 0
    assert await stored(world, turn) == []


async def test_a_refused_request_is_a_429_that_leaves_nothing(make_world: Callable[..., Any], asker: Asker) -> None:
    world = await make_world(limits={"user_requests_per_minute": 1})
    await ask(world, asker, "the first")
    turn = asker.turn("the second")
    with pytest.raises(RateLimited) as refused:
        await pipeline.run(world.services, asker.door, turn)
    assert refused.value.blocked is not None and refused.value.blocked.limit == 1
    assert turn.accounted and world.services.connections.in_flight() == 0
    assert world.services.upstream.router.upstreams[0].in_flight == 0


async def test_a_long_history_is_fitted_to_the_window(make_world: Callable[..., Any], asker: Asker) -> None:
    world = await make_world(context={"strategy": "truncate", "windows": {"fake-model": 120}})
    tag = "fit-" + secrets.token_hex(4)
    for i in range(8):
        await ask(world, asker, f"turn {i} " + "word " * 10, max_tokens=10)
    turn, answer, _ = await ask(world, asker, "the last one", max_tokens=10, fake={"id": tag})
    assert answer == "echo: the last one" and turn.fitted is not None and turn.fitted.action == "truncated"
    sent = world.fake.stats(tag)["bodies"][-1]["messages"]
    assert sent[-1]["content"] == "the last one" and len(sent) < 17  # earlier turns left out


class FixedSources:
    """A grounder that always finds the same source (retrieval itself is tested in tests/rag)."""

    async def ground(
        self,
        assistant: Any,
        user_id: str,
        messages: list[dict[str, Any]],
        fitted: Any,
        *,
        applied: bool,
        versioned: bool = False,
    ) -> Grounded:
        source = {"index": 1, "document": "handbook/leave.md", "title": "Leave", "score": 0.9}
        context = [{"role": "system", "content": "[1] Leave\nParental leave is sixteen weeks."}, *messages]
        return Grounded(Scope(assistant.name, ("c1",), None), context, [source])


async def test_a_grounded_answer_carries_its_sources(make_world: Callable[..., Any], asker: Asker) -> None:
    world = await make_world(assistants=[{"name": "hr", "model": "fake-model", "collections": ["hr"]}])
    world.services.grounder = FixedSources()  # type: ignore[assignment]
    tag = "ground-" + secrets.token_hex(4)
    turn, _, events = await ask(world, asker, "How long is parental leave?", model="hr", fake={"id": tag})
    assert turn.kind == "rag" and turn.sources is not None and turn.sources[0]["document"] == "handbook/leave.md"
    assert events[-1]["sources"][0]["document"] == "handbook/leave.md"  # on the answer, whichever its shape
    sent = world.fake.stats(tag)["bodies"][-1]
    assert sent["model"] == "fake-model" and "sixteen weeks" in sent["messages"][0]["content"]
    again = Asker(asker.door)  # another client, the same question, streamed: answered from the cache
    streamed, _, events = await ask(
        world, again, "How long is parental leave?", model="hr", stream=True, fake={"id": tag}
    )
    cited = [e for e in events if e.get("sources")]
    assert cited and cited[-1]["sources"][0]["title"] == "Leave" and streamed.cache_status == "HIT"


async def test_a_background_task_is_typed_task_and_adds_no_turn(make_world: Callable[..., Any], asker: Asker) -> None:
    world = await make_world(assistants=[{"name": "hr", "model": "fake-model", "collections": ["hr"]}])
    world.services.grounder = FixedSources()  # type: ignore[assignment]
    asker.chat_id = "chat-" + secrets.token_hex(4)
    first, _, _ = await ask(world, asker, "hello there", model="hr")
    assert first.kind == "rag" and await stored(world, first) == [
        ("user", "hello there"),
        ("assistant", "echo: hello there"),
    ]
    tag = "task-" + secrets.token_hex(4)
    title = Asker(asker.door, session_id=asker.session_id, chat_id=asker.chat_id)  # what a front end sends for a title
    task, answer, _ = await ask(
        world, title, "Generate a title", model="hr", headers={"x-chatgate-task": "title_generation"}, fake={"id": tag}
    )
    assert answer == "echo: Generate a title" and task.task == "title_generation" and task.kind == "task"
    assert task.session is not None and task.session.id == first.session.id  # type: ignore[union-attr]
    sent = world.fake.stats(tag)["bodies"][-1]["messages"]
    assert all("sixteen weeks" not in str(m.get("content")) for m in sent)  # never grounded
    assert await stored(world, task) == [("user", "hello there"), ("assistant", "echo: hello there")]  # no turn
    row = await world.store.conversations.get(task.session.id)  # type: ignore[union-attr]
    assert row is not None and row.message_count == 2 and row.request_counts["task"] == 1
    assert world.services.admission.stats.admitted >= 2  # charged like any request
