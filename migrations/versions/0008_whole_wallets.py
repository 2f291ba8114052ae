"""Whole wallets: a watchlist row with no token watches every token of its wallet, through the
wallet's own room. Its status, its listening periods and its RPC failures have no token either;
`balance_as_of` counts a wallet's period as covering each of its tokens; and
`newest_amounts_of` gives a wallet snapshot the tokens the history says it holds.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Copied, not imported: a migration stays what it was when the code around it changes.
BASE58_PATTERN = "^[1-9A-HJ-NP-Za-km-z]{32,44}$"
_STATES_BEFORE = "'joining', 'joined', 'leaving', 'left', 'error', 'invalid'"

_OWN_PERIOD = "c.token = balance_as_of.token"
_OWN_OR_WALLET_PERIOD = "(c.token = balance_as_of.token OR c.token IS NULL)"
_BALANCE_AS_OF = """
CREATE OR REPLACE FUNCTION balance_as_of(wallet text, token text, at timestamptz)
RETURNS TABLE (amount numeric, received_at timestamptz, source text, certain boolean)
LANGUAGE sql STABLE STRICT AS $$
    SELECT h.amount, h.received_at, h.source, EXISTS (
        SELECT 1 FROM coverage c JOIN coverage_holders k USING (holder)
        WHERE c.wallet = balance_as_of.wallet
          AND {token_matches}
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

# The newest amount of each token the history has for one wallet. Its distinct tokens are found
# by skipping through the (wallet, token, received_at) index, one probe per token, not by
# reading every row of the wallet. SECURITY DEFINER for the same reason as newest_amounts.
_NEWEST_AMOUNTS_OF = """
CREATE FUNCTION newest_amounts_of(owner text)
RETURNS TABLE (token text, amount numeric)
LANGUAGE sql STABLE STRICT SECURITY DEFINER SET search_path = public, pg_temp AS $$
    WITH RECURSIVE tokens(token) AS (
        (SELECT b.token FROM balance_history b WHERE b.wallet = owner
         ORDER BY b.token LIMIT 1)
        UNION ALL
        SELECT (SELECT b.token FROM balance_history b
                WHERE b.wallet = owner AND b.token > t.token ORDER BY b.token LIMIT 1)
        FROM tokens t WHERE t.token IS NOT NULL
    )
    SELECT t.token, h.amount FROM tokens t
    CROSS JOIN LATERAL (
        SELECT b.amount FROM balance_history b
        WHERE b.wallet = owner AND b.token = t.token
        ORDER BY b.received_at DESC, b.id DESC LIMIT 1
    ) h
    WHERE t.token IS NOT NULL
$$
"""


def upgrade() -> None:
    op.execute("ALTER TABLE watchlist ALTER COLUMN token DROP NOT NULL")
    op.execute("ALTER TABLE watchlist DROP CONSTRAINT watchlist_token_is_base58_address")
    op.execute(
        "ALTER TABLE watchlist ADD CONSTRAINT watchlist_token_is_base58_address "
        f"CHECK (token IS NULL OR token ~ '{BASE58_PATTERN}')"
    )
    # One all-tokens row per wallet. UNIQUE (wallet, token) treats NULLs as distinct, and
    # NULLS NOT DISTINCT needs Postgres 15: a partial index works on every supported version.
    op.execute(
        "CREATE UNIQUE INDEX watchlist_wallet_all_tokens_key ON watchlist (wallet) "
        "WHERE token IS NULL"
    )
    # The watchlist trigger needs no change: json_build_array(wallet, NULL) names the wallet
    # row as [wallet, null].

    # A status per watch, the wallet's own under a NULL token: a primary key cannot hold a
    # NULL, a unique index on the expression can (the upsert's ON CONFLICT names it).
    op.execute("ALTER TABLE subscription_status DROP CONSTRAINT subscription_status_pkey")
    op.execute("ALTER TABLE subscription_status ALTER COLUMN token DROP NOT NULL")
    op.execute(
        "CREATE UNIQUE INDEX subscription_status_watch_key "
        "ON subscription_status (wallet, (coalesce(token, '')))"
    )
    op.execute("ALTER TABLE subscription_status DROP CONSTRAINT subscription_status_state_known")
    op.execute(
        "ALTER TABLE subscription_status ADD CONSTRAINT subscription_status_state_known "
        f"CHECK (state IN ({_STATES_BEFORE}, 'covered'))"
    )

    # A wallet room's period covers every token of the wallet.
    op.execute("ALTER TABLE coverage ALTER COLUMN token DROP NOT NULL")
    op.execute(_BALANCE_AS_OF.format(token_matches=_OWN_OR_WALLET_PERIOD))
    # A failed wallet snapshot is of no one token.
    op.execute("ALTER TABLE rpc_failures ALTER COLUMN token DROP NOT NULL")

    op.execute(_NEWEST_AMOUNTS_OF)
    op.execute("REVOKE EXECUTE ON FUNCTION newest_amounts_of(text) FROM PUBLIC")


def downgrade() -> None:
    op.execute("DROP FUNCTION newest_amounts_of(text)")
    # What has no token cannot go back: the wallet rows, their status and their periods.
    op.execute("DELETE FROM rpc_failures WHERE token IS NULL")
    op.execute("ALTER TABLE rpc_failures ALTER COLUMN token SET NOT NULL")
    op.execute(_BALANCE_AS_OF.format(token_matches=_OWN_PERIOD))
    op.execute("DELETE FROM coverage WHERE token IS NULL")
    op.execute("ALTER TABLE coverage ALTER COLUMN token SET NOT NULL")
    op.execute("DELETE FROM subscription_status WHERE token IS NULL OR state = 'covered'")
    op.execute("ALTER TABLE subscription_status DROP CONSTRAINT subscription_status_state_known")
    op.execute(
        "ALTER TABLE subscription_status ADD CONSTRAINT subscription_status_state_known "
        f"CHECK (state IN ({_STATES_BEFORE}))"
    )
    op.execute("DROP INDEX subscription_status_watch_key")
    op.execute("ALTER TABLE subscription_status ALTER COLUMN token SET NOT NULL")
    op.execute(
        "ALTER TABLE subscription_status ADD CONSTRAINT subscription_status_pkey "
        "PRIMARY KEY (wallet, token)"
    )
    op.execute("DROP INDEX watchlist_wallet_all_tokens_key")
    op.execute("DELETE FROM watchlist WHERE token IS NULL")
    op.execute("ALTER TABLE watchlist DROP CONSTRAINT watchlist_token_is_base58_address")
    op.execute(
        "ALTER TABLE watchlist ADD CONSTRAINT watchlist_token_is_base58_address "
        f"CHECK (token ~ '{BASE58_PATTERN}')"
    )
    op.execute("ALTER TABLE watchlist ALTER COLUMN token SET NOT NULL")
