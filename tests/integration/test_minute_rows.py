"""The history's rows by minute in minute_rows (migration 0021), what `status` sums for its row
counts: they equal a count of the rows after every kind of write, delete, update and truncate;
`rows_since` is exact at any cutoff, a minute's edge included; writers never wait on one
another's minute; old minutes go; the migration fills the last two hours and goes back."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.store import chain, migrate, reports
from balancewatch.store.db import asyncpg_dsn
from tests.helpers import SOL, TOKEN, WALLET, WALLET2, cut, downgrade
from tests.writing import make_line, make_writer, open_test_spool

pytestmark = pytest.mark.usefixtures("writers_closed")

INSERT = "INSERT INTO balance_history (wallet, token, amount, received_at) VALUES ($1, $2, $3, $4)"
MINUTE = "date_bin('1 minute', {at}, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
# Every minute with rows received in the last 90 minutes or later, by a count of the rows,
# and as minute_rows has them (added up over its writers).
COUNTED = f"""
SELECT {MINUTE.format(at="received_at")} AS minute, count(*) AS rows FROM balance_rows
WHERE received_at >= now() - interval '90 minutes' GROUP BY 1 ORDER BY 1
"""
KEPT = """
SELECT minute, sum(rows)::bigint AS rows FROM minute_rows
WHERE minute >= now() - interval '90 minutes' GROUP BY 1 HAVING sum(rows) <> 0 ORDER BY 1
"""


async def assert_minutes_counted(db: Any) -> list[tuple[datetime, int]]:
    kept = [tuple(row) for row in await db.fetch(KEPT)]
    assert kept == [tuple(row) for row in await db.fetch(COUNTED)]
    return kept


async def minute_start(db: Any, back: timedelta) -> datetime:
    start: datetime = await db.fetchval(
        f"SELECT {MINUTE.format(at='now() - CAST($1 AS interval)')}", back
    )
    return start


async def test_every_kind_of_write_is_counted_in_its_minute(engine: AsyncEngine, db: Any) -> None:
    edge = await minute_start(db, timedelta(minutes=20))
    writer = make_writer(engine)
    # The daemon's stream rows, one COPY, either side of a minute's start.
    for n, at in enumerate([edge - timedelta(microseconds=1), edge, edge + timedelta(seconds=59)]):
        writer.add(*cut(make_line(WALLET, TOKEN, str(n), at)))
    assert await writer.flush()
    assert [rows for _, rows in await assert_minutes_counted(db)] == [1, 2]

    at = edge + timedelta(minutes=3)
    chain_rows: list[chain.ChainRow] = [
        (WALLET, TOKEN, Decimal(10), at, "snapshot", 7),
        (WALLET2, SOL, Decimal(11), at, "check", 8),
    ]
    await chain.copy_chain_rows(db, chain_rows, 5)  # through the view
    await db.execute(INSERT, WALLET2, TOKEN, 12, at)  # a user's
    await db.execute(INSERT, WALLET2, TOKEN, 13, at - timedelta(hours=3))  # not counted: too old
    await db.execute(INSERT, WALLET2, TOKEN, 14, at + timedelta(hours=2))  # a clock ahead

    spool = open_test_spool()  # a replay: late rows, and rows of minutes already counted
    for n, back in enumerate([timedelta(minutes=50), timedelta(0), timedelta(minutes=-3)]):
        spool.append(make_line(WALLET, SOL, str(n), edge - back))
    spool.sync()
    replayer = make_writer(engine, spool=spool)
    while await db.fetchval("SELECT count(*) FROM balance_rows") < 10:
        assert await replayer.flush()
    kept = await assert_minutes_counted(db)
    assert [rows for _, rows in kept] == [1, 1, 3, 4, 1]


async def test_deletes_updates_and_truncate_take_their_rows_off_their_minutes(db: Any) -> None:
    edge = await minute_start(db, timedelta(minutes=30))
    for n in range(6):
        await db.execute(INSERT, WALLET, TOKEN, n, edge + timedelta(seconds=20 * n))
    await db.execute(INSERT, WALLET, SOL, 9, edge - timedelta(hours=5))  # not counted
    await db.execute("DELETE FROM balance_rows WHERE amount IN (0, 4)")
    assert [rows for _, rows in await assert_minutes_counted(db)] == [2, 2]
    # Across minutes, and into the counted hours from before them and out of them.
    await db.execute("UPDATE balance_rows SET received_at = received_at + interval '1 minute'")
    assert [rows for _, rows in await assert_minutes_counted(db)] == [2, 2]
    await db.execute(
        "UPDATE balance_rows SET received_at = $1 WHERE amount = 9", edge + timedelta(minutes=5)
    )
    await db.execute(
        "UPDATE balance_rows SET received_at = received_at - interval '3 hours' WHERE amount = 5"
    )
    assert [rows for _, rows in await assert_minutes_counted(db)] == [2, 1, 1]
    await db.execute("TRUNCATE balance_rows")
    assert await db.fetchval("SELECT count(*) FROM minute_rows") == 0
    await db.execute(INSERT, WALLET, TOKEN, 1, edge)
    assert [rows for _, rows in await assert_minutes_counted(db)] == [1]


async def test_rows_since_is_exact_at_any_cutoff(engine: AsyncEngine, db: Any) -> None:
    edge = await minute_start(db, timedelta(minutes=40))
    micro = timedelta(microseconds=1)
    times = [
        edge - timedelta(minutes=1),
        edge - micro,
        edge,
        edge,
        edge + micro,
        edge + timedelta(seconds=30),
        edge + timedelta(minutes=1) - micro,
        edge + timedelta(minutes=1),
        edge + timedelta(minutes=39),
        edge + timedelta(hours=3),  # a clock ahead
    ]
    for n, at in enumerate(times):
        await db.execute(INSERT, WALLET, TOKEN, n, at)
    cutoffs = sorted({*times, *(at - micro for at in times), *(at + micro for at in times)})
    cutoffs += [edge - timedelta(minutes=45), edge - timedelta(hours=5)]  # counted from the rows
    expected = [
        await db.fetchval("SELECT count(*) FROM balance_history WHERE received_at > $1", cutoff)
        for cutoff in cutoffs
    ]
    async with engine.connect() as connection:
        assert await reports.rows_since(connection, *cutoffs) == expected


async def test_two_writers_of_one_minute_do_not_wait_for_each_other(
    db: Any, database_url: URL
) -> None:
    at = await db.fetchval("SELECT now()")
    insert = "INSERT INTO balance_rows (pair_id, amount, received_at) VALUES ($1, 1, $2)"
    writers = [await asyncpg.connect(asyncpg_dsn(database_url)) for _ in range(2)]
    try:
        first = writers[0].transaction()
        await first.start()
        await writers[0].execute(insert, 1, at)  # holds its own (minute, writer) row
        await asyncio.wait_for(writers[1].execute(insert, 2, at), timeout=5)
        await first.commit()
    finally:
        for writer in writers:
            await writer.close()
    assert await db.fetchval("SELECT count(*) FROM minute_rows") == 2
    assert [rows for _, rows in await assert_minutes_counted(db)] == [2]


async def test_a_writer_in_a_new_minute_deletes_the_minutes_older_than_three_hours(
    db: Any, database_url: URL
) -> None:
    await db.execute(
        "INSERT INTO minute_rows (minute, writer, rows) VALUES "
        "(now() - interval '4 hours', 1, 5), (now() - interval '5 hours', 2, 5),"
        "(now() - interval '170 minutes', 1, 5)"
    )
    other = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        # Another writer deleting the same minutes holds one: skipped, not waited for.
        async with other.transaction():
            await other.execute(
                "SELECT 1 FROM minute_rows WHERE minute < now() - interval '270 minutes' FOR UPDATE"
            )
            await asyncio.wait_for(
                db.execute(INSERT, WALLET, TOKEN, 1, await db.fetchval("SELECT now()")), timeout=5
            )
            kept = await db.fetchval("SELECT count(*) FROM minute_rows WHERE rows = 5")
            assert kept == 2  # the locked one, and the one of less than three hours
    finally:
        await other.close()
    await db.execute("DELETE FROM minute_rows WHERE minute > now() - interval '1 hour'")
    await db.execute(INSERT, WALLET, TOKEN, 2, await db.fetchval("SELECT now()"))
    assert await db.fetchval("SELECT count(*) FROM minute_rows WHERE rows = 5") == 1


async def test_the_upgrade_counts_the_last_two_hours_and_the_downgrade_removes_the_counts(
    engine: AsyncEngine, db: Any
) -> None:
    await downgrade(engine, "0020")
    now = await db.fetchval("SELECT now()")
    for n, back in enumerate([timedelta(hours=3), timedelta(minutes=80), timedelta(seconds=5)]):
        await db.execute(INSERT, WALLET, TOKEN, n, now - back)
        await db.execute(INSERT, WALLET, SOL, n, now - back)
    await migrate.upgrade(engine)
    assert [rows for _, rows in await assert_minutes_counted(db)] == [2, 2]
    await db.execute(INSERT, WALLET2, SOL, 1, now - timedelta(seconds=5))
    assert [rows for _, rows in await assert_minutes_counted(db)] == [2, 3]

    await downgrade(engine, "0020")
    assert await db.fetchval("SELECT to_regclass('minute_rows')") is None
    assert await db.fetchval("SELECT to_regclass('coverage_ended_at_idx')") is None
    await db.execute(INSERT, WALLET2, SOL, 2, now)  # no trigger left behind
    await migrate.upgrade(engine)
