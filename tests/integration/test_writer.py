"""The write path against a real Postgres: batching, ordering, draining, status upserts, retries."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from balancewatch.pipeline.records import BalanceLine
from balancewatch.pipeline.spool import Spool
from balancewatch.pipeline.writer import Writer
from tests.helpers import SOL, TOKEN, WALLET, WALLET2, cut, scratch_dir, wait_until
from tests.writing import (
    T0,
    keep_open_until_the_test_ends,
    make_line,
    make_rows,
    make_writer,
)

# A writer keeps its connection from flush to flush: closed before the database goes.
pytestmark = pytest.mark.usefixtures("writers_closed")


def add_all(writer: Writer, rows: list[BalanceLine]) -> None:
    for line in rows:
        writer.add(*cut(line))


async def stored(db: Any) -> list[BalanceLine]:
    """The stored rows as the lines they were written from; the amount as Postgres prints it,
    so its exact digits after the point are compared too."""
    records = await db.fetch(
        "SELECT wallet, token, amount::text AS amount, received_at FROM balance_history ORDER BY id"
    )
    return [make_line(r["wallet"], r["token"], r["amount"], r["received_at"]) for r in records]


async def count(db: Any) -> int:
    value: int = await db.fetchval("SELECT count(*) FROM balance_history")
    return value


@dataclass
class Running:
    drain: asyncio.Event
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def running(writer: Writer) -> AsyncIterator[Running]:
    drain = asyncio.Event()
    run = Running(drain, asyncio.create_task(writer.run(drain)))
    try:
        yield run
    finally:
        if not run.task.done():
            drain.set()
            await asyncio.wait_for(run.task, timeout=10)


async def table_away(db: Any) -> None:
    await db.execute("ALTER TABLE balance_rows RENAME TO rows_away")


async def table_back(db: Any) -> None:
    await db.execute("ALTER TABLE rows_away RENAME TO balance_rows")


# --- batching -------------------------------------------------------------------------------


async def test_a_full_batch_is_written_at_once_even_when_the_flush_age_is_far_off(
    engine: AsyncEngine, db: Any
) -> None:
    writer = make_writer(engine, batch_size=100, flush_interval=60.0)
    first, second = make_rows(100), make_rows(99, start=100)
    async with running(writer) as run:
        add_all(writer, first[:99])
        await asyncio.sleep(0.2)
        assert await count(db) == 0  # 99 of 100: not full, and far from 60 s old

        writer.add(*cut(first[99]))
        await wait_until(lambda: writer.rows_written == 100, what="the full batch")
        assert await stored(db) == first

        add_all(writer, second)
        await asyncio.sleep(0.2)
        assert await count(db) == 100
        assert writer.pending_rows == 99

        run.drain.set()
        await asyncio.wait_for(run.task, timeout=5)
    assert await stored(db) == first + second


async def test_a_partial_batch_is_written_when_its_oldest_row_reaches_the_flush_age(
    engine: AsyncEngine, db: Any
) -> None:
    flush_interval = 0.4
    writer = make_writer(engine, batch_size=1000, flush_interval=flush_interval)
    rows = make_rows(2)
    async with running(writer):
        first_added = time.monotonic()
        writer.add(*cut(rows[0]))
        await asyncio.sleep(0.2)
        second_added = time.monotonic()
        writer.add(*cut(rows[1]))
        assert await count(db) == 0

        await wait_until(lambda: writer.rows_written > 0, what="the aged batch")
        written = time.monotonic()
        # One batch, timed by the oldest row: the younger one had not reached the age itself.
        assert await stored(db) == rows
        assert written - first_added >= flush_interval
        assert written - second_added < flush_interval


async def test_rows_left_after_a_full_batch_keep_their_age(engine: AsyncEngine, db: Any) -> None:
    flush_interval = 0.3
    writer = make_writer(engine, batch_size=3, flush_interval=flush_interval)
    rows = make_rows(4)
    added = time.monotonic()
    add_all(writer, rows)  # one full batch and one row over, all arriving now
    await asyncio.sleep(flush_interval)  # the flush loop is busy elsewhere meanwhile
    async with running(writer):
        await wait_until(lambda: writer.rows_written == 4, what="the row left over")
        written = time.monotonic()
    assert await stored(db) == rows
    # The row over was already flush_interval old: it is due right after the full batch.
    assert written - added < flush_interval + 0.2


async def test_several_batches_are_written_in_order_and_every_row_exactly_once(
    engine: AsyncEngine, db: Any
) -> None:
    # 1e-7, 2e+21, 1.50 and 0 as the parser hands them on: exact, and in plain notation.
    special = ["0.0000001", "2000000000000000000000", "1.50", "0"]
    rows = [
        make_line(
            WALLET if i % 2 else WALLET2, TOKEN if i % 3 else SOL, amount, T0 + timedelta(seconds=i)
        )
        for i, amount in enumerate([*special, *(f"{i}.{i:03d}" for i in range(46))])
    ]
    writer = make_writer(engine, batch_size=7, flush_interval=60.0)
    async with running(writer) as run:
        for start in range(0, len(rows), 5):
            add_all(writer, rows[start : start + 5])
            await asyncio.sleep(0)  # let the flush loop interleave with the adds
        await wait_until(lambda: writer.rows_written == 49, what="seven full batches")
        assert writer.pending_rows == 1
        run.drain.set()
        await asyncio.wait_for(run.task, timeout=5)

    assert writer.rows_written == 50
    assert await stored(db) == rows  # amounts as Postgres prints them: value and scale exact
    ids = [r["id"] for r in await db.fetch("SELECT id FROM balance_history ORDER BY id")]
    assert len(ids) == len(set(ids)) == 50


# --- draining -------------------------------------------------------------------------------


async def test_setting_the_drain_event_writes_what_is_left_and_run_returns(
    engine: AsyncEngine, db: Any
) -> None:
    writer = make_writer(engine, batch_size=3, flush_interval=60.0)
    rows = make_rows(2)
    async with running(writer) as run:
        add_all(writer, rows)
        await asyncio.sleep(0.1)
        assert await count(db) == 0
        run.drain.set()
        await asyncio.wait_for(run.task, timeout=5)
        assert run.task.done()
    assert await stored(db) == rows
    assert writer.pending_rows == 0
    assert writer.rows_written == 2


async def test_drain_writes_a_buffer_larger_than_one_batch(engine: AsyncEngine, db: Any) -> None:
    writer = make_writer(engine, batch_size=10, flush_interval=60.0)
    rows = make_rows(35)
    add_all(writer, rows)
    drain = asyncio.Event()
    drain.set()  # already set: run does nothing but drain
    await asyncio.wait_for(writer.run(drain), timeout=5)
    assert await stored(db) == rows


async def test_cancelling_run_drains_the_buffer_before_the_task_ends(
    engine: AsyncEngine, db: Any
) -> None:
    writer = make_writer(engine, batch_size=1000, flush_interval=60.0)
    rows = make_rows(5)
    drain = asyncio.Event()
    add_all(writer, rows)
    task = asyncio.create_task(writer.run(drain))
    await asyncio.sleep(0.05)  # run is now parked on the 60 s flush age, nothing written
    assert writer.pending_rows == 5
    assert writer.rows_written == 0

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=5)

    assert task.cancelled()
    assert await stored(db) == rows
    assert writer.pending_rows == 0


async def test_cancelling_run_during_a_write_keeps_the_batch_in_flight(
    engine: AsyncEngine, db: Any
) -> None:
    writer = make_writer(engine, batch_size=5, flush_interval=60.0)
    rows = make_rows(5)
    drain = asyncio.Event()
    blocker = db.transaction()
    await blocker.start()
    # SHARE lets the writer's introspection SELECT through and blocks the COPY itself.
    await db.execute("LOCK TABLE balance_rows IN SHARE MODE")
    task = asyncio.create_task(writer.run(drain))
    try:
        add_all(writer, rows)  # a full batch: the COPY starts and waits on the lock
        await wait_until(_copy_waiting_on_lock(db), what="the COPY to wait on the lock")
        task.cancel()
        await asyncio.sleep(0.1)  # the cancel lands while the COPY is still blocked
    finally:
        await blocker.rollback()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=10)
    assert await stored(db) == rows


def _copy_waiting_on_lock(db: Any) -> Any:
    async def check() -> bool:
        # `db` is inside the locking transaction, where the activity view is a snapshot.
        await db.execute("SELECT pg_stat_clear_snapshot()")
        return bool(
            await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE 'COPY%'"
            )
        )

    return check


async def test_a_drain_that_cannot_write_spools_the_rows_and_the_next_writer_replays_them(
    engine: AsyncEngine, db: Any
) -> None:
    spool_dir = scratch_dir("spool")
    first_spool = Spool(spool_dir)
    first_spool.open()
    writer = make_writer(engine, spool=first_spool, drain_timeout=0.3)
    rows = make_rows(3)
    add_all(writer, rows)
    await table_away(db)
    drain = asyncio.Event()
    drain.set()
    started = time.monotonic()
    await asyncio.wait_for(writer.run(drain), timeout=5)
    assert time.monotonic() - started < 2.0
    first_spool.close()
    await table_back(db)
    assert await count(db) == 0

    # A restart on the same spool directory stores them first, once.
    second_spool = Spool(spool_dir)
    second_spool.open()
    keep_open_until_the_test_ends(second_spool)
    restarted = make_writer(engine, spool=second_spool)
    restarted.add(*cut(make_rows(1, start=3)[0]))
    while await count(db) < 4:
        assert await restarted.flush()
    assert await stored(db) == make_rows(4)
    assert await restarted.flush()
    assert await count(db) == 4


# --- failed writes ------------------------------------------------------------------------------


async def test_a_failed_write_keeps_rows_buffered_in_order_until_the_table_is_back(
    engine: AsyncEngine, db: Any
) -> None:
    writer = make_writer(engine, batch_size=3)
    rows = make_rows(7)
    add_all(writer, rows[:5])
    await table_away(db)

    assert await writer.flush() is False
    assert writer.pending_rows == 5
    assert await writer.flush() is False  # a second failure does not duplicate the batch
    assert writer.pending_rows == 5
    assert writer.rows_written == 0

    add_all(writer, rows[5:])
    await table_back(db)
    flushes = 0
    while writer.pending_rows:
        assert await writer.flush() is True
        flushes += 1

    assert flushes == 3  # 3 + 3 + 1
    assert await stored(db) == rows
    assert writer.rows_written == 7


async def test_the_run_loop_retries_a_failed_batch_and_writes_it_once_the_table_is_back(
    engine: AsyncEngine, db: Any
) -> None:
    writer = make_writer(
        engine, batch_size=1000, flush_interval=0.05, retry_initial=0.02, retry_max=0.05
    )
    rows = make_rows(4)
    await table_away(db)
    with capture_logs() as logs:
        async with running(writer):
            add_all(writer, rows[:2])
            await wait_until(
                lambda: sum(e["event"] == "writer.flush_failed" for e in logs) >= 2,
                what="two failed attempts",
            )
            add_all(writer, rows[2:])
            assert writer.rows_written == 0
            await table_back(db)
            await wait_until(lambda: writer.rows_written == 4, what="the retried rows")
            await asyncio.sleep(0.2)  # any duplicate write would land in here
    assert await stored(db) == rows
    assert writer.rows_written == 4


async def test_its_connection_killed_by_the_server_between_batches_costs_a_retry_not_a_row(
    engine: AsyncEngine, db: Any
) -> None:
    writer = make_writer(engine, batch_size=10)
    rows = make_rows(40)
    for round_ in range(4):
        add_all(writer, rows[round_ * 10 : round_ * 10 + 10])
        # Kill the writer's idle connection, then write on at once: the client may not have
        # noticed yet (asyncpg then fails with an InternalClientError, not a closed socket).
        if round_:
            killed = await db.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'balancewatch-writer'"
            )
            assert killed == 1
        for _ in range(5):
            if await writer.flush():
                break
        else:
            raise AssertionError("the batch was never written")
    assert await stored(db) == rows
