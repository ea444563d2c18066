"""chatkit: the ChatKit door's threads, their items and attachment records, each keyed by its user

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

Every key starts with ``user_id``: an item's foreign key is (user_id, thread_id), so a write carrying one
user's id can never land in another user's thread, whatever the code above it does. ``seq`` orders threads and
items as they were first stored (cursors page on it); ``data`` is the ChatKit object as JSON.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "chatkit_threads",
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "id", name="pk_chatkit_threads"),
    )
    op.create_index("ix_chatkit_threads_user_seq", "chatkit_threads", ["user_id", "seq", "id"])
    op.create_table(
        "chatkit_items",
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("thread_id", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cut_off", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("feedback", sa.String(16), nullable=True),
        sa.Column("data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "thread_id", "id", name="pk_chatkit_items"),
        sa.ForeignKeyConstraint(
            ["user_id", "thread_id"],
            ["chatkit_threads.user_id", "chatkit_threads.id"],
            name="fk_chatkit_items_user_id_chatkit_threads",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_chatkit_items_thread_seq", "chatkit_items", ["user_id", "thread_id", "seq", "id"])
    op.create_table(
        "chatkit_attachments",
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("thread_id", sa.String(64), nullable=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("mime_type", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("uploaded", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("collection_id", sa.String(32), nullable=True),
        sa.Column("token_digest", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "id", name="pk_chatkit_attachments"),
        sa.ForeignKeyConstraint(
            ["user_id", "thread_id"],
            ["chatkit_threads.user_id", "chatkit_threads.id"],
            name="fk_chatkit_attachments_user_id_chatkit_threads",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("chatkit_attachments")
    op.drop_index("ix_chatkit_items_thread_seq", table_name="chatkit_items")
    op.drop_table("chatkit_items")
    op.drop_index("ix_chatkit_threads_user_seq", table_name="chatkit_threads")
    op.drop_table("chatkit_threads")
