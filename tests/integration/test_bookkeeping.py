"""Subscription states and rejected frames against a real Postgres: what is stored, in which
order of wins, and that a failure here is retried and counted on its own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.pipeline.bookkeeping import Bookkeeping, BookkeepingConfig
from balancewatch.store.writes import RejectedRow
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
    book = Bookkeeping(engine.url, BookkeepingConfig(**{**_fields(config), **overrides}))
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
        assert before <= row["since"] <= after
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
    assert book.pending == {"subscription_status": 1, "rejected_messages": 0}

    book.set_status([PAIR], "joined")  # newer than the failed change: it must win
    assert await book.flush() is True
    assert (await status_row(db))["state"] == "joined"
    assert book.pending == {"subscription_status": 0, "rejected_messages": 0}


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
