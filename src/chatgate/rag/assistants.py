"""Assistants: model ids of their own that answer with a base model, a system prompt and collections.

Two sources: the config file (``assistants:``, read-only through the API) and the ``assistants`` table
(the admin API). A config-defined name wins over a stored one. The table is small: it is read whole and
kept for ``ttl`` seconds, so a chat request never waits on the database to learn that its model is not
an assistant (more than once per ``ttl``); a change made in this process is seen at once, one made
by another worker within ``ttl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from chatgate.rag.retrieve import MODES, Mode
from chatgate.settings import AssistantSettings
from chatgate.store.models import ASSISTANTS, utcnow

log = logging.getLogger("chatgate.rag")

Policy = Literal["every_turn", "once_per_conversation", "tool", "off"]
POLICIES: tuple[Policy, ...] = ("every_turn", "once_per_conversation", "tool", "off")
_A = ASSISTANTS.c


@dataclass(frozen=True, slots=True)
class Assistant:
    name: str
    model: str
    system_prompt: str | None = None
    collections: tuple[str, ...] = ()
    retrieval: Policy = "every_turn"
    top_k: int | None = None
    mode: Mode | None = None
    research: bool = False
    description: str | None = None
    tools: tuple[str, ...] = ()  # server tools offered besides search_documents (retrieval: tool)
    max_steps: int | None = None  # the tool loop's, when not ``tools.max_steps``
    source: str = "config"  # "config" (read-only) or "api"

    @classmethod
    def from_settings(cls, s: AssistantSettings, source: str = "config") -> Assistant:
        return cls(
            name=s.name,
            model=s.model,
            system_prompt=s.system_prompt,
            collections=tuple(s.collections),
            retrieval=s.retrieval,
            top_k=s.top_k,
            mode=s.mode,
            research=s.research,
            description=s.description,
            tools=tuple(s.tools),
            max_steps=s.max_steps,
            source=source,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "system_prompt": self.system_prompt,
            "collections": list(self.collections),
            "retrieval": self.retrieval,
            "top_k": self.top_k,
            "mode": self.mode,
            "research": self.research,
            "description": self.description,
            "tools": list(self.tools),
            "max_steps": self.max_steps,
            "source": self.source,
        }

    def model_object(self) -> dict[str, Any]:
        """As listed in ``/v1/models``."""
        out: dict[str, Any] = {"id": self.name, "object": "model", "created": 0, "owned_by": "chatgate"}
        out["root"] = self.model
        if self.description:
            out["description"] = self.description
        return out

    @property
    def grounded(self) -> bool:
        return bool(self.collections) and self.retrieval != "off"


class AssistantRepo:
    """The ``assistants`` table."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def all(self) -> list[Assistant]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(ASSISTANTS).order_by(_A.name))).all()
        return [_assistant(r._mapping) for r in rows]

    async def create(self, a: Assistant) -> bool:
        """False when the name is taken."""
        now = utcnow()
        async with self.engine.begin() as conn:
            if (await conn.execute(select(_A.name).where(_A.name == a.name))).first() is not None:
                return False
            await conn.execute(insert(ASSISTANTS).values(**_values(a), created_at=now, updated_at=now))
        return True

    async def replace(self, a: Assistant) -> bool:
        """False when there is no such assistant."""
        async with self.engine.begin() as conn:
            values = {k: v for k, v in _values(a).items() if k != "name"}
            result = await conn.execute(
                update(ASSISTANTS).where(_A.name == a.name).values(**values, updated_at=utcnow())
            )
        return bool(result.rowcount)

    async def delete(self, name: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(ASSISTANTS).where(_A.name == name))
        return bool(result.rowcount)


def _values(a: Assistant) -> dict[str, Any]:
    return {
        "name": a.name,
        "model": a.model,
        "system_prompt": a.system_prompt,
        "collections": list(a.collections),
        "retrieval": a.retrieval,
        "top_k": a.top_k,
        "mode": a.mode,
        "research": a.research,
        "description": a.description,
        "tools": list(a.tools),
        "max_steps": a.max_steps,
    }


def _assistant(m: Any) -> Assistant:
    retrieval = m["retrieval"] if m["retrieval"] in POLICIES else "every_turn"
    return Assistant(
        name=m["name"],
        model=m["model"],
        system_prompt=m["system_prompt"],
        collections=tuple(m["collections"] or ()),
        retrieval=cast(Policy, retrieval),
        top_k=m["top_k"],
        mode=cast(Mode, m["mode"]) if m["mode"] in MODES else None,
        research=bool(m["research"]),
        description=m["description"],
        tools=tuple(m["tools"] or ()),
        max_steps=m["max_steps"],
        source="api",
    )


def _by_name(configured: Sequence[AssistantSettings]) -> dict[str, Assistant]:
    out: dict[str, Assistant] = {}
    for s in configured:
        if s.name in out:
            raise ValueError(f"assistants: the name {s.name!r} is defined twice")
        out[s.name] = Assistant.from_settings(s)
    return out


class Assistants:
    """Config-defined assistants and stored ones, looked up by name."""

    def __init__(self, configured: Sequence[AssistantSettings], repo: AssistantRepo, ttl: float = 5.0) -> None:
        self.configured = _by_name(configured)
        self.repo = repo
        self.ttl = ttl
        self._stored: dict[str, Assistant] = {}
        self._read_at = -1e18
        self._reading: asyncio.Task[None] | None = None

    def reload(self, configured: Sequence[AssistantSettings]) -> None:
        """The config file's assistants, read again (SIGHUP); a name defined twice raises ``ValueError`` and
        leaves the current ones."""
        self.configured = _by_name(configured)

    async def refresh(self) -> None:
        """Read the stored assistants now: at start, and where a change is made or must be seen at once (admin)."""
        self._stored = {a.name: a for a in await self.repo.all()}
        self._read_at = time.monotonic()

    def _current(self) -> dict[str, Assistant]:
        """The stored assistants as last read. Past ``ttl`` they are read again in the background: a request
        never waits on the database for them (another instance's change shows here within about ``ttl``)."""
        if time.monotonic() - self._read_at >= self.ttl and (self._reading is None or self._reading.done()):
            self._reading = asyncio.get_running_loop().create_task(self._reread())
        return self._stored

    async def _reread(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # the last read stays in use; tried again after ``ttl``
            self._read_at = time.monotonic()
            log.warning("reading the stored assistants failed", extra={"error": type(exc).__name__})

    async def close(self) -> None:
        if self._reading is not None and not self._reading.done():
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading

    async def get(self, name: str) -> Assistant | None:
        found = self.configured.get(name)
        if found is not None:
            return found
        return self._current().get(name)

    async def listing(self) -> list[Assistant]:
        stored = self._current()
        return [*self.configured.values(), *(a for n, a in sorted(stored.items()) if n not in self.configured)]

    @property
    def any_configured(self) -> bool:
        return bool(self.configured)

    async def any_grounded(self) -> bool:
        return any(a.grounded for a in await self.listing())
