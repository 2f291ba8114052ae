"""`pair_rows_at(pair_id, at, n)` (migration 0017): a pair's n newest rows at or before a time,
the same as a scan of its whole history whatever the rollups say (current, behind, or wrong
after a delete), and read from the partitions of their days once those are rolled up."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.daemon.partitions import PartitionKeeper
from tests.helpers import SOL, TOKEN, WALLET, WALLET2

TODAY = datetime.now(UTC).date()
INSERT = (
    "INSERT INTO balance_history (wallet, token, amount, received_at, source) "
    "VALUES ($1, $2, $3::numeric, $4, 'stream')"
)
NAIVE = (
    "SELECT id, amount FROM balance_rows WHERE pair_id = $1 AND received_at <= $2 "
    "ORDER BY received_at DESC, id DESC LIMIT $3"
)
FOUND = "SELECT id, amount FROM pair_rows_at($1, $2, $3)"
COUNTS = (1, 2, 3, 5, 50, None)  # rows asked for; None: every one


def at(days_ago: int, hour: int) -> datetime:
    return datetime.combine(TODAY - timedelta(days=days_ago), time(hour), UTC)


async def pair_id(db: Any, wallet: str, token: str) -> int:
    found: int = await db.fetchval(
        "SELECT pair_id FROM pairs WHERE wallet = $1 AND token = $2", wallet, token
    )
    return found


async def store(db: Any) -> None:
    for days_ago in (6, 5, 3):
        await db.execute("SELECT create_balance_partition($1, 1)", TODAY - timedelta(days=days_ago))
    rows = [
        (WALLET, TOKEN, "1", at(6, 10)),
        (WALLET, TOKEN, "2", at(6, 10)),  # the same time, a higher id: the newer
        (WALLET, TOKEN, "3", at(5, 1)),
        (WALLET, TOKEN, "4", at(3, 23)),
        (WALLET, TOKEN, "5", at(40, 12)),  # a day without a partition: the default one
        (WALLET, TOKEN, "6", datetime.now(UTC) - timedelta(minutes=1)),  # after the watermark
        (WALLET2, SOL, "7", datetime.now(UTC) - timedelta(minutes=2)),  # a pair new today
    ]
    await db.executemany(INSERT, rows)


def moments() -> list[datetime]:
    """Before, on and between the rows' days, on the days' edges, and now."""
    now = datetime.now(UTC)
    return [
        at(50, 0),
        at(40, 12),
        at(7, 0),
        at(6, 9),
        at(6, 10),
        at(5, 0),
        at(4, 12),
        at(3, 23),
        at(1, 0),
        now - timedelta(minutes=90),
        now,
        now + timedelta(days=30),
    ]


async def agree(db: Any, pair: int) -> None:
    for moment in moments():
        for n in COUNTS:
            expected = await db.fetch(NAIVE, pair, moment, n)
            assert await db.fetch(FOUND, pair, moment, n) == expected, (moment, n)


async def test_the_newest_row_at_a_time_is_the_same_before_and_after_the_rollups(
    engine: AsyncEngine, db: Any
) -> None:
    await store(db)
    pairs = [await pair_id(db, WALLET, TOKEN), await pair_id(db, WALLET2, SOL)]
    for pair in pairs:
        await agree(db, pair)  # nothing rolled up
    await PartitionKeeper(engine).roll_up()
    assert await db.fetchval("SELECT count(*) FROM daily_rows") > 0
    for pair in pairs:
        await agree(db, pair)


async def test_rows_deleted_after_their_day_was_rolled_up_do_not_hide_older_ones(
    engine: AsyncEngine, db: Any
) -> None:
    await store(db)
    await PartitionKeeper(engine).roll_up()
    pair = await pair_id(db, WALLET, TOKEN)
    # daily_rows still says the pair has rows three days ago: the bounded lookup finds none.
    await db.execute(
        "DELETE FROM balance_rows WHERE pair_id = $1 AND received_at >= $2 AND received_at < $3",
        pair,
        at(3, 0),
        at(2, 0),
    )
    await agree(db, pair)
    assert await db.fetchval("SELECT balance_at($1, $2, $3)", WALLET, TOKEN, at(1, 0)) == 3


async def test_a_rolled_up_lookup_reads_only_the_partitions_of_its_days(
    engine: AsyncEngine, db: Any
) -> None:
    await store(db)
    await PartitionKeeper(engine).roll_up()
    pair = await pair_id(db, WALLET, TOKEN)
    scans = await index_scans(db)
    await db.fetchrow(FOUND, pair, at(4, 12), 1)  # the newest is five days ago, at 01:00
    read = {name for name, count in (await index_scans(db)).items() if count > scans[name]}
    its_day = f"balance_rows_{TODAY - timedelta(days=5):%Y%m%d}"
    assert its_day in read
    assert read <= {its_day, "balance_rows_default"}


async def index_scans(db: Any) -> dict[str, int]:
    await db.execute("SELECT pg_stat_force_next_flush()")
    rows = await db.fetch(
        "SELECT relname, idx_scan FROM pg_stat_user_tables WHERE relname LIKE 'balance_rows_%'"
    )
    return {row["relname"]: row["idx_scan"] or 0 for row in rows}


async def test_balance_at_and_balance_as_of_answer_from_it(engine: AsyncEngine, db: Any) -> None:
    await store(db)
    await PartitionKeeper(engine).roll_up()
    assert await db.fetchval("SELECT balance_at($1, $2, $3)", WALLET, TOKEN, at(6, 12)) == 2
    row = await db.fetchrow(
        "SELECT amount, received_at, source FROM balance_as_of($1, $2, $3)", WALLET, TOKEN, at(4, 0)
    )
    assert tuple(row) == (3, at(5, 1), "stream")
    assert await db.fetchval("SELECT balance_at($1, $2, $3)", WALLET2, SOL, at(1, 0)) is None


async def test_a_pair_without_rows_before_the_time_reads_no_day_partition(
    engine: AsyncEngine, db: Any
) -> None:
    """With no day marked, the rollups say the pair has nothing before its first rolled-up day:
    only the default partition (late rows of dropped days) is looked at below it."""
    await store(db)
    await PartitionKeeper(engine).roll_up()
    assert await db.fetchval("SELECT count(*) FROM rollup_invalid") == 0
    new_today = await pair_id(db, WALLET2, SOL)
    scans = await index_scans(db)
    assert await db.fetch(FOUND, new_today, at(4, 12), 1) == []
    read = {name for name, count in (await index_scans(db)).items() if count > scans[name]}
    assert read <= {"balance_rows_default"}
