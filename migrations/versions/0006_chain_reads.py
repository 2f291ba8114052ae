"""Balances read from the chain: how many snapshots and checks each hour gave which result, the
RPC answers that were refused, and each process's snapshot queue.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
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
    # Counts per hour, not a row per read: 100,000 pairs checked hourly would be 2.4 million
    # rows a day. Drift also leaves its `check` row in balance_history.
    op.create_table(
        "chain_reads",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("reads", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("hour", "kind", "result", name="chain_reads_pkey"),
        sa.CheckConstraint("kind IN ('snapshot', 'check')", name="chain_reads_kind_known"),
    )
    # Every RPC answer that was not taken as a balance, so a bad provider can be seen with SQL.
    op.create_table(
        "rpc_failures",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("wallet", sa.Text(), nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=True),  # an excerpt, secrets scrubbed
    )
    op.create_index("rpc_failures_received_at_idx", "rpc_failures", ["received_at"])
    # What a check compares the chain with: the newest amount of each pair asked. SECURITY
    # DEFINER, so the daemon's role can be given this and not the whole history (its search
    # path fixed, as such a function must have).
    op.execute(
        """
        CREATE FUNCTION newest_amounts(wallets text[], tokens text[])
        RETURNS TABLE (wallet text, token text, amount numeric)
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
            SELECT p.wallet, p.token, h.amount
            FROM unnest(wallets, tokens) AS p(wallet, token)
            CROSS JOIN LATERAL (
                SELECT b.amount FROM balance_history b
                WHERE b.wallet = p.wallet AND b.token = p.token
                ORDER BY b.received_at DESC, b.id DESC LIMIT 1
            ) h
        $$
        """
    )
    op.execute("REVOKE EXECUTE ON FUNCTION newest_amounts(text[], text[]) FROM PUBLIC")
    # A constant default: recorded in the catalog only, no rewrite.
    op.add_column(
        "coverage_holders",
        sa.Column("snapshot_queue", sa.Integer(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION newest_amounts(text[], text[])")
    op.drop_column("coverage_holders", "snapshot_queue")
    op.drop_table("rpc_failures")
    op.drop_table("chain_reads")
