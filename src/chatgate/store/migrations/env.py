"""Alembic environment for chatgate's store.

chatgate runs migrations itself (``chatgate.store.db.migrate``): it opens an async connection and
hands its sync facade to Alembic through ``config.attributes["connection"]`` (Alembic's
"connection sharing" recipe, inside ``AsyncConnection.run_sync``). Run by hand (e.g. to
autogenerate a revision), the URL comes from ``sqlalchemy.url`` or ``CHATGATE_DATABASE_URL``.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from chatgate.store.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("CHATGATE_DATABASE_URL")
    if not url:
        raise RuntimeError("no database URL: set sqlalchemy.url or CHATGATE_DATABASE_URL")
    return url


async def _run_async() -> None:
    engine = create_async_engine(_url())
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_configure)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (shared := config.attributes.get("connection")) is not None:
    _configure(shared)
else:
    asyncio.run(_run_async())
