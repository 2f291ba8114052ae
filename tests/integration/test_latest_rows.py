"""Each pair's newest row in latest_rows (migration 0010): latest_balance answers as the whole
history would after every kind of write, a late row never replaces a newer one, and two writers
on the same pairs do not deadlock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.store import chain, migrate
from balancewatch.store.db import asyncpg_dsn
from balancewatch.store.writes import FENCED_SQLSTATE
from tests.helpers import SOL, TOKEN, WALLET, WALLET2, cut, downgrade, wait_until
from tests.writing import make_line, make_writer, open_test_spool

pytestmark = pytest.mark.usefixtures("writers_closed")

NOW = datetime.now(UTC)
INSERT = "INSERT INTO balance_history (wallet, token, amount, received_at) VALUES ($1, $2, $3, $4)"
# latest_balance as it was before 0010: the newest row of each pair, from the whole history.
NEWEST_OF_ALL = """
SELECT DISTINCT ON (wallet, token) wallet, token, amount, received_at
FROM balance_history ORDER BY wallet, token, received_at DESC, id DESC
"""


async def latest(db: Any) -> list[tuple[Any, ...]]:
    rows = await db.fetch("SELECT * FROM latest_balance ORDER BY wallet, token")
    return [tuple(row) for row in rows]


async def assert_latest_is_newest(db: Any) -> list[tuple[Any, ...]]:
    found = await latest(db)
    assert found == [tuple(row) for row in await db.fetch(NEWEST_OF_ALL)]
    return found


def amounts(rows: list[tuple[Any, ...]]) -> dict[tuple[str, str], int]:
    return {(wallet, token): int(amount) for wallet, token, amount, _ in rows}


async def test_every_kind_of_write_keeps_latest_balance_the_newest_row_of_each_pair(
    engine: AsyncEngine, db: Any
) -> None:
    writer = make_writer(engine)
    for n, (wallet, token) in enumerate([(WALLET, TOKEN), (WALLET, SOL), (WALLET, TOKEN)]):
        writer.add(*cut(make_line(wallet, token, str(n), NOW + timedelta(seconds=n))))
    assert await writer.flush()  # the daemon's stream rows, one COPY into balance_rows
    assert amounts(await assert_latest_is_newest(db)) == {(WALLET, SOL): 1, (WALLET, TOKEN): 2}

    at = NOW + timedelta(seconds=5)
    chain_rows: list[chain.ChainRow] = [
        (WALLET, TOKEN, Decimal(10), at, "snapshot", 7),
        (WALLET2, SOL, Decimal(11), at, "check", 8),
    ]
    await chain.copy_chain_rows(db, chain_rows, 5)  # through the view, a row at a time
    await db.execute(INSERT, WALLET2, TOKEN, 12, at)  # a user's
    assert amounts(await assert_latest_is_newest(db)) == {
        (WALLET, SOL): 1,
        (WALLET, TOKEN): 10,
        (WALLET2, SOL): 11,
        (WALLET2, TOKEN): 12,
    }
    check = await db.fetchrow(
        "SELECT source, slot FROM latest_rows JOIN pairs USING (pair_id) "
        "WHERE wallet = $1 AND token = $2",
        WALLET2,
        SOL,
    )
    assert tuple(check) == (b"c", 8)  # the whole row


async def test_a_spool_replay_keeps_latest_balance_and_its_late_rows_do_not_replace_newer_ones(
    engine: AsyncEngine, db: Any
) -> None:
    await db.execute(INSERT, WALLET, TOKEN, 5, NOW)
    spool = open_test_spool()
    for n, at in enumerate([NOW - timedelta(hours=1), NOW + timedelta(seconds=1)]):
        spool.append(make_line(WALLET, SOL if n else TOKEN, str(n), at))
    spool.sync()
    writer = make_writer(engine, spool=spool)
    while await db.fetchval("SELECT count(*) FROM balance_rows") < 3:
        assert await writer.flush()
    assert amounts(await assert_latest_is_newest(db)) == {(WALLET, SOL): 1, (WALLET, TOKEN): 5}


async def test_a_late_row_is_stored_but_not_taken_and_ties_go_to_the_higher_id(db: Any) -> None:
    await db.execute(INSERT, WALLET, TOKEN, 1, NOW)
    await db.execute(INSERT, WALLET, TOKEN, 0, NOW - timedelta(days=3))
    assert await latest(db) == [(WALLET, TOKEN, Decimal(1), NOW)]
    await db.execute(INSERT, WALLET, TOKEN, 2, NOW)  # the same time: the later row wins
    assert await assert_latest_is_newest(db) == [(WALLET, TOKEN, Decimal(2), NOW)]
    assert await db.fetchval("SELECT count(*) FROM balance_history") == 3


async def test_a_statement_with_several_rows_of_a_pair_takes_its_newest_whatever_their_order(
    db: Any,
) -> None:
    await db.execute(
        "INSERT INTO balance_rows (pair_id, amount, received_at) "
        "SELECT 1, n, $1::timestamptz + n * interval '1 second' FROM unnest($2::int[]) n",
        NOW,
        [3, 9, 1, 4],
    )
    assert await db.fetch("SELECT pair_id, amount::int FROM latest_rows") == [(1, 9)]


async def test_a_refused_statement_changes_nothing(db: Any) -> None:
    await db.execute(INSERT, WALLET, TOKEN, 1, NOW)
    with pytest.raises(asyncpg.PostgresError) as refused:
        await db.execute(  # an epoch never granted: the fencing trigger refuses it
            "INSERT INTO balance_rows (pair_id, amount, received_at, epoch) VALUES (1, 2, $1, 999)",
            NOW + timedelta(seconds=1),
        )
    assert refused.value.sqlstate == FENCED_SQLSTATE
    assert await latest(db) == [(WALLET, TOKEN, Decimal(1), NOW)]


async def test_deletes_updates_and_truncate_find_each_pairs_newest_row_again(db: Any) -> None:
    for n in range(3):
        await db.execute(INSERT, WALLET, TOKEN, n, NOW + timedelta(seconds=n))
    await db.execute(INSERT, WALLET, SOL, 7, NOW)
    await db.execute("DELETE FROM balance_rows WHERE amount = 2")
    assert amounts(await assert_latest_is_newest(db)) == {(WALLET, SOL): 7, (WALLET, TOKEN): 1}
    await db.execute(
        "UPDATE balance_rows SET received_at = received_at + interval '1 hour' WHERE amount = 0"
    )
    assert amounts(await assert_latest_is_newest(db)) == {(WALLET, SOL): 7, (WALLET, TOKEN): 0}
    await db.execute("DELETE FROM balance_rows WHERE amount = 7")  # none left of that pair
    assert amounts(await assert_latest_is_newest(db)) == {(WALLET, TOKEN): 0}
    await db.execute("TRUNCATE balance_rows")
    assert await latest(db) == []


async def test_two_writers_on_the_same_pairs_wait_for_each_other_instead_of_deadlocking(
    db: Any, database_url: URL
) -> None:
    """A third transaction holds a pair in the middle: one writer takes the pairs below it and
    waits; the other, its rows in the opposite order, waits for the first pair. Were each to
    take its pairs in its rows' order, the second would hold those above, and each would wait
    for the other."""
    pairs = list(range(1, 21))
    insert = (
        "INSERT INTO balance_rows (pair_id, amount, received_at) "
        "SELECT p, 1, $2 FROM unnest($1::int[]) p"
    )
    await db.execute(insert, pairs, NOW)
    writers = [await asyncpg.connect(asyncpg_dsn(database_url)) for _ in range(2)]
    try:
        async with db.transaction():
            await db.execute("SELECT 1 FROM latest_rows WHERE pair_id = 10 FOR UPDATE")
            stores = [
                asyncio.create_task(writer.execute(insert, order, NOW + timedelta(seconds=n)))
                for n, (writer, order) in enumerate(zip(writers, [pairs, pairs[::-1]], strict=True))
            ]
            await wait_until(lambda: _waiting(db, 2), what="both writers waiting")
        await asyncio.wait_for(asyncio.gather(*stores), timeout=10)
    finally:
        for writer in writers:
            await writer.close()
    assert await db.fetchval("SELECT count(*) FROM latest_rows") == 20
    await assert_latest_is_newest(db)


async def _waiting(db: Any, count: int) -> bool:
    await db.execute("SELECT pg_stat_clear_snapshot()")  # else one per transaction
    waiting: int = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO balance_rows%'"
    )
    return waiting == count


async def test_the_upgrade_fills_latest_rows_from_the_history_and_the_downgrade_restores_the_view(
    engine: AsyncEngine, db: Any
) -> None:
    await downgrade(engine, "0009")
    rows = [
        (WALLET, TOKEN, 1, NOW - timedelta(days=2)),
        (WALLET, TOKEN, 2, NOW - timedelta(days=1)),
        (WALLET, TOKEN, 3, NOW - timedelta(days=1)),  # the same time, a higher id
        (WALLET, TOKEN, 0, NOW - timedelta(days=5)),  # late
        (WALLET, SOL, 4, NOW - timedelta(days=400)),  # in the default partition
        (WALLET2, SOL, 5, NOW),
    ]
    for row in rows:
        await db.execute(INSERT, *row)
    await db.execute("SELECT pair_id FROM pair_ids(ARRAY[$1], ARRAY[$2])", WALLET2, TOKEN)
    before = await latest(db)  # 0009's view, over the whole history
    await migrate.upgrade(engine)
    assert await latest(db) == before
    # The newest by time, the higher id of two at one time; a pair without rows has none.
    assert amounts(before) == {(WALLET, TOKEN): 3, (WALLET, SOL): 4, (WALLET2, SOL): 5}
    await downgrade(engine, "0009")
    assert await latest(db) == before
    assert await db.fetchval("SELECT to_regclass('latest_rows')") is None


async def test_rows_written_while_the_upgrade_fills_latest_rows_are_taken(
    engine: AsyncEngine, db: Any, database_url: URL
) -> None:
    """The fill runs in short chunks after the triggers are committed: a writer goes on
    meanwhile, and whichever of the two comes last, each pair ends with its newest row."""
    await downgrade(engine, "0009")
    wallets = [f"{WALLET[:-4]}{n:04d}".replace("0", "z") for n in range(1200)]  # 3 chunks
    old = [(wallet, TOKEN, 1, NOW - timedelta(days=1)) for wallet in wallets]
    await db.executemany(INSERT, old)
    writer = await asyncpg.connect(asyncpg_dsn(database_url))
    stop = asyncio.Event()

    async def write() -> int:
        written = 0
        while not stop.is_set():
            wallet = wallets[written * 7 % len(wallets)]
            await writer.execute(INSERT, wallet, TOKEN, 100 + written, datetime.now(UTC))
            written += 1
        return written

    task = asyncio.create_task(write())
    try:
        await migrate.upgrade(engine)
    finally:
        stop.set()
        written = await task
        await writer.close()
    assert written > 0
    await assert_latest_is_newest(db)
