"""assistants defined through the admin API; a collection's description

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "assistants",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("system_prompt", sa.Text(), nullable=True),
        sa.Column("collections", sa.JSON(), nullable=False),
        sa.Column("retrieval", sa.String(32), nullable=False),
        sa.Column("top_k", sa.Integer(), nullable=True),
        sa.Column("mode", sa.String(16), nullable=True),
        sa.Column("research", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("description", sa.Text(), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("name", name="pk_assistants"),
    )
    op.add_column("rag_collections", sa.Column("description", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rag_collections") as batch:
        batch.drop_column("description")
    op.drop_table("assistants")
