"""rag: collections, documents, chunks, ingestion jobs, and the lexical index over chunk text

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21

The lexical index differs by backend:

- SQLite: an FTS5 table ``rag_chunks_fts`` over a chunk's title and text (Porter-stemmed ``unicode61``
  tokens, BM25 ranking) with ``rag_chunks`` as its external content (rowid = chunk id), kept in step by
  three triggers.
- PostgreSQL: a stored generated ``tsv`` column (``to_tsvector('english', title || ' ' || text)``) with a
  GIN index.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SQLITE_FTS = (
    "CREATE VIRTUAL TABLE rag_chunks_fts USING fts5(title, text, content='rag_chunks', content_rowid='id', "
    "tokenize='porter unicode61 remove_diacritics 2')",
    "CREATE TRIGGER rag_chunks_fts_ai AFTER INSERT ON rag_chunks BEGIN "
    "INSERT INTO rag_chunks_fts(rowid, title, text) VALUES (new.id, new.title, new.text); END",
    "CREATE TRIGGER rag_chunks_fts_ad AFTER DELETE ON rag_chunks BEGIN "
    "INSERT INTO rag_chunks_fts(rag_chunks_fts, rowid, title, text) VALUES ('delete', old.id, old.title, old.text); "
    "END",
    "CREATE TRIGGER rag_chunks_fts_au AFTER UPDATE OF title, text ON rag_chunks BEGIN "
    "INSERT INTO rag_chunks_fts(rag_chunks_fts, rowid, title, text) VALUES ('delete', old.id, old.title, old.text); "
    "INSERT INTO rag_chunks_fts(rowid, title, text) VALUES (new.id, new.title, new.text); END",
)
_PG_FTS = (
    "ALTER TABLE rag_chunks ADD COLUMN tsv tsvector "
    "GENERATED ALWAYS AS (to_tsvector('english', title || ' ' || text)) STORED",
    "CREATE INDEX ix_rag_chunks_tsv ON rag_chunks USING GIN (tsv)",
)


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _count(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.Integer(), nullable=False, server_default="0")


def upgrade() -> None:
    op.create_table(
        "rag_collections",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("owner_id", sa.String(255), nullable=False),
        sa.Column("visibility", sa.String(16), nullable=False),
        sa.Column("embedding_model", sa.String(255), nullable=False),
        sa.Column("embedding_dim", sa.Integer(), nullable=False),
        sa.Column("dense_name", sa.String(63), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False, server_default="1"),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_rag_collections"),
        sa.UniqueConstraint("owner_id", "name", name="uq_rag_collections_owner_id_name"),
    )
    op.create_table(
        "rag_documents",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("collection_id", sa.String(32), nullable=False),
        sa.Column("source", sa.String(1024), nullable=False),
        sa.Column("title", sa.String(512), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _count("chunk_count"),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("claimed_by", sa.String(255), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_rag_documents"),
        sa.ForeignKeyConstraint(
            ["collection_id"],
            ["rag_collections.id"],
            name="fk_rag_documents_collection_id_rag_collections",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_rag_documents_collection_id_source", "rag_documents", ["collection_id", "source"])
    op.create_index("ix_rag_documents_status", "rag_documents", ["status"])
    op.create_index(
        "uq_rag_documents_ready_source",
        "rag_documents",
        ["collection_id", "source"],
        unique=True,
        sqlite_where=sa.text("status = 'ready'"),
        postgresql_where=sa.text("status = 'ready'"),
    )
    op.create_table(
        "rag_chunks",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("document_id", sa.String(32), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("title", sa.String(512), nullable=False),
        sa.Column("headings", sa.JSON(), nullable=False),
        sa.Column("page", sa.Integer(), nullable=True),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rag_chunks"),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["rag_documents.id"],
            name="fk_rag_chunks_document_id_rag_documents",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_rag_chunks_document_id_ordinal", "rag_chunks", ["document_id", "ordinal"])
    op.create_table(
        "rag_jobs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("collection_id", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        _count("total"),
        _count("added"),
        _count("unchanged"),
        _count("updated"),
        _count("failed"),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("failures", sa.JSON(), nullable=False),
        sa.Column("claimed_by", sa.String(255), nullable=True),
        _ts("created_at"),
        _ts("started_at", nullable=True),
        _ts("finished_at", nullable=True),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_rag_jobs"),
        sa.ForeignKeyConstraint(
            ["collection_id"],
            ["rag_collections.id"],
            name="fk_rag_jobs_collection_id_rag_collections",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_rag_jobs_status_created_at", "rag_jobs", ["status", "created_at"])
    op.create_index("ix_rag_jobs_collection_id", "rag_jobs", ["collection_id"])
    for statement in _PG_FTS if op.get_context().dialect.name == "postgresql" else _SQLITE_FTS:
        op.execute(statement)


def downgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        for trigger in ("rag_chunks_fts_ai", "rag_chunks_fts_ad", "rag_chunks_fts_au"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS rag_chunks_fts")
    op.drop_table("rag_jobs")
    op.drop_table("rag_chunks")
    op.drop_table("rag_documents")
    op.drop_table("rag_collections")
