"""The history as compact rows in day partitions (migration 0009): where rows land, the
writer's pair ids, the partitions made ahead, and the upgrade from the plain table."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from balancewatch.daemon.partitions import PREMAKE_DAYS, PartitionKeeper
from balancewatch.store import migrate, partitions
from tests.helpers import SOL, TOKEN, WALLET, WALLET2, downgrade
from tests.writing import make_line, make_writer

pytestmark = pytest.mark.usefixtures("writers_closed")

INSERT = (
    "INSERT INTO balance_history (wallet, token, amount, received_at, source, slot, epoch) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7)"
)


async def a_current_epoch(db: Any) -> int:
    """An epoch whose tenure is current, so the fencing trigger takes its rows."""
    await db.execute("UPDATE shard_leases SET owner = 'a', epoch = 42 WHERE shard = 0")
    await db.execute(
        "INSERT INTO shard_tenures (epoch, shard, owner, granted_at) VALUES (42, 0, 'a', now())"
    )
    return 42


async def partition_of(db: Any, received_at: datetime) -> str:
    await db.execute(INSERT, WALLET, TOKEN, 1, received_at, "stream", None, None)
    return str(
        await db.fetchval(
            "SELECT tableoid::regclass::text FROM balance_rows WHERE received_at = $1", received_at
        )
    )


async def test_a_row_lands_in_the_partition_of_its_day(db: Any) -> None:
    now = datetime.now(UTC)
    assert await partition_of(db, now) == f"balance_rows_{now:%Y%m%d}"


@pytest.mark.parametrize("years", [-30, 30])
async def test_a_row_far_in_the_past_or_future_lands_in_the_default_partition(
    db: Any, years: int
) -> None:
    at = datetime.now(UTC) + timedelta(days=365 * years)
    assert await partition_of(db, at) == "balance_rows_default"
    assert await db.fetchval("SELECT count(*) FROM balance_history") == 1


async def test_the_writer_adds_the_new_pairs_of_a_batch_and_stores_each_row_under_its_own(
    engine: AsyncEngine, db: Any
) -> None:
    await db.execute(INSERT, WALLET, TOKEN, 1, datetime.now(UTC), "snapshot", 7, None)
    now = datetime.now(UTC)
    batches = [
        [(WALLET, TOKEN, "2"), (WALLET, SOL, "3"), (WALLET2, TOKEN, "4")],  # two new pairs
        [(WALLET2, TOKEN, "5"), (WALLET2, SOL, "6")],  # one known by now, one new
    ]
    writer = make_writer(engine)
    for n, batch in enumerate(batches):
        for wallet, token, amount in batch:
            writer.add(make_line(wallet, token, amount, now + timedelta(seconds=n)))
        assert await writer.flush()
    stored = await db.fetch(
        "SELECT wallet, token, amount::text, source FROM balance_history ORDER BY id"
    )
    expected = [(WALLET, TOKEN, "1", "snapshot")]
    expected += [(*row, "stream") for batch in batches for row in batch]
    assert [tuple(row) for row in stored] == expected
    assert await db.fetchval("SELECT count(*) FROM pairs") == 4


async def test_the_partitions_task_makes_the_missing_days_once_even_two_at_once(
    engine: AsyncEngine, db: Any
) -> None:
    ahead = datetime.now(UTC).date() + timedelta(days=PREMAKE_DAYS)
    for day in (ahead, ahead - timedelta(days=1)):
        await db.execute(f"DROP TABLE balance_rows_{day:%Y%m%d}")
    keepers = [PartitionKeeper(engine), PartitionKeeper(engine)]
    outcomes = await asyncio.gather(*(keeper.make_ahead() for keeper in keepers))
    made = [day for outcome in outcomes for day, what in outcome.items() if what == "created"]
    assert sorted(made) == [ahead - timedelta(days=1), ahead]
    firsts = {span.first for span in await partitions.existing(engine)}
    assert {ahead, ahead - timedelta(days=1)} <= firsts
    assert await keepers[0].make_ahead() == {}


async def test_a_day_whose_rows_are_in_the_default_partition_is_left_alone(
    engine: AsyncEngine, db: Any
) -> None:
    ahead = datetime.now(UTC).date() + timedelta(days=PREMAKE_DAYS)
    await db.execute(f"DROP TABLE balance_rows_{ahead:%Y%m%d}")
    noon = datetime(ahead.year, ahead.month, ahead.day, 12, tzinfo=UTC)
    assert await partition_of(db, noon) == "balance_rows_default"
    keeper = PartitionKeeper(engine)
    with capture_logs() as logs:
        assert await keeper.make_ahead() == {ahead: "default_has_rows"}
    assert keeper.left_to_default == 1
    assert [e["day"] for e in logs if e["event"] == "partitions.default_has_rows"] == [str(ahead)]
    assert await db.fetchval("SELECT count(*) FROM balance_history") == 1


async def test_the_upgrade_from_0008_keeps_every_row_and_its_id_and_the_identity_goes_on(
    engine: AsyncEngine, db: Any
) -> None:
    await downgrade(engine, "0008")
    epoch = await a_current_epoch(db)
    old = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    rows = [
        (WALLET, TOKEN, "1.5", old, "stream", None, epoch),
        (WALLET, TOKEN, "2", old + timedelta(days=1), "snapshot", 123, None),
        (WALLET, SOL, "0", datetime.now(UTC), "check", 124, None),
        (WALLET2, TOKEN, "7", old - timedelta(days=3), "stream", None, None),
    ]
    for row in rows:
        await db.execute(INSERT, *row)
    await db.execute("DELETE FROM balance_history WHERE amount = 7")  # a gap in the ids
    await db.execute(INSERT, *rows[3])
    before = await db.fetch("SELECT * FROM balance_history ORDER BY id")
    await migrate.upgrade(engine)
    after = await db.fetch("SELECT * FROM balance_history ORDER BY id")
    assert [tuple(row) for row in after] == [tuple(row) for row in before]
    assert [row["id"] for row in after] == [1, 2, 3, 5]
    await db.execute(INSERT, WALLET, TOKEN, 9, datetime.now(UTC), "stream", None, None)
    assert await db.fetchval("SELECT max(id) FROM balance_history") == 6
    first_day = await db.fetchval("SELECT tableoid::regclass::text FROM balance_rows WHERE id = 5")
    assert first_day == f"balance_rows_{(old - timedelta(days=3)):%Y%m%d}"


async def test_the_downgrade_to_0008_keeps_every_row_and_its_id(
    engine: AsyncEngine, db: Any
) -> None:
    epoch = await a_current_epoch(db)
    for n, source in enumerate(("stream", "snapshot", "check")):
        at = datetime.now(UTC) - timedelta(days=n)
        await db.execute(INSERT, WALLET, TOKEN, n, at, source, n or None, epoch if n else None)
    before = await db.fetch("SELECT * FROM balance_history ORDER BY id")
    await downgrade(engine, "0008")
    assert (
        await db.fetchval("SELECT relkind FROM pg_class WHERE relname = 'balance_history'") == b"r"
    )
    after = await db.fetch("SELECT * FROM balance_history ORDER BY id")
    assert [tuple(row) for row in after] == [tuple(row) for row in before]
    await migrate.upgrade(engine)
    assert await db.fetchval("SELECT count(*) FROM balance_history") == 3
