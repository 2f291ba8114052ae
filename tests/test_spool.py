"""The spool file: rows round-trip exactly, across segments, torn tails and restarts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balancewatch.records import BalanceRow
from balancewatch.spool import Position, Spool, SpoolError, decode, encode
from tests.helpers import TOKEN, WALLET

T0 = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def rows(count: int, start: int = 0) -> list[BalanceRow]:
    return [
        (WALLET, TOKEN, Decimal(f"{i}.5"), T0 + timedelta(seconds=i))
        for i in range(start, start + count)
    ]


def opened(directory: Path, segment_bytes: int = 64 * 1024 * 1024) -> Spool:
    spool = Spool(directory, segment_bytes=segment_bytes)
    spool.open()
    return spool


@given(
    st.decimals(allow_nan=False, allow_infinity=False, min_value=0),
    st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
)
def test_a_row_round_trips_exactly(amount: Decimal, received_at: datetime) -> None:
    row = (WALLET, TOKEN, amount, received_at)
    back = decode(encode(row))
    assert back == row
    assert str(back[2]) == str(amount)


def test_rows_are_read_back_in_order_across_segments(tmp_path: Path) -> None:
    spool = opened(tmp_path, segment_bytes=500)
    written = rows(40)
    for row in written:
        spool.append(row)
    assert len(spool.segments()) > 3
    read: list[BalanceRow] = []
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
