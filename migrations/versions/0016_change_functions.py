"""`balance_changes(since, until)`: the rows of a time window with the amount before each in its
pair, reading the window's rows and one backward probe per pair, not the whole history; and
`pair_history(wallet, token, until, n)`: one pair's newest rows, an ordered index scan with a
LIMIT instead of the view's sort of every row of the pair.

A time filter on `balance_change` is applied after `lag()` ran over the whole history, sorted
through the join with `pairs` (README queries 3 and 7: 24 and 26 s at 10 million rows). And the
view is a join, so Postgres sorts all of a pair's rows before a LIMIT (58 ms for 250,000 rows).
Both functions work on `balance_rows` by `pair_id` and name the pair only at the end.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The start of the pair's last day before `since`'s day (UTC) that daily_rows holds, so a day
# with rows of the pair: the row before the window is at or after it, unless rows were deleted
# since the rollup or its partition dropped (then the probe below it finds the row). Not `<=`:
# `since`'s own day may be rolled up with all the pair's rows of that day after `since`.
_LAST_DAY_ROLLED_UP = """(SELECT d.day::timestamp AT TIME ZONE 'UTC' FROM daily_rows d
                  WHERE d.pair_id = r.pair_id
                    AND d.day < (balance_changes.since AT TIME ZONE 'UTC')::date
                  ORDER BY d.day DESC LIMIT 1)"""

# The newest row of the pair at or before `since`, among those {bound}: the pair's index read
# backwards in each partition the bounds leave (pruned at run time, per pair), one entry each.
# A Merge Append of them, not an Append in partition order that stops at the first row: the
# default partition leaves the partitions unordered for the planner. Hence the lower bound.
_PROBE = """(SELECT b.amount FROM balance_rows b
             WHERE b.pair_id = r.pair_id AND b.received_at <= balance_changes.since
               AND {bound}
             ORDER BY b.received_at DESC, b.id DESC LIMIT 1)"""
_PROBE_FROM_LAST_DAY = _PROBE.format(
    bound=f"b.received_at >= coalesce({_LAST_DAY_ROLLED_UP}, '-infinity')"
)
_PROBE_BEFORE_LAST_DAY = _PROBE.format(bound=f"b.received_at < {_LAST_DAY_ROLLED_UP}")

# The window is (since, until]: `received_at > since` as in the README's "the last hour"
# (`received_at > now() - interval '1 hour'`), and windows put end to end, (a, b] then (b, c],
# give each row once. The amount before a pair's first row in the window is lag()'s NULL,
# replaced by the probe; lag() is NULL nowhere else (amount is NOT NULL), and coalesce()
# evaluates the probes only where it is, so once per pair in the window. The probe is bounded
# by the rollups (run-time pruning keeps only the partitions from that day to `since`'s: a
# Merge Append of those few, not of every older partition); if it finds nothing there, the
# probe below that day looks further back (a pair whose rows there were deleted, or a rollup
# that no longer matches the rows). So the answer is balance_change's whatever daily_rows
# holds: the rollups only say where to look first. A pair whose first row ever is in the
# window has no rollup before it: its probe looks at every partition before `since` once.
#
# jit = off: the planner prices a probe for each of the window's rows (it cannot know that
# coalesce() needs one per pair), a cost that turns JIT on, which compiles for seconds; the
# query runs in half a second for 57,000 rows. A SET makes the function run as it is, not
# inlined into the caller's query, so the caller's filters on its columns apply to its result.
_BALANCE_CHANGES = f"""
CREATE FUNCTION balance_changes(since timestamptz, until timestamptz DEFAULT 'infinity')
RETURNS TABLE (id bigint, wallet text, token text, received_at timestamptz, amount numeric,
               previous_amount numeric, delta numeric)
LANGUAGE sql STABLE SET jit = off AS $$
    SELECT w.id, p.wallet, p.token, w.received_at, w.amount, w.previous_amount,
           w.amount - w.previous_amount
    FROM (
        SELECT r.pair_id, r.id, r.received_at, r.amount, coalesce(
            lag(r.amount) OVER pair_in_order,
            {_PROBE_FROM_LAST_DAY},
            {_PROBE_BEFORE_LAST_DAY}
        ) AS previous_amount
        FROM balance_rows r
        WHERE r.received_at > balance_changes.since AND r.received_at <= balance_changes.until
        WINDOW pair_in_order AS (PARTITION BY r.pair_id ORDER BY r.received_at, r.id)
    ) w
    JOIN pairs p USING (pair_id)
$$
"""  # noqa: S608 (our constants only)

# balance_history's columns (0009's view), the pair's own rows only: its id looked up first, so
# the rest is each partition's index read backwards, merged, and cut at n (every partition up
# to `until` is entered once: a Merge Append, since the default partition leaves the
# partitions unordered for the planner). `until` included, as balance_at's `at`. Not STRICT,
# so that it is inlined into the caller's query; a NULL wallet or token finds no pair.
_PAIR_HISTORY = """
CREATE FUNCTION pair_history(wallet text, token text, until timestamptz DEFAULT 'infinity',
                             n integer DEFAULT 50)
RETURNS TABLE (id bigint, wallet text, token text, amount numeric, received_at timestamptz,
               source text, slot bigint, epoch bigint)
LANGUAGE sql STABLE AS $$
    SELECT b.id, pair_history.wallet, pair_history.token, b.amount, b.received_at,
           CASE b.source WHEN 's' THEN 'stream' WHEN 'n' THEN 'snapshot' WHEN 'c' THEN 'check'
           END,
           b.slot, b.epoch
    FROM balance_rows b
    WHERE b.pair_id = (SELECT p.pair_id FROM pairs p
                       WHERE p.wallet = pair_history.wallet AND p.token = pair_history.token)
      AND b.received_at <= pair_history.until
    ORDER BY b.received_at DESC, b.id DESC
    LIMIT pair_history.n
$$
"""

# Both run with the caller's rights, as balance_at does: EXECUTE stays with PUBLIC, and reading
# takes SELECT on balance_rows and pairs (and daily_rows, for balance_changes). The README's
# daemon role has none of these: it still cannot read the history, through these or otherwise.


def upgrade() -> None:
    op.execute(_BALANCE_CHANGES)
    op.execute(_PAIR_HISTORY)


def downgrade() -> None:
    op.execute("DROP FUNCTION pair_history(text, text, timestamptz, integer)")
    op.execute("DROP FUNCTION balance_changes(timestamptz, timestamptz)")
