"""conversations: the running brief

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ALTER TABLE on both backends (SQLite >= 3.35 drops columns itself). Not Alembic's batch mode:
# on SQLite it copies the table and drops the old one, and that drop cascades to every message.


def upgrade() -> None:
    op.add_column("conversations", sa.Column("brief", sa.Text(), nullable=True))
    op.add_column("conversations", sa.Column("brief_upto", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("conversations", sa.Column("brief_digest", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("conversations", "brief_digest")
    op.drop_column("conversations", "brief_upto")
    op.drop_column("conversations", "brief")
