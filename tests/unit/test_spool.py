"""The spool file: rows round-trip exactly, across segments, torn tails, restarts and the
previous version's format."""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balancewatch.pipeline.records import (
    BalanceLine,
    balance_line,
    epoch_of,
    received_at,
    stamp_from_micros,
)
from balancewatch.pipeline.spool import Position, Spool, SpoolError, current_line
from tests.helpers import TOKEN, WALLET, WALLET2

T0 = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

times = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
# Amounts as the parser hands them on: plain notation, any scale.
amounts = st.decimals(allow_nan=False, allow_infinity=False, min_value=0).map(
    lambda amount: format(amount, "f")
)


def micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def line(amount: str, moment: datetime, wallet: str = WALLET) -> BalanceLine:
    return balance_line(wallet, TOKEN, amount, stamp_from_micros(micros(moment)))


def old_line(amount: str, moment: datetime) -> bytes:
    """A row as the previous version spooled it: the time in microseconds since the epoch."""
    return f"{WALLET}\t{TOKEN}\t{amount}\t{micros(moment)}\n".encode()


def rows(count: int, start: int = 0) -> list[BalanceLine]:
    return [line(f"{i}.5", T0 + timedelta(seconds=i)) for i in range(start, start + count)]


def opened(directory: Path, segment_bytes: int = 64 * 1024 * 1024) -> Spool:
    spool = Spool(directory, segment_bytes=segment_bytes)
    spool.open()
    return spool


@given(st.sampled_from([WALLET, WALLET2]), amounts, times)
def test_a_line_is_read_back_byte_for_byte(wallet: str, amount: str, moment: datetime) -> None:
    written = line(amount, moment, wallet)
    with tempfile.TemporaryDirectory() as directory:
        spool = opened(Path(directory))
        spool.append(written)
        assert spool.read(spool.start(), 10) == ([written], spool.end())
        spool.close()


@given(times)
def test_the_time_a_line_was_stamped_with_reads_back_exactly(moment: datetime) -> None:
    read = received_at(balance_line(WALLET, TOKEN, "1", stamp_from_micros(micros(moment))))
    assert read == moment
    assert read.utcoffset() == timedelta(0)


# An amount as the previous version spooled it (str of a Decimal), and as COPY takes it now.
OLD_AMOUNTS = [
    ("76989.158861", "76989.158861"),
    ("1.50", "1.50"),
    ("0", "0"),
    ("1E-7", "0.0000001"),
    ("2E+21", "2000000000000000000000"),
    ("1E-16383", "0." + "0" * 16382 + "1"),
]


@given(st.sampled_from(OLD_AMOUNTS), times)
def test_a_line_of_the_previous_format_becomes_the_line_balance_line_makes(
    old_and_plain: tuple[str, str], moment: datetime
) -> None:
    old_amount, plain = old_and_plain
    current = line(plain, moment)
    assert current_line(old_line(old_amount, moment)) == current
    assert current_line(current) == current


@given(amounts, times, st.one_of(st.none(), st.integers(1, 2**62)))
def test_a_line_spooled_before_replicas_is_replayed_without_an_epoch(
    amount: str, moment: datetime, epoch: int | None
) -> None:
    stamp = stamp_from_micros(micros(moment))
    before_replicas = f"{WALLET}\t{TOKEN}\t{amount}\t{stamp}\n".encode()
    assert current_line(before_replicas) == balance_line(WALLET, TOKEN, amount, stamp)
    tagged = balance_line(WALLET, TOKEN, amount, stamp, epoch)
    assert current_line(tagged) == tagged
    assert epoch_of(tagged) == epoch
    assert received_at(tagged) == moment


def test_a_spool_left_by_the_previous_version_is_read_back_in_the_current_format(
    tmp_path: Path,
) -> None:
    moments = [T0 + timedelta(seconds=i) for i in range(5)]
    (tmp_path / f"{1:012d}.spool").write_bytes(
        b"".join(old_line(f"{i}.5", moment) for i, moment in enumerate(moments[:3]))
    )
    spool = opened(tmp_path)
    for i, moment in enumerate(moments[3:], start=3):
        spool.append(line(f"{i}.5", moment))  # the new version appends to the same segment
    assert spool.read(spool.start(), 100) == (rows(5), spool.end())
    spool.close()


def test_rows_are_read_back_in_order_across_segments(tmp_path: Path) -> None:
    spool = opened(tmp_path, segment_bytes=500)
    written = rows(40)
    for row in written:
        spool.append(row)
    assert len(spool.segments()) > 3
    read: list[BalanceLine] = []
    position = spool.start()
    while position < spool.end():
        batch, position = spool.read(position, 7)
        assert len(batch) <= 7
        read.extend(batch)
    assert read == written
    assert spool.read(position, 7) == ([], position)


def test_releasing_deletes_consumed_segments_and_a_caught_up_spool_gives_its_space_back(
    tmp_path: Path,
) -> None:
    spool = opened(tmp_path, segment_bytes=500)
    for row in rows(40):
        spool.append(row)
    _, middle = spool.read(spool.start(), 20)
    spool.release(middle)
    assert spool.segments()[0] == middle.segment
    assert spool.read(middle, 100)[0] == rows(20, start=20)
    end = spool.end()
    spool.release(end, force_rotate=True)
    assert spool.total_bytes == 0
    assert spool.is_empty()
    spool.append(rows(1, start=99)[0])
    assert spool.read(end, 10)[0] == rows(1, start=99)


def test_a_torn_last_line_is_not_a_row_and_is_cut_off_on_reopen(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    for row in rows(3):
        spool.append(row)
    spool.close()
    segment = next(tmp_path.glob("*.spool"))
    with segment.open("ab") as file:
        file.write(b"FV1r15rbNKkJanXLheoJA7fXEq6NDuMJ3bukXuhJWyV1\tEs9v")  # a crash mid-write
    reopened = opened(tmp_path)
    reopened.append(rows(1, start=3)[0])
    assert reopened.read(Position(1, 0), 100)[0] == rows(4)
    reopened.close()


def test_the_spool_keeps_its_identity_and_rows_across_restarts(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append(rows(1)[0])
    spool.sync()
    identity = spool.spool_id
    spool.close()
    again = opened(tmp_path)
    assert again.spool_id == identity
    assert not again.is_empty()
    assert again.read(again.start(), 10)[0] == rows(1)
    again.close()


def test_a_second_process_on_the_same_spool_is_refused(tmp_path: Path) -> None:
    first = opened(tmp_path)
    with pytest.raises(SpoolError, match="in use by another balancewatch"):
        opened(tmp_path)
    first.close()
    opened(tmp_path).close()


def test_an_unusable_spool_directory_is_refused_clearly(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpoolError, match="cannot use the spool directory"):
        opened(blocker / "spool")


def read_all(spool: Spool, start: Position | None = None, batch: int = 3) -> list[BalanceLine]:
    read: list[BalanceLine] = []
    position = spool.start() if start is None else start
    while position < spool.end():
        rows_read, position = spool.read(position, batch)
        read.extend(rows_read)
    return read


def test_rows_filled_into_a_reserved_segment_are_read_before_the_rows_appended_after_it(
    tmp_path: Path,
) -> None:
    spool = opened(tmp_path, segment_bytes=500)
    for row in rows(5):
        spool.append(row)
    stored_upto = spool.end()  # where a checkpoint would be: these five are stored
    reserved = spool.reserve()
    assert reserved > stored_upto.segment
    for row in rows(20, start=15):  # newer rows, over several segments
        spool.append(row)
    assert read_all(spool, stored_upto) == rows(20, start=15), "a free number is skipped"
    before = spool.total_bytes
    spool.fill(reserved, rows(10, start=5))  # older rows, still in memory at exit
    assert spool.total_bytes == before + sum(map(len, rows(10, start=5)))
    assert read_all(spool) == rows(35)
    assert read_all(spool, stored_upto) == rows(30, start=5)
    assert not list(tmp_path.glob("*.tmp"))
    spool.close()

    again = opened(tmp_path, segment_bytes=500)
    assert again.total_bytes == before + sum(map(len, rows(10, start=5)))
    assert read_all(again, stored_upto) == rows(30, start=5)
    again.append(rows(1, start=35)[0])
    assert read_all(again, stored_upto) == rows(31, start=5)
    again.close()


def test_reserving_on_an_empty_segment_takes_its_number_and_leaves_no_empty_file(
    tmp_path: Path,
) -> None:
    spool = opened(tmp_path)
    caught_up = spool.end()  # a checkpoint at the very start of an empty spool
    reserved = spool.reserve()
    assert reserved == caught_up.segment
    assert spool.segments() == [reserved + 1]
    spool.append(rows(1, start=1)[0])
    spool.fill(reserved, rows(1))
    assert spool.read(caught_up, 10) == (rows(2), spool.end())
    spool.close()


def test_an_unfilled_reservation_is_a_gap_that_reading_and_releasing_pass_over(
    tmp_path: Path,
) -> None:
    spool = opened(tmp_path)
    spool.append(rows(1)[0])
    spool.reserve()
    spool.append(rows(1, start=1)[0])
    spool.reserve()
    spool.append(rows(1, start=2)[0])
    assert read_all(spool, batch=1) == rows(3)
    spool.close()
    again = opened(tmp_path)
    assert read_all(again, batch=1) == rows(3)
    again.release(again.end(), force_rotate=True)
    assert again.is_empty()
    again.close()


def test_only_a_free_segment_before_the_current_one_can_be_filled(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append(rows(1)[0])
    reserved = spool.reserve()
    spool.fill(reserved, rows(1, start=1))
    for taken in (1, reserved, spool.end().segment, spool.end().segment + 1):
        with pytest.raises(ValueError, match="not a free one"):
            spool.fill(taken, rows(1, start=2))
    spool.close()


def test_a_fill_cut_short_by_a_crash_is_no_segment_and_is_removed_on_reopen(
    tmp_path: Path,
) -> None:
    spool = opened(tmp_path)
    spool.append(rows(1)[0])
    reserved = spool.reserve()
    spool.append(rows(1, start=1)[0])
    spool.close()
    unfinished = tmp_path / f"{reserved:012d}.spool.tmp"
    unfinished.write_bytes(b"".join(rows(2, start=5)))
    again = opened(tmp_path)
    assert not unfinished.exists()
    assert read_all(again) == rows(2)
    again.close()


def test_an_fsync_from_another_thread_syncs_the_dirty_segment_even_if_it_is_rotated_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer fsyncs in a worker thread; a rotation on the loop may close the segment in
    between, and the next segment may get the same descriptor number."""
    spool = Spool(tmp_path, segment_bytes=1024 * 1024)
    spool.open()
    spool.append(balance_line(WALLET, TOKEN, "1", "2026-01-01 00:00:00.000000+00:00"))
    dirty = (tmp_path / f"{spool.segments()[0]:012d}.spool").stat().st_ino
    real_fsync = os.fsync
    synced: list[int] = []

    def rotated_meanwhile(fd: int) -> None:
        spool._rotate()  # what the loop thread may do while the worker is in sync()
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", rotated_meanwhile)
    spool.sync()
    spool.close()
    assert synced == [dirty]
