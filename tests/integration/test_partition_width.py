"""Partitions of a week (migration 0013): made ahead from Monday around the day partitions that
exist, rows landing in them, the retention dropping a week only once all its days are rolled
up and old enough, the rows of the default partition counted, and the grants of the old
`create_balance_partition(date)` carried over."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.daemon.partitions import PartitionKeeper
from balancewatch.store import migrate, partitions
from balancewatch.store.partitions import Span
from tests.data import insert
from tests.helpers import TOKEN, WALLET, downgrade

TODAY = datetime.now(UTC).date()
NOON = datetime.combine(TODAY, time(12), UTC)


def monday_of(day: date) -> date:
    return day - timedelta(days=day.weekday())


def week_from(first: date) -> Span:
    return Span(first, first + timedelta(weeks=1))


def at_noon(day: date) -> datetime:
    return datetime.combine(day, time(12), UTC)


async def partition_of(db: Any, received_at: datetime) -> str:
    await insert(db, [(WALLET, TOKEN, "1", received_at)])
    return str(
        await db.fetchval(
            "SELECT tableoid::regclass::text FROM balance_rows WHERE received_at = $1", received_at
        )
    )


async def test_weeks_from_monday_are_made_around_a_day_partition_and_take_their_rows(
    engine: AsyncEngine, db: Any
) -> None:
    monday = monday_of(TODAY) + timedelta(weeks=9)
    wednesday, friday = monday + timedelta(days=2), monday + timedelta(days=4)
    await db.execute("SELECT create_balance_partition($1, 1)", friday)
    keeper = PartitionKeeper(engine, width=7, now=lambda: at_noon(wednesday))
    made = [
        Span(wednesday, friday),
        Span(friday + timedelta(days=1), monday + timedelta(weeks=1)),
        week_from(monday + timedelta(weeks=1)),
    ]
    assert await keeper.make_ahead() == {span.first: "created" for span in made}
    assert set(made) <= set(await partitions.existing(engine))
    assert await keeper.make_ahead() == {}
    landed = [monday + timedelta(days=n) for n in (3, 4, 6, 13)]
    assert [await partition_of(db, at_noon(day)) for day in landed] == [
        f"balance_rows_{first:%Y%m%d}"
        for first in (wednesday, friday, made[1].first, made[2].first)
    ]


async def roll_up(engine: AsyncEngine, *days: date) -> None:
    for day in days:
        assert await partitions.roll_up(engine, day) == "rolled_up"


async def test_a_week_is_dropped_only_once_all_its_days_are_rolled_up_and_old_enough(
    engine: AsyncEngine, db: Any
) -> None:
    old, recent = monday_of(TODAY) - timedelta(weeks=4), monday_of(TODAY) - timedelta(weeks=2)
    for first in (old, recent):
        await db.execute("SELECT create_balance_partition($1, 7)", first)
        # Rows of closed days, stored late: each day is marked for its rollup.
        await insert(db, [(WALLET, TOKEN, "1", at_noon(first + timedelta(days=n))) for n in (1, 5)])
    keeper = PartitionKeeper(engine, retention=timedelta(days=15), now=lambda: NOON)
    await roll_up(engine, old + timedelta(days=1))
    assert await keeper.drop_old() == []  # its sixth day is not rolled up
    await roll_up(
        engine, old + timedelta(days=5), recent + timedelta(days=1), recent + timedelta(days=5)
    )
    assert await keeper.drop_old() == [old]  # the recent week ended less than 15 days ago
    assert keeper.dropped == 1
    names = {span.first for span in await partitions.existing(engine)}
    assert old not in names
    assert recent in names
    assert await db.fetchval("SELECT kept_from FROM rollup_state") == old + timedelta(weeks=1)
    daily = await db.fetch("SELECT day FROM balance_daily ORDER BY day")
    assert [row["day"] for row in daily] == [
        first + timedelta(days=n) for first in (old, recent) for n in (1, 5)
    ]


async def test_the_keeper_counts_the_rows_of_the_default_partition(
    engine: AsyncEngine, db: Any
) -> None:
    keeper = PartitionKeeper(engine, now=lambda: NOON)
    assert keeper.default_rows is None
    await keeper.maintain()
    assert keeper.default_rows == 0
    await insert(db, [(WALLET, TOKEN, "1", NOON + timedelta(days=3650))])  # a clock far off
    await keeper.maintain()
    assert keeper.default_rows == 1


async def test_a_role_granted_the_old_function_may_call_the_new_one(
    engine: AsyncEngine, db: Any
) -> None:
    role = f"bw_grant_{uuid.uuid4().hex[:12]}"
    await downgrade(engine, "0012")
    await db.execute(f"CREATE ROLE {role}")
    try:
        await db.execute(f"GRANT EXECUTE ON FUNCTION create_balance_partition(date) TO {role}")
        await migrate.upgrade(engine)
        allowed = "SELECT has_function_privilege($1, 'create_balance_partition(date, integer)', $2)"
        assert await db.fetchval(allowed, role, "EXECUTE")
        assert not await db.fetchval(allowed, "public", "EXECUTE")
    finally:
        await db.execute(f"DROP OWNED BY {role}")
        await db.execute(f"DROP ROLE {role}")


async def test_the_downgrade_refuses_while_a_week_partition_exists(
    engine: AsyncEngine, db: Any
) -> None:
    await db.execute(
        "SELECT create_balance_partition($1, 7)", monday_of(TODAY) - timedelta(weeks=3)
    )
    with pytest.raises(DBAPIError, match="partitions of more than a day exist"):
        await downgrade(engine, "0012")
