"""Daily rollups and retention (migration 0011): balance_daily equals the raw rows' daily
aggregates before and after the maintenance, a late row is counted, and the retention drops
only whole old partitions, never the default one, keeping the rollups."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from balancewatch.daemon.partitions import PartitionKeeper
from balancewatch.store import migrate
from balancewatch.store.db import asyncpg_dsn
from tests.helpers import SOL, TOKEN, WALLET, WALLET2, downgrade

TODAY = datetime.now(UTC).date()
NOON = datetime.combine(TODAY, time(12), UTC)  # the keeper's clock: yesterday is closed
INSERT = (
    "INSERT INTO balance_history (wallet, token, amount, received_at, source) "
    "VALUES ($1, $2, $3::numeric, $4, $5)"
)
DAILY = "SELECT wallet, token, day, first, last, low, high, messages FROM balance_daily"
# README query 8 as it was before balance_daily: the aggregates of the raw rows.
RAW = """
SELECT wallet, token, (received_at AT TIME ZONE 'UTC')::date AS day,
       (array_agg(amount ORDER BY received_at, id))[1] AS first,
       (array_agg(amount ORDER BY received_at DESC, id DESC))[1] AS last,
       min(amount) AS low, max(amount) AS high, count(*) AS messages
FROM balance_history GROUP BY 1, 2, 3
"""


def at(days_ago: int, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(TODAY - timedelta(days=days_ago), time(hour, minute), UTC)


def days(*days_ago: int) -> list[date]:
    return [TODAY - timedelta(days=n) for n in days_ago]


def keeper(engine: AsyncEngine, retention: timedelta | None = None) -> PartitionKeeper:
    return PartitionKeeper(engine, retention=retention, now=lambda: NOON)


async def make_partitions(db: Any, *days_ago: int, create: str = "($1, 1)") -> None:
    for n in days_ago:
        await db.execute(f"SELECT create_balance_partition{create}", TODAY - timedelta(days=n))


async def storedays(db: Any, *days_ago: int) -> None:
    """Rows of each day: two pairs, every source, a tie in received_at (ordered by id)."""
    for n in days_ago:
        rows = [
            (WALLET, TOKEN, f"{10 + n}", at(n, 0, 5), "snapshot"),
            (WALLET, TOKEN, "3.5", at(n, 6), "stream"),
            (WALLET, TOKEN, "99", at(n, 6), "stream"),  # same instant, later id: the last of two
            (WALLET, TOKEN, f"{n}.25", at(n, 23, 59) if n else at(0, 0, 30), "check"),
            (WALLET2, SOL, "7", at(n, 1), "stream"),
        ]
        await db.executemany(INSERT, rows)


async def daily(db: Any, query: str = DAILY) -> list[tuple[Any, ...]]:
    return sorted(tuple(row) for row in await db.fetch(query))


async def live_from(db: Any) -> date:
    day: date = await db.fetchval("SELECT live_from FROM rollup_state")
    return day


async def test_the_daily_view_equals_the_raw_aggregates_before_and_after_the_rollup(
    engine: AsyncEngine, db: Any
) -> None:
    await make_partitions(db, 3, 2, 1)
    await storedays(db, 3, 2, 1, 0)
    raw = await daily(db, RAW)
    assert len(raw) == 8
    assert await daily(db) == raw  # nothing rolled up: the closed days are read live
    assert await keeper(engine).roll_up() == days(3, 2, 1)
    assert await db.fetchval("SELECT count(*) FROM daily_rows WHERE day < $1", TODAY) == 6
    assert await live_from(db) == TODAY
    assert await db.fetchval("SELECT count(*) FROM rollup_invalid") == 0
    assert await daily(db) == raw
    assert await keeper(engine).roll_up() == []  # nothing more to do


async def test_the_view_reads_from_the_oldest_row_after_the_upgrade_and_then_rolls_up(
    engine: AsyncEngine, db: Any
) -> None:
    await downgrade(engine, "0009")
    await make_partitions(db, 5, 4, create="($1)")  # a day, the only width before 0013
    await storedays(db, 5, 4, 0)
    await migrate.upgrade(engine)
    assert await live_from(db) == TODAY - timedelta(days=5)
    raw = await daily(db, RAW)
    assert await daily(db) == raw
    await keeper(engine).roll_up()
    assert await live_from(db) == TODAY
    assert await daily(db) == raw


async def test_a_late_row_of_a_rolled_up_day_is_counted_now_and_after_the_next_rollup(
    engine: AsyncEngine, db: Any
) -> None:
    await make_partitions(db, 2)
    await storedays(db, 2, 0)
    await keeper(engine).roll_up()
    await db.execute(INSERT, WALLET, TOKEN, "-1", at(2, 23, 59), "stream")  # a spool replay
    assert await db.fetchval("SELECT day FROM rollup_invalid") == TODAY - timedelta(days=2)
    raw = await daily(db, RAW)
    assert await daily(db) == raw  # the marked day is read live meanwhile
    assert await keeper(engine).roll_up() == [TODAY - timedelta(days=2)]
    assert await db.fetchval("SELECT count(*) FROM rollup_invalid") == 0
    figures = await db.fetchrow(
        "SELECT last, low, messages FROM daily_rows d JOIN pairs p USING (pair_id) "
        "WHERE p.token = $1 AND d.day = $2",
        TOKEN,
        TODAY - timedelta(days=2),
    )
    assert tuple(figures) == (-1, -1, 5)
    assert await daily(db) == raw


async def test_rows_after_the_seal_mark_nothing_and_rows_before_it_mark_their_day(
    engine: AsyncEngine, db: Any
) -> None:
    now = datetime.now(UTC)
    older = now - timedelta(minutes=20)
    await PartitionKeeper(engine).roll_up()  # sealed to two minutes ago
    await db.execute(INSERT, WALLET, TOKEN, "1", now - timedelta(minutes=1), "stream")
    assert await db.fetchval("SELECT count(*) FROM rollup_invalid") == 0
    await db.execute(INSERT, WALLET, TOKEN, "2", older, "stream")  # a spool replay
    assert await db.fetchval("SELECT day FROM rollup_invalid") == older.date()
    await PartitionKeeper(engine).roll_up()
    assert await daily(db) == await daily(db, RAW)


async def test_a_write_in_flight_holds_the_seal_and_is_counted_once_it_commits(
    engine: AsyncEngine, db: Any, database_url: Any
) -> None:
    """The race the seal closes: rows inserted below the next seal, committed only after the
    rollup would have read the rows. The seal waits for the commit (here: gives up, and the
    watermark stays), so the rows are in the next rollup, once."""
    now = datetime.now(UTC)
    writer = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        in_flight = writer.transaction()
        await in_flight.start()
        await writer.execute(INSERT, WALLET, TOKEN, "5", now - timedelta(minutes=10), "stream")
        before = await db.fetchval("SELECT sealed_until FROM rollup_state")
        await PartitionKeeper(engine).roll_up()  # the seal's lock is held: it stays
        assert await db.fetchval("SELECT sealed_until FROM rollup_state") == before
        await in_flight.commit()
    finally:
        await writer.close()
    assert await db.fetchval("SELECT count(*) FROM rollup_invalid") == 0  # not below the seal
    await PartitionKeeper(engine).roll_up()
    assert await db.fetchval("SELECT rolled_until FROM rollup_state") > now - timedelta(minutes=3)
    counted = await db.fetchval("SELECT sum(messages) FROM daily_rows")
    assert counted == 1
    assert await daily(db) == await daily(db, RAW)


async def test_today_is_rolled_up_to_two_minutes_ago_and_the_rest_read_live(
    engine: AsyncEngine, db: Any
) -> None:
    now = datetime.now(UTC)
    ago = [now - timedelta(minutes=minutes) for minutes in (190, 130, 70, 10, 1)]
    rows = [(WALLET, TOKEN, f"{n}.5", moment, "stream") for n, moment in enumerate(ago)]
    await db.executemany(INSERT, [*rows, (WALLET2, SOL, "7", ago[1], "snapshot")])
    raw = await daily(db, RAW)
    earlier = PartitionKeeper(engine, now=lambda: now - timedelta(minutes=100))
    await earlier.roll_up()  # to 102 minutes ago: the first two rows, a day computed anew
    assert await daily(db) == raw
    await PartitionKeeper(engine).roll_up()  # to 2 minutes ago: the next two rows, merged
    assert await db.fetchval("SELECT count(*) FROM rollup_invalid") == 0
    watermark = await db.fetchval("SELECT rolled_until FROM rollup_state")
    assert ago[3] < watermark <= datetime.now(UTC) - timedelta(minutes=2)
    counted = await db.fetchval(
        "SELECT sum(messages) FROM daily_rows d JOIN pairs p USING (pair_id) WHERE p.token = $1",
        TOKEN,
    )
    assert counted == 4
    assert await daily(db) == raw  # the rollup and the last rows, live, merged


async def test_two_replicas_rolling_up_at_once_do_each_day_once(
    engine: AsyncEngine, db: Any
) -> None:
    await make_partitions(db, 3, 2, 1)
    await storedays(db, 3, 2, 1)
    done = await asyncio.gather(keeper(engine).roll_up(), keeper(engine).roll_up())
    assert sorted(day for each in done for day in each) == days(3, 2, 1)
    assert await daily(db) == await daily(db, RAW)


async def partitions(db: Any) -> set[str]:
    names = await db.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'balance_rows'::regclass"
    )
    return {row["relname"] for row in names}


def partition(days_ago: int) -> str:
    return f"balance_rows_{TODAY - timedelta(days=days_ago):%Y%m%d}"


async def test_the_retention_drops_whole_old_partitions_once_rolled_up_and_keeps_rollups(
    engine: AsyncEngine, db: Any
) -> None:
    await make_partitions(db, 40, 20, 2)
    await storedays(db, 40, 20, 2, 0)
    await db.execute(INSERT, WALLET, SOL, "1", datetime(1990, 1, 1, tzinfo=UTC), "stream")
    old = keeper(engine, retention=timedelta(days=10))
    assert await old.drop_old() == []  # not rolled up yet: kept
    before = await daily(db)
    await old.maintain()
    with capture_logs() as logs:
        assert await old.drop_old() == []
    assert logs == []
    assert old.dropped == 2
    names = await partitions(db)
    assert {partition(40), partition(20)} & names == set()
    assert {partition(2), partition(0), "balance_rows_default"} <= names
    assert await daily(db) == before  # the rollups of the dropped days are kept
    kept = await db.fetch(
        "SELECT DISTINCT (received_at AT TIME ZONE 'UTC')::date FROM balance_history"
    )
    assert sorted(row[0] for row in kept) == [date(1990, 1, 1), *days(2, 0)]
    assert await daily(db, RAW) == [row for row in before if row[2] not in days(40, 20)]
    # A late row of a dropped day stays in the history, in the default partition; its day is
    # final.
    await db.execute(INSERT, WALLET, TOKEN, "5", at(40, 12), "stream")
    assert await db.fetchval("SELECT count(*) FROM rollup_invalid") == 0
    assert await daily(db) == before


async def test_the_retention_logs_each_drop(engine: AsyncEngine, db: Any) -> None:
    await make_partitions(db, 30)
    await storedays(db, 30)
    with capture_logs() as logs:
        await keeper(engine, retention=timedelta(weeks=2)).maintain()
    (dropped,) = [e for e in logs if e["event"] == "partitions.dropped"]
    assert dropped["days"] == [str(TODAY - timedelta(days=30))]


@pytest.mark.parametrize("retention", [None, timedelta(days=400)])
async def test_nothing_is_dropped_without_a_retention_or_within_it(
    engine: AsyncEngine, db: Any, retention: timedelta | None
) -> None:
    await make_partitions(db, 30)
    await storedays(db, 30)
    before = await partitions(db)
    await keeper(engine, retention=retention).maintain()
    assert await partitions(db) == before
