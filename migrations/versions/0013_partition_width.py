"""Partitions of a day or a week (`BALANCEWATCH_PARTITION`), and the default partition's rows
counted for a metric.

`create_balance_partition(first_day, days)` makes a partition of any whole number of days;
`drop_balance_partition(first_day)` reads the partition's own bounds and drops it only once
every day in it is rolled up. `balance_partition_bounds()` gives each partition's first and
end day, read from the catalog, so that the daemon makes the missing ranges around the
partitions that exist, whatever their widths (docs/design/history-at-scale.md).
`default_partition_rows()` counts the rows no partition took.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from balancewatch.store.migration_sql import grants_following

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The daemon's maintenance lock (balancewatch/store/partitions.py, "bwpt"), copied.
_LOCK_KEY = 0x62777074

# The bounds are printed in the session's time zone and read back in it: the days are UTC.
# The default partition has no range (regexp_match gives NULL) and is left out. SECURITY
# INVOKER, the catalog only: anyone may already read it, so EXECUTE stays with PUBLIC.
_BOUNDS = """
CREATE FUNCTION balance_partition_bounds()
RETURNS TABLE (relname name, first_day date, end_day date)
LANGUAGE sql STABLE SET search_path = public, pg_temp AS $$
    SELECT c.relname, (b[1]::timestamptz AT TIME ZONE 'UTC')::date,
           (b[2]::timestamptz AT TIME ZONE 'UTC')::date
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL regexp_match(
        pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']+)''\\) TO \\(''([^'']+)''\\)'
    ) AS b
    WHERE i.inhparent = 'balance_rows'::regclass AND b IS NOT NULL
$$
"""

# 0009's function, its end a parameter: one day (the downgrade) or `days` from the first.
_CREATE = """
CREATE FUNCTION create_balance_partition({parameters}) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    name text := 'balance_rows_' || to_char({first}, 'YYYYMMDD');
    low timestamptz := {first}::timestamp AT TIME ZONE 'UTC';
    high timestamptz := ({end})::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN 'exists';
    END IF;
    IF EXISTS (
        SELECT 1 FROM balance_rows_default
        WHERE received_at >= low AND received_at < high
    ) THEN
        RETURN 'default_has_rows';
    END IF;
    EXECUTE format(
        'CREATE TABLE %I PARTITION OF balance_rows FOR VALUES FROM (%L) TO (%L)',
        name, low, high
    );
    RETURN 'created';
END
$$
"""
_CREATE_DAYS = _CREATE.format(
    parameters="first_day date, days integer", first="first_day", end="first_day + days"
)
_CREATE_ONE_DAY = _CREATE.format(parameters="day date", first="day", end="day + 1")

# 0011's function, the partition's end read after the advisory lock: its own bounds (a week
# is dropped only once its seven days are rolled up and none is marked again), or one day
# (the downgrade). See 0011 for the locks.
_DROP = f"""
CREATE OR REPLACE FUNCTION drop_balance_partition(day date) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT SECURITY DEFINER
SET search_path = public, pg_temp SET lock_timeout = '2s' AS $$
DECLARE
    name text := 'balance_rows_' || to_char(day, 'YYYYMMDD');
    ends date;
BEGIN
    PERFORM pg_advisory_xact_lock({_LOCK_KEY});
    ends := {{end}};
    IF to_regclass(name) IS NULL OR ends IS NULL THEN
        RETURN 'missing';
    END IF;
    LOCK TABLE balance_rows IN ACCESS EXCLUSIVE MODE;
    IF ends > (SELECT s.live_from FROM rollup_state s) OR EXISTS (
        SELECT 1 FROM rollup_invalid i WHERE i.day >= drop_balance_partition.day AND i.day < ends
    ) THEN
        RETURN 'not_rolled_up';
    END IF;
    EXECUTE format('ALTER TABLE balance_rows DETACH PARTITION %I', name);
    EXECUTE format('DROP TABLE %I', name);
    UPDATE rollup_state SET kept_from = greatest(kept_from, ends);
    RETURN 'dropped';
END
$$
"""  # noqa: S608 (our constants only)
_DROP_BY_BOUNDS = _DROP.format(
    end="(SELECT b.end_day FROM balance_partition_bounds() b WHERE b.relname = name)"
)
_DROP_ONE_DAY = _DROP.format(end="day + 1")

# Normally 0: rows of a time no partition covers (a clock far off, a keeper that did not run).
# SECURITY DEFINER: the daemon's role cannot read the history.
_DEFAULT_ROWS = """
CREATE FUNCTION default_partition_rows() RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT count(*) FROM balance_rows_default
$$
"""

_OLD_CREATE = "create_balance_partition(date)"
_NEW_CREATE = "create_balance_partition(date, integer)"


def upgrade() -> None:
    op.execute(_BOUNDS)
    _replace_create(_OLD_CREATE, _CREATE_DAYS, _NEW_CREATE)
    op.execute(_DROP_BY_BOUNDS)
    op.execute(_DEFAULT_ROWS)
    op.execute("REVOKE EXECUTE ON FUNCTION default_partition_rows() FROM PUBLIC")


def downgrade() -> None:
    # 0012's daemon reads a partition's name as its one day: it would drop a week's rows
    # once its first day was rolled up.
    op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM balance_partition_bounds() "
        "WHERE end_day <> first_day + 1) THEN RAISE EXCEPTION 'partitions of more than a day "
        "exist: 0012 knows only day partitions'; END IF; END $$"
    )
    op.execute("DROP FUNCTION default_partition_rows()")
    op.execute(_DROP_ONE_DAY)
    _replace_create(_NEW_CREATE, _CREATE_ONE_DAY, _OLD_CREATE)
    op.execute("DROP FUNCTION balance_partition_bounds()")


def _replace_create(old: str, definition: str, new: str) -> None:
    op.execute(definition)
    op.execute(f"REVOKE EXECUTE ON FUNCTION {new} FROM PUBLIC")
    # A role granted the old signature (the README's least-privilege role) keeps its right.
    op.execute(grants_following(old, new))
    op.execute(f"DROP FUNCTION {old}")
