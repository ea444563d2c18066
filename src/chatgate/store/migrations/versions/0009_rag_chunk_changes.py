"""rag: a change log of the chunk table (PostgreSQL), which keeps every instance's BM25 postings in step

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-22

PostgreSQL only (SQLite's postings follow ``PRAGMA data_version``): ``rag_chunk_changes`` gets one row per
chunk inserted, deleted or rewritten (a delete and an insert), with the writing transaction's id, from
statement-level triggers on ``rag_chunks``; ``rag_chunk_changes_pruned`` records below which transaction
id the log has been pruned. How readers use them: ``rag/postings_pg.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LOG = """
CREATE FUNCTION rag_chunks_log_{name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    {body}
    RETURN NULL;
END $$
"""
_GONE = "INSERT INTO rag_chunk_changes (chunk_id, gone) SELECT id, true FROM old_rows ORDER BY id;"
_ADDED = "INSERT INTO rag_chunk_changes (chunk_id, gone) SELECT id, false FROM new_rows ORDER BY id;"
_UP = (
    "CREATE TABLE rag_chunk_changes (seq bigserial PRIMARY KEY, "
    "xid xid8 NOT NULL DEFAULT pg_current_xact_id(), chunk_id bigint NOT NULL, gone boolean NOT NULL)",
    "CREATE INDEX ix_rag_chunk_changes_xid ON rag_chunk_changes (xid)",
    "CREATE TABLE rag_chunk_changes_pruned (below xid8 NOT NULL)",
    "INSERT INTO rag_chunk_changes_pruned (below) VALUES ('0')",
    _LOG.format(name="insert", body=_ADDED),
    _LOG.format(name="delete", body=_GONE),
    _LOG.format(name="update", body=_GONE + "\n    " + _ADDED),
    "CREATE TRIGGER rag_chunks_log_insert AFTER INSERT ON rag_chunks REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION rag_chunks_log_insert()",
    "CREATE TRIGGER rag_chunks_log_delete AFTER DELETE ON rag_chunks REFERENCING OLD TABLE AS old_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION rag_chunks_log_delete()",
    "CREATE TRIGGER rag_chunks_log_update AFTER UPDATE ON rag_chunks "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION rag_chunks_log_update()",
)


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for statement in _UP:
        op.execute(statement)


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for name in ("insert", "delete", "update"):
        op.execute(f"DROP TRIGGER IF EXISTS rag_chunks_log_{name} ON rag_chunks")
        op.execute(f"DROP FUNCTION IF EXISTS rag_chunks_log_{name}()")
    op.execute("DROP TABLE IF EXISTS rag_chunk_changes_pruned")
    op.execute("DROP TABLE IF EXISTS rag_chunk_changes")
