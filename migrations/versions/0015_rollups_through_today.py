"""Today rolled up too, to a quarter of an hour ago: `balance_daily` aggregates only the raw rows
after `rollup_state.rolled_until` live, minutes of them instead of a whole day.

`rolled_until` is the rollup's watermark, a time: every row before it is counted in
`daily_rows`, the row of its day being partial. `live_from` is now its day (a generated
column), so that "the days before live_from are complete" stays true for the functions that
read it. `roll_up_to(until)` moves the watermark up to `until` (at most to the end of its day,
and never closer than 15 minutes to the database's clock), adding the rows it passes to their
day's figures; `roll_up_day(day)` now only computes again a day marked in `rollup_invalid`.

The marks change with it: a statement's rows received more than 5 minutes before it runs
mark their days (today included), not only the rows of a closed day. The watermark stays 15
minutes behind the clock, so a row the rollup did not see is marked unless its transaction
ran for more than 10 minutes between its insert and its commit
(docs/design/history-at-scale.md).

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from balancewatch.store.migration_sql import earlier_migration, grants_following

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


_ROLLUPS = earlier_migration(__file__, "0011_daily_rollups_and_retention.py")
_LOCK_KEY = _ROLLUPS._LOCK_KEY
_UTC_DAY = _ROLLUPS._UTC_DAY
_DAY_START = _ROLLUPS._DAY_START
_LIVE = _ROLLUPS._LIVE  # one day's figures per pair, from balance_rows r
_COLUMNS = "(pair_id, day, first, last, low, high, messages)"

# The watermark keeps this far behind the clock (the keeper's ROLLUP_GRACE) and rows older
# than MARK_AGE when stored mark their day: the difference is how long a write may stay
# uncommitted and still be counted.
_GRACE = "interval '15 minutes'"
_MARK_AGE = "interval '5 minutes'"

_STATE = [
    "ALTER TABLE rollup_state ADD COLUMN rolled_until timestamptz",
    f"UPDATE rollup_state SET rolled_until = {_DAY_START.format(day='live_from')}",  # noqa: S608
    "ALTER TABLE rollup_state ALTER COLUMN rolled_until SET NOT NULL",
    "ALTER TABLE rollup_state DROP COLUMN live_from",
    "ALTER TABLE rollup_state ADD COLUMN live_from date NOT NULL "
    f"GENERATED ALWAYS AS ({_UTC_DAY.format(at='rolled_until')}) STORED",
]

_INVALIDATE = f"""
CREATE OR REPLACE FUNCTION rollup_invalidate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    old_rows timestamptz := clock_timestamp() - {_MARK_AGE};
BEGIN
    IF (SELECT min(received_at) FROM new_rows) >= old_rows THEN
        RETURN NULL;
    END IF;
    INSERT INTO rollup_invalid (day)
    SELECT DISTINCT {_UTC_DAY.format(at="n.received_at")} FROM new_rows n
    WHERE n.received_at < old_rows
      AND n.received_at >= (SELECT {_DAY_START.format(day="s.kept_from")} FROM rollup_state s)
    ORDER BY 1
    ON CONFLICT (day) DO UPDATE SET marked_at = excluded.marked_at;
    RETURN NULL;
END
$$
"""  # noqa: S608 (our constants only)

# Adds the rows from the watermark to `until` (cut to the end of the watermark's day, and to
# the grace) to their day's figures, and moves the watermark there: the new watermark. A day
# begun, or marked meanwhile, is computed from its start; its mark is deleted before the rows
# are read (see 0011's roll_up_day). Otherwise the figures merge: every row passed is later
# than the day's rows counted, so first stays and last is the new one.
_ROLL_UP_TO = f"""
CREATE FUNCTION roll_up_to(until timestamptz) RETURNS timestamptz
LANGUAGE plpgsql VOLATILE STRICT SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    state rollup_state;
    day_start timestamptz;
    target timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock({_LOCK_KEY});
    SELECT * INTO state FROM rollup_state;
    day_start := {_DAY_START.format(day="state.live_from")};
    target := least(
        until, {_DAY_START.format(day="state.live_from + 1")}, clock_timestamp() - {_GRACE}
    );
    IF target <= state.rolled_until THEN
        RETURN state.rolled_until;
    END IF;
    DELETE FROM rollup_invalid i WHERE i.day = state.live_from;
    IF FOUND OR state.rolled_until = day_start THEN
        DELETE FROM daily_rows d WHERE d.day = state.live_from;
        INSERT INTO daily_rows {_COLUMNS} SELECT * FROM daily_figures(day_start, target);
    ELSE
        INSERT INTO daily_rows AS d {_COLUMNS}
        SELECT * FROM daily_figures(state.rolled_until, target)
        ON CONFLICT (pair_id, day) DO UPDATE SET
            last = excluded.last, low = least(d.low, excluded.low),
            high = greatest(d.high, excluded.high), messages = d.messages + excluded.messages;
    END IF;
    UPDATE rollup_state SET rolled_until = target;
    -- Both stay tiny; unanalyzed, the planner prices balance_daily's plan at millions of rows
    -- and Postgres compiles it with JIT (0011).
    ANALYZE rollup_invalid, rollup_state;
    RETURN target;
END
$$
"""  # noqa: S608 (our constants only)

# A marked day computed again from its rows (up to the watermark, for the watermark's day);
# a day after it is left marked, for roll_up_to to compute from its start when it gets there.
_ROLL_UP_DAY = f"""
CREATE OR REPLACE FUNCTION roll_up_day(day date) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    state rollup_state;
BEGIN
    PERFORM pg_advisory_xact_lock({_LOCK_KEY});
    SELECT * INTO state FROM rollup_state;
    IF day > state.live_from THEN
        RETURN 'not_next';
    END IF;
    DELETE FROM rollup_invalid i WHERE i.day = roll_up_day.day;
    IF NOT FOUND THEN
        RETURN 'rolled_up_already';
    END IF;
    DELETE FROM daily_rows d WHERE d.day = roll_up_day.day;
    INSERT INTO daily_rows {_COLUMNS} SELECT * FROM daily_figures(
        {_DAY_START.format(day="roll_up_day.day")},
        least({_DAY_START.format(day="roll_up_day.day + 1")}, state.rolled_until)
    );
    ANALYZE rollup_invalid;
    RETURN 'rolled_up';
END
$$
"""  # noqa: S608 (our constants only)

# Each pair's figures of each day, from its rows received from `since` to before `until`. The
# bounds go into the query as constants, so that the planner reads only those rows (their
# block ranges, through the BRIN index) and knows they are few. In the view, bounds read from
# a table leave it guessing a third of each partition: it plans scans of whole partitions,
# and prices the view high enough to compile it with JIT (a second more, each time).
# SECURITY INVOKER: the reader's own rights on balance_rows, as for the rest of the view.
_FIGURES = f"""
CREATE FUNCTION daily_figures(since timestamptz, until timestamptz)
RETURNS TABLE (pair_id integer, day date, first numeric, last numeric, low numeric,
               high numeric, messages integer)
LANGUAGE plpgsql STABLE STRICT ROWS 10000 SET search_path = public, pg_temp AS $$
BEGIN
    RETURN QUERY EXECUTE format(
        $query$ {_LIVE} WHERE r.received_at >= %L AND r.received_at < %L GROUP BY 1, 2 $query$,
        since, until
    );
END
$$
"""

# The complete days before the watermark's, but those marked; the watermark's day and any
# after it: the figures rolled up so far merged with those of the raw rows from the watermark
# on; the days marked, from their rows (normally none). live_from is read as an init plan.
_VIEW = f"""
CREATE VIEW balance_daily AS
SELECT p.wallet, p.token, d.day, d.first, d.last, d.low, d.high, d.messages
FROM (
    SELECT pair_id, day, first, last, low, high, messages FROM daily_rows
    WHERE day < (SELECT live_from FROM rollup_state)
      AND NOT EXISTS (SELECT 1 FROM rollup_invalid i WHERE i.day = daily_rows.day)
    UNION ALL
    SELECT pair_id, day,
           (array_agg(first ORDER BY part))[1], (array_agg(last ORDER BY part DESC))[1],
           min(low), max(high), sum(messages)::integer
    FROM (
        SELECT pair_id, day, first, last, low, high, messages, 0 AS part FROM daily_rows
        WHERE day = (SELECT live_from FROM rollup_state)
        UNION ALL
        SELECT f.*, 1 FROM rollup_state s CROSS JOIN daily_figures(s.rolled_until, 'infinity') f
    ) parts
    WHERE NOT EXISTS (SELECT 1 FROM rollup_invalid i WHERE i.day = parts.day)
    GROUP BY 1, 2
    UNION ALL
    SELECT f.* FROM rollup_invalid i CROSS JOIN LATERAL daily_figures(
        {_DAY_START.format(day="i.day")}, {_DAY_START.format(day="i.day + 1")}
    ) f
) d
JOIN pairs p USING (pair_id)
"""  # noqa: S608 (our constants only)

# A role that may roll a day up (the README's) may move the watermark.
_SHARE_GRANTS = grants_following("roll_up_day(date)", "roll_up_to(timestamptz)")


def upgrade() -> None:
    op.execute("DROP VIEW balance_daily")
    for statement in _STATE:
        op.execute(statement)
    op.execute(_INVALIDATE)
    op.execute(_FIGURES)
    op.execute(_ROLL_UP_TO)
    op.execute("REVOKE EXECUTE ON FUNCTION roll_up_to(timestamptz) FROM PUBLIC")
    op.execute(_SHARE_GRANTS)
    op.execute(_ROLL_UP_DAY)
    op.execute(_VIEW)
    op.execute("ANALYZE rollup_state")


def downgrade() -> None:
    # 0011 knows only whole days: the watermark's day, partly rolled up, is forgotten.
    op.execute("DROP VIEW balance_daily")
    op.execute("DROP FUNCTION roll_up_to(timestamptz)")
    op.execute(
        "DELETE FROM daily_rows WHERE day >= (SELECT live_from FROM rollup_state) "
        "AND day NOT IN (SELECT day FROM rollup_invalid)"
    )
    op.execute("ALTER TABLE rollup_state DROP COLUMN live_from")
    op.execute("ALTER TABLE rollup_state ADD COLUMN live_from date")
    op.execute(f"UPDATE rollup_state SET live_from = {_UTC_DAY.format(at='rolled_until')}")  # noqa: S608
    op.execute("ALTER TABLE rollup_state ALTER COLUMN live_from SET NOT NULL")
    op.execute("ALTER TABLE rollup_state DROP COLUMN rolled_until")
    op.execute(_ROLLUPS._INVALIDATE.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
    op.execute(_ROLLUPS._ROLL_UP_DAY.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
    op.execute(_ROLLUPS._VIEW)
    op.execute("DROP FUNCTION daily_figures(timestamptz, timestamptz)")
