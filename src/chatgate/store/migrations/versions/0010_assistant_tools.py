"""the tool loop: the server tools an assistant offers besides search_documents and its steps; the steps and
server tool calls of each request in request_log

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("assistants") as batch:
        batch.add_column(sa.Column("tools", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("max_steps", sa.Integer(), nullable=True))
    with op.batch_alter_table("request_log") as batch:
        batch.add_column(sa.Column("tool_steps", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("tool_calls", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("request_log") as batch:
        batch.drop_column("tool_calls")
        batch.drop_column("tool_steps")
    with op.batch_alter_table("assistants") as batch:
        batch.drop_column("max_steps")
        batch.drop_column("tools")
