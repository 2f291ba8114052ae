"""The watchlist's NOTIFY names the pairs a statement touched, when they are few.

The daemon then re-reads just those pairs instead of the whole watchlist: at 100,000 watched
pairs a full re-read held the event loop for about 0.3 s per change. The payload stays a hint:
the daemon reads the pairs' current rows, so a notification folded into another one or
delivered late changes nothing. A statement of more than 32 rows (or of pairs too long for a
payload) sends an empty payload, TRUNCATE sends 'TRUNCATE': both mean "re-read all". A
statement that changed no row sends nothing.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TOUCHED = """
CREATE FUNCTION balancewatch_watchlist_touched() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    rows_touched int;
    touched text := '';
BEGIN
    -- Counted with a LIMIT first, so a 100,000-row statement is never turned into JSON.
    SELECT count(*) INTO rows_touched FROM (SELECT 1 FROM changed_rows LIMIT 33) AS c;
    IF rows_touched = 0 THEN
        RETURN NULL;  -- an upsert's INSERT that only conflicted, an UPDATE of no row
    END IF;
    IF rows_touched <= 32 AND TG_OP = 'UPDATE' THEN  -- a key may have changed: old and new
        SELECT json_agg(json_build_array(wallet, token))::text INTO touched
        FROM (SELECT wallet, token FROM old_rows
              UNION SELECT wallet, token FROM changed_rows) AS t;
    ELSIF rows_touched <= 32 THEN
        SELECT json_agg(json_build_array(wallet, token))::text INTO touched FROM changed_rows;
    END IF;
    IF length(touched) > 7000 THEN
        touched := '';  -- addresses longer than any real one: the payload would not fit
    END IF;
    PERFORM pg_notify('balancewatch_watchlist', touched);  -- '': re-read everything
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.execute("DROP TRIGGER watchlist_changed ON watchlist")
    op.execute(_TOUCHED)
    # A trigger with transition tables has one event each (a Postgres rule).
    for name, event, tables in (
        ("watchlist_inserted", "INSERT", "NEW TABLE AS changed_rows"),
        ("watchlist_updated", "UPDATE", "OLD TABLE AS old_rows NEW TABLE AS changed_rows"),
        ("watchlist_deleted", "DELETE", "OLD TABLE AS changed_rows"),
    ):
        op.execute(
            f"CREATE TRIGGER {name} AFTER {event} ON watchlist REFERENCING {tables} "
            "FOR EACH STATEMENT EXECUTE FUNCTION balancewatch_watchlist_touched()"
        )
    op.execute(
        "CREATE TRIGGER watchlist_truncated AFTER TRUNCATE ON watchlist "
        "FOR EACH STATEMENT EXECUTE FUNCTION balancewatch_watchlist_changed()"
    )


def downgrade() -> None:
    for name in ("watchlist_inserted", "watchlist_updated", "watchlist_deleted"):
        op.execute(f"DROP TRIGGER {name} ON watchlist")
    op.execute("DROP TRIGGER watchlist_truncated ON watchlist")
    op.execute("DROP FUNCTION balancewatch_watchlist_touched()")
    op.execute(
        "CREATE TRIGGER watchlist_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE "
        "ON watchlist FOR EACH STATEMENT EXECUTE FUNCTION balancewatch_watchlist_changed()"
    )
