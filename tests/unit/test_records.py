"""The time stamps every balance row is written with."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from balancewatch.pipeline import records
from balancewatch.pipeline.records import Stamps, received_at


def stamp(stamps: Stamps) -> datetime:
    tail = stamps.tail("1.5", "7")
    assert tail.startswith(b"\t1.5\t")
    assert tail.endswith(b"\t7\n")
    return received_at(tail)


def test_a_stamp_is_the_utc_time_it_was_taken() -> None:
    stamps = Stamps()
    for _ in range(3):  # the first call formats its second, the next ones reuse it
        before = datetime.now(UTC)
        taken = stamp(stamps)
        after = datetime.now(UTC)
        assert taken.utcoffset() == timedelta(0)
        assert before <= taken <= after


def test_stamps_never_go_back_across_many_calls_and_into_the_next_second() -> None:
    stamps = Stamps()
    first = previous = stamp(stamps)
    calls = 0
    while calls < 100_000 or previous.second == first.second:
        taken = stamp(stamps)
        assert taken >= previous
        previous = taken
        calls += 1


def test_a_clock_set_back_is_stamped_as_it_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    stamps = Stamps()
    clock = iter([1_700_000_001_250_000_000, 1_700_000_000_999_999_000, 1_700_000_001_000_001_000])
    monkeypatch.setattr(records, "time_ns", lambda: next(clock))
    assert [stamp(stamps) for _ in range(3)] == [
        datetime(2023, 11, 14, 22, 13, 21, 250_000, tzinfo=UTC),
        datetime(2023, 11, 14, 22, 13, 20, 999_999, tzinfo=UTC),
        datetime(2023, 11, 14, 22, 13, 21, 1, tzinfo=UTC),
    ]
