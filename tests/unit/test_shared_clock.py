"""The clock a burst of events shares: whole milliseconds rounded up, one object each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from balancewatch.aio import SharedClock

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)


class FakeTime:
    """A monotonic clock and a wall clock that move together, from 0.2 ms past T0."""

    def __init__(self) -> None:
        self.tick = 100.0002
        self.readings = 0

    def monotonic(self) -> float:
        return self.tick

    def now(self) -> datetime:
        self.readings += 1
        return T0 + timedelta(microseconds=round((self.tick - 100.0) * 1e6))


def clock_of(fake: FakeTime) -> SharedClock:
    return SharedClock(monotonic=fake.monotonic, now=fake.now)


def test_a_reading_is_never_before_now_nor_a_millisecond_after() -> None:
    fake = FakeTime()
    clock = clock_of(fake)
    for _ in range(12):
        stamp = clock()
        assert fake.now() <= stamp < fake.now() + timedelta(milliseconds=1)
        assert stamp.microsecond % 1000 == 0
        fake.tick += 0.00035


def test_readings_until_the_clock_passes_the_stamp_are_one_object() -> None:
    fake = FakeTime()
    clock = clock_of(fake)
    first = clock()
    fake.tick += 0.0007  # 0.9 ms past T0: still before the stamp, T0 + 1 ms
    assert clock() is first
    assert first == T0 + timedelta(milliseconds=1)
    assert fake.readings == 1


def test_a_reading_past_the_stamp_is_the_next_millisecond() -> None:
    fake = FakeTime()
    clock = clock_of(fake)
    first = clock()
    fake.tick += 0.0009  # 1.1 ms past T0
    later = clock()
    assert later is not first
    assert later == T0 + timedelta(milliseconds=2)
