"""The watchlist, the balance history and the subscription status, with the watchlist trigger.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BASE58 = "^[1-9A-HJ-NP-Za-km-z]{32,44}$"
TIMESTAMPTZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "watchlist",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("wallet", sa.Text, nullable=False),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("label", sa.Text, nullable=True),
        sa.Column("created_at", TIMESTAMPTZ, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TIMESTAMPTZ, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("wallet", "token", name="watchlist_wallet_token_key"),
        sa.CheckConstraint(f"wallet ~ '{BASE58}'", name="watchlist_wallet_is_base58_address"),
        sa.CheckConstraint(f"token ~ '{BASE58}'", name="watchlist_token_is_base58_address"),
    )
    op.create_table(
        "balance_history",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("wallet", sa.Text, nullable=False),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("amount", sa.Numeric, nullable=False),
        sa.Column("received_at", TIMESTAMPTZ, nullable=False),
    )
    op.create_index(
        "balance_history_pair_received_at_idx",
        "balance_history",
        ["wallet", "token", sa.text("received_at DESC")],
    )
    op.create_table(
        "subscription_status",
        sa.Column("wallet", sa.Text, nullable=False),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("since", TIMESTAMPTZ, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("updated_at", TIMESTAMPTZ, nullable=False),
        sa.PrimaryKeyConstraint("wallet", "token", name="subscription_status_pkey"),
        sa.CheckConstraint(
            "state IN ('joining', 'joined', 'leaving', 'left', 'error', 'invalid')",
            name="subscription_status_state_known",
        ),
    )
    # One notification per statement, not per row: a 10,000-row INSERT is one hint, and the
    # daemon re-reads the table anyway (a NOTIFY is a hint, never the source of truth).
    op.execute(
        """
        CREATE FUNCTION balancewatch_watchlist_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('balancewatch_watchlist', TG_OP);
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER watchlist_changed
        AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON watchlist
        FOR EACH STATEMENT EXECUTE FUNCTION balancewatch_watchlist_changed()
        """
    )
    op.execute(
        """
        CREATE FUNCTION balancewatch_touch_updated_at() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            NEW.updated_at := now();
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER watchlist_touch_updated_at
        BEFORE UPDATE ON watchlist
        FOR EACH ROW EXECUTE FUNCTION balancewatch_touch_updated_at()
        """
    )


def downgrade() -> None:
    op.drop_table("subscription_status")
    op.drop_table("balance_history")
    op.drop_table("watchlist")
    op.execute("DROP FUNCTION balancewatch_touch_updated_at()")
    op.execute("DROP FUNCTION balancewatch_watchlist_changed()")
