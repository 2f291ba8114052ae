"""The rollup's watermark follows the clock to two minutes, not fifteen: a seal, taken under a
lock that waits for the writers in flight, replaces the margin of time that kept the rollup
clear of uncommitted rows.

`balance_daily` aggregates the raw rows after the watermark live: with the watermark 15 to 20
minutes behind (0015), that was 150,000 to 200,000 rows at 10,000 pairs changing once a minute,
and most of the view's time. The watermark had to stay that far behind because a row inserted
before the watermark moved, and committed after the rollup read the rows, would be counted by
neither: 0015 marked only rows older than 5 minutes, and trusted writes to commit within 10.

Now `rollup_state.sealed_until` says where the rows stop being taken as they come: a statement
inserting rows received before it marks their days, whatever their age. `seal_rollup(until)`
moves it under an exclusive advisory lock that every insert's trigger holds shared until its
commit (as TimescaleDB's invalidation threshold does for continuous aggregates), so the seal
waits for the writes in flight: a row below the new seal was either committed before the seal
(and `roll_up_to`, which no longer passes the seal, reads it) or is marked by its own
statement. The lock is waited for 100 ms at a time (a long insert makes the writers queue
behind the seal for no longer than that); after 10 tries, NULL, and the rollup moves up to the
old seal only. The keeper seals to two minutes ago (rows stored later than that, a spool
replay after an outage, mark their day, which is computed again) and rolls up every minute.

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from balancewatch.store.migration_sql import earlier_migration, grants_following

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


_THROUGH_TODAY = earlier_migration(__file__, "0015_rollups_through_today.py")
_LOCK_KEY = _THROUGH_TODAY._LOCK_KEY  # the partitions' maintenance
_UTC_DAY = _THROUGH_TODAY._UTC_DAY
_DAY_START = _THROUGH_TODAY._DAY_START
_SEAL_KEY = 0x62777365  # "bwse": held shared by every insert into balance_rows until its commit
# How close to the database's clock the seal may come (the keeper's ROLLUP_GRACE): rows read
# from the socket reach the database within seconds, and those later than this mark their day.
_GRACE = "interval '2 minutes'"

_STATE = [
    "ALTER TABLE rollup_state ADD COLUMN sealed_until timestamptz",
    "UPDATE rollup_state SET sealed_until = rolled_until",
    "ALTER TABLE rollup_state ALTER COLUMN sealed_until SET NOT NULL",
    "ALTER TABLE rollup_state ADD CONSTRAINT rollup_state_sealed_after_rolled "
    "CHECK (sealed_until >= rolled_until)",
]

# The shared lock comes first: the seal read after it is the newest, or a seal waits for this
# transaction's commit, so that the rollup after it reads these rows.
_INVALIDATE = f"""
CREATE OR REPLACE FUNCTION rollup_invalidate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    state rollup_state;
BEGIN
    PERFORM pg_advisory_xact_lock_shared({_SEAL_KEY});
    SELECT * INTO state FROM rollup_state;
    IF (SELECT min(received_at) FROM new_rows) >= state.sealed_until THEN
        RETURN NULL;
    END IF;
    INSERT INTO rollup_invalid (day)
    SELECT DISTINCT {_UTC_DAY.format(at="n.received_at")} FROM new_rows n
    WHERE n.received_at < state.sealed_until
      AND n.received_at >= {_DAY_START.format(day="state.kept_from")}
    ORDER BY 1
    ON CONFLICT (day) DO UPDATE SET marked_at = excluded.marked_at;
    RETURN NULL;
END
$$
"""  # noqa: S608 (our constants only)

# Under the maintenance lock first (a rollup moving the watermark updates the same row), then
# the seal's, tried for 100 ms at a time. Never backwards, never closer to the clock than the
# grace. The new seal; NULL when the writers held the lock through every try.
_SEAL = f"""
CREATE FUNCTION seal_rollup(until timestamptz) RETURNS timestamptz
LANGUAGE plpgsql VOLATILE STRICT SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    sealed timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock({_LOCK_KEY});
    PERFORM set_config('lock_timeout', '100ms', true);
    FOR attempt IN 1..10 LOOP
        BEGIN
            PERFORM pg_advisory_xact_lock({_SEAL_KEY});
            UPDATE rollup_state
            SET sealed_until = greatest(sealed_until, least(until, clock_timestamp() - {_GRACE}))
            RETURNING sealed_until INTO sealed;
            RETURN sealed;
        EXCEPTION WHEN lock_not_available THEN
            PERFORM pg_sleep(0.2);
        END;
    END LOOP;
    RETURN NULL;
END
$$
"""  # noqa: S608 (our constants only)

# 0015's, bounded by the seal instead of the clock.
_CLOCK_BOUND = f"clock_timestamp() - {_THROUGH_TODAY._GRACE}"
_ROLL_UP_TO = _THROUGH_TODAY._ROLL_UP_TO.replace(
    "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"
).replace(_CLOCK_BOUND, "state.sealed_until")

# A role that may move the watermark (the README's) may seal.
_SHARE_GRANTS = grants_following("roll_up_to(timestamptz)", "seal_rollup(timestamptz)")


def upgrade() -> None:
    if _CLOCK_BOUND not in _THROUGH_TODAY._ROLL_UP_TO:  # 0015's text changed: nothing to bound
        raise RuntimeError("0018: roll_up_to's text is not 0015's")
    for statement in _STATE:
        op.execute(statement)
    op.execute(_SEAL)
    op.execute("REVOKE EXECUTE ON FUNCTION seal_rollup(timestamptz) FROM PUBLIC")
    op.execute(_SHARE_GRANTS)
    op.execute(_ROLL_UP_TO)
    op.execute(_INVALIDATE)
    op.execute("ANALYZE rollup_state")


def downgrade() -> None:
    # 0015's functions again: rows under 5 minutes old are taken as they come, and the
    # watermark stays 15 minutes behind the clock.
    op.execute(_THROUGH_TODAY._INVALIDATE)
    op.execute(_THROUGH_TODAY._ROLL_UP_TO.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
    op.execute("DROP FUNCTION seal_rollup(timestamptz)")
    op.execute("ALTER TABLE rollup_state DROP COLUMN sealed_until")
    op.execute("ANALYZE rollup_state")
