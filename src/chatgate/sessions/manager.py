"""Sessions: durable state in the store, a hot copy in an LRU with a TTL, writes through one queue.

A conversation's id is derived from (user, key), so every worker and instance that meets the
same conversation names it the same way, and concurrent creators agree without a lock. A new
conversation is stored with its first turn (a request refused before it, say by a rate limit,
leaves nothing behind).

The store is the one source of truth for what a conversation holds. Where the client sends the
history itself (the OpenAI door), the hot copy is only advisory (is this the first message, is there a
brief) and every write goes behind, idempotently (rows are de-duplicated by key). Where chatgate keeps
the history (the chat API, ChatKit), a conversation is read through the store on every turn
(``find_for_user``) and a turn is committed before its answer completes (``keep(..., durable=True)``),
so the next turn, on any worker or instance, sees it.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from chatgate.identity.model import Identity
from chatgate.sessions.messages import KINDS, Kept, compact, dedupe_key
from chatgate.settings import SessionSettings, StoreSettings
from chatgate.store.db import Store
from chatgate.store.repos import ConversationRow, MessageRow
from chatgate.store.writebehind import (
    AddMessage,
    CountRequest,
    SetBrief,
    UpsertConversation,
    UpsertUser,
    WriteBehind,
    WriteOp,
)

if TYPE_CHECKING:
    from chatgate.turn import Door, Turn

KNOWN_KEYS = 256  # dedupe keys remembered per hot session


def conversation_id(user_id: str, key: str) -> str:
    """The same for every worker and instance that meets this (user, key)."""
    return hashlib.sha256(f"chatgate-conversation\0{user_id}\0{key}".encode()).hexdigest()[:32]


@dataclass(slots=True)
class Session:
    id: str
    user_id: str
    key: str | None  # None: ephemeral, never stored
    source: str
    created_at: datetime
    title: str | None = None
    message_count: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    rag_applied: bool = False
    request_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    variables: dict[str, str] = field(default_factory=dict)
    recent: deque[dict[str, Any]] = field(default_factory=deque)  # the last turns, for server-side history
    known: dict[str, None] = field(default_factory=dict)  # dedupe keys of recent rows (insertion-ordered, bounded)
    loaded_at: float = 0.0
    # The running brief (context/): a summary of the first ``brief_upto`` non-system messages of the history,
    # valid while those messages still hash to ``brief_digest``.
    brief: str | None = None
    brief_upto: int = 0
    brief_digest: str | None = None
    stored: bool = True  # False: new here, stored with its first turn

    @property
    def ephemeral(self) -> bool:
        return self.key is None

    @property
    def is_first_message(self) -> bool:
        """No turn of this conversation has been kept yet (whatever requests were refused before)."""
        return self.message_count == 0


@dataclass(slots=True)
class SessionStats:
    created: int = 0
    evicted: int = 0
    hits: int = 0
    misses: int = 0

    def as_dict(self, active: int) -> dict[str, Any]:
        lookups = self.hits + self.misses
        return {
            "active": active,
            "created": self.created,
            "evicted": self.evicted,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": round(self.hits / lookups, 4) if lookups else None,
        }


class SessionManager:
    def __init__(
        self,
        store: Store,
        writer: WriteBehind,
        settings: SessionSettings,
        store_settings: StoreSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.writer = writer
        self.settings = settings
        self.store_settings = store_settings or StoreSettings()
        self._clock = clock
        self._hot: OrderedDict[str, Session] = OrderedDict()
        self._loading: dict[str, asyncio.Future[Session]] = {}
        self._users_seen: dict[str, float] = {}
        self.stats = SessionStats()
        self._ephemeral_prefix = os.urandom(6).hex()
        self._ephemeral_ids = itertools.count()

    # ---- identity -> user row ----------------------------------------------------------------

    def saw(self, identity: Identity) -> None:
        """Record the user (at most once per TTL per user): conversations point at it."""
        now = self._clock()
        if now - self._users_seen.get(identity.user_id, -1e18) < self.settings.cache_ttl:
            return
        if len(self._users_seen) > 10 * self.settings.cache_size:
            self._users_seen.clear()
        self._users_seen[identity.user_id] = now
        role = next(iter(sorted(identity.roles)), None) if identity.roles else None
        self.writer.put(
            UpsertUser(
                id=identity.user_id,
                name=identity.display_name,
                email=identity.email,
                role=role,
                source=identity.source,
                seen_at=datetime.now(UTC),
            )
        )

    # ---- get or create ----------------------------------------------------------------------

    def ephemeral(self, identity: Identity, source: str) -> Session:
        """A session that is never stored (no conversation key): unique is enough for its id."""
        return _session(f"eph-{self._ephemeral_prefix}{next(self._ephemeral_ids):x}", identity, None, source)

    async def get_or_create(self, identity: Identity, key: str | None, source: str) -> Session:
        """The session for this conversation key (``is_first_message``: none of its turns kept yet)."""
        self.saw(identity)
        if key is None:
            return self.ephemeral(identity, source)
        cid = conversation_id(identity.user_id, key)
        hot = self._get_hot(cid)
        if hot is not None:
            return hot
        pending = self._loading.get(cid)
        if pending is not None:  # another request is loading it: share its result
            return await asyncio.shield(pending)
        future: asyncio.Future[Session] = asyncio.get_running_loop().create_future()
        self._loading[cid] = future
        try:
            session = await self._load_or_create(cid, identity, key, source)
            future.set_result(session)
            return session
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            del self._loading[cid]

    async def _load_or_create(self, cid: str, identity: Identity, key: str, source: str) -> Session:
        self.stats.misses += 1
        row = await self.store.conversations.get(cid)
        if row is not None:
            recent = await self.store.messages.last_turns(cid, self.settings.history_turns)
            session = _from_row(row, recent)
        else:
            session = self._new(cid, identity, key, source)
        self._put_hot(session)
        return session

    def new(self, identity: Identity, key: str, source: str) -> Session:
        """A new conversation under ``key`` (stored with its first turn)."""
        self.saw(identity)
        session = self._new(conversation_id(identity.user_id, key), identity, key, source)
        self._put_hot(session)
        return session

    def _new(self, cid: str, identity: Identity, key: str, source: str) -> Session:
        self.stats.created += 1
        session = _session(cid, identity, key, source)
        session.stored = False
        return session

    async def find_for_user(self, user_id: str, session_id: str) -> Session | None:
        """An existing conversation by id, only if it is this user's, as the store has it now (the history
        chatgate keeps: any worker or instance may have written its last turn)."""
        row = await self.store.conversations.get_for_user(user_id, session_id)
        if row is None:
            return None
        self.stats.misses += 1
        recent = await self.store.messages.last_turns(row.id, self.settings.history_turns)
        session = _from_row(row, recent)
        self._put_hot(session)
        return session

    def forget(self, session_id: str) -> None:
        self._hot.pop(session_id, None)

    # ---- what a request did -------------------------------------------------------------------

    async def keep_turn(self, turn: Turn, door: Door, kind: str) -> None:
        """``turn`` into its conversation (the pipeline's account step, once per turn): the request's kind and
        tokens, its new messages (what ``door`` says the turn adds) and the reply; a task adds no message."""
        session = turn.session
        assert session is not None
        messages, reply_at = ([], 0) if turn.task is not None else door.kept(turn)
        await self.keep(
            session,
            kind,
            turn.usage,
            rag_applied=bool(turn.sources),
            messages=messages,
            reply=turn.reply if turn.task is None else None,
            reply_at=reply_at,
            model=turn.trace.model,
            durable=door.stored_history,
        )

    async def keep(
        self,
        session: Session,
        kind: str,
        usage: dict[str, Any] | None,
        *,
        rag_applied: bool,
        messages: list[Kept],
        reply: Any,
        reply_at: int,
        model: str | None,
        durable: bool,
    ) -> None:
        """A turn into its conversation: its kind and tokens counted, its new messages and the reply added
        (hot at once). ``durable`` (the door keeps the history) or ``store.durability: every_turn``: returns once
        they are committed (raises ``StoreUnavailable`` if they could not be), else they are queued behind."""
        usage = usage or {}
        ops: list[WriteOp | None] = []
        if not session.ephemeral and not session.stored:
            session.stored = True
            ops.append(_creation(session))
            if session.brief is not None:
                ops.append(SetBrief(session.id, session.brief, session.brief_upto, session.brief_digest))
        ops.append(
            self.record(
                session,
                kind,
                _int(usage.get("prompt_tokens")),
                _int(usage.get("completion_tokens")),
                rag_applied,
            )
        )
        store = self.store_settings
        for m in messages:
            dedupe = dedupe_key(m.position, m.role, m.content, m.client_message_id)
            content = compact(m.content, store.keep_inline_bytes, store.inline_bytes_limit)
            ops.append(self.add_message(session, m.role, content, dedupe, client_message_id=m.client_message_id))
        if reply is not None:
            tokens = usage.get("completion_tokens")
            dedupe = dedupe_key(reply_at, "assistant", reply)
            ops.append(
                self.add_message(
                    session, "assistant", reply, dedupe, tokens=tokens if isinstance(tokens, int) else None, model=model
                )
            )
        if session.ephemeral:
            return
        kept = [op for op in ops if op is not None]
        if durable or store.durability == "every_turn":
            await self.writer.commit(kept)
        else:
            for op in kept:
                self.writer.put(op)

    def record(
        self, session: Session, kind: str, tokens_in: int, tokens_out: int, rag_applied: bool = False
    ) -> CountRequest:
        """The request's kind and tokens on the session (hot), and the op that stores them."""
        session.request_counts[kind] = session.request_counts.get(kind, 0) + 1
        session.tokens_in += tokens_in
        session.tokens_out += tokens_out
        session.rag_applied = session.rag_applied or rag_applied
        return CountRequest(
            conversation_id=session.id,
            kind=kind,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            rag_applied=rag_applied,
            at=datetime.now(UTC),
        )

    def add_message(
        self,
        session: Session,
        role: str,
        content: Any,
        dedupe: str,
        *,
        tokens: int | None = None,
        model: str | None = None,
        client_message_id: str | None = None,
    ) -> AddMessage | None:
        """A message row kept hot, and the op that stores it; None when this session already has it.

        (The store drops duplicates too; knowing them here spares it the work when clients resend history.)
        """
        if dedupe in session.known:
            return None
        session.known[dedupe] = None
        if len(session.known) > KNOWN_KEYS:
            del session.known[next(iter(session.known))]
        session.recent.append({"role": role, "content": content, "dedupe": dedupe})
        while len(session.recent) > 2 * max(self.settings.history_turns, 1):
            session.recent.popleft()
        session.message_count += 1
        return AddMessage(
            conversation_id=session.id,
            role=role,
            content=content,
            dedupe_key=dedupe,
            tokens=tokens,
            model=model,
            client_message_id=client_message_id,
            created_at=datetime.now(UTC),
        )

    def set_brief(self, session: Session, brief: str | None, upto: int, digest: str | None) -> None:
        """Keep the conversation's running brief hot and queue it for the store (a conversation not stored yet
        stores it with its first turn; an ephemeral one never)."""
        session.brief, session.brief_upto, session.brief_digest = brief, upto, digest
        if not session.ephemeral and session.stored:
            self.writer.put(SetBrief(conversation_id=session.id, brief=brief, upto=upto, digest=digest))

    def history(self, session: Session) -> list[dict[str, Any]]:
        """The last ``history_turns`` turns as chat messages, oldest first."""
        turns = self.settings.history_turns
        recent = list(session.recent)[-2 * turns :] if turns else []
        return [{"role": m["role"], "content": m["content"]} for m in recent]

    @property
    def active(self) -> int:
        """Sessions held hot in memory."""
        return len(self._hot)

    def overview(self) -> dict[str, Any]:
        return self.stats.as_dict(active=self.active)

    # ---- the LRU ------------------------------------------------------------------------------

    def _get_hot(self, cid: str) -> Session | None:
        session = self._hot.get(cid)
        if session is None:
            return None
        if self._clock() - session.loaded_at > self.settings.cache_ttl:
            del self._hot[cid]
            self.stats.evicted += 1
            return None
        self._hot.move_to_end(cid)
        session.loaded_at = self._clock()
        self.stats.hits += 1
        return session

    def _put_hot(self, session: Session) -> None:
        session.loaded_at = self._clock()
        self._hot[session.id] = session
        self._hot.move_to_end(session.id)
        while len(self._hot) > self.settings.cache_size:
            self._hot.popitem(last=False)
            self.stats.evicted += 1


def _session(cid: str, identity: Identity, key: str | None, source: str) -> Session:
    return Session(
        id=cid,
        user_id=identity.user_id,
        key=key,
        source=source,
        created_at=datetime.now(UTC),
        variables=dict(identity.variables),
    )


def _creation(session: Session) -> UpsertConversation:
    assert session.key is not None
    return UpsertConversation(
        id=session.id,
        user_id=session.user_id,
        key=session.key,
        source=session.source,
        created_at=session.created_at,
        title=None,
        variables=session.variables,
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def _from_row(row: ConversationRow, recent: list[MessageRow]) -> Session:
    return Session(
        id=row.id,
        user_id=row.user_id,
        key=row.key,
        source=row.source,
        created_at=row.created_at,
        title=row.title,
        message_count=row.message_count,
        tokens_in=row.tokens_in,
        tokens_out=row.tokens_out,
        rag_applied=row.rag_applied,
        request_counts={**dict.fromkeys(KINDS, 0), **row.request_counts},
        variables=dict(row.variables),
        recent=deque({"role": m.role, "content": m.content, "dedupe": m.dedupe_key} for m in recent),
        known=dict.fromkeys(m.dedupe_key for m in recent),
        brief=row.brief,
        brief_upto=row.brief_upto,
        brief_digest=row.brief_digest,
    )
