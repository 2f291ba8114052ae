"""Pair states and listening periods go to the database a piece at a time; a piece that fails
puts back what it held and every piece after it, in order, before anything newer."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy.engine import URL

from balancewatch.pipeline import bookkeeping
from balancewatch.pipeline.bookkeeping import Bookkeeping, BookkeepingConfig
from balancewatch.store.db import RawConnection
from balancewatch.store.writes import PeriodEnd, PeriodStart

T = datetime(2026, 11, 30, tzinfo=UTC)
PAIRS = [(f"wallet{i}", "token") for i in range(5)]


def _bookkeeping(monkeypatch: pytest.MonkeyPatch, fail_at: int) -> tuple[Bookkeeping, list[str]]:
    """A bookkeeping whose writes take 2 rows a piece, the `fail_at`-th of them failing."""
    monkeypatch.setattr(bookkeeping, "_ROWS_PER_WRITE", 2)
    books = Bookkeeping(
        URL.create("postgresql+asyncpg"),
        BookkeepingConfig(gather=0.0, drain_timeout=1.0, write_timeout=1.0),
        holder="h",
    )
    calls: list[str] = []

    async def write(
        table: bookkeeping.Table,
        _statement: Callable[[RawConnection], Awaitable[None]],
        restore: Callable[[], None],
    ) -> bool:
        calls.append(table)
        if len(calls) == fail_at:
            restore()
            return False
        return True

    monkeypatch.setattr(books, "_write", write)
    return books, calls


async def test_states_after_a_failed_piece_wait_with_it_and_a_newer_change_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    books, calls = _bookkeeping(monkeypatch, fail_at=2)
    books.set_status(PAIRS, "joining")
    assert not await books.flush()
    assert calls.count("subscription_status") == 2
    assert set(books._status) == set(PAIRS[2:])  # the first piece was written
    books.set_status([PAIRS[4]], "joined")
    assert books._status[PAIRS[4]].state == "joined"
    assert await books.flush()
    assert not books._status


async def test_periods_after_a_failed_piece_wait_in_their_order_starts_before_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    books, calls = _bookkeeping(monkeypatch, fail_at=2)
    starts = [PeriodStart(uuid.uuid4().int, pair, T) for pair in PAIRS]
    ends = [PeriodEnd(start.id, T, "left") for start in starts[:3]]
    for start in starts:
        books.period_started(start)
    for end in ends:
        books.period_ended(end)
    books.confirm(T, T)
    assert not await books.flush()
    assert calls.count("coverage") == 2
    assert books._starts == starts[2:]  # the failed piece first, then the ones after it
    assert books._ends == ends
    assert books._silent_since == T  # the last piece, which closes others' lost periods, too
    assert await books.flush()
    assert calls.count("coverage") == 2 + 4  # 2 pieces of starts left, then 2 of ends
    assert not books._starts
    assert not books._ends
