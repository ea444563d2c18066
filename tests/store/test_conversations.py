from __future__ import annotations

from chatgate.store import AddMessage, CountRequest, Store, WriteBehind

from .conftest import T0, at, conversation, seed


def message(cid: str, i: int, role: str = "user", content: object = None, when: float = 0) -> AddMessage:
    return AddMessage(
        conversation_id=cid,
        role=role,
        content=f"message {i}" if content is None else content,
        dedupe_key=f"d{i}",
        tokens=i,
        model=None,
        client_message_id=None,
        created_at=at(when),
    )


async def test_get_or_create_through_write_behind(store: Store, wb: WriteBehind) -> None:
    (cid,) = seed(wb, "key:ab12", "chat-1")
    wb.put(conversation("key:ab12", "chat-1", at(30)))  # a second creator: the first one wins
    await wb.flush()
    row = await store.conversations.find("key:ab12", "chat-1")
    assert row is not None and row.id == cid and row.created_at == T0
    assert (row.message_count, row.tokens_in, row.tokens_out, row.rag_applied) == (0, 0, 0, False)
    assert row.request_counts == dict.fromkeys(("standard", "rag", "research", "multimodal", "tool", "task"), 0)
    assert await store.conversations.get(cid) == row
    assert await store.conversations.find("key:ab12", "chat-2") is None
    assert await store.conversations.find("key:other", "chat-1") is None


async def test_isolation_between_users(store: Store, wb: WriteBehind) -> None:
    (mine,) = seed(wb, "jwt:alice", "chat")
    (theirs,) = seed(wb, "jwt:bob", "chat")  # the same client key, another user: another conversation
    wb.put(message(mine, 1))
    wb.put(message(theirs, 1))
    await wb.flush()
    assert mine != theirs
    assert await store.conversations.get_for_user("jwt:alice", theirs) is None
    assert (await store.conversations.get_for_user("jwt:alice", mine) or None) is not None
    assert [c.id for c in await store.conversations.list_for_user("jwt:alice")] == [mine]

    assert not await store.conversations.delete_for_user("jwt:alice", theirs)
    assert await store.conversations.get(theirs) is not None and await store.messages.count(theirs) == 1

    assert await store.conversations.delete_for_user("jwt:alice", mine)
    assert await store.conversations.get(mine) is None
    assert await store.messages.count(mine) == 0  # cascaded
    assert not await store.conversations.delete_for_user("jwt:alice", mine)


async def test_list_newest_activity_first_and_stats(store: Store, wb: WriteBehind) -> None:
    a, b, c = seed(wb, "u1", "a", "b", "c")
    (other,) = seed(wb, "u2", "x")
    await wb.flush()
    wb.put(CountRequest(b, "standard", 10, 5, False, at(100)))
    wb.put(CountRequest(a, "rag", 20, 7, True, at(50)))
    wb.put(CountRequest(a, "rag", 1, 1, False, at(40)))  # older: activity time stays at 50
    wb.put(message(c, 1))
    wb.put(message(c, 2, "assistant"))
    wb.put(CountRequest(other, "tool", 1000, 1000, False, at(10)))
    await wb.flush()

    listed = await store.conversations.list_for_user("u1")
    assert [r.id for r in listed] == [b, a, c]
    assert listed[1].last_activity_at == at(50) and listed[1].rag_applied
    assert listed[1].request_counts["rag"] == 2 and listed[1].tokens_in == 21
    assert [r.id for r in await store.conversations.list_for_user("u1", limit=1, offset=1)] == [a]
    assert await store.conversations.list_for_user("nobody") == []

    assert await store.conversations.stats("u1") == {
        "conversations": 3,
        "messages": 2,
        "tokens_in": 31,
        "tokens_out": 13,
    }
    assert await store.conversations.stats(None) == {
        "conversations": 4,
        "messages": 2,
        "tokens_in": 1031,
        "tokens_out": 1013,
    }
    assert await store.conversations.stats("nobody") == {
        "conversations": 0,
        "messages": 0,
        "tokens_in": 0,
        "tokens_out": 0,
    }


async def test_messages_dedupe_shape_and_paging(store: Store, wb: WriteBehind) -> None:
    (cid,) = seed(wb, "u1", "chat")
    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]
    wb.put(message(cid, 1, content=parts))
    wb.put(message(cid, 1, content="a retry of the same message"))  # same dedupe key, same batch
    await wb.flush()
    wb.put(message(cid, 1, content="and again, in a later batch"))
    wb.put(message(cid, 2, "assistant", content=None))
    wb.put(AddMessage(cid, "assistant", None, "d3", None, "m", "msg-3", at(3)))
    await wb.flush()

    rows = await store.messages.list(cid)
    assert [r.dedupe_key for r in rows] == ["d1", "d2", "d3"]
    assert rows[0].content == parts and rows[0].role == "user" and rows[0].tokens == 1
    assert rows[1].content == "message 2"
    assert rows[2].content is None and rows[2].model == "m" and rows[2].client_message_id == "msg-3"
    assert rows[2].created_at == at(3)
    assert await store.messages.count(cid) == 3
    assert [r.dedupe_key for r in await store.messages.list(cid, limit=2, offset=1)] == ["d2", "d3"]
    row = await store.conversations.get(cid)
    assert row is not None and row.message_count == 3


async def test_last_turns(store: Store, wb: WriteBehind) -> None:
    (cid,) = seed(wb, "u1", "chat")
    for i in range(1, 11):
        wb.put(message(cid, i, "user" if i % 2 else "assistant"))
    await wb.flush()
    last = await store.messages.last_turns(cid, 2)
    assert [r.dedupe_key for r in last] == ["d7", "d8", "d9", "d10"]
    assert [r.role for r in last] == ["user", "assistant", "user", "assistant"]
    assert len(await store.messages.last_turns(cid, 50)) == 10
    assert await store.messages.last_turns(cid, 0) == []
    assert await store.messages.last_turns("nope", 3) == []
