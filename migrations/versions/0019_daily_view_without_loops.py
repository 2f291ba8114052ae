"""`balance_daily` without a loop per row: the marked days as one array, the watermark's day
merged with its live rows by a join.

Measured on the bench's 10 million rows (310,000 rows of the last 30 days), 0015's view spent
a third of its time on two things that a small table and a small day made look cheap to the
planner: `NOT EXISTS (... rollup_invalid ...)`, planned as an anti join that scans the (empty)
table once per row, 20,000 times; and the watermark's day merged with its live figures by a
sort of both and `array_agg(... ORDER BY part)` per pair. Now the marked days are read once
(`day <> ALL (ARRAY(SELECT day FROM rollup_invalid))`, an init plan), and the day's rolled-up
figures and the live ones are joined on (pair_id, day): the first is the rolled-up one if
any, the last the live one if any (every live row is later than every rolled-up row of its
day), the lowest and highest of both (`least`/`greatest` skip a NULL), the rows summed. The
answers are the same; so are the columns.

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from balancewatch.store.migration_sql import earlier_migration

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


_THROUGH_TODAY = earlier_migration(__file__, "0015_rollups_through_today.py")
_DAY_START = _THROUGH_TODAY._DAY_START
_NOT_MARKED = "<> ALL (ARRAY(SELECT i.day FROM rollup_invalid i))"

_VIEW = f"""
CREATE OR REPLACE VIEW balance_daily AS
SELECT p.wallet, p.token, d.day, d.first, d.last, d.low, d.high, d.messages
FROM (
    SELECT pair_id, day, first, last, low, high, messages FROM daily_rows
    WHERE day < (SELECT live_from FROM rollup_state) AND day {_NOT_MARKED}
    UNION ALL
    SELECT coalesce(r.pair_id, f.pair_id), coalesce(r.day, f.day), coalesce(r.first, f.first),
           coalesce(f.last, r.last), least(r.low, f.low), greatest(r.high, f.high),
           coalesce(r.messages, 0) + coalesce(f.messages, 0)
    FROM (
        SELECT * FROM daily_rows WHERE day = (SELECT live_from FROM rollup_state)
    ) r
    FULL JOIN (
        SELECT f.* FROM rollup_state s CROSS JOIN daily_figures(s.rolled_until, 'infinity') f
    ) f ON f.pair_id = r.pair_id AND f.day = r.day
    WHERE coalesce(r.day, f.day) {_NOT_MARKED}
    UNION ALL
    SELECT f.* FROM rollup_invalid i CROSS JOIN LATERAL daily_figures(
        {_DAY_START.format(day="i.day")}, {_DAY_START.format(day="i.day + 1")}
    ) f
) d
JOIN pairs p USING (pair_id)
"""  # noqa: S608 (our constants only)


def upgrade() -> None:
    op.execute(_VIEW)


def downgrade() -> None:
    op.execute(_THROUGH_TODAY._VIEW.replace("CREATE VIEW", "CREATE OR REPLACE VIEW"))
