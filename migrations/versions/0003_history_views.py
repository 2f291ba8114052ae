"""Views over the history: the latest balance of each pair, each change with its delta, and
`balance_at`, the balance of a pair at a time.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # One row per pair: its newest amount and when. `id` breaks a tie of two rows in one
    # microsecond the way they arrived.
    op.execute(
        """
        CREATE VIEW latest_balance AS
        SELECT DISTINCT ON (wallet, token) wallet, token, amount, received_at
        FROM balance_history
        ORDER BY wallet, token, received_at DESC, id DESC
        """
    )
    # Each row with the amount before it and the difference; NULL for a pair's first row. A
    # filter on (wallet, token) is pushed below the window (it is the partition key); a filter
    # on received_at is not, so the deltas at the edge of a time window stay right.
    op.execute(
        """
        CREATE VIEW balance_change AS
        SELECT id, wallet, token, received_at, amount,
               lag(amount) OVER pair_in_order AS previous_amount,
               amount - lag(amount) OVER pair_in_order AS delta
        FROM balance_history
        WINDOW pair_in_order AS (PARTITION BY wallet, token ORDER BY received_at, id)
        """
    )
    # The as-of lookup: the newest amount received at or before `at`, NULL if none. One index
    # probe on balance_history_pair_received_at_idx.
    op.execute(
        """
        CREATE FUNCTION balance_at(wallet text, token text, at timestamptz) RETURNS numeric
        LANGUAGE sql STABLE STRICT AS $$
            SELECT h.amount FROM balance_history h
            WHERE h.wallet = balance_at.wallet AND h.token = balance_at.token
              AND h.received_at <= balance_at.at
            ORDER BY h.received_at DESC, h.id DESC
            LIMIT 1
        $$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION balance_at(text, text, timestamptz)")
    op.execute("DROP VIEW balance_change")
    op.execute("DROP VIEW latest_balance")
