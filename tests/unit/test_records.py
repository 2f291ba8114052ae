"""The time stamps every balance row is written with."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from balancewatch.pipeline.records import Stamps


def test_a_stamp_is_the_utc_time_it_was_taken() -> None:
    stamps = Stamps()
    for _ in range(3):  # the first call formats its second, the next ones reuse it
        before = datetime.now(UTC)
        stamp = datetime.fromisoformat(stamps.now())
        after = datetime.now(UTC)
        assert stamp.utcoffset() == timedelta(0)
        assert before <= stamp <= after


def test_stamps_never_go_back_across_many_calls_and_into_the_next_second() -> None:
    stamps = Stamps()
    first = previous = datetime.fromisoformat(stamps.now())
    calls = 0
    while calls < 100_000 or previous.second == first.second:
        stamp = datetime.fromisoformat(stamps.now())
        assert stamp >= previous
        previous = stamp
        calls += 1
