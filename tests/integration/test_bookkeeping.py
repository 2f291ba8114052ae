"""Subscription states and rejected frames against a real Postgres: what is stored, in which
order of wins, and that a failure here is retried and counted on its own."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.pipeline.bookkeeping import Bookkeeping, BookkeepingConfig
from balancewatch.store.writes import PeriodEnd, PeriodStart, RejectedRow
from tests.helpers import SOL, TOKEN, WALLET, WALLET2, make_settings, wait_until

PAIR = (WALLET, TOKEN)
PAIR2 = (WALLET2, SOL)
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

_books: list[Bookkeeping] = []


@pytest.fixture(autouse=True)
async def close_connections(engine: AsyncEngine) -> AsyncIterator[None]:
    yield
    while _books:
        await _books.pop().close()


def make_bookkeeping(engine: AsyncEngine, **overrides: Any) -> Bookkeeping:
    config = BookkeepingConfig.from_settings(make_settings(engine.url, "ws://127.0.0.1:1"))
    fields = {**_fields(config), **overrides}
    book = Bookkeeping(
        engine.url, BookkeepingConfig(**fields), holder=f"test/{uuid.uuid4().hex[:8]}"
    )
    _books.append(book)
    return book


def _fields(config: BookkeepingConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


def rejected(n: int) -> RejectedRow:
    return (T0, "not_json", f"detail {n}", None, f"frame {n}", 7)


async def status_row(db: Any, pair: tuple[str, str] = PAIR) -> Any:
    return await db.fetchrow(
        "SELECT state, since, last_error, updated_at FROM subscription_status "
        "WHERE wallet = $1 AND token = $2",
        *pair,
    )


async def stored_frames(db: Any) -> list[str]:
    return [r["frame"] for r in await db.fetch("SELECT frame FROM rejected_messages ORDER BY id")]


# --- subscription status ----------------------------------------------------------------------


async def test_the_first_state_of_a_pair_sets_since(engine: AsyncEngine, db: Any) -> None:
    book = make_bookkeeping(engine)
    before = datetime.now(UTC)
    book.set_status([PAIR, PAIR2], "joining")
    after = datetime.now(UTC)
    assert await book.flush()
    for pair in (PAIR, PAIR2):
        row = await status_row(db, pair)
        assert row["state"] == "joining"
        # The time of a burst, in whole milliseconds rounded up (aio.SharedClock).
        assert before <= row["since"] <= after + timedelta(milliseconds=1)
        assert row["last_error"] is None


async def test_a_repeated_state_keeps_since_and_a_new_state_moves_it(
    engine: AsyncEngine, db: Any
) -> None:
    book = make_bookkeeping(engine)
    book.set_status([PAIR], "joining")
    assert await book.flush()
    first = await status_row(db)

    book.set_status([PAIR], "joining")
    assert await book.flush()
    repeated = await status_row(db)
    assert repeated["since"] == first["since"]
    assert repeated["updated_at"] > first["updated_at"]

    before = datetime.now(UTC)
    book.set_status([PAIR], "joined")
    assert await book.flush()
    moved = await status_row(db)
    assert moved["state"] == "joined"
    assert moved["since"] >= before > first["since"]


async def test_last_error_keeps_the_previous_error_when_a_later_change_has_none(
    engine: AsyncEngine, db: Any
) -> None:
    book = make_bookkeeping(engine)
    book.set_status([PAIR], "error", "no such room")
    assert await book.flush()
    book.set_status([PAIR], "joining")
    assert await book.flush()
    row = await status_row(db)
    assert (row["state"], row["last_error"]) == ("joining", "no such room")

    book.set_status([PAIR], "joining", "connection reset")
    assert await book.flush()
    row = await status_row(db)
    assert (row["state"], row["last_error"]) == ("joining", "connection reset")


async def test_the_last_of_several_changes_to_a_pair_before_a_flush_wins(
    engine: AsyncEngine, db: Any
) -> None:
    book = make_bookkeeping(engine)
    book.set_status([PAIR, PAIR2], "joining")
    book.set_status([PAIR], "joined")
    before_last = datetime.now(UTC)
    book.set_status([PAIR], "error", "kicked")
    book.set_status([PAIR2], "leaving")
    book.set_status([PAIR2], "left")
    assert await book.flush()

    row = await status_row(db)
    assert (row["state"], row["last_error"]) == ("error", "kicked")
    assert row["since"] >= before_last
    assert (await status_row(db, PAIR2))["state"] == "left"
    assert await db.fetchval("SELECT count(*) FROM subscription_status") == 2


async def test_status_changes_and_rejects_are_written_by_the_run_loop_and_drained_on_cancel(
    engine: AsyncEngine, db: Any
) -> None:
    book = make_bookkeeping(engine)
    drain = asyncio.Event()
    task = asyncio.create_task(book.run(drain))
    book.set_status([PAIR], "joined")
    await wait_until(lambda: status_row(db), what="the status row")
    book.add_rejected(rejected(1))
    book.set_status([PAIR2], "joining")
    task.cancel()  # made together with the changes: the drain still writes them
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=5)
    assert (await status_row(db, PAIR2))["state"] == "joining"
    assert await stored_frames(db) == ["frame 1"]


# --- failures -------------------------------------------------------------------------------


async def test_a_failed_status_write_is_counted_kept_and_beaten_by_a_newer_change(
    engine: AsyncEngine, db: Any
) -> None:
    book = make_bookkeeping(engine)
    book.set_status([PAIR], "joining")
    book.add_rejected(rejected(1))
    await db.execute("ALTER TABLE subscription_status RENAME TO status_away")
    try:
        assert await book.flush() is False
        assert await book.flush() is False
    finally:
        await db.execute("ALTER TABLE status_away RENAME TO subscription_status")
    # The other table was written at the first try, and only once.
    assert await stored_frames(db) == ["frame 1"]
    assert book.failures == {"subscription_status": 2}
    assert book.pending["subscription_status"] == 1
    assert sum(book.pending.values()) == 1

    book.set_status([PAIR], "joined")  # newer than the failed change: it must win
    assert await book.flush() is True
    assert (await status_row(db))["state"] == "joined"
    assert sum(book.pending.values()) == 0


async def test_rejected_frames_past_the_bound_drop_the_oldest_and_count_them(
    engine: AsyncEngine, db: Any
) -> None:
    book = make_bookkeeping(engine, max_rejected_pending=3)
    for n in range(5):
        book.add_rejected(rejected(n))
    assert book.rejected_dropped == 2
    assert await book.flush()
    assert await stored_frames(db) == ["frame 2", "frame 3", "frame 4"]


async def test_the_run_loop_retries_a_failed_write_until_the_table_is_back(
    engine: AsyncEngine, db: Any
) -> None:
    book = make_bookkeeping(engine, retry_initial=0.02, retry_max=0.05)
    await db.execute("ALTER TABLE rejected_messages RENAME TO rejected_away")
    drain = asyncio.Event()
    task = asyncio.create_task(book.run(drain))
    try:
        book.add_rejected(rejected(1))
        await wait_until(lambda: book.failures["rejected_messages"] >= 2, what="two failures")
        await db.execute("ALTER TABLE rejected_away RENAME TO rejected_messages")
        await wait_until(lambda: book.pending["rejected_messages"] == 0, what="the retried write")
    finally:
        drain.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=10)
    assert await stored_frames(db) == ["frame 1"]


# --- listening periods ------------------------------------------------------------------------


def holder_of(book: Bookkeeping) -> str:
    return book._holder


async def periods_of(db: Any) -> list[Any]:
    return list(
        await db.fetch(
            "SELECT wallet, token, started_at, ended_at, end_reason, holder FROM coverage "
            "ORDER BY started_at, wallet"
        )
    )


async def test_periods_started_and_ended_in_one_write_are_stored_in_order(
    engine: AsyncEngine, db: Any
) -> None:
    book = make_bookkeeping(engine)
    first = PeriodStart(uuid.uuid4().int, PAIR, T0)
    book.period_started(first)
    book.period_ended(PeriodEnd(first.id, T0 + timedelta(seconds=5), "disconnected"))
    book.period_started(PeriodStart(uuid.uuid4().int, PAIR, T0 + timedelta(seconds=9)))
    assert await book.flush()
    rows = await periods_of(db)
    assert [(r["started_at"], r["ended_at"], r["end_reason"]) for r in rows] == [
        (T0, T0 + timedelta(seconds=5), "disconnected"),
        (T0 + timedelta(seconds=9), None, None),
    ]
    confirmed = await db.fetchval(
        "SELECT confirmed_at FROM coverage_holders WHERE holder = $1", holder_of(book)
    )
    assert confirmed == T0 + timedelta(seconds=9)  # the last event it wrote, at least


async def test_periods_wait_out_a_database_failure_and_are_written_when_it_is_back(
    engine: AsyncEngine, db: Any
) -> None:
    book = make_bookkeeping(engine)
    start = PeriodStart(uuid.uuid4().int, PAIR, T0)
    book.period_started(start)
    await db.execute("ALTER TABLE coverage RENAME TO coverage_away")
    try:
        assert await book.flush() is False
        book.period_ended(PeriodEnd(start.id, T0 + timedelta(seconds=3), "shutdown"))
        assert await book.flush() is False
    finally:
        await db.execute("ALTER TABLE coverage_away RENAME TO coverage")
    assert book.failures["coverage"] == 2
    assert await book.flush()
    [row] = await periods_of(db)
    assert (row["started_at"], row["ended_at"], row["end_reason"]) == (
        T0,
        T0 + timedelta(seconds=3),
        "shutdown",
    )


async def test_a_silent_holders_periods_are_closed_at_its_last_confirmation(
    engine: AsyncEngine, db: Any
) -> None:
    gone, alive = make_bookkeeping(engine), make_bookkeeping(engine)
    gone.period_started(PeriodStart(uuid.uuid4().int, PAIR, T0))
    gone.confirm(T0 + timedelta(seconds=20), silent_since=T0)
    assert await gone.flush()
    alive.period_started(PeriodStart(uuid.uuid4().int, PAIR2, T0 + timedelta(seconds=25)))
    # Not silent long enough yet: its period stays open.
    alive.confirm(T0 + timedelta(seconds=25), silent_since=T0 + timedelta(seconds=10))
    assert await alive.flush()
    assert [r["ended_at"] for r in await periods_of(db)] == [None, None]
    alive.confirm(T0 + timedelta(seconds=60), silent_since=T0 + timedelta(seconds=45))
    assert await alive.flush()
    closed, still_open = await periods_of(db)
    assert (closed["holder"], closed["ended_at"], closed["end_reason"]) == (
        holder_of(gone),
        T0 + timedelta(seconds=20),
        "lost",
    )
    assert (still_open["holder"], still_open["ended_at"]) == (holder_of(alive), None)


async def as_of(db: Any, at: datetime) -> Any:
    return await db.fetchrow(
        "SELECT amount::text AS amount, source, certain FROM balance_as_of($1, $2, $3)",
        *PAIR,
        at,
    )


async def test_balance_as_of_is_certain_inside_one_period_and_not_across_a_gap(
    engine: AsyncEngine, db: Any
) -> None:
    book = make_bookkeeping(engine)
    first = PeriodStart(uuid.uuid4().int, PAIR, T0)
    book.period_started(first)
    book.period_ended(PeriodEnd(first.id, T0 + timedelta(minutes=10), "disconnected"))
    book.period_started(PeriodStart(uuid.uuid4().int, PAIR, T0 + timedelta(minutes=20)))
    book.confirm(T0 + timedelta(minutes=30), silent_since=T0)
    assert await book.flush()
    await db.execute(
        "INSERT INTO balance_history (wallet, token, amount, received_at) VALUES "
        "($1, $2, 5, $3), ($1, $2, 7.5, $4)",
        *PAIR,
        T0 + timedelta(minutes=1),
        T0 + timedelta(minutes=21),
    )
    assert await as_of(db, T0) is None  # nothing received yet
    inside = await as_of(db, T0 + timedelta(minutes=9))
    assert (inside["amount"], inside["source"], inside["certain"]) == ("5", "stream", True)
    in_the_gap = await as_of(db, T0 + timedelta(minutes=15))
    assert (in_the_gap["amount"], in_the_gap["certain"]) == ("5", False)
    after_the_gap = await as_of(db, T0 + timedelta(minutes=25))
    assert (after_the_gap["amount"], after_the_gap["certain"]) == ("7.5", True)
    # An open period counts up to its holder's last confirmation, not beyond.
    beyond = await as_of(db, T0 + timedelta(minutes=31))
    assert (beyond["amount"], beyond["certain"]) == ("7.5", False)
    assert (
        await db.fetchval("SELECT balance_at($1, $2, $3)::text", *PAIR, T0 + timedelta(minutes=15))
        == "5"
    )


# --- balances read from the chain ----------------------------------------------------------------


async def test_chain_rows_failures_and_read_counts_are_stored_and_counts_add_up(
    engine: AsyncEngine, db: Any
) -> None:
    book = make_bookkeeping(engine)
    book.add_chain_row((*PAIR, Decimal("1.5"), T0, "snapshot", 341197053))
    book.add_chain_row((*PAIR2, Decimal(0), T0, "check", 341197060))
    book.add_rpc_failure((T0, *PAIR, "wrong_owner", "the account's owner is not the wallet", "{}"))
    book.count_reads("snapshot", "stored", 2)
    book.count_reads("check", "drift")
    book.snapshot_queue = 7
    book.confirm(T0, T0 - timedelta(minutes=1))
    assert await book.flush()
    book.count_reads("snapshot", "stored")
    assert await book.flush()
    rows = await db.fetch(
        "SELECT wallet, token, amount, source, slot FROM balance_history ORDER BY slot"
    )
    assert [tuple(row) for row in rows] == [
        (*PAIR, Decimal("1.5"), "snapshot", 341197053),
        (*PAIR2, Decimal(0), "check", 341197060),
    ]
    failure = await db.fetchrow("SELECT wallet, token, reason, answer FROM rpc_failures")
    assert tuple(failure) == (*PAIR, "wrong_owner", "{}")
    counts = await db.fetch("SELECT kind, result, reads FROM chain_reads ORDER BY kind")
    assert [tuple(row) for row in counts] == [("check", "drift", 1), ("snapshot", "stored", 3)]
    queue = await db.fetchval(
        "SELECT snapshot_queue FROM coverage_holders WHERE holder = $1", holder_of(book)
    )
    assert queue == 7


async def test_read_counts_wait_out_a_failure_and_are_not_counted_twice(
    engine: AsyncEngine, db: Any
) -> None:
    book = make_bookkeeping(engine)
    book.count_reads("check", "match", 5)
    await db.execute("ALTER TABLE chain_reads RENAME TO chain_reads_away")
    try:
        assert await book.flush() is False
        book.count_reads("check", "match", 1)
    finally:
        await db.execute("ALTER TABLE chain_reads_away RENAME TO chain_reads")
    assert book.failures["chain_reads"] == 1
    assert await book.flush()
    assert await db.fetchval("SELECT sum(reads) FROM chain_reads") == 6
