from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from chatgate.store import AlreadyExists, Store, TouchKey, UpsertUser, WriteBehind, key_digest

from .conftest import at


async def test_users_create_list_disable(store: Store) -> None:
    alice = await store.users.create("Alice", email="a@example.com", role="admin")
    bob = await store.users.create("Bob", user_id="jwt:bob")
    assert alice.id.startswith("u-") and alice.source == "cli" and not alice.disabled
    assert alice.created_at.tzinfo is not None and alice.created_at.utcoffset() == timedelta(0)
    assert bob.id == "jwt:bob"
    assert {u.id for u in await store.users.list()} == {alice.id, "jwt:bob"}
    assert await store.users.get(alice.id) == alice
    assert await store.users.get("nobody") is None
    with pytest.raises(AlreadyExists):
        await store.users.create("Bob again", user_id="jwt:bob")

    assert await store.users.set_disabled("jwt:bob", True)
    got = await store.users.get("jwt:bob")
    assert got is not None and got.disabled
    assert await store.users.set_disabled("jwt:bob", False)
    assert not (await store.users.get("jwt:bob") or bob).disabled
    assert not await store.users.set_disabled("nobody", True)


async def test_upsert_user_keeps_fields_and_coalesces(store: Store, wb: WriteBehind) -> None:
    wb.put(UpsertUser("owui:1", "Ann", "ann@example.com", "user", "openwebui", at(0)))
    wb.put(UpsertUser("owui:1", None, None, "admin", "openwebui", at(5)))  # same batch: coalesced
    await wb.flush()
    wb.put(UpsertUser("owui:1", None, None, None, "openwebui", at(3)))  # older: last_seen_at stays
    await wb.flush()
    user = await store.users.get("owui:1")
    assert user is not None
    assert (user.name, user.email, user.role, user.source) == ("Ann", "ann@example.com", "admin", "openwebui")
    assert user.created_at == at(0) and user.last_seen_at == at(5)
    wb.put(UpsertUser("owui:1", "Anne", None, None, "openwebui", at(9)))
    await wb.flush()
    user = await store.users.get("owui:1")
    assert user is not None and user.name == "Anne" and user.email == "ann@example.com" and user.last_seen_at == at(9)


async def test_key_create_lookup_list_revoke(store: Store) -> None:
    user = await store.users.create("Alice")
    row, key = await store.keys.create(user.id, name="laptop")
    assert key.startswith("cg-") and len(key) > 40
    assert row.prefix == key[:11] and row.scopes == ("user",) and row.name == "laptop"
    assert key_digest(key) == hashlib.sha256(key.encode()).hexdigest()
    assert row.usable(datetime.now(UTC))

    found = await store.keys.by_digest(key_digest(key))
    assert found == row
    assert await store.keys.by_digest(key_digest(key + "x")) is None
    async with store.engine.connect() as conn:  # only the digest is stored
        stored = " ".join(str(v) for r in await conn.exec_driver_sql("SELECT * FROM api_keys") for v in r)
    assert key not in stored and key_digest(key) in stored

    other = await store.users.create("Bob")
    admin_row, _ = await store.keys.create(other.id, scopes=["admin", "user", "admin"])
    assert admin_row.scopes == ("admin", "user")
    assert [k.id for k in await store.keys.list()] == [row.id, admin_row.id]
    assert [k.prefix for k in await store.keys.list(user.id)] == [row.prefix]
    assert await store.keys.list("nobody") == []

    assert await store.keys.revoke(row.prefix)  # by prefix
    revoked = await store.keys.by_digest(key_digest(key))
    assert revoked is not None and revoked.revoked_at is not None and not revoked.usable(datetime.now(UTC))
    assert await store.keys.revoke(row.id)  # by id, again: still revoked, time kept
    again = await store.keys.by_digest(key_digest(key))
    assert again is not None and again.revoked_at == revoked.revoked_at
    assert not await store.keys.revoke("cg-nothere")

    with pytest.raises(LookupError):
        await store.keys.create("nobody")
    with pytest.raises(ValueError, match="unknown scopes: root"):
        await store.keys.create(user.id, scopes=["root"])


async def test_key_expiry_and_disabled_user(store: Store, wb: WriteBehind) -> None:
    user = await store.users.create("Alice")
    now = datetime.now(UTC)
    row, key = await store.keys.create(user.id, expires_at=now + timedelta(hours=1))
    assert row.expires_at == now + timedelta(hours=1)
    assert row.usable(now) and not row.usable(now + timedelta(hours=2))

    await store.users.set_disabled(user.id, True)
    found = await store.keys.by_digest(key_digest(key))
    assert found is not None and found.user_disabled and not found.usable(now)

    wb.put(TouchKey(row.id, at(10)))
    wb.put(TouchKey(row.id, at(20)))
    await wb.flush()
    wb.put(TouchKey(row.id, at(15)))  # older than what is stored: ignored
    await wb.flush()
    touched = await store.keys.by_digest(key_digest(key))
    assert touched is not None and touched.last_used_at == at(20)
