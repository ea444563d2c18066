"""conversations: the count of front-end background task requests (kind ``task``)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ALTER TABLE on both backends, as in 0002 (not batch mode: on SQLite it would copy the table and the
# drop of the old one would cascade to every message).


def upgrade() -> None:
    op.add_column("conversations", sa.Column("request_task", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("conversations", "request_task")
