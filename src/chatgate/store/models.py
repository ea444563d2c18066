"""The schema: SQLAlchemy 2 declarative models, portable across SQLite and PostgreSQL.

These describe the tables for queries; ``migrations/`` creates them. Timestamps are stored and
returned as timezone-aware UTC (SQLite keeps naive UTC text, which sorts correctly).
Request counts by type live in integer columns so concurrent increments are plain ``col = col + n``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
REQUEST_KINDS = ("standard", "rag", "research", "multimodal", "tool")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (naive input is taken as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[str]: JSON()}


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320))
    role: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(32))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str | None] = mapped_column(String(255))
    scopes: Mapped[list[str]]
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("user_id", "key", name="uq_conversations_user_id_key"),
        Index("ix_conversations_user_activity", "user_id", "last_activity_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    key: Mapped[str] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(String(16))
    title: Mapped[str | None] = mapped_column(String(512))
    created_at: Mapped[datetime]
    last_activity_at: Mapped[datetime]
    message_count: Mapped[int] = mapped_column(default=0, server_default="0")
    tokens_in: Mapped[int] = mapped_column(default=0, server_default="0")
    tokens_out: Mapped[int] = mapped_column(default=0, server_default="0")
    rag_applied: Mapped[bool] = mapped_column(default=False, server_default=false())
    request_standard: Mapped[int] = mapped_column(default=0, server_default="0")
    request_rag: Mapped[int] = mapped_column(default=0, server_default="0")
    request_research: Mapped[int] = mapped_column(default=0, server_default="0")
    request_multimodal: Mapped[int] = mapped_column(default=0, server_default="0")
    request_tool: Mapped[int] = mapped_column(default=0, server_default="0")
    variables: Mapped[dict[str, Any]]
    # The running brief (context/): a summary of the first ``brief_upto`` non-system messages, whose hash is
    # ``brief_digest`` (an edited history no longer matches it).
    brief: Mapped[str | None] = mapped_column(Text)
    brief_upto: Mapped[int] = mapped_column(default=0, server_default="0")
    brief_digest: Mapped[str | None] = mapped_column(String(64))


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("conversation_id", "dedupe_key", name="uq_messages_conversation_id_dedupe_key"),
        Index("ix_messages_conversation_id_id", "conversation_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[Any] = mapped_column(JSON, nullable=True)
    tokens: Mapped[int | None]
    model: Mapped[str | None] = mapped_column(String(255))
    client_message_id: Mapped[str | None] = mapped_column(String(255))
    dedupe_key: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]


def _table(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


USERS = _table(User)
API_KEYS = _table(ApiKey)
CONVERSATIONS = _table(Conversation)
MESSAGES = _table(Message)
