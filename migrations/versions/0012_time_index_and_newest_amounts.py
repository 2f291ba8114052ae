"""A BRIN index on `balance_rows.received_at`, and the balance checks' newest amounts read from
`latest_rows`.

Rows arrive in time order, so within a day's partition a block range holds a narrow stretch of
time: "the rows of the last hour" (`status`, the README's last-hour queries) reads those blocks,
not the whole day, for a few kilobytes of index per partition. The checks compared the chain
with each pair's newest row found by a probe of every day's partition; `latest_rows` holds it
(and keeps a pair's last known amount after the retention dropped its days).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_HEADERS = (
    """
CREATE OR REPLACE FUNCTION newest_amounts(wallets text[], tokens text[])
RETURNS TABLE (wallet text, token text, amount numeric)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT p.wallet, p.token, h.amount
    FROM unnest(wallets, tokens) AS u(wallet, token)
    JOIN pairs p ON p.wallet = u.wallet AND p.token = u.token
""",
    """
CREATE OR REPLACE FUNCTION newest_amounts_of(owner text)
RETURNS TABLE (token text, amount numeric)
LANGUAGE sql STABLE STRICT SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT p.token, h.amount FROM pairs p
""",
)
_FROM_LATEST_ROWS = "    JOIN latest_rows h ON h.pair_id = p.pair_id\n"
_FROM_EACH_DAY = """    CROSS JOIN LATERAL (
        SELECT b.amount FROM balance_rows b WHERE b.pair_id = p.pair_id
        ORDER BY b.received_at DESC, b.id DESC LIMIT 1
    ) h
"""
_TAILS = ("$$", "    WHERE p.wallet = owner\n$$")


def _functions(newest_from: str) -> list[str]:
    return [head + newest_from + tail for head, tail in zip(_HEADERS, _TAILS, strict=True)]


def upgrade() -> None:
    op.execute(
        "CREATE INDEX balance_rows_received_at_brin ON balance_rows USING brin (received_at)"
    )
    for function in _functions(_FROM_LATEST_ROWS):
        op.execute(function)


def downgrade() -> None:
    for function in _functions(_FROM_EACH_DAY):
        op.execute(function)
    op.execute("DROP INDEX balance_rows_received_at_brin")
