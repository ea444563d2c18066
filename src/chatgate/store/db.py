"""The engine, migrations and the ``Store`` facade that holds the repositories.

One ``Store`` per process, created in the application's lifespan and closed there. Reads go
through the repositories; durable writes from the request path go through ``WriteBehind``.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import event, make_url, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from chatgate.datadir import private_file
from chatgate.settings import Settings
from chatgate.store.analytics import AnalyticsRepo
from chatgate.store.repos import ConversationRepo, KeyRepo, MessageRepo, UserRepo

log = logging.getLogger("chatgate.store")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Serialises concurrent `migrate` runs on PostgreSQL (several instances starting at once).
_PG_MIGRATE_LOCK = 0x63686174676174  # "chatgat"
PING_TIMEOUT = 2.0
_ASYNC_DRIVERS = {"postgres": "postgresql+asyncpg", "postgresql": "postgresql+asyncpg", "sqlite": "sqlite+aiosqlite"}


def database_url(settings: Settings) -> str:
    """The configured store URL, or SQLite in the data directory (created if missing)."""
    if settings.database_url:
        return async_url(settings.database_url)
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return f"sqlite+aiosqlite:///{data_dir}/chatgate.db"


def async_url(url: str) -> str:
    """``postgresql://`` / ``postgres://`` / ``sqlite://`` spelled with their async drivers."""
    scheme, sep, rest = url.partition("://")
    return f"{_ASYNC_DRIVERS.get(scheme, scheme)}{sep}{rest}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in ("foreign_keys=ON", "journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def create_engine(url: str) -> AsyncEngine:
    """An async engine for ``url``: SQLite with foreign keys and WAL, PostgreSQL with pre-ping.

    ``hide_parameters``: error messages never carry row contents into logs.
    """
    url = async_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            private_file(Path(parsed.database))  # 0600, and so its WAL and SHM files (SQLite copies its mode)
        engine = create_async_engine(
            url, connect_args={"timeout": 30}, hide_parameters=True, json_serializer=_json_dumps
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_pre_ping=True, hide_parameters=True, json_serializer=_json_dumps)


def _json_dumps(value: Any) -> str:
    """JSON columns (message content) serialised with orjson: several times faster than ``json``."""
    return orjson.dumps(value).decode()


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    return cfg


def _upgrade(connection: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


async def migrate_engine(engine: AsyncEngine) -> None:
    """Apply every migration (``upgrade head``) in one transaction; a no-op when up to date.

    Processes starting together (workers, instances) take turns: an advisory lock on PostgreSQL,
    a file lock next to the database file on SQLite.
    """
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    lock_path = Path(f"{database}.migrate-lock") if database and database != ":memory:" else None
    lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600) if lock_path else None
    try:
        if lock_fd is not None:
            await asyncio.to_thread(fcntl.flock, lock_fd, fcntl.LOCK_EX)
        async with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATE_LOCK})
            await conn.run_sync(_upgrade)
    finally:
        if lock_fd is not None:
            os.close(lock_fd)  # releases the lock


async def migrate(url: str) -> None:
    engine = create_engine(url)
    try:
        await migrate_engine(engine)
    finally:
        await engine.dispose()


class Store:
    """The database: an engine and one repository per table group."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.users = UserRepo(engine)
        self.keys = KeyRepo(engine)
        self.conversations = ConversationRepo(engine)
        self.messages = MessageRepo(engine)
        self.analytics = AnalyticsRepo(engine)

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True) -> Store:
        engine = create_engine(url)
        try:
            if migrate:
                await migrate_engine(engine)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def ping(self) -> bool:
        """``SELECT 1`` within ``PING_TIMEOUT`` seconds; False on any error (for ``/ready``)."""
        try:
            async with asyncio.timeout(PING_TIMEOUT), self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            log.warning("store ping failed: %s", type(exc).__name__)
            return False
        return True

    async def close(self) -> None:
        await self.engine.dispose()
