"""Sessions over a real SQLite store: get-or-create, the LRU and its TTL, counters, history; helpers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from chatgate.errors import RateLimited
from chatgate.identity.model import Identity
from chatgate.sessions.connections import Connections
from chatgate.sessions.manager import SessionManager, conversation_id
from chatgate.sessions.messages import compact, dedupe_key, is_multimodal, request_kind
from chatgate.sessions.personalise import Personaliser
from chatgate.settings import SessionSettings
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


async def test_get_or_create_is_first_then_not_and_is_stored(parts):
    sessions = manager(parts)
    first = await sessions.get_or_create(who(), "chat-1", "openai")
    assert first.is_first_message and first.id == conversation_id("u:1", "chat-1")
    again = await sessions.get_or_create(who(), "chat-1", "openai")
    assert again is first and not again.is_first_message
    await sessions.writer.flush()
    row = await sessions.store.conversations.get(first.id)
    assert row is not None and row.user_id == "u:1" and row.key == "chat-1"
    assert (await sessions.store.users.get("u:1")) is not None


async def test_same_key_for_two_users_is_two_conversations(parts):
    sessions = manager(parts)
    a = await sessions.get_or_create(who("u:a"), "shared-key", "openai")
    b = await sessions.get_or_create(who("u:b"), "shared-key", "openai")
    assert a.id != b.id and b.is_first_message


async def test_concurrent_first_requests_share_one_load(parts):
    sessions = manager(parts)
    results = await asyncio.gather(*(sessions.get_or_create(who(), "c", "openai") for _ in range(20)))
    assert len({id(s) for s in results}) == 1
    assert sum(s.is_first_message for s in results) <= 1 and sessions.stats.created == 1


async def test_lru_evicts_and_ttl_expires_then_reloads_from_store(parts):
    clock = Clock()
    sessions = manager(parts, clock, cache_size=2, cache_ttl=60)
    s1 = await sessions.get_or_create(who(), "k1", "openai")
    sessions.record(s1, "tool", 5, 7)
    sessions.add_message(s1, "user", "hello", dedupe_key(0, "user", "hello"))
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
    sessions.record(eph, "standard", 1, 1)
    sessions.add_message(eph, "user", "x", "k")
    await sessions.writer.flush()
    assert await sessions.store.conversations.get(eph.id) is None
    assert sessions.overview()["active"] == 0


async def test_history_keeps_the_last_turns(parts):
    sessions = manager(parts, history_turns=2)
    s = await sessions.get_or_create(who(), "h", "chat-api")
    for i in range(5):
        sessions.add_message(s, "user", f"q{i}", f"u{i}")
        sessions.add_message(s, "assistant", f"a{i}", f"a{i}")
    assert [m["content"] for m in sessions.history(s)] == ["q3", "a3", "q4", "a4"]


async def test_find_for_user_never_finds_another_users_session(parts):
    sessions = manager(parts)
    s = await sessions.get_or_create(who("u:owner"), "k", "chat-api")
    await sessions.writer.flush()
    assert await sessions.find_for_user("u:owner", s.id) is s
    assert await sessions.find_for_user("u:intruder", s.id) is None
    sessions.forget(s.id)
    assert await sessions.find_for_user("u:intruder", s.id) is None
    assert (await sessions.find_for_user("u:owner", s.id)) is not None


def test_connections_cap_and_counts():
    conns = Connections(max_per_user=2)
    a, b = conns.enter("u", "c1", "m1"), conns.enter("u", "c1", "m2")
    with pytest.raises(RateLimited) as err:
        conns.enter("u")
    assert err.value.status == 429 and err.value.headers["Retry-After"] == "1"
    other = conns.enter("v")
    assert conns.in_flight("u") == 2 and conns.in_flight() == 3
    assert conns.overview()["conversations"] == 1 and conns.overview()["rejected"] == 1
    for c in (a, b, other, a):
        conns.leave(c)
    assert conns.in_flight() == 0 and conns.enter("u")


def test_request_kinds():
    text = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    image = {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
    }
    assert request_kind(text, {}, frozenset()) == "standard"
    assert request_kind({**text, "tools": [{}]}, {}, frozenset()) == "standard"  # offered, not called (tests/sessions)
    assert request_kind(image, {}, frozenset()) == "multimodal" and is_multimodal(image["messages"])
    assert request_kind(text, {"web_search": True}, frozenset()) == "research"
    assert request_kind(text, {}, frozenset({"m"})) == "research"
    assert request_kind({**text, "research": True}, {}, frozenset()) == "research"


def test_dedupe_keys_are_stable_and_distinct():
    assert dedupe_key(0, "user", "hi") == dedupe_key(0, "user", "hi")
    assert dedupe_key(0, "user", "hi") != dedupe_key(2, "user", "hi")  # the same words later are a new message
    assert dedupe_key(0, "user", "hi") != dedupe_key(0, "assistant", "hi")
    assert dedupe_key(0, "user", "hi", "mid-1") == dedupe_key(5, "user", "other", "mid-1")


def test_large_inline_data_is_stored_as_hash_and_size():
    big = "data:image/png;base64," + "A" * 5000
    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": big, "detail": "low"}}]
    stored = compact(parts, keep_bytes=False, limit=2048)
    assert stored[0] == parts[0]
    image = stored[1]["image_url"]
    assert image["url"] is None and image["size"] == len(big) and len(image["sha256"]) == 64
    assert image["detail"] == "low" and image["media_type"] == "image/png"
    assert compact(parts, keep_bytes=True, limit=2048) == parts
    small = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    assert compact(small, keep_bytes=False, limit=2048) == small


def test_personaliser_fills_from_variables_and_time_zone():
    p = Personaliser("Hi {name}, it is {time} in {timezone}; language {language}.")
    when = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    text = p.prompt({"USER_NAME": "Ann", "CURRENT_TIMEZONE": "Asia/Tokyo", "USER_LANGUAGE": "ja"}, None, when)
    assert text == "Hi Ann, it is 21:00 in Asia/Tokyo; language ja."
    merged = p.apply([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}], "P")
    assert merged[0]["content"] == "P\n\nBe brief." and len(merged) == 2
    assert p.apply([{"role": "user", "content": "q"}], "P")[0] == {"role": "system", "content": "P"}
    with pytest.raises(ValueError, match="unknown placeholders"):
        Personaliser("{password}")


async def test_rows_the_session_already_has_are_not_queued_again(parts):
    sessions = manager(parts)
    s = await sessions.get_or_create(who(), "dup", "openai")
    before = sessions.writer.depth
    for _ in range(3):
        sessions.add_message(s, "system", "be brief", dedupe_key(0, "system", "be brief"))
    assert sessions.writer.depth == before + 1 and s.message_count == 1
    await sessions.writer.flush()
    sessions.forget(s.id)
    again = await sessions.get_or_create(who(), "dup", "openai")  # reloaded: it still knows the row
    sessions.add_message(again, "system", "be brief", dedupe_key(0, "system", "be brief"))
    assert sessions.writer.depth == 0 and again.message_count == 1


async def test_the_brief_is_queued_and_loaded_with_the_session(parts):
    sessions = manager(parts)
    s = await sessions.get_or_create(who(), "chat-brief", "openai")
    sessions.set_brief(s, "- a fact", 4, "f" * 64)
    assert (s.brief, s.brief_upto, s.brief_digest) == ("- a fact", 4, "f" * 64)
    await parts[1].flush()
    fresh = await manager(parts).get_or_create(who(), "chat-brief", "openai")
    assert (fresh.brief, fresh.brief_upto, fresh.brief_digest) == ("- a fact", 4, "f" * 64)
    eph = sessions.ephemeral(who(), "openai")
    await parts[1].flush()
    written = parts[1].written
    sessions.set_brief(eph, "- kept in memory only", 2, "0" * 64)
    await parts[1].flush()
    assert eph.brief == "- kept in memory only" and parts[1].written == written
