"""The schema: SQLAlchemy 2 declarative models, portable across SQLite and PostgreSQL.

These describe the tables for queries; ``migrations/`` creates them. Timestamps are stored and
returned as timezone-aware UTC (SQLite keeps naive UTC text, which sorts correctly).
Request counts by type live in integer columns so concurrent increments are plain ``col = col + n``.
The analytics rollups (``usage_hourly``) follow the same rule, their latency histogram included.
"""

from __future__ import annotations

from bisect import bisect_left
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
REQUEST_KINDS = ("standard", "rag", "research", "multimodal", "tool", "task")

# The hourly rollups' latency histogram: the upper bounds (ms) of its buckets, each counting the requests
# slower than the previous bound and at most this one (not cumulative), then one bucket for the slower
# rest. Neighbouring bounds are 1.4-2x apart, so a percentile read from the histogram is within one
# bucket of the exact value. Fixed: changing them needs a migration.
LATENCY_BOUNDS_MS = (
    *(1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700),
    *(1_000, 1_500, 2_000, 3_000, 5_000, 7_000, 10_000, 15_000, 20_000, 30_000, 50_000, 70_000),
    *(100_000, 150_000, 200_000, 300_000),
)
LATENCY_COLUMNS = (*(f"lat_le_{bound}" for bound in LATENCY_BOUNDS_MS), "lat_inf")
# The rollups' additive columns, in this order; ``latency_ms_sum`` and friends are BIGINT.
ROLLUP_COUNTS = ("requests", "errors", "cached", "streams", "ttft_count")
ROLLUP_TOTALS = ("tokens_in", "tokens_out", "latency_ms_sum", "ttft_ms_sum")
ROLLUP_SUMS = (*ROLLUP_COUNTS, *ROLLUP_TOTALS, *LATENCY_COLUMNS)


def latency_bucket(ms: float) -> int:
    """The index in ``LATENCY_COLUMNS`` of the bucket counting a latency of ``ms``."""
    return bisect_left(LATENCY_BOUNDS_MS, ms)


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
    request_task: Mapped[int] = mapped_column(default=0, server_default="0")
    variables: Mapped[dict[str, Any]]
    # The running brief (context/): a summary of the first ``brief_upto`` non-system messages, whose hash is
    # ``brief_digest`` (an edited history no longer matches it).
    brief: Mapped[str | None] = mapped_column(Text)
    brief_upto: Mapped[int] = mapped_column(default=0, server_default="0")
    brief_digest: Mapped[str | None] = mapped_column(String(64))


class WriteBatch(Base):
    """The write-behind batches committed lately (``store/writebehind.py``): a batch retried after a commit
    whose outcome was lost finds its id here and is not applied twice. Kept a day."""

    __tablename__ = "write_batches"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)


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


class RequestLog(Base):
    """One row per request, kept for the raw retention period (analytics: ``analytics.py``).

    No foreign keys: anonymous callers and ephemeral conversations are recorded too, and a row must not
    wait for (or vanish with) the conversation it belongs to.
    """

    __tablename__ = "request_log"
    __table_args__ = (
        Index("ix_request_log_at", "at"),
        Index("ix_request_log_user_id_at", "user_id", "at"),
        Index("ix_request_log_conversation_id_at", "conversation_id", "at"),
    )

    # BIGINT on PostgreSQL (thousands of rows a second outrun 2^31 ids in days); SQLite's rowid is 64-bit.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime]
    user_id: Mapped[str] = mapped_column(String(255))
    conversation_id: Mapped[str | None] = mapped_column(String(64))
    message_id: Mapped[str | None] = mapped_column(String(255))
    model: Mapped[str] = mapped_column(String(255))
    upstream: Mapped[str | None] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[int]
    error_code: Mapped[str | None] = mapped_column(String(64))
    tokens_in: Mapped[int]
    tokens_out: Mapped[int]
    cached: Mapped[bool]
    stream: Mapped[bool]
    latency_ms: Mapped[int]
    ttft_ms: Mapped[int | None]
    tool_steps: Mapped[int] = mapped_column(server_default="0")  # the tool loop's model answers (0: no loop)
    tool_calls: Mapped[int] = mapped_column(server_default="0")  # server tool calls it ran
    # the tokens were counted by the gateway with the model's tokenizer (the upstream reported none)
    usage_counted: Mapped[bool] = mapped_column(server_default=false())


# Hourly rollups per (UTC hour, user, model, kind), upserted with ``col = col + excluded.col`` in the batch
# that writes the raw rows. A plain table (its histogram columns are generated from LATENCY_BOUNDS_MS).
USAGE_HOURLY = Table(
    "usage_hourly",
    Base.metadata,
    Column("hour", UTCDateTime(), nullable=False),
    Column("user_id", String(255), nullable=False),
    Column("model", String(255), nullable=False),
    Column("kind", String(16), nullable=False),
    *(Column(name, Integer(), nullable=False, server_default="0") for name in ROLLUP_COUNTS),
    *(Column(name, BigInteger(), nullable=False, server_default="0") for name in ROLLUP_TOTALS),
    *(Column(name, Integer(), nullable=False, server_default="0") for name in LATENCY_COLUMNS),
    PrimaryKeyConstraint("hour", "user_id", "model", "kind", name="pk_usage_hourly"),
    Index("ix_usage_hourly_user_id_hour", "user_id", "hour"),
)


def _table(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


USERS = _table(User)
API_KEYS = _table(ApiKey)
CONVERSATIONS = _table(Conversation)
MESSAGES = _table(Message)
REQUEST_LOG = _table(RequestLog)
WRITE_BATCHES = _table(WriteBatch)


# RAG (rag/): collections of documents, their chunks, and ingestion jobs. Migration 0004 also creates the
# lexical index over ``rag_chunks.text``: an FTS5 table ``rag_chunks_fts`` kept in step by triggers on
# SQLite, a generated ``tsv`` column with a GIN index on PostgreSQL (neither is described here: searches
# reach them with SQL text, ``rag/lexical.py``).
RAG_VISIBILITIES = ("private", "shared", "admin")
# A document is searchable only while ``ready``; ``processing`` rows are being indexed, ``deleting`` rows
# wait for their vectors to be removed, ``failed`` rows keep why a file was not indexed.
DOCUMENT_STATUSES = ("queued", "processing", "ready", "failed", "deleting")
JOB_STATUSES = ("queued", "processing", "done", "failed")


class RagCollection(Base):
    __tablename__ = "rag_collections"
    __table_args__ = (UniqueConstraint("owner_id", "name", name="uq_rag_collections_owner_id_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    owner_id: Mapped[str] = mapped_column(String(255))
    visibility: Mapped[str] = mapped_column(String(16))
    embedding_model: Mapped[str] = mapped_column(String(255))
    embedding_dim: Mapped[int]
    # The dense index's collection name (``cg_<id>_<generation>``): a reindex builds the next one beside it.
    dense_name: Mapped[str] = mapped_column(String(63))
    generation: Mapped[int] = mapped_column(default=1, server_default="1")
    created_at: Mapped[datetime]
    description: Mapped[str | None] = mapped_column(Text)  # migration 0005


class RagDocument(Base):
    """One version of one source file: a changed file gets a new row, swapped in when fully indexed."""

    __tablename__ = "rag_documents"
    __table_args__ = (
        Index("ix_rag_documents_collection_id_source", "collection_id", "source"),
        Index("ix_rag_documents_status", "status"),
        # At most one searchable version per source (partial unique index on both backends).
        Index(
            "uq_rag_documents_ready_source",
            "collection_id",
            "source",
            unique=True,
            sqlite_where=text("status = 'ready'"),
            postgresql_where=text("status = 'ready'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    collection_id: Mapped[str] = mapped_column(ForeignKey("rag_collections.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(1024))
    title: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    chunk_count: Mapped[int] = mapped_column(default=0, server_default="0")
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    tags: Mapped[list[str]]
    # Who is indexing a ``processing`` row (``host:pid:token``) and its last sign of life.
    claimed_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class RagChunk(Base):
    __tablename__ = "rag_chunks"
    __table_args__ = (Index("ix_rag_chunks_document_id_ordinal", "document_id", "ordinal"),)

    # Integer: the FTS5 table's rowid on SQLite; the dense index keys vectors by its decimal string.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    document_id: Mapped[str] = mapped_column(ForeignKey("rag_documents.id", ondelete="CASCADE"))
    ordinal: Mapped[int]
    text: Mapped[str] = mapped_column(Text)
    title: Mapped[str] = mapped_column(String(512))
    headings: Mapped[list[str]]
    page: Mapped[int | None]
    tokens: Mapped[int]
    content_hash: Mapped[str] = mapped_column(String(64))


class RagJob(Base):
    """A background ingestion (uploads): files kept in ``rag_uploads``, indexed by the job runner."""

    __tablename__ = "rag_jobs"
    __table_args__ = (
        Index("ix_rag_jobs_status_created_at", "status", "created_at"),
        Index("ix_rag_jobs_collection_id", "collection_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    collection_id: Mapped[str] = mapped_column(ForeignKey("rag_collections.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    files: Mapped[list[str]]
    total: Mapped[int] = mapped_column(default=0, server_default="0")
    added: Mapped[int] = mapped_column(default=0, server_default="0")
    unchanged: Mapped[int] = mapped_column(default=0, server_default="0")
    updated: Mapped[int] = mapped_column(default=0, server_default="0")
    failed: Mapped[int] = mapped_column(default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    failures: Mapped[dict[str, Any]]
    """Source -> why it was not indexed."""
    claimed_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    # Migration 0006: starts that did not end cleanly, and until when the runner's claim holds (its heartbeat
    # renews it; past it another instance takes the job over).
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    lease_until: Mapped[datetime | None]


class RagUpload(Base):
    """An uploaded file, kept until its job is done (any instance can run the job)."""

    __tablename__ = "rag_uploads"

    job_id: Mapped[str] = mapped_column(ForeignKey("rag_jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class RagDenseDeletion(Base):
    """Vectors to remove, queued by a process that cannot write the dense index, for its writer: a dense
    collection (``document_id`` None) or one document's vectors in it."""

    __tablename__ = "rag_dense_deletions"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    dense_name: Mapped[str] = mapped_column(String(63))
    document_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime]


class Assistant(Base):
    """An assistant defined through the admin API (those in the config file are not stored)."""

    __tablename__ = "assistants"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    model: Mapped[str] = mapped_column(String(255))
    system_prompt: Mapped[str | None] = mapped_column(Text)
    collections: Mapped[list[str]]
    retrieval: Mapped[str] = mapped_column(String(32))
    top_k: Mapped[int | None]
    mode: Mapped[str | None] = mapped_column(String(16))
    research: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    description: Mapped[str | None] = mapped_column(Text)
    tools: Mapped[list[str] | None]  # server tools besides search_documents (0010)
    max_steps: Mapped[int | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ChatKitThread(Base):
    """A ChatKit thread (migration 0011): keyed by its user, ``data`` the ChatKit ``ThreadMetadata`` as JSON."""

    __tablename__ = "chatkit_threads"
    __table_args__ = (
        PrimaryKeyConstraint("user_id", "id", name="pk_chatkit_threads"),
        Index("ix_chatkit_threads_user_seq", "user_id", "seq", "id"),
    )

    user_id: Mapped[str] = mapped_column(String(255))
    id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)  # first stored (ns): cursors page on (seq, id)
    created_at: Mapped[datetime]
    data: Mapped[str] = mapped_column(Text)


class ChatKitItem(Base):
    """A thread's item: its key holds the user, and its foreign key (user_id, thread_id) the thread's, so an
    item can only land in its own user's thread."""

    __tablename__ = "chatkit_items"
    __table_args__ = (
        PrimaryKeyConstraint("user_id", "thread_id", "id", name="pk_chatkit_items"),
        ForeignKeyConstraint(
            ["user_id", "thread_id"],
            ["chatkit_threads.user_id", "chatkit_threads.id"],
            name="fk_chatkit_items_user_id_chatkit_threads",
            ondelete="CASCADE",
        ),
        Index("ix_chatkit_items_thread_seq", "user_id", "thread_id", "seq", "id"),
    )

    user_id: Mapped[str] = mapped_column(String(255))
    thread_id: Mapped[str] = mapped_column(String(64))
    id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime]
    cut_off: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # a stream stopped early
    feedback: Mapped[str | None] = mapped_column(String(16))  # items.feedback: positive | negative
    data: Mapped[str] = mapped_column(Text)


class ChatKitAttachment(Base):
    """An attachment's record (its bytes are a file under ``chatkit.attachments.directory``)."""

    __tablename__ = "chatkit_attachments"
    __table_args__ = (
        PrimaryKeyConstraint("user_id", "id", name="pk_chatkit_attachments"),
        ForeignKeyConstraint(
            ["user_id", "thread_id"],
            ["chatkit_threads.user_id", "chatkit_threads.id"],
            name="fk_chatkit_attachments_user_id_chatkit_threads",
            ondelete="CASCADE",
        ),
    )

    user_id: Mapped[str] = mapped_column(String(255))
    id: Mapped[str] = mapped_column(String(64))
    thread_id: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8))  # image | file
    mime_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    uploaded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    collection_id: Mapped[str | None] = mapped_column(String(32))  # a document's, once ingested
    token_digest: Mapped[str | None] = mapped_column(String(64))  # SHA-256 of its upload and read URL's token
    created_at: Mapped[datetime]
    data: Mapped[str] = mapped_column(Text)


RAG_COLLECTIONS = _table(RagCollection)
RAG_DOCUMENTS = _table(RagDocument)
RAG_CHUNKS = _table(RagChunk)
RAG_JOBS = _table(RagJob)
RAG_UPLOADS = _table(RagUpload)
RAG_DENSE_DELETIONS = _table(RagDenseDeletion)
ASSISTANTS = _table(Assistant)
CHATKIT_THREADS = _table(ChatKitThread)
CHATKIT_ITEMS = _table(ChatKitItem)
CHATKIT_ATTACHMENTS = _table(ChatKitAttachment)
