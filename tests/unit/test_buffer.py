"""The buffer against a real spool: memory holds the oldest rows, the spool the newer ones, and
rows still in memory at exit are spooled in front of the newer ones, so they come back in
arrival order."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from balancewatch.pipeline.buffer import Buffer
from balancewatch.pipeline.records import BalanceLine, balance_line, stamp_from_micros
from balancewatch.pipeline.spool import Position, Spool
from tests.helpers import TOKEN, WALLET, cut

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def rows(count: int, start: int = 0) -> list[BalanceLine]:
    def stamp(i: int) -> str:
        return stamp_from_micros((T0 + timedelta(seconds=i) - EPOCH) // timedelta(microseconds=1))

    return [balance_line(WALLET, TOKEN, str(i), stamp(i)) for i in range(start, start + count)]


def open_spool(directory: Path) -> Spool:
    spool = Spool(directory, segment_bytes=1000)
    spool.open()
    return spool


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    opened = open_spool(tmp_path)
    yield opened
    opened.close()


def add_all(buffer: Buffer, lines: list[BalanceLine]) -> None:
    for line in lines:
        buffer.add(*cut(line))


def unstored(spool: Spool, checkpoint: Position | None = None) -> list[BalanceLine]:
    """What a replay from `checkpoint` (the spool's start if none) would store, in order."""
    read: list[BalanceLine] = []
    position = spool.start() if checkpoint is None else checkpoint
    while position < spool.end():
        batch, position = spool.read(position, 4)
        read.extend(batch)
    return read


def test_rows_in_memory_at_exit_go_in_front_of_the_rows_that_spilled_after_them(
    tmp_path: Path, spool: Spool
) -> None:
    buffer = Buffer(spool, max_memory_rows=10, durable=False)
    add_all(buffer, rows(40))  # 10 in memory, 30 spilled over several segments
    assert buffer.memory.lines() == rows(10)
    assert buffer.spilled
    assert buffer.spool_pending == 30
    assert buffer.spool_memory() == rows(10)
    assert not buffer.memory
    assert len(buffer) == 40
    assert unstored(spool) == rows(40)
    spool.close()
    again = open_spool(tmp_path)
    assert unstored(again) == rows(40)
    again.close()


def test_a_memory_batch_that_failed_is_spooled_in_front_too(spool: Spool) -> None:
    buffer = Buffer(spool, max_memory_rows=10, durable=False)
    add_all(buffer, rows(10))
    taken = buffer.take_memory(4)  # a batch under way when the database goes
    add_all(buffer, rows(20, start=10))  # four more fit in memory, then a spill
    assert buffer.memory.lines() == rows(10, start=4)
    buffer.restore_memory(taken, oldest=1.0)  # the batch failed
    assert buffer.spool_memory() == rows(14)
    assert unstored(spool) == rows(30)


def test_after_rows_spilled_by_an_earlier_spill_were_stored_a_new_spill_reserves_anew(
    spool: Spool,
) -> None:
    buffer = Buffer(spool, max_memory_rows=5, durable=False)
    add_all(buffer, rows(12))
    stored = buffer.take_memory(5)  # stored, then the spool is replayed to its end
    assert stored.lines() == rows(5)
    assert unstored(spool) == rows(7, start=5)
    checkpoint = spool.end()
    buffer.spool_stored(7, caught_up=True)
    spool.release(checkpoint)
    assert not buffer.spilled
    add_all(buffer, rows(9, start=12))  # 5 in memory, 4 spilled
    assert buffer.spool_memory() == rows(5, start=12)
    assert unstored(spool, checkpoint) == rows(9, start=12)


def test_rows_in_memory_with_nothing_spilled_are_appended_to_a_caught_up_spool(
    spool: Spool,
) -> None:
    buffer = Buffer(spool, max_memory_rows=100, durable=False)
    add_all(buffer, rows(5))
    assert spool.is_empty()
    assert buffer.spool_memory() == rows(5)
    assert buffer.spilled
    assert unstored(spool) == rows(5)


def test_in_durable_mode_memory_stays_empty_and_nothing_is_reserved(spool: Spool) -> None:
    buffer = Buffer(spool, max_memory_rows=100, durable=True)
    add_all(buffer, rows(20))
    assert not buffer.memory
    assert buffer.spool_memory() == []
    assert unstored(spool) == rows(20)
    assert spool.segments() == list(range(1, spool.end().segment + 1)), "no gap"


def test_a_spool_left_by_an_earlier_run_takes_every_row_until_it_is_replayed(
    tmp_path: Path, spool: Spool
) -> None:
    first = Buffer(spool, max_memory_rows=5, durable=False)
    add_all(first, rows(8))
    assert first.spool_memory() == rows(5)  # a run that spilled, then stopped
    spool.close()
    again = open_spool(tmp_path)
    later = Buffer(again, max_memory_rows=5, durable=False)
    assert later.spilled
    assert later.oldest == 0.0
    add_all(later, rows(4, start=8))
    assert not later.memory
    assert later.spool_memory() == []
    assert unstored(again) == rows(12)
    again.close()
