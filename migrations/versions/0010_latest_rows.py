"""Each pair's newest row in `latest_rows`, kept by triggers on `balance_rows`, so that
`latest_balance` reads one row per pair instead of the whole history.

Every write reaches balance_rows (the daemon's COPY, chain rows, the spool replay, an INSERT
into the balance_history view), and its statement triggers see the statement's rows: the
newest of each pair is upserted once per statement, never a late row over a newer one. A
DELETE or UPDATE of balance_rows finds its pairs' newest rows again; a TRUNCATE empties it.

The fill takes one index probe per pair and partition, after the trigger is in place (which
holds writes to balance_rows until this migration commits), so no row is missed.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from balancewatch.logs import get_logger

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = get_logger(__name__)

_COLUMNS = "pair_id, received_at, id, amount, source, slot, epoch"

# Rewritten in place on almost every batch: room on each page for the new versions (HOT
# updates, the primary key untouched).
_LATEST_ROWS = """
CREATE TABLE latest_rows (
    pair_id integer PRIMARY KEY,
    received_at timestamptz NOT NULL,
    id bigint NOT NULL,
    amount numeric NOT NULL,
    source "char" NOT NULL,
    slot bigint,
    epoch bigint
) WITH (fillfactor = 50)
"""

# Rows in pair_id order, so that two writers lock the same pairs in the same order and one
# waits for the other instead of deadlocking. A row older than the one kept is not taken
# (a late spool replay, a user's insert into the past).
_UPSERT = f"""
    INSERT INTO latest_rows AS l ({_COLUMNS})
    {{rows}}
    ON CONFLICT (pair_id) DO UPDATE SET
        received_at = excluded.received_at, id = excluded.id, amount = excluded.amount,
        source = excluded.source, slot = excluded.slot, epoch = excluded.epoch
    WHERE (excluded.received_at, excluded.id) > (l.received_at, l.id)
"""
# The newest row of each of `{pairs}` (a relation with a pair_id): per pair, an ordered
# index scan of each partition that stops at its first row.
_NEWEST_OF = """
    SELECT {pairs}.pair_id, b.received_at, b.id, b.amount, b.source, b.slot, b.epoch
    FROM {source} CROSS JOIN LATERAL (
        SELECT * FROM balance_rows b WHERE b.pair_id = {pairs}.pair_id
        ORDER BY b.received_at DESC, b.id DESC LIMIT 1
    ) b
    ORDER BY {pairs}.pair_id
"""

_TAKE = f"""
CREATE FUNCTION latest_rows_take() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    {
    _UPSERT.format(
        rows=f"SELECT DISTINCT ON (pair_id) {_COLUMNS} FROM new_rows "
        "ORDER BY pair_id, received_at DESC, id DESC"
    )
};
    RETURN NULL;
END
$$
"""  # noqa: S608 (our constants only)

# The pairs whose rows were deleted or changed (either side of an UPDATE) get their newest row
# found again; a pair with none left has no row.
_FIND_AGAIN = f"""
CREATE FUNCTION latest_rows_find_again() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    changed integer[];
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM latest_rows;
        RETURN NULL;
    END IF;
    changed := ARRAY(SELECT DISTINCT pair_id FROM old_rows);
    IF TG_OP = 'UPDATE' THEN
        changed := changed || ARRAY(SELECT DISTINCT pair_id FROM new_rows);
    END IF;
    DELETE FROM latest_rows WHERE pair_id = ANY(changed);
    {
    _UPSERT.format(
        rows=_NEWEST_OF.format(pairs="c", source="(SELECT DISTINCT unnest(changed) AS pair_id) c")
    )
};
    RETURN NULL;
END
$$
"""  # noqa: S608 (our constants only)

# After balance_rows_fence (triggers of one event fire in name order): a refused statement
# never gets here.
_TRIGGERS = (
    "CREATE TRIGGER balance_rows_latest AFTER INSERT ON balance_rows "
    "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION latest_rows_take()",
    "CREATE TRIGGER balance_rows_latest_delete AFTER DELETE ON balance_rows "
    "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION latest_rows_find_again()",
    "CREATE TRIGGER balance_rows_latest_update AFTER UPDATE ON balance_rows "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION latest_rows_find_again()",
    "CREATE TRIGGER balance_rows_latest_truncate AFTER TRUNCATE ON balance_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION latest_rows_find_again()",
)

_LATEST_BALANCE_BEFORE = """
CREATE VIEW latest_balance AS
SELECT DISTINCT ON (wallet, token) wallet, token, amount, received_at
FROM balance_history
ORDER BY wallet, token, received_at DESC, id DESC
"""
_LATEST_BALANCE_AFTER = """
CREATE VIEW latest_balance AS
SELECT p.wallet, p.token, l.amount, l.received_at
FROM latest_rows l JOIN pairs p USING (pair_id)
"""


def upgrade() -> None:
    op.execute(_LATEST_ROWS)
    op.execute(_TAKE)
    op.execute(_FIND_AGAIN)
    for trigger in _TRIGGERS:
        op.execute(trigger)
    # Committed first: from then on every write keeps latest_rows current itself, and the fill
    # (whose upsert never replaces a newer row) needs no lock on the history. Its chunks are
    # short transactions: a writer whose pair the fill just upserted waits for one chunk, not
    # for the whole fill (a probe of every partition for every pair: seconds on a long history).
    with op.get_context().autocommit_block():
        _fill()
    op.execute("DROP VIEW latest_balance")
    op.execute(_LATEST_BALANCE_AFTER)


_FILL_CHUNK = 500  # pairs a transaction


def _fill() -> None:
    started = time.monotonic()
    bind = op.get_bind()
    last = bind.execute(sa.text("SELECT coalesce(max(pair_id), 0) FROM pairs")).scalar_one()
    chunk = sa.text(
        _UPSERT.format(
            rows=_NEWEST_OF.format(
                pairs="p",
                source="(SELECT pair_id FROM pairs WHERE pair_id > :after AND pair_id <= :upto) p",
            )
        )
    )
    filled = sum(
        bind.execute(chunk, {"after": after, "upto": after + _FILL_CHUNK}).rowcount
        for after in range(0, last, _FILL_CHUNK)
    )
    log.info(
        "migrate.latest_rows_filled", pairs=filled, seconds=round(time.monotonic() - started, 1)
    )


def downgrade() -> None:
    op.execute("DROP VIEW latest_balance")
    op.execute(_LATEST_BALANCE_BEFORE)
    for trigger in _TRIGGERS:
        op.execute(f"DROP TRIGGER {trigger.split()[2]} ON balance_rows")
    op.execute("DROP FUNCTION latest_rows_find_again()")
    op.execute("DROP FUNCTION latest_rows_take()")
    op.execute("DROP TABLE latest_rows")
