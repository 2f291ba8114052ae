"""`pair_rows_at` plans its lookups once a session, not once a call: static queries under
`plan_cache_mode = force_generic_plan`, pruned to the bounds' partitions when they run.

0017 put the bounds into each lookup as constants (`EXECUTE format(...)`) so that Postgres
would plan only the partitions between them; it plans them on every call, which was most of
a lookup's time (0.5 ms of 0.55 for a pair's 50 newest rows on the bench's history). A
generic plan of the same query, with the bounds as parameters, is planned once a session (a
few milliseconds, over every partition) and pruned at each run to the partitions of its
bounds ("Subplans Removed", at the executor's start): 0.16 ms. A partition made or dropped
invalidates the plan, and the next call plans again. The answers are 0017's, and the rows
before a pair's first rolled-up day are still read from the default partition alone by a role
that may (0020).

Revision ID: 0022
Revises: 0021
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from balancewatch.store.migration_sql import earlier_migration

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


_BEFORE = earlier_migration(__file__, "0020_pair_rows_at_reads_default_with_right.py")._AFTER

# The pair's `n` newest rows at or before `at` (every one for n NULL), newest first: the lower
# bound and the fallbacks as in 0017 (LIMIT NULL is no limit).
_PAIR_ROWS_AT = """
CREATE OR REPLACE FUNCTION pair_rows_at(pair integer, at timestamptz, n integer DEFAULT 1)
RETURNS SETOF balance_rows
LANGUAGE plpgsql STABLE ROWS 50
SET search_path = public, pg_temp SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    at_day constant date := (at AT TIME ZONE 'UTC')::date;
    since timestamptz;
    in_default boolean := false;  -- the rows before `since` are in the default partition alone
    found_rows bigint;
BEGIN
    IF pair IS NULL OR at IS NULL THEN
        RETURN;
    END IF;
    IF n IS NOT NULL THEN
        SELECT d.day::timestamp AT TIME ZONE 'UTC' INTO since FROM (
            SELECT day, sum(messages) OVER (ORDER BY day DESC) AS seen FROM daily_rows
            WHERE pair_id = pair AND day < at_day
        ) d
        WHERE d.seen >= n ORDER BY d.day DESC LIMIT 1;
    END IF;
    IF since IS NULL AND NOT EXISTS (SELECT 1 FROM rollup_invalid i WHERE i.day <= at_day) THEN
        -- Fewer rows rolled up than asked for: with no day marked, every day before live_from
        -- is in daily_rows, so the pair's rows are from its first rolled-up day or live_from
        -- on, but for late rows of days the retention dropped, kept in the default partition.
        SELECT least(
            (SELECT s.live_from FROM rollup_state s),
            (SELECT min(d.day) FROM daily_rows d WHERE d.pair_id = pair)
        )::timestamp AT TIME ZONE 'UTC' INTO since;
        in_default := has_table_privilege('balance_rows_default', 'SELECT');
    END IF;
    IF since IS NOT NULL THEN
        RETURN QUERY SELECT b.* FROM balance_rows b
            WHERE b.pair_id = pair AND b.received_at <= at AND b.received_at >= since
            ORDER BY b.received_at DESC, b.id DESC LIMIT n;
        GET DIAGNOSTICS found_rows = ROW_COUNT;
        IF found_rows >= n THEN
            RETURN;
        END IF;
        -- Every row from `since` on is returned: the rest are older.
        at := least(at, since - interval '1 microsecond');
        n := n - found_rows;
    END IF;
    IF in_default THEN
        RETURN QUERY SELECT b.* FROM balance_rows_default b
            WHERE b.pair_id = pair AND b.received_at <= at
            ORDER BY b.received_at DESC, b.id DESC LIMIT n;
    ELSE
        RETURN QUERY SELECT b.* FROM balance_rows b
            WHERE b.pair_id = pair AND b.received_at <= at
            ORDER BY b.received_at DESC, b.id DESC LIMIT n;
    END IF;
END
$$
"""


def upgrade() -> None:
    op.execute(_PAIR_ROWS_AT)


def downgrade() -> None:
    op.execute(_BEFORE)
