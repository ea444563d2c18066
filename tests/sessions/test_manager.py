"""Sessions over a real SQLite store: get-or-create, the LRU and its TTL, counters, history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from chatgate.identity.model import Identity
from chatgate.sessions.manager import Session, SessionManager, conversation_id
from chatgate.sessions.messages import Kept
from chatgate.settings import SessionSettings, StoreSettings
from chatgate.store.db import Store
from chatgate.store.writebehind import WriteBehind


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def who(user: str = "u:1") -> Identity:
    return Identity(
        user_id=user,
        roles=frozenset({"user"}),
        display_name="Ann",
        email=None,
        variables={"USER_NAME": "Ann"},
        source="api_key",
    )


@pytest.fixture
async def parts(tmp_path) -> AsyncIterator[tuple[Store, WriteBehind]]:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/s.db")
    writer = WriteBehind(store, flush_interval=0.01)
    await writer.start()
    yield store, writer
    await writer.close()
    await store.close()


def manager(parts, clock: Clock | None = None, **kw) -> SessionManager:
    store, writer = parts
    return SessionManager(store, writer, SessionSettings(**kw), clock=clock or Clock())


async def keep(
    sessions: SessionManager,
    session: Session,
    user: str | None,
    reply: str | None,
    *,
    at: int | None = None,
    kind: str = "standard",
    usage: dict[str, int] | None = None,
    durable: bool = False,
) -> None:
    """One turn: ``user`` at position ``at`` (default: after what the session has), then ``reply``."""
    position = session.message_count if at is None else at
    messages = [Kept(position, "user", user)] if user is not None else []
    await sessions.keep(
        session,
        kind,
        usage,
        rag_applied=False,
        messages=messages,
        reply=reply,
        reply_at=position + len(messages),
        model="m",
        durable=durable,
    )


async def test_a_conversation_is_stored_with_its_first_turn(parts):
    sessions = manager(parts)
    first = await sessions.get_or_create(who(), "chat-1", "openai")
    assert first.is_first_message and first.id == conversation_id("u:1", "chat-1") and not first.stored
    again = await sessions.get_or_create(who(), "chat-1", "openai")
    assert again is first and again.is_first_message  # still: no turn of it kept yet
    await sessions.writer.flush()
    assert await sessions.store.conversations.get(first.id) is None  # nothing kept yet: nothing stored
    assert (await sessions.store.users.get("u:1")) is not None
    await keep(sessions, first, "hello", "hi")
    assert not first.is_first_message
    await sessions.writer.flush()
    row = await sessions.store.conversations.get(first.id)
    assert row is not None and row.user_id == "u:1" and row.key == "chat-1" and row.message_count == 2


async def test_same_key_for_two_users_is_two_conversations(parts):
    sessions = manager(parts)
    a = await sessions.get_or_create(who("u:a"), "shared-key", "openai")
    b = await sessions.get_or_create(who("u:b"), "shared-key", "openai")
    assert a.id != b.id and b.is_first_message


async def test_concurrent_first_requests_share_one_load(parts):
    sessions = manager(parts)
    results = await asyncio.gather(*(sessions.get_or_create(who(), "c", "openai") for _ in range(20)))
    assert len({id(s) for s in results}) == 1
    assert sessions.stats.created == 1


async def test_lru_evicts_and_ttl_expires_then_reloads_from_store(parts):
    clock = Clock()
    sessions = manager(parts, clock, cache_size=2, cache_ttl=60)
    s1 = await sessions.get_or_create(who(), "k1", "openai")
    await keep(sessions, s1, "hello", None, kind="tool", usage={"prompt_tokens": 5, "completion_tokens": 7})
    await sessions.get_or_create(who(), "k2", "openai")
    await sessions.get_or_create(who(), "k3", "openai")  # evicts k1
    assert sessions.stats.evicted == 1
    await sessions.writer.flush()
    back = await sessions.get_or_create(who(), "k1", "openai")
    assert back is not s1 and not back.is_first_message
    assert back.request_counts["tool"] == 1 and (back.tokens_in, back.tokens_out) == (5, 7)
    assert [m["content"] for m in back.recent] == ["hello"]
    assert sessions.stats.evicted == 2  # reloading k1 pushed out k2
    clock.t += 61
    await sessions.get_or_create(who(), "k1", "openai")
    assert sessions.stats.evicted == 3  # k1 had expired
    await sessions.get_or_create(who(), "k1", "openai")  # hot again: a hit
    stats = sessions.overview()
    assert stats["active"] == 2 and 0 < stats["hit_rate"] < 1


async def test_ephemeral_sessions_are_never_stored(parts):
    sessions = manager(parts)
    eph = await sessions.get_or_create(who(), None, "openai")
    assert eph.ephemeral and eph.is_first_message
    depth = sessions.writer.depth
    await keep(sessions, eph, "x", "y", durable=True)  # durable or not: nothing to write
    assert sessions.writer.depth == depth and eph.message_count == 2
    await sessions.writer.flush()
    assert await sessions.store.conversations.get(eph.id) is None
    assert sessions.overview()["active"] == 0


async def test_history_keeps_the_last_turns(parts):
    sessions = manager(parts, history_turns=2)
    s = sessions.new(who(), "h", "chat-api")
    for i in range(5):
        await keep(sessions, s, f"q{i}", f"a{i}")
    assert [m["content"] for m in sessions.history(s)] == ["q3", "a3", "q4", "a4"]


async def test_find_for_user_reads_the_store_and_never_another_users(parts):
    sessions = manager(parts)
    s = sessions.new(who("u:owner"), "k", "chat-api")
    await keep(sessions, s, "q", "a", durable=True)  # committed when keep returns
    other = manager(parts)  # another worker: it never saw the conversation
    found = await other.find_for_user("u:owner", s.id)
    assert found is not None and found.message_count == 2 and [m["content"] for m in found.recent] == ["q", "a"]
    assert await other.find_for_user("u:intruder", s.id) is None
    await keep(other, found, "q2", "a2", durable=True)  # a turn there...
    again = await sessions.find_for_user("u:owner", s.id)  # ...is what the first worker reads next
    assert again is not None and again.message_count == 4
    assert [m["content"] for m in again.recent] == ["q", "a", "q2", "a2"]


async def test_the_openai_doors_turns_are_behind_unless_durability_is_every_turn(tmp_path):
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/d.db")
    writer = WriteBehind(store, flush_interval=3600)  # written behind: not before this test ends
    await writer.start()
    try:
        behind = SessionManager(store, writer, SessionSettings())
        s = await behind.get_or_create(who(), "openai-chat", "openai")
        await keep(behind, s, "q", "a")
        assert writer.depth > 0 and await store.conversations.get(s.id) is None  # queued, not committed
        await writer.flush()
        every = SessionManager(store, writer, SessionSettings(), StoreSettings(durability="every_turn"))
        t = await every.get_or_create(who(), "openai-chat-2", "openai")
        await keep(every, t, "q", "a")  # the door's own wish (durable=False) is overridden
        assert writer.depth == 0
        row = await store.conversations.get(t.id)
        assert row is not None and row.message_count == 2
    finally:
        await writer.close()
        await store.close()


async def test_rows_the_session_already_has_are_not_queued_again(parts):
    sessions = manager(parts)
    s = await sessions.get_or_create(who(), "dup", "openai")
    await keep(sessions, s, "be brief", None, at=0)
    before = sessions.writer.depth
    for _ in range(2):
        await keep(sessions, s, "be brief", None, at=0)
    assert sessions.writer.depth == before + 2 and s.message_count == 1  # two more counts, no more rows
    await sessions.writer.flush()
    sessions.forget(s.id)
    again = await sessions.get_or_create(who(), "dup", "openai")  # reloaded: it still knows the row
    await keep(sessions, again, "be brief", None, at=0)
    assert sessions.writer.depth == 1 and again.message_count == 1


async def test_the_brief_is_stored_with_the_conversation_and_loaded_with_it(parts):
    sessions = manager(parts)
    s = await sessions.get_or_create(who(), "chat-brief", "openai")
    await parts[1].flush()  # the user row
    sessions.set_brief(s, "- a fact", 4, "f" * 64)  # not stored yet: it goes with the first turn
    assert (s.brief, s.brief_upto, s.brief_digest) == ("- a fact", 4, "f" * 64) and sessions.writer.depth == 0
    await keep(sessions, s, "hi", "hello")
    await parts[1].flush()
    fresh = await manager(parts).get_or_create(who(), "chat-brief", "openai")
    assert (fresh.brief, fresh.brief_upto, fresh.brief_digest) == ("- a fact", 4, "f" * 64)
    await parts[1].flush()
    sessions.set_brief(fresh, "- two facts", 6, "e" * 64)  # stored: queued at once
    assert sessions.writer.depth == 1
    eph = sessions.ephemeral(who(), "openai")
    await parts[1].flush()
    written = parts[1].written
    sessions.set_brief(eph, "- kept in memory only", 2, "0" * 64)
    await parts[1].flush()
    assert eph.brief == "- kept in memory only" and parts[1].written == written
