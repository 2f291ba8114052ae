"""The history as compact rows in day partitions (migration 0009): where rows land, the
writer's pair ids, the partitions made ahead, and the upgrade from the plain table."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from balancewatch.daemon.partitions import PREMAKE_DAYS, PartitionKeeper
from balancewatch.store import migrate, partitions
from tests.helpers import SOL, TOKEN, WALLET, WALLET2, connect, cut, downgrade
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
            writer.add(*cut(make_line(wallet, token, amount, now + timedelta(seconds=n))))
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


async def a_0008_history(engine: AsyncEngine, db: Any, rows: int) -> None:
    """`rows` rows in the plain table of 0008, over two pairs: several of 0009's chunks."""
    await downgrade(engine, "0008")
    await db.execute(
        "INSERT INTO balance_history (wallet, token, amount, received_at, source) "
        "SELECT $1, CASE n % 2 WHEN 0 THEN $2 ELSE $3 END, n, "
        "$4::timestamptz + n * interval '1 second', 'snapshot' FROM generate_series(1, $5) n",
        WALLET,
        TOKEN,
        SOL,
        datetime(2026, 1, 2, tzinfo=UTC),
        rows,
    )


@contextlib.contextmanager
def on_each_chunk(engine: AsyncEngine, call: Any) -> Iterator[None]:
    """`call()` before each of the migration's statements copying rows into balance_rows."""

    def before(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if statement.startswith("INSERT INTO balance_rows"):
            call()

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    try:
        yield
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", before)


async def write_every_2ms(url: URL, written: list[int], stop: asyncio.Event) -> None:
    """An old daemon's writes into balance_history, table then view, the ids kept (until
    `stop`, not cancelled: a cancelled insert may have committed)."""
    writer = await connect(url)
    try:
        while not stop.is_set():
            written.append(
                await writer.fetchval(
                    INSERT + " RETURNING id",
                    WALLET2,
                    TOKEN,
                    1,
                    datetime.now(UTC),
                    "stream",
                    None,
                    None,
                )
            )
            await asyncio.sleep(0.002)
    finally:
        await writer.close()


async def test_rows_written_during_the_upgrade_are_kept_once_with_their_ids(
    engine: AsyncEngine, db: Any, database_url: URL
) -> None:
    await a_0008_history(engine, db, 160_000)
    written: list[int] = []
    seen_at_chunks: list[int] = []
    stop = asyncio.Event()
    writer = asyncio.create_task(write_every_2ms(database_url, written, stop))
    await asyncio.sleep(0.05)
    with capture_logs() as logs, on_each_chunk(engine, lambda: seen_at_chunks.append(len(written))):
        await migrate.upgrade(engine)
    await asyncio.sleep(0.05)  # and a few more through the view
    stop.set()
    await writer
    assert seen_at_chunks[0] < seen_at_chunks[-1]  # the writer went on during the copy
    ids = [row["id"] for row in await db.fetch("SELECT id FROM balance_history ORDER BY id")]
    assert ids == sorted([*range(1, 160_001), *written])
    assert await db.fetchval(
        "SELECT count(*) FROM balance_history WHERE wallet = $1", WALLET2
    ) == len(written)
    [converted] = [e for e in logs if e["event"] == "migrate.history_converted"]
    assert 160_000 < converted["rows"] <= len(ids)
    assert converted["writes_blocked_ms"] >= 0


class Stopped(Exception):
    """The migration's process dying part way through the copy."""


async def test_an_upgrade_stopped_part_way_is_finished_by_running_it_again(
    engine: AsyncEngine, db: Any
) -> None:
    await a_0008_history(engine, db, 150_000)
    chunks = 0

    def stop_at_the_third() -> None:
        nonlocal chunks
        chunks += 1
        if chunks == 3:
            raise Stopped

    with on_each_chunk(engine, stop_at_the_third), pytest.raises(Stopped):
        await migrate.upgrade(engine)
    assert await migrate.current_revision(engine) == "0008"
    assert 0 < await db.fetchval("SELECT count(*) FROM balance_rows") < 150_000
    await db.execute(INSERT, WALLET2, TOKEN, 1, datetime.now(UTC), "stream", None, None)
    before = await db.fetch("SELECT * FROM balance_history ORDER BY id")
    await migrate.upgrade(engine)
    after = await db.fetch("SELECT * FROM balance_history ORDER BY id")
    assert [tuple(row) for row in after] == [tuple(row) for row in before]
    assert await migrate.current_revision(engine) == migrate.head_revision()


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
