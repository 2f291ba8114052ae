"""`pair_rows_at(pair_id, at, n)`: a pair's newest rows at or before a time, reading the day
partitions that hold them instead of probing every one; `balance_at`, `balance_as_of` and
`pair_history` go through it.

Probing every partition is what a lookup without a lower time bound does: the default partition
makes the partitions unordered for the planner (a Merge Append, not an Append that stops at the
first partition with a row), and the planner plans a scan of each. With 60 day partitions: 20
to 30 ms of planning and 6 ms of probes for one `balance_at`, against 0.1 ms before the history
was partitioned. `daily_rows` says on which days the pair's newest rows before `at`'s day are:
the lookup is bounded below by the start of the first of them, and the bounds go into the query as
constants, so that Postgres plans only the partitions in between. The answer never depends on
the rollups being current: rows after the rollup's watermark are inside the bounds, and when
the bounded lookup finds nothing (rows deleted after their day was rolled up, a day marked
for a late row), an unbounded one runs.

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The pair's `n` newest rows at or before `at` (every one for n NULL), newest first. The lower
# bound: the start of the newest of the pair's rolled-up days before `at`'s day from which on
# those days hold `n` rows (so the bounded lookup finds them, unless rows were deleted since);
# without such a day and with no day marked for late rows, from the pair's first rolled-up day
# (or the watermark's day), the default partition below it. Found fewer than `n` (deleted
# rows, a marked day), it goes on below the bound. SECURITY INVOKER, as balance_at.
_PAIR_ROWS_AT = """
CREATE FUNCTION pair_rows_at(pair integer, at timestamptz, n integer DEFAULT 1)
RETURNS SETOF balance_rows
LANGUAGE plpgsql STABLE ROWS 50 SET search_path = public, pg_temp AS $$
DECLARE
    newest constant text := 'SELECT * FROM %I WHERE pair_id = %s AND received_at <= %L'
        ' AND received_at >= %L ORDER BY received_at DESC, id DESC LIMIT %s';
    at_day constant date := (at AT TIME ZONE 'UTC')::date;
    since timestamptz;
    below text := 'balance_rows';  -- where the rows before `since` may be
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
        below := 'balance_rows_default';
    END IF;
    IF since IS NOT NULL THEN
        RETURN QUERY EXECUTE format(
            newest, 'balance_rows', pair, at, since, coalesce(n::text, 'ALL')
        );
        GET DIAGNOSTICS found_rows = ROW_COUNT;
        IF found_rows >= n THEN
            RETURN;
        END IF;
        -- Every row from `since` on is returned: the rest are older.
        at := least(at, since - interval '1 microsecond');
        n := n - found_rows;
    END IF;
    RETURN QUERY EXECUTE format(
        newest, below, pair, at, '-infinity'::timestamptz, coalesce(n::text, 'ALL')
    );
END
$$
"""

_ONE_PAIR = "(SELECT p.pair_id FROM pairs p WHERE p.wallet = {0}.wallet AND p.token = {0}.token)"
_SOURCE_NAME = "CASE b.source WHEN 's' THEN 'stream' WHEN 'n' THEN 'snapshot' ELSE 'check' END"

_BALANCE_AT = f"""
CREATE OR REPLACE FUNCTION balance_at(wallet text, token text, at timestamptz) RETURNS numeric
LANGUAGE sql STABLE STRICT AS $$
    SELECT b.amount FROM pair_rows_at({_ONE_PAIR.format("balance_at")}, balance_at.at) b
$$
"""  # noqa: S608 (our constants only)

# 0009's, its newest row found as above.
_BALANCE_AS_OF = """
CREATE OR REPLACE FUNCTION balance_as_of(wallet text, token text, at timestamptz)
RETURNS TABLE (amount numeric, received_at timestamptz, source text, certain boolean)
LANGUAGE sql STABLE STRICT AS $$
    SELECT h.amount, h.received_at, h.source, EXISTS (
        SELECT 1 FROM coverage c JOIN coverage_holders k USING (holder)
        WHERE c.wallet = balance_as_of.wallet
          AND (c.token = balance_as_of.token OR c.token IS NULL)
          AND c.started_at <= h.received_at
          AND coalesce(c.ended_at, k.confirmed_at) >= balance_as_of.at
    )
    FROM (
        SELECT b.amount, b.received_at, {source} AS source FROM {newest}
    ) h
$$
"""

_NEWEST_AFTER = f"pair_rows_at({_ONE_PAIR.format('balance_as_of')}, balance_as_of.at) b"
_NEWEST_BEFORE = f"""(
            SELECT * FROM balance_rows b
            WHERE b.pair_id = {_ONE_PAIR.format("balance_as_of")}
              AND b.received_at <= balance_as_of.at
            ORDER BY b.received_at DESC, b.id DESC
            LIMIT 1
        ) b"""  # noqa: S608 (our constants only)

_BALANCE_AT_BEFORE = f"""
CREATE OR REPLACE FUNCTION balance_at(wallet text, token text, at timestamptz) RETURNS numeric
LANGUAGE sql STABLE STRICT AS $$
    SELECT b.amount FROM balance_rows b
    WHERE b.pair_id = {_ONE_PAIR.format("balance_at")}
      AND b.received_at <= balance_at.at
    ORDER BY b.received_at DESC, b.id DESC
    LIMIT 1
$$
"""  # noqa: S608 (our constants only)


# 0016's, the rows found as above; still not STRICT (a NULL wallet or token finds no pair, a
# NULL n every row).
_PAIR_HISTORY = f"""
CREATE OR REPLACE FUNCTION pair_history(wallet text, token text,
                                        until timestamptz DEFAULT 'infinity', n integer DEFAULT 50)
RETURNS TABLE (id bigint, wallet text, token text, amount numeric, received_at timestamptz,
               source text, slot bigint, epoch bigint)
LANGUAGE sql STABLE AS $$
    SELECT b.id, pair_history.wallet, pair_history.token, b.amount, b.received_at,
           {_SOURCE_NAME}, b.slot, b.epoch
    FROM {{rows}}
    ORDER BY b.received_at DESC, b.id DESC
    LIMIT pair_history.n
$$
"""  # noqa: S608 (our constants only)
_HISTORY_AFTER = (
    f"pair_rows_at({_ONE_PAIR.format('pair_history')}, pair_history.until, pair_history.n) b"
)
_HISTORY_BEFORE = f"""balance_rows b
    WHERE b.pair_id = {_ONE_PAIR.format("pair_history")} AND b.received_at <= pair_history.until"""


def upgrade() -> None:
    op.execute(_PAIR_ROWS_AT)
    op.execute(_PAIR_HISTORY.format(rows=_HISTORY_AFTER))
    op.execute(_BALANCE_AT)
    op.execute(_BALANCE_AS_OF.format(source=_SOURCE_NAME, newest=_NEWEST_AFTER))


def downgrade() -> None:
    op.execute(_BALANCE_AS_OF.format(source=_SOURCE_NAME, newest=_NEWEST_BEFORE))
    op.execute(_BALANCE_AT_BEFORE)
    op.execute(_PAIR_HISTORY.format(rows=_HISTORY_BEFORE))
    op.execute("DROP FUNCTION pair_rows_at(integer, timestamptz, integer)")
