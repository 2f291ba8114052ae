"""The history's rows counted by minute in `minute_rows`, kept by statement triggers on
`balance_rows`, so that `balancewatch status` sums an hour's minutes instead of counting the
hour's rows (530,000 at the bench's busy hour); and `coverage` indexed by `ended_at`, so that
status's gaps read only the listening periods of the last day.

A row of minute_rows is a minute of `received_at` and a writer (the backend's process id): each
writer adds to its own row, so concurrent writers never wait on one another's. Only rows
received in the last two hours are counted (status asks about the last hour), and the triggers
delete the minutes older than three hours: the hour between is a margin, so that a writer
never adds to a row being deleted unless its transaction has run that long. A DELETE or
UPDATE of balance_rows takes its rows off their minutes (and an UPDATE adds the new ones), a
TRUNCATE empties the table: the minutes' sum stays what a count(*) of the rows would give.
Dropping or detaching a partition (the retention's, hours after its last day) and writing into
a partition directly, not through balance_rows, are not counted, as for latest_rows.

The fill counts the rows of the last two hours after the triggers are in place, in the same
transaction: CREATE TRIGGER holds writes to balance_rows until the migration commits, so no
row is counted twice or missed (writes wait for one scan of two hours of rows: 0.3 s on the
bench's 10 million rows, 600,000 of them in those hours).

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Rewritten in place by every statement of its writer: room on each page for the new versions
# (HOT updates: `rows` is in no index).
_MINUTE_ROWS = """
CREATE TABLE minute_rows (
    minute timestamptz NOT NULL,
    writer integer NOT NULL,
    rows bigint NOT NULL,
    PRIMARY KEY (minute, writer)
) WITH (fillfactor = 50)
"""

# A row's minute, whatever the session's time zone (date_trunc would follow it). An infinite
# time stays itself: its rows are counted too.
_MINUTE = "date_bin('1 minute', {at}, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
_COUNTED = "interval '2 hours'"  # rows received since then are counted
_KEPT = "interval '3 hours'"  # minutes since then are kept

# `sign` rows of `{rows}` (a transition table) added to their minutes, as one writer. A new
# (minute, writer) row, once a minute per writer, also deletes the minutes no longer kept;
# SKIP LOCKED: a writer deleting them never waits for another doing the same.
_ADD = f"""
    WITH added AS (
        INSERT INTO minute_rows AS m (minute, writer, rows)
        SELECT {_MINUTE.format(at="received_at")}, pg_backend_pid(), {{sign}} * count(*)
        FROM {{rows}} WHERE received_at >= since
        GROUP BY 1
        ON CONFLICT (minute, writer) DO UPDATE SET rows = m.rows + excluded.rows
        RETURNING m.xmax = 0 AS inserted
    )
    SELECT coalesce(bool_or(inserted), false) OR new_minute INTO new_minute FROM added"""  # noqa: S608

_COUNT = f"""
CREATE FUNCTION minute_rows_count() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    since timestamptz := clock_timestamp() - {_COUNTED};
    kept timestamptz := clock_timestamp() - {_KEPT};  -- a value: the primary key finds them
    new_minute boolean := false;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM minute_rows;
        RETURN NULL;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        {_ADD.format(sign="-1", rows="old_rows")};
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        {_ADD.format(sign="1", rows="new_rows")};
    END IF;
    IF new_minute THEN
        DELETE FROM minute_rows WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM minute_rows
            WHERE minute < kept
            FOR UPDATE SKIP LOCKED
        ));
    END IF;
    RETURN NULL;
END
$$
"""  # noqa: S608 (our constants only)

# After balance_rows_fence (triggers of one event fire in name order): a refused statement
# never gets here.
_TRIGGERS = (
    "CREATE TRIGGER balance_rows_minutes AFTER INSERT ON balance_rows "
    "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION minute_rows_count()",
    "CREATE TRIGGER balance_rows_minutes_delete AFTER DELETE ON balance_rows "
    "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION minute_rows_count()",
    "CREATE TRIGGER balance_rows_minutes_update AFTER UPDATE ON balance_rows "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION minute_rows_count()",
    "CREATE TRIGGER balance_rows_minutes_truncate AFTER TRUNCATE ON balance_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION minute_rows_count()",
)

# From the transaction's start (now(), not the clock, so that only the partitions of the two
# hours are read, by their time index): a little more than the triggers count, never less.
_FILL = f"""
INSERT INTO minute_rows (minute, writer, rows)
SELECT {_MINUTE.format(at="received_at")}, pg_backend_pid(), count(*) FROM balance_rows
WHERE received_at >= now() - {_COUNTED}
GROUP BY 1
"""  # noqa: S608 (our constants only)


def upgrade() -> None:
    op.execute(_MINUTE_ROWS)
    op.execute(_COUNT)
    for trigger in _TRIGGERS:
        op.execute(trigger)
    op.execute(_FILL)
    op.execute("ANALYZE minute_rows")
    # The periods that ended in the last day, and the open ones (ended_at NULL): what status's
    # gaps read, instead of every period ever kept.
    op.execute("CREATE INDEX coverage_ended_at_idx ON coverage (ended_at)")


def downgrade() -> None:
    op.execute("DROP INDEX coverage_ended_at_idx")
    for trigger in _TRIGGERS:
        op.execute(f"DROP TRIGGER {trigger.split()[2]} ON balance_rows")
    op.execute("DROP FUNCTION minute_rows_count()")
    op.execute("DROP TABLE minute_rows")
