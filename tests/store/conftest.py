"""Every store test runs on SQLite and on the real PostgreSQL, through one parametrised fixture.

PostgreSQL: one database per test session (``chatgate_store_<pid>_<hex>``, dropped at the end)
on the server at ``CHATGATE_TEST_PG_URL`` (default: the local ``test`` database), its ``public``
schema dropped and recreated before each test. Unreachable: the PostgreSQL cases fail (a skipped test proves nothing).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import make_url

from chatgate.store import Store, UpsertConversation, UpsertUser, WriteBehind

PG_URL = os.environ.get("CHATGATE_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """A fixed point in time, ``seconds`` after ``T0``."""
    return T0 + timedelta(seconds=seconds)


async def eventually(check: Callable[[], Awaitable[bool]], polls: int = 500) -> None:
    """Wait until ``check()`` is true, polling every 10 ms, failing after ``polls`` tries."""
    for _ in range(polls):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(_dsn(PG_URL), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str | None]:
    name = f"chatgate_store_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError):
        yield None
        return
    yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _reset_pg(url: str) -> None:
    conn = await asyncpg.connect(_dsn(url), timeout=5)
    try:
        await conn.execute("SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public")
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str | None) -> str:
    """The URL of an empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/chatgate.db"
    if pg_url is None:
        pytest.fail(f"PostgreSQL not reachable at {PG_URL}: the store tests need it (see README)")
    await _reset_pg(pg_url)
    return pg_url


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = await Store.open(db_url)
    yield s
    await s.close()


@pytest.fixture
async def wb(store: Store) -> AsyncIterator[WriteBehind]:
    w = WriteBehind(store, flush_interval=0.01, retry_base=0.01)
    await w.start()
    yield w
    await w.close()


def conversation(user_id: str, key: str, when: datetime = T0) -> UpsertConversation:
    return UpsertConversation(
        id=f"c-{user_id}-{key}", user_id=user_id, key=key, source="openai", created_at=when, title=None, variables={}
    )


def seed(w: WriteBehind, user_id: str, *keys: str, when: datetime = T0) -> list[str]:
    """Queue a user and conversations with ``keys``; their ids."""
    w.put(UpsertUser(id=user_id, name=None, email=None, role=None, source="test", seen_at=when))
    ops = [conversation(user_id, key, when) for key in keys]
    for op in ops:
        w.put(op)
    return [op.id for op in ops]
