from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from chatgate.settings import Settings
from chatgate.store import Store, database_url, migrate
from chatgate.store.db import async_url, create_engine
from chatgate.store.models import Base

TABLES = {"alembic_version", "api_keys", "conversations", "messages", "request_log", "usage_hourly", "users"}
TABLES |= {"rag_collections", "rag_documents", "rag_chunks", "rag_jobs", "assistants"}  # 0004, 0005
TABLES |= {"write_batches"}  # 0006
TABLES |= {"rag_uploads", "rag_dense_deletions"}  # 0008 (0007: conversations.request_task)
TABLES |= {"chatkit_threads", "chatkit_items", "chatkit_attachments"}  # 0011
HEAD = "0012"  # 0009: the chunk change log (PostgreSQL), outside the models; 0012: request_log.usage_counted


def _not_lexical_index(name: str | None, type_: str, _parent: object) -> bool:
    """RAG's lexical index is SQL the models do not describe: FTS5 tables (SQLite), ``tsv`` and the chunk
    change log (PostgreSQL, 0006)."""
    if type_ == "table":
        return not (name or "").startswith(("rag_chunks_fts", "rag_chunk_changes"))
    return name not in ("tsv", "ix_rag_chunks_tsv")


async def test_migrates_from_empty_and_twice(db_url: str) -> None:
    await migrate(db_url)
    await migrate(db_url)  # up to date: a no-op
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda c: inspect(c).get_table_names())
            tables = {t for t in names if "_fts" not in t and not t.startswith("rag_chunk_changes")}
            version = (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).scalars().all()
    finally:
        await engine.dispose()
    assert tables == TABLES
    assert version == [HEAD]
    store = await Store.open(db_url)  # and once more, through the facade
    assert await store.ping()
    await store.close()


def _diff(conn: Connection) -> list[object]:
    opts = {"compare_type": True, "include_name": _not_lexical_index}
    return list(compare_metadata(MigrationContext.configure(conn, opts=opts), Base.metadata))


async def test_models_match_migrations(store: Store) -> None:
    async with store.engine.connect() as conn:
        assert await conn.run_sync(_diff) == []


async def test_sqlite_foreign_keys_and_wal(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite:///{tmp_path}/x/chatgate.db")  # plain sqlite:// gets the async driver
    async with store.engine.connect() as conn:
        assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
        assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
    await store.close()


async def test_ping_false_when_unreachable() -> None:
    store = await Store.open("postgresql+asyncpg://postgres@127.0.0.1:1/none", migrate=False)
    assert await store.ping() is False
    await store.close()


def test_database_url(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert database_url(Settings(data_dir=data)) == f"sqlite+aiosqlite:///{data}/chatgate.db"
    assert data.is_dir()
    url = "postgresql+asyncpg://u@h/db"
    assert database_url(Settings(data_dir=data, database_url=url)) == url
    assert async_url("postgresql://u@h/db") == url
    assert async_url("postgres://u@h/db") == url


def test_processes_migrating_one_new_sqlite_file_at_once_take_turns(tmp_path):
    import subprocess
    import sys

    url = f"sqlite+aiosqlite:///{tmp_path}/race.db"
    code = "import asyncio, sys; from chatgate.store.db import migrate; asyncio.run(migrate(sys.argv[1]))"
    procs = [subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE) for _ in range(4)]
    results = [(p.wait(60), p.stderr.read().decode()) for p in procs if p.stderr is not None]
    assert all(code == 0 for code, _ in results), [err[-500:] for _, err in results]
