"""rag: uploaded files kept in the database until their job is done, job leases and attempts, and the
dense-index deletions a process that cannot write the index leaves for the one that can

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22

- ``rag_uploads``: an upload's files (bytes), written in the upload's transaction with the job row,
  deleted when the job ends; any instance can then run the job.
- ``rag_jobs.lease_until`` (renewed by the runner's heartbeat: past it, another instance takes the job
  over) and ``rag_jobs.attempts`` (starts that did not end cleanly are bounded).
- ``rag_dense_deletions``: vectors to remove (a whole dense collection, or one document's), queued where
  the dense index is read-only and drained by its writer.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("rag_jobs", sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("rag_jobs", sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "rag_uploads",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "name", name="pk_rag_uploads"),
        sa.ForeignKeyConstraint(["job_id"], ["rag_jobs.id"], name="fk_rag_uploads_job_id_rag_jobs", ondelete="CASCADE"),
    )
    op.create_table(
        "rag_dense_deletions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("dense_name", sa.String(63), nullable=False),
        sa.Column("document_id", sa.String(32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rag_dense_deletions"),
    )


def downgrade() -> None:
    op.drop_table("rag_dense_deletions")
    op.drop_table("rag_uploads")
    with op.batch_alter_table("rag_jobs") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("attempts")
