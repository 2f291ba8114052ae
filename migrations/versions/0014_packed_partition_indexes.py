"""Each partition of balance_rows gets its own index on (pair_id, received_at, id), not one
inherited from balance_rows, so that the daemon can pack a closed partition's index without
blocking reads: `pack_balance_partition(first_day)` builds a packed copy (a closed day takes no
writes; reads go on) and drops the one that grew with the day, a lock of milliseconds.

Why: rows arrive in time order, so a day's index takes each pair's rows a few at a time, at
the end of short runs spread over every page; pages split in half and stay about 56 % full
(65 bytes an entry at 10 million rows, against about 36 built at once). A `REINDEX` packs
it too, but holds an `ACCESS EXCLUSIVE` lock on the index for the whole rebuild, and the
planner takes a lock on every partition's index: every query on the history would wait for
it. An index inherited from the parent cannot be dropped on its own, hence one per partition.

The upgrade builds every partition's index with `CREATE INDEX CONCURRENTLY` while the daemon
writes (the closed partitions' come out packed), then drops the inherited one, a moment's
lock. Stopped part way, it is finished by running `balancewatch migrate` again.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa
from alembic import op

from balancewatch.logs import get_logger
from balancewatch.progress import Progress, shown
from balancewatch.store.migration_sql import grants_following

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = get_logger(__name__)

# The daemon's maintenance lock (balancewatch/store/partitions.py, "bwpt"), copied.
_LOCK_KEY = 0x62777074
_INHERITED = "balance_rows_pair_received_at_idx"
_KEY = "(pair_id, received_at, id)"
# A partition's index: "_pair_idx" while it takes rows, "_packed_idx" once built again after
# its days closed. The name is the state: `\di` shows it, and a pack stopped half way (both
# exist) is finished by the next.
_LIVE = "{0}_pair_idx"
_PACKED = "{0}_packed_idx"
# As the keeper's rollup grace (daemon/partitions.py): a partition is closed an hour after its
# last day ended, once the writes begun before midnight have committed.
_GRACE = timedelta(hours=1)

# 0013's function, which now makes the partition's own index too.
_CREATE = """
CREATE OR REPLACE FUNCTION create_balance_partition(first_day date, days integer) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    name text := 'balance_rows_' || to_char(first_day, 'YYYYMMDD');
    low timestamptz := first_day::timestamp AT TIME ZONE 'UTC';
    high timestamptz := (first_day + days)::timestamp AT TIME ZONE 'UTC';
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
    );{index}
    RETURN 'created';
END
$$
"""
_OWN_INDEX = f"""
    EXECUTE format('CREATE INDEX %I ON %I {_KEY}', name || '_pair_idx', name);"""

# The packed index is built under a SHARE lock of the partition (reads go on; a late row of
# its days waits), then the grown one dropped, which takes the partition's ACCESS EXCLUSIVE
# lock: tried for 100 ms at a time, so that a long report holding the partition makes
# readers queue behind the drop for no longer than that; after 10 tries (3 s), 'busy', and
# the next turn finishes it. The build's own wait is longer (5 s): an autovacuum of the
# partition, likely just after its day closed, gives way only after deadlock_timeout (1 s).
_PACK = f"""
CREATE FUNCTION pack_balance_partition(first_day date) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT SECURITY DEFINER
SET search_path = public, pg_temp SET lock_timeout = '5s' AS $$
DECLARE
    name text := 'balance_rows_' || to_char(first_day, 'YYYYMMDD');
    grown text := name || '_pair_idx';
    packed text := name || '_packed_idx';
    ends date;
BEGIN
    PERFORM pg_advisory_xact_lock({_LOCK_KEY});
    SELECT b.end_day INTO ends FROM balance_partition_bounds() b WHERE b.relname = name;
    IF ends IS NULL THEN
        RETURN 'missing';
    END IF;
    IF ends::timestamp AT TIME ZONE 'UTC' > clock_timestamp() - interval '{_GRACE.seconds} s' THEN
        RETURN 'not_closed';
    END IF;
    IF to_regclass(packed) IS NULL THEN
        EXECUTE format('CREATE INDEX %I ON %I {_KEY}', packed, name);
    ELSIF to_regclass(grown) IS NULL THEN
        RETURN 'packed_already';
    END IF;
    PERFORM set_config('lock_timeout', '100ms', true);
    FOR attempt IN 1..10 LOOP
        BEGIN
            EXECUTE format('DROP INDEX IF EXISTS %I', grown);
            RETURN 'packed';
        EXCEPTION WHEN lock_not_available THEN
            PERFORM pg_sleep(0.2);
        END;
    END LOOP;
    RETURN 'busy';
END
$$
"""  # noqa: S608 (our constants only)

# Roles that may make partitions (the README's least-privilege role) may pack them, and count
# the default partition's rows: 0013 asked upgraded installs to grant that one by hand.
_SHARE_GRANTS = grants_following(
    "create_balance_partition(date, integer)",
    "pack_balance_partition(date)",
    "default_partition_rows()",
)

# Every partition and what its own index is to be called: packed if it is closed.
_PARTITIONS = """
SELECT c.relname, b.end_day IS NOT NULL
       AND (b.end_day::timestamp AT TIME ZONE 'UTC') <= now() - CAST(:grace AS interval) AS closed
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
LEFT JOIN balance_partition_bounds() b ON b.relname = c.relname
WHERE i.inhparent = 'balance_rows'::regclass
ORDER BY c.relname
"""


def upgrade() -> None:
    started = time.monotonic()
    with op.get_context().autocommit_block():
        built = _build_each()
    blocked_from = time.monotonic()
    # Under the keeper's lock: no partition is made meanwhile by 0013's function, with only
    # the inherited index; one made since the build above gets its index here (it is new,
    # nearly empty). The history's lock first, as the drop needs it: taken after a
    # partition's, a writer holding the history and waiting for that partition would deadlock.
    op.execute(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})")
    op.execute("LOCK TABLE balance_rows IN ACCESS EXCLUSIVE MODE")
    op.execute(_CREATE.format(index=_OWN_INDEX))
    for name, _ in _partitions():
        if not (_exists(_LIVE.format(name)) or _exists(_PACKED.format(name))):
            op.execute(f'CREATE INDEX "{_LIVE.format(name)}" ON "{name}" {_KEY}')
    op.execute(f"DROP INDEX {_INHERITED}")  # and the partitions' copies
    op.execute(_PACK)
    op.execute("REVOKE EXECUTE ON FUNCTION pack_balance_partition(date) FROM PUBLIC")
    op.execute(_SHARE_GRANTS)
    log.info(
        "migrate.partition_indexes_built",
        partitions=len(built),
        packed=sum(built),
        seconds=round(time.monotonic() - started, 1),
        writes_blocked_ms=round((time.monotonic() - blocked_from) * 1000),
    )


def _build_each() -> list[bool]:
    """Each partition's index, one after another: a bar of them on a terminal (a long
    history's build takes minutes), a line at most every 3 s otherwise."""
    partitions = _partitions()
    built: list[bool] = []
    lines = Progress("migrate.partition_indexes_progress", interval=3.0)
    with shown(lines, "indexing the partitions", len(partitions)) as step:
        for name, closed in partitions:
            built.append(_build_concurrently(name, closed))
            step(len(built), partitions=len(built), of=len(partitions))
    return built


def _partitions() -> list[tuple[str, bool]]:
    rows = op.get_bind().execute(sa.text(_PARTITIONS), {"grace": _GRACE})
    return [(name, closed) for name, closed in rows]


def _build_concurrently(partition: str, closed: bool) -> bool:
    """The partition's own index, built while writes go on; whether it is the packed one. A
    build stopped part way leaves an invalid index, dropped and built again."""
    name = (_PACKED if closed else _LIVE).format(partition)
    if _exists(name) and not _valid(name):
        op.execute(f'DROP INDEX CONCURRENTLY "{name}"')
    if not _exists(_PACKED.format(partition)):
        op.execute(f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}" ON "{partition}" {_KEY}')
    return closed


def _exists(index: str) -> bool:
    found = op.get_bind().execute(sa.text("SELECT to_regclass(:name)"), {"name": index})
    return found.scalar() is not None


def _valid(index: str) -> bool:
    valid = op.get_bind().execute(
        sa.text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)"),
        {"name": index},
    )
    return bool(valid.scalar())


def downgrade() -> None:
    op.execute("DROP FUNCTION pack_balance_partition(date)")
    op.execute(_CREATE.format(index=""))
    op.execute(f"CREATE INDEX {_INHERITED} ON ONLY balance_rows {_KEY}")
    for name, _ in _partitions():
        live, packed = _LIVE.format(name), _PACKED.format(name)
        if _exists(packed):
            op.execute(f'DROP INDEX IF EXISTS "{live}"')
        # The name Postgres gives an inherited index: an upgrade again must not take it for
        # a partition's own index (it goes with the inherited one).
        inherited = f"{name}_pair_id_received_at_id_idx"
        op.execute(f'ALTER INDEX "{packed if _exists(packed) else live}" RENAME TO "{inherited}"')
        op.execute(f'ALTER INDEX {_INHERITED} ATTACH PARTITION "{inherited}"')
