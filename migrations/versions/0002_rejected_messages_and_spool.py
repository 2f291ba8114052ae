"""Rejected frames kept for inspection, and the spool's replay checkpoint.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rejected_messages",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("room", sa.Text, nullable=True),
        sa.Column("frame", sa.Text, nullable=False),
        sa.Column("frame_size", sa.Integer, nullable=False),
    )
    op.create_index("rejected_messages_received_at_idx", "rejected_messages", ["received_at"])
    op.create_table(
        "spool_checkpoint",
        sa.Column("spool_id", sa.Uuid, primary_key=True),
        sa.Column("segment", sa.BigInteger, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )


def downgrade() -> None:
    op.drop_table("spool_checkpoint")
    op.drop_table("rejected_messages")
