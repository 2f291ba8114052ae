"""Packed indexes (migration 0014): each partition of balance_rows has its own index on
(pair_id, received_at, id); once its days have closed the keeper builds it again, packed,
and drops the one that grew with the days, without changing any answer; a reader holding the
partition makes it wait, not fail; the upgrade gives every partition its own index."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.daemon.partitions import PartitionKeeper
from balancewatch.store import migrate
from tests.helpers import TOKEN, WALLET, connect, downgrade

TODAY = datetime.now(UTC).date()
DAY = TODAY - timedelta(days=2)
PARTITION = f"balance_rows_{DAY:%Y%m%d}"
GROWN, PACKED = f"{PARTITION}_pair_idx", f"{PARTITION}_packed_idx"
PAIRS = 1000
ROWS_A_PAIR = 8
# One pair's rows through the view, and its balance at noon: the per-pair queries.
ONE_PAIR = (
    "SELECT id, amount, received_at FROM balance_history WHERE wallet = $1 AND token = $2 "
    "ORDER BY received_at DESC, id DESC"
)
AT_NOON = "SELECT balance_at($1, $2, $3)"


def wallet(n: int) -> str:
    return WALLET[:-4] + f"{n:04d}".translate(str.maketrans("0", "z"))


async def fill_in_time_order(db: Any) -> None:
    """Rows of the day as a daemon writes them: every pair a little at a time, in time order
    (which leaves an index grown with them about half empty)."""
    await db.execute("SELECT create_balance_partition($1, 1)", DAY)
    start = datetime.combine(DAY, time(), UTC)
    rows = [
        (wallet(pair), TOKEN, step * PAIRS + pair, start + timedelta(seconds=step * 60 + pair / 10))
        for step in range(ROWS_A_PAIR)
        for pair in range(PAIRS)
    ]
    await db.execute(
        "INSERT INTO balance_rows (pair_id, amount, received_at) "
        "SELECT i.pair_id, u.a, u.r "
        "FROM unnest($1::text[], $2::text[], $3::numeric[], $4::timestamptz[]) "
        "WITH ORDINALITY AS u(w, t, a, r, n) "
        "JOIN (SELECT DISTINCT * FROM pair_ids($1, $2)) i ON (i.wallet, i.token) = (u.w, u.t) "
        "ORDER BY u.n",
        *map(list, zip(*rows, strict=True)),
    )


async def answers(db: Any) -> list[Any]:
    noon = datetime.combine(DAY, time(12), UTC)
    return [
        [tuple(row) for row in await db.fetch(ONE_PAIR, wallet(pair), TOKEN)]
        + [await db.fetchval(AT_NOON, wallet(pair), TOKEN, noon)]
        for pair in (0, PAIRS // 2, PAIRS - 1)
    ]


async def size(db: Any, index: str) -> int | None:
    found: int | None = await db.fetchval("SELECT pg_relation_size(to_regclass($1))", index)
    return found


async def test_packing_a_closed_partition_shrinks_its_index_and_changes_no_answer(
    engine: AsyncEngine, db: Any
) -> None:
    await fill_in_time_order(db)
    before, grown = await answers(db), await size(db, GROWN)
    keeper = PartitionKeeper(engine)

    assert await keeper.pack() == [DAY]

    assert await size(db, GROWN) is None
    packed = await size(db, PACKED)
    assert packed is not None
    assert grown is not None
    assert packed < grown
    assert await answers(db) == before
    await db.execute("SET enable_seqscan = off")
    plan = await db.fetch("EXPLAIN " + ONE_PAIR, wallet(1), TOKEN)
    assert any(PACKED in row[0] for row in plan)
    assert await keeper.pack() == []  # once
    assert await PartitionKeeper(engine).pack() == []  # a new process learns it is done


async def test_partitions_whose_days_have_not_closed_keep_growing(
    engine: AsyncEngine, db: Any
) -> None:
    assert await PartitionKeeper(engine).pack() == []
    today = f"balance_rows_{TODAY:%Y%m%d}"
    assert await db.fetchval("SELECT pack_balance_partition($1)", TODAY) == "not_closed"
    assert await size(db, f"{today}_pair_idx") is not None
    assert await size(db, f"{today}_packed_idx") is None


async def test_a_reader_holding_the_partition_delays_the_pack_to_the_next_turn(
    engine: AsyncEngine, db: Any, database_url: Any
) -> None:
    await fill_in_time_order(db)
    before = await answers(db)
    reader = await connect(database_url)
    try:
        async with reader.transaction():
            await reader.fetchval(f"SELECT count(*) FROM {PARTITION}")  # holds it to commit
            assert await PartitionKeeper(engine).pack() == []
            # Both indexes meanwhile; reads went on.
            assert await size(db, GROWN) is not None
            assert await size(db, PACKED) is not None
            assert await answers(db) == before
    finally:
        await reader.close()

    assert await PartitionKeeper(engine).pack() == [DAY]
    assert await size(db, GROWN) is None
    assert await answers(db) == before


async def test_the_upgrade_gives_each_partition_its_own_index_packed_once_closed(
    engine: AsyncEngine, db: Any
) -> None:
    await downgrade(engine, "0013")
    await fill_in_time_order(db)
    before = await answers(db)

    await migrate.upgrade(engine)

    owned = await db.fetch(
        "SELECT indexrelid::regclass::text AS name FROM pg_index i "
        "JOIN pg_inherits p ON p.inhrelid = i.indrelid "
        "WHERE p.inhparent = 'balance_rows'::regclass AND i.indexrelid::regclass::text "
        "NOT LIKE '%brin%' AND i.indexrelid::regclass::text NOT LIKE '%received_at_idx'"
    )
    names = {row["name"] for row in owned}
    assert PACKED in names
    assert GROWN not in names
    assert f"balance_rows_{TODAY:%Y%m%d}_pair_idx" in names
    assert "balance_rows_default_pair_idx" in names
    assert await db.fetchval("SELECT to_regclass('balance_rows_pair_received_at_idx')") is None
    assert await answers(db) == before
    # And back, and up again: the inherited index is restored, then replaced again.
    await downgrade(engine, "0013")
    assert await answers(db) == before
    await migrate.upgrade(engine)
    assert await size(db, PACKED) is not None
    assert await answers(db) == before


async def test_two_keepers_pack_a_partition_once(engine: AsyncEngine, db: Any) -> None:
    await fill_in_time_order(db)
    done = await asyncio.gather(PartitionKeeper(engine).pack(), PartitionKeeper(engine).pack())
    assert sorted(done) == [[], [DAY]]
