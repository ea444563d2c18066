"""Repositories: reads and the few direct (admin / CLI) writes, returning plain frozen rows.

The request path never writes through these; it goes through ``WriteBehind``.
"""

from __future__ import annotations

import builtins
import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from chatgate.store.models import API_KEYS, CONVERSATIONS, MESSAGES, REQUEST_KINDS, USERS, utcnow

KEY_PREFIX = "cg-"
PREFIX_LEN = 11  # "cg-" and 8 characters of the secret part: enough to tell keys apart in a listing
SCOPES = frozenset({"user", "admin", "trusted_forwarder"})


class AlreadyExists(ValueError):
    """The id is taken."""


@dataclass(frozen=True, slots=True)
class UserRow:
    id: str
    name: str | None
    email: str | None
    role: str | None
    source: str
    disabled: bool
    created_at: datetime
    last_seen_at: datetime


@dataclass(frozen=True, slots=True)
class KeyRow:
    id: str
    prefix: str
    user_id: str
    name: str | None
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    user_disabled: bool

    def usable(self, now: datetime) -> bool:
        """Not revoked, not expired at ``now``, and its user not disabled."""
        if self.revoked_at is not None or self.user_disabled:
            return False
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True, slots=True)
class ConversationRow:
    id: str
    user_id: str
    key: str
    source: str
    title: str | None
    created_at: datetime
    last_activity_at: datetime
    message_count: int
    tokens_in: int
    tokens_out: int
    rag_applied: bool
    request_counts: dict[str, int]
    variables: dict[str, Any]
    brief: str | None = None
    brief_upto: int = 0
    brief_digest: str | None = None


@dataclass(frozen=True, slots=True)
class MessageRow:
    id: int
    conversation_id: str
    role: str
    content: Any
    tokens: int | None
    model: str | None
    client_message_id: str | None
    dedupe_key: str
    created_at: datetime


def key_digest(key: str) -> str:
    """SHA-256 hex of the whole key: the only form a key is stored in."""
    return hashlib.sha256(key.encode()).hexdigest()


def _user(r: Row[Any]) -> UserRow:
    m = r._mapping
    return UserRow(**{f: m[f] for f in UserRow.__dataclass_fields__})


def _conversation(r: Row[Any]) -> ConversationRow:
    m = r._mapping
    return ConversationRow(
        id=m["id"],
        user_id=m["user_id"],
        key=m["key"],
        source=m["source"],
        title=m["title"],
        created_at=m["created_at"],
        last_activity_at=m["last_activity_at"],
        message_count=m["message_count"],
        tokens_in=m["tokens_in"],
        tokens_out=m["tokens_out"],
        rag_applied=bool(m["rag_applied"]),
        request_counts={kind: m[f"request_{kind}"] for kind in REQUEST_KINDS},
        variables=dict(m["variables"] or {}),
        brief=m["brief"],
        brief_upto=m["brief_upto"],
        brief_digest=m["brief_digest"],
    )


def _message(r: Row[Any]) -> MessageRow:
    m = r._mapping
    return MessageRow(**{f: m[f] for f in MessageRow.__dataclass_fields__})


class UserRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(
        self, name: str | None, email: str | None = None, role: str | None = None, user_id: str | None = None
    ) -> UserRow:
        """A user created by an operator (source ``cli``); raises ``AlreadyExists`` for a taken id."""
        now = utcnow()
        row = UserRow(
            id=user_id or f"u-{secrets.token_hex(8)}",
            name=name,
            email=email,
            role=role,
            source="cli",
            disabled=False,
            created_at=now,
            last_seen_at=now,
        )
        async with self._engine.begin() as conn:
            if (await conn.execute(select(USERS.c.id).where(USERS.c.id == row.id))).first() is not None:
                raise AlreadyExists(f"user {row.id!r} already exists")
            await conn.execute(insert(USERS).values(**{f: getattr(row, f) for f in UserRow.__dataclass_fields__}))
        return row

    async def get(self, user_id: str) -> UserRow | None:
        async with self._engine.connect() as conn:
            r = (await conn.execute(select(USERS).where(USERS.c.id == user_id))).first()
        return _user(r) if r is not None else None

    async def list(self) -> builtins.list[UserRow]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(USERS).order_by(USERS.c.created_at, USERS.c.id))
        return [_user(r) for r in rows]

    async def search(self, query: str = "", limit: int = 50, offset: int = 0) -> tuple[builtins.list[UserRow], int]:
        """Users whose id, name or e-mail contains ``query`` (any case), last seen first; and how many match."""
        where = []
        if query:
            pattern = "%" + query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append(
                or_(*(func.lower(c).like(pattern, escape="\\") for c in (USERS.c.id, USERS.c.name, USERS.c.email)))
            )
        page = select(USERS).where(*where).order_by(USERS.c.last_seen_at.desc(), USERS.c.id).limit(limit).offset(offset)
        async with self._engine.connect() as conn:
            rows = [_user(r) for r in await conn.execute(page)]
            total = (await conn.execute(select(func.count()).select_from(USERS).where(*where))).scalar_one()
        return rows, int(total)

    async def set_disabled(self, user_id: str, disabled: bool) -> bool:
        """False when there is no such user."""
        async with self._engine.begin() as conn:
            result = await conn.execute(update(USERS).where(USERS.c.id == user_id).values(disabled=disabled))
        return result.rowcount > 0


_KEY_COLUMNS = (*(c for c in API_KEYS.c if c.name != "digest"), USERS.c.disabled.label("user_disabled"))


def _key(r: Row[Any]) -> KeyRow:
    m = r._mapping
    fields = {f: m[f] for f in KeyRow.__dataclass_fields__}
    fields["scopes"] = tuple(fields["scopes"] or ())
    fields["user_disabled"] = bool(fields["user_disabled"])
    return KeyRow(**fields)


class KeyRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    def _select(self) -> Any:
        return select(*_KEY_COLUMNS).join_from(API_KEYS, USERS, API_KEYS.c.user_id == USERS.c.id)

    async def create(
        self,
        user_id: str,
        *,
        name: str | None = None,
        scopes: Iterable[str] = ("user",),
        expires_at: datetime | None = None,
    ) -> tuple[KeyRow, str]:
        """A new key for ``user_id``: its row and the key itself, which is never stored and never shown again.

        Raises ``LookupError`` for an unknown user, ``ValueError`` for an unknown scope.
        """
        scopes = list(dict.fromkeys(scopes))
        if unknown := set(scopes) - SCOPES:
            raise ValueError(f"unknown scopes: {', '.join(sorted(unknown))} (known: {', '.join(sorted(SCOPES))})")
        key = f"{KEY_PREFIX}{secrets.token_urlsafe(32)}"
        values = {
            "id": f"k-{secrets.token_hex(8)}",
            "prefix": key[:PREFIX_LEN],
            "digest": key_digest(key),
            "user_id": user_id,
            "name": name,
            "scopes": scopes,
            "created_at": utcnow(),
            "expires_at": expires_at,
        }
        async with self._engine.begin() as conn:
            if (await conn.execute(select(USERS.c.id).where(USERS.c.id == user_id))).first() is None:
                raise LookupError(f"no user {user_id!r}")
            await conn.execute(insert(API_KEYS).values(**values))
            r = (await conn.execute(self._select().where(API_KEYS.c.id == values["id"]))).one()
        return _key(r), key

    async def by_digest(self, digest: str) -> KeyRow | None:
        async with self._engine.connect() as conn:
            r = (await conn.execute(self._select().where(API_KEYS.c.digest == digest))).first()
        return _key(r) if r is not None else None

    async def list(self, user_id: str | None = None) -> builtins.list[KeyRow]:
        stmt = self._select().order_by(API_KEYS.c.created_at, API_KEYS.c.id)
        if user_id is not None:
            stmt = stmt.where(API_KEYS.c.user_id == user_id)
        async with self._engine.connect() as conn:
            return [_key(r) for r in await conn.execute(stmt)]

    async def revoke(self, key_id_or_prefix: str) -> bool:
        """Revoke the key with this id, or the one key with this prefix.

        True when such a key exists (now revoked; an earlier revocation time is kept); False when
        none does or the prefix is ambiguous.
        """
        match = or_(API_KEYS.c.id == key_id_or_prefix, API_KEYS.c.prefix == key_id_or_prefix)
        async with self._engine.begin() as conn:
            ids = (await conn.execute(select(API_KEYS.c.id).where(match).limit(2))).scalars().all()
            if len(ids) != 1:  # none, or a prefix shared by several keys
                return False
            await conn.execute(
                update(API_KEYS)
                .where(API_KEYS.c.id == ids[0], API_KEYS.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
        return True


class ConversationRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def _one(self, *where: Any) -> ConversationRow | None:
        async with self._engine.connect() as conn:
            r = (await conn.execute(select(CONVERSATIONS).where(*where))).first()
        return _conversation(r) if r is not None else None

    async def get(self, conversation_id: str) -> ConversationRow | None:
        return await self._one(CONVERSATIONS.c.id == conversation_id)

    async def get_for_user(self, user_id: str, conversation_id: str) -> ConversationRow | None:
        """None when the conversation does not exist or belongs to someone else."""
        return await self._one(CONVERSATIONS.c.id == conversation_id, CONVERSATIONS.c.user_id == user_id)

    async def find(self, user_id: str, key: str) -> ConversationRow | None:
        return await self._one(CONVERSATIONS.c.user_id == user_id, CONVERSATIONS.c.key == key)

    async def list_for_user(self, user_id: str, limit: int = 50, offset: int = 0) -> list[ConversationRow]:
        """Newest activity first."""
        stmt = (
            select(CONVERSATIONS)
            .where(CONVERSATIONS.c.user_id == user_id)
            .order_by(CONVERSATIONS.c.last_activity_at.desc(), CONVERSATIONS.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        async with self._engine.connect() as conn:
            return [_conversation(r) for r in await conn.execute(stmt)]

    async def delete_for_user(self, user_id: str, conversation_id: str) -> bool:
        """Delete the conversation and its messages; False when it is not this user's."""
        stmt = delete(CONVERSATIONS).where(CONVERSATIONS.c.id == conversation_id, CONVERSATIONS.c.user_id == user_id)
        async with self._engine.begin() as conn:
            result = await conn.execute(stmt)
        return result.rowcount > 0

    async def stats(self, user_id: str | None) -> dict[str, int]:
        """conversations, messages, tokens_in and tokens_out, for one user or (None) everyone."""
        c = CONVERSATIONS.c
        stmt = select(
            func.count(),
            func.coalesce(func.sum(c.message_count), 0),
            func.coalesce(func.sum(c.tokens_in), 0),
            func.coalesce(func.sum(c.tokens_out), 0),
        )
        if user_id is not None:
            stmt = stmt.where(c.user_id == user_id)
        async with self._engine.connect() as conn:
            r = (await conn.execute(stmt)).one()
        return dict(zip(("conversations", "messages", "tokens_in", "tokens_out"), map(int, r), strict=True))


class MessageRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def list(self, conversation_id: str, limit: int = 50, offset: int = 0) -> builtins.list[MessageRow]:
        """Oldest first."""
        stmt = (
            select(MESSAGES)
            .where(MESSAGES.c.conversation_id == conversation_id)
            .order_by(MESSAGES.c.id)
            .limit(limit)
            .offset(offset)
        )
        async with self._engine.connect() as conn:
            return [_message(r) for r in await conn.execute(stmt)]

    async def count(self, conversation_id: str) -> int:
        stmt = select(func.count()).select_from(MESSAGES).where(MESSAGES.c.conversation_id == conversation_id)
        async with self._engine.connect() as conn:
            return int((await conn.execute(stmt)).scalar_one())

    async def last_turns(self, conversation_id: str, turns: int) -> builtins.list[MessageRow]:
        """The last ``turns`` user+assistant pairs: the last ``2 * turns`` messages, oldest first."""
        if turns <= 0:
            return []
        stmt = (
            select(MESSAGES)
            .where(MESSAGES.c.conversation_id == conversation_id)
            .order_by(MESSAGES.c.id.desc())
            .limit(2 * turns)
        )
        async with self._engine.connect() as conn:
            rows = [_message(r) for r in await conn.execute(stmt)]
        rows.reverse()
        return rows
