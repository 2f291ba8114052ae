"""Daily rollups and retention: `daily_rows` holds each pair's first, last, low and high amount
and its row count for every closed UTC day; `balance_daily` reads it for the days before
`rollup_state.live_from` and aggregates the raw rows live from that day on, so it is always
complete. The daemon rolls the closed days up and, with a retention, drops whole day
partitions once their days are rolled up (docs/design/history-at-scale.md).

Independent of 0010 (latest rows): it adds its own statement trigger on balance_rows.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The daemon's maintenance lock (balancewatch/store/partitions.py, "bwpt"), copied: taken by
# the functions themselves, so that two replicas never roll up or drop the same day at once.
_LOCK_KEY = 0x62777074
_UTC_DAY = "(({at}) AT TIME ZONE 'UTC')::date"
_DAY_START = "(({day})::timestamp AT TIME ZONE 'UTC')"

# One day's figures per pair (_LIVE), the same in the rollup and in the view's live parts.
# first and last in (received_at, id) order, as README query 8 had them; messages counts the
# rows of every source (a snapshot or check row is a balance too), as that query did.
_AGGREGATES = """
    (array_agg(r.amount ORDER BY r.received_at, r.id))[1] AS first,
    (array_agg(r.amount ORDER BY r.received_at DESC, r.id DESC))[1] AS last,
    min(r.amount) AS low, max(r.amount) AS high, count(*)::integer AS messages"""

# One row: the first day not rolled up (balance_daily is live from there), and the first day
# whose raw rows are still kept (the days before it were dropped by the retention: their
# rollups are final).
_STATE = """
CREATE TABLE rollup_state (
    one_row boolean PRIMARY KEY DEFAULT true CONSTRAINT rollup_state_one_row CHECK (one_row),
    live_from date NOT NULL,
    kept_from date NOT NULL DEFAULT '-infinity'
)
"""

# The days to roll up again: rows of a closed day arrived (a late spool replay, a user's
# insert into the past). Compared with the start of today, not with live_from: a writer that
# read an old live_from while the day was being rolled up would lose its rows; a closed day is
# closed whatever the rollup's progress. The days whose partitions the retention dropped are
# final: a late row of theirs stays in the default partition, out of their rollup. On ingest
# every row is of today: one min() over the statement's rows, then nothing. SECURITY DEFINER:
# the writer's role has no right on these tables.
_TODAY_START = _DAY_START.format(day=_UTC_DAY.format(at="clock_timestamp()"))
_INVALIDATE = f"""
CREATE FUNCTION rollup_invalidate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF (SELECT min(received_at) FROM new_rows) >= {_TODAY_START} THEN
        RETURN NULL;
    END IF;
    INSERT INTO rollup_invalid (day)
    SELECT DISTINCT {_UTC_DAY.format(at="n.received_at")} FROM new_rows n
    WHERE n.received_at < {_TODAY_START}
      AND n.received_at >= (SELECT {_DAY_START.format(day="s.kept_from")} FROM rollup_state s)
    ORDER BY 1
    ON CONFLICT (day) DO UPDATE SET marked_at = excluded.marked_at;
    RETURN NULL;
END
$$
"""  # noqa: S608 (our constants only)

_LIVE = f"""
    SELECT r.pair_id, {_UTC_DAY.format(at="r.received_at")} AS day, {_AGGREGATES}
    FROM balance_rows r"""  # noqa: S608 (our constants only)

# One day rolled up, in the caller's (short) transaction: the next day to roll up, or a day
# marked invalid. Its mark is deleted before the rows are read: a writer that marks it again
# meanwhile either waits for this transaction (and the day is marked anew) or committed before
# the rows are read (and is counted).
_ROLL_UP_DAY = f"""
CREATE FUNCTION roll_up_day(day date) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    state rollup_state;
BEGIN
    PERFORM pg_advisory_xact_lock({_LOCK_KEY});
    SELECT * INTO state FROM rollup_state;
    IF day >= {_UTC_DAY.format(at="clock_timestamp()")} OR day > state.live_from THEN
        RETURN 'not_next';
    END IF;
    DELETE FROM rollup_invalid i WHERE i.day = roll_up_day.day;
    IF NOT FOUND AND day < state.live_from THEN
        RETURN 'rolled_up_already';
    END IF;
    DELETE FROM daily_rows d WHERE d.day = roll_up_day.day;
    INSERT INTO daily_rows (pair_id, day, first, last, low, high, messages)
    {_LIVE}
    WHERE r.received_at >= {_DAY_START.format(day="roll_up_day.day")}
      AND r.received_at < {_DAY_START.format(day="roll_up_day.day + 1")}
    GROUP BY 1, 2;
    UPDATE rollup_state SET live_from = live_from + 1 WHERE live_from = roll_up_day.day;
    -- Both stay tiny; unanalyzed, the planner prices balance_daily's plan at millions of rows
    -- and Postgres compiles it with JIT: 1.3-2 s instead of 30 ms.
    ANALYZE rollup_invalid, rollup_state;
    RETURN 'rolled_up';
END
$$
"""  # noqa: S608 (our constants only)

# A day's partition detached and dropped, only once its day is rolled up and not marked
# again. Plain DETACH (CONCURRENTLY cannot run in a function or a transaction): it takes
# balance_rows' ACCESS EXCLUSIVE lock for a moment, and the lock is taken first, so that no
# late row of the day commits between the check and the drop. lock_timeout: rather than
# queue the writers behind a long query, give up and try again at the next turn.
_DROP_PARTITION = f"""
CREATE FUNCTION drop_balance_partition(day date) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT SECURITY DEFINER
SET search_path = public, pg_temp SET lock_timeout = '2s' AS $$
DECLARE
    name text := 'balance_rows_' || to_char(day, 'YYYYMMDD');
BEGIN
    PERFORM pg_advisory_xact_lock({_LOCK_KEY});
    IF to_regclass(name) IS NULL THEN
        RETURN 'missing';
    END IF;
    LOCK TABLE balance_rows IN ACCESS EXCLUSIVE MODE;
    IF day >= (SELECT s.live_from FROM rollup_state s)
        OR EXISTS (SELECT 1 FROM rollup_invalid i WHERE i.day = drop_balance_partition.day) THEN
        RETURN 'not_rolled_up';
    END IF;
    EXECUTE format('ALTER TABLE balance_rows DETACH PARTITION %I', name);
    EXECUTE format('DROP TABLE %I', name);
    UPDATE rollup_state SET kept_from = greatest(kept_from, day + 1);
    RETURN 'dropped';
END
$$
"""  # noqa: S608 (our constants only)

# The rolled-up days, but those marked invalid; the days from live_from on, live; and the
# days marked invalid, live (normally none: a join with an empty table). So balance_daily is
# complete at every moment, the maintenance only making it cheaper.
_VIEW = f"""
CREATE VIEW balance_daily AS
SELECT p.wallet, p.token, d.day, d.first, d.last, d.low, d.high, d.messages
FROM (
    SELECT pair_id, day, first, last, low, high, messages FROM daily_rows
    WHERE day < (SELECT live_from FROM rollup_state)
      AND NOT EXISTS (SELECT 1 FROM rollup_invalid i WHERE i.day = daily_rows.day)
    UNION ALL
    {_LIVE}
    WHERE r.received_at >= (SELECT {_DAY_START.format(day="live_from")} FROM rollup_state)
    GROUP BY 1, 2
    UNION ALL
    SELECT again.* FROM rollup_invalid i CROSS JOIN LATERAL (
        {_LIVE}
        WHERE r.received_at >= {_DAY_START.format(day="i.day")}
          AND r.received_at < {_DAY_START.format(day="i.day + 1")}
          AND i.day < (SELECT live_from FROM rollup_state)
        GROUP BY 1, 2
    ) again
) d
JOIN pairs p USING (pair_id)
"""  # noqa: S608 (our constants only)


# Everything stored is live until the daemon rolls it up: from the oldest row's day (a scan
# of the history, once: about a second for 10 million rows).
_FIRST_STATE = (
    "INSERT INTO rollup_state (live_from) "  # noqa: S608 (our constants only)
    f"SELECT coalesce(min({_UTC_DAY.format(at='received_at')}), "
    f"{_UTC_DAY.format(at='now()')}) FROM balance_rows"
)


def upgrade() -> None:
    op.execute(
        "CREATE TABLE daily_rows (pair_id integer NOT NULL, day date NOT NULL, "
        "first numeric NOT NULL, last numeric NOT NULL, low numeric NOT NULL, "
        "high numeric NOT NULL, messages integer NOT NULL, PRIMARY KEY (pair_id, day))"
    )
    # "The last 30 days" of every pair: a range of this index (the key leads with the pair).
    op.execute("CREATE INDEX daily_rows_day_idx ON daily_rows (day)")
    op.execute(_STATE)
    op.execute(_FIRST_STATE)
    op.execute(
        "CREATE TABLE rollup_invalid (day date PRIMARY KEY, "
        "marked_at timestamptz NOT NULL DEFAULT clock_timestamp())"
    )
    op.execute(_INVALIDATE)
    op.execute(
        "CREATE TRIGGER balance_rows_rollup_invalidate AFTER INSERT ON balance_rows "
        "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
        "EXECUTE FUNCTION rollup_invalidate()"
    )
    op.execute(_ROLL_UP_DAY)
    op.execute(_DROP_PARTITION)
    for function in ("roll_up_day(date)", "drop_balance_partition(date)"):
        op.execute(f"REVOKE EXECUTE ON FUNCTION {function} FROM PUBLIC")
    op.execute(_VIEW)
    op.execute("ANALYZE rollup_state, rollup_invalid, daily_rows")  # see roll_up_day


def downgrade() -> None:
    op.execute("DROP VIEW balance_daily")
    op.execute("DROP FUNCTION drop_balance_partition(date)")
    op.execute("DROP FUNCTION roll_up_day(date)")
    op.execute("DROP TRIGGER balance_rows_rollup_invalidate ON balance_rows")
    op.execute("DROP FUNCTION rollup_invalidate()")
    op.execute("DROP TABLE rollup_invalid")
    op.execute("DROP TABLE rollup_state")
    op.execute("DROP TABLE daily_rows")
