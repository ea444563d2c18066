"""write-behind batch ids, so that a batch retried after a lost commit is applied once

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "write_batches",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_write_batches")),
    )
    op.create_index(op.f("ix_write_batches_at"), "write_batches", ["at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_write_batches_at"), table_name="write_batches")
    op.drop_table("write_batches")
