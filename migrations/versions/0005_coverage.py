"""Listening periods: where each row came from, when the daemon was listening to each pair, and
`balance_as_of`, the balance at a time with whether it is certain.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A column with a constant default is only recorded in the catalog (Postgres 11 and later):
    # no row of the history is rewritten.
    op.add_column(
        "balance_history",
        sa.Column("source", sa.Text(), nullable=False, server_default="stream"),
    )
    op.add_column("balance_history", sa.Column("slot", sa.BigInteger(), nullable=True))
    # NOT VALID, then VALIDATE: the check scans the table under a lock that lets rows in.
    op.execute(
        "ALTER TABLE balance_history ADD CONSTRAINT balance_history_source_known "
        "CHECK (source IN ('stream', 'snapshot', 'check')) NOT VALID"
    )
    op.execute("ALTER TABLE balance_history VALIDATE CONSTRAINT balance_history_source_known")

    # One row per daemon process: it confirms every few seconds that it is still listening.
    # Its periods' certainty ends at its last confirmation, however it died.
    op.create_table(
        "coverage_holders",
        sa.Column("holder", sa.Text(), primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "coverage",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("wallet", sa.Text(), nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_reason", sa.Text(), nullable=True),
        sa.Column(
            "holder",
            sa.Text(),
            sa.ForeignKey("coverage_holders.holder", name="coverage_holder_fkey"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "ended_at IS NULL OR ended_at >= started_at", name="coverage_ends_after_it_starts"
        ),
    )
    op.create_index("coverage_pair_started_at_idx", "coverage", ["wallet", "token", "started_at"])
    op.create_index(
        "coverage_open_idx", "coverage", ["holder"], postgresql_where=sa.text("ended_at IS NULL")
    )
    # The newest row at or before `at`, and whether one listening period covers the whole
    # stretch from that row to `at`: an open period counts up to its holder's last confirmation.
    op.execute(
        """
        CREATE FUNCTION balance_as_of(wallet text, token text, at timestamptz)
        RETURNS TABLE (amount numeric, received_at timestamptz, source text, certain boolean)
        LANGUAGE sql STABLE STRICT AS $$
            SELECT h.amount, h.received_at, h.source, EXISTS (
                SELECT 1 FROM coverage c JOIN coverage_holders k USING (holder)
                WHERE c.wallet = balance_as_of.wallet AND c.token = balance_as_of.token
                  AND c.started_at <= h.received_at
                  AND coalesce(c.ended_at, k.confirmed_at) >= balance_as_of.at
            )
            FROM (
                SELECT b.amount, b.received_at, b.source FROM balance_history b
                WHERE b.wallet = balance_as_of.wallet AND b.token = balance_as_of.token
                  AND b.received_at <= balance_as_of.at
                ORDER BY b.received_at DESC, b.id DESC
                LIMIT 1
            ) h
        $$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION balance_as_of(text, text, timestamptz)")
    op.drop_table("coverage")
    op.drop_table("coverage_holders")
    op.drop_constraint("balance_history_source_known", "balance_history")
    op.drop_column("balance_history", "slot")
    op.drop_column("balance_history", "source")
