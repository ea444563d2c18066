"""analytics: raw request rows and hourly rollups

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The latency histogram's bucket bounds (ms) as of this revision (models.LATENCY_BOUNDS_MS): copied, not
# imported, so that this migration keeps creating what it created when the models change.
_BOUNDS = (
    *(1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700),
    *(1_000, 1_500, 2_000, 3_000, 5_000, 7_000, 10_000, 15_000, 20_000, 30_000, 50_000, 70_000),
    *(100_000, 150_000, 200_000, 300_000),
)


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _count(name: str, type_: sa.types.TypeEngine[int] | None = None) -> sa.Column[object]:
    return sa.Column(name, type_ if type_ is not None else sa.Integer(), nullable=False, server_default="0")


def upgrade() -> None:
    op.create_table(
        "request_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        _ts("at"),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("conversation_id", sa.String(64), nullable=True),
        sa.Column("message_id", sa.String(255), nullable=True),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("upstream", sa.String(255), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("tokens_in", sa.Integer(), nullable=False),
        sa.Column("tokens_out", sa.Integer(), nullable=False),
        sa.Column("cached", sa.Boolean(), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("ttft_ms", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_request_log"),
    )
    op.create_index("ix_request_log_at", "request_log", ["at"])
    op.create_index("ix_request_log_user_id_at", "request_log", ["user_id", "at"])
    op.create_index("ix_request_log_conversation_id_at", "request_log", ["conversation_id", "at"])
    op.create_table(
        "usage_hourly",
        _ts("hour"),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        *(_count(name) for name in ("requests", "errors", "cached", "streams", "ttft_count")),
        *(_count(name, sa.BigInteger()) for name in ("tokens_in", "tokens_out", "latency_ms_sum", "ttft_ms_sum")),
        *(_count(f"lat_le_{bound}") for bound in _BOUNDS),
        _count("lat_inf"),
        sa.PrimaryKeyConstraint("hour", "user_id", "model", "kind", name="pk_usage_hourly"),
    )
    op.create_index("ix_usage_hourly_user_id_hour", "usage_hourly", ["user_id", "hour"])


def downgrade() -> None:
    op.drop_table("usage_hourly")
    op.drop_table("request_log")
