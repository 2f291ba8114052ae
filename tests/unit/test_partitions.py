"""Which day partitions the daemon makes ahead, which days it rolls up, which it drops."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from balancewatch.daemon.partitions import (
    PREMAKE_DAYS,
    ROLLUP_GRACE,
    days_to_drop,
    days_to_roll_up,
    missing_days,
)

TODAY = date(2026, 12, 1)
MIDNIGHT = datetime(2026, 12, 1, tzinfo=UTC)
NOON = MIDNIGHT + timedelta(hours=12)


def days_before(day: date, *counts: int) -> list[date]:
    return [day - timedelta(days=n) for n in counts]


def test_an_empty_table_gets_today_and_the_week_ahead() -> None:
    days = missing_days(TODAY, set())
    assert days == [TODAY + timedelta(days=n) for n in range(PREMAKE_DAYS + 1)]


def test_only_the_missing_days_are_made() -> None:
    existing = {TODAY, TODAY + timedelta(days=1), TODAY + timedelta(days=3)}
    assert missing_days(TODAY, existing, ahead=3) == [TODAY + timedelta(days=2)]


def test_nothing_is_made_when_the_week_ahead_exists() -> None:
    existing = {TODAY + timedelta(days=n) for n in range(-30, PREMAKE_DAYS + 1)}
    assert missing_days(TODAY, existing) == []


def test_past_days_are_not_made_again() -> None:
    assert TODAY - timedelta(days=1) not in missing_days(TODAY, set())


# -- rollups -----------------------------------------------------------------------------------


def test_every_closed_day_from_the_first_not_rolled_up_is_rolled_up_in_order() -> None:
    live_from = TODAY - timedelta(days=3)
    assert days_to_roll_up(NOON, live_from, set()) == days_before(TODAY, 3, 2, 1)


def test_today_is_never_rolled_up_and_yesterday_only_after_the_grace() -> None:
    yesterday = TODAY - timedelta(days=1)
    assert days_to_roll_up(MIDNIGHT + ROLLUP_GRACE / 2, yesterday, set()) == []
    assert days_to_roll_up(MIDNIGHT + ROLLUP_GRACE, yesterday, set()) == [yesterday]
    assert days_to_roll_up(NOON, TODAY, set()) == []


def test_invalid_days_come_first_then_the_closed_ones() -> None:
    invalid = set(days_before(TODAY, 40, 10))
    live_from = TODAY - timedelta(days=1)
    assert days_to_roll_up(NOON, live_from, invalid) == days_before(TODAY, 40, 10, 1)


def test_an_invalid_day_not_rolled_up_yet_is_rolled_up_once() -> None:
    live_from = TODAY - timedelta(days=2)
    assert days_to_roll_up(NOON, live_from, {live_from}) == days_before(TODAY, 2, 1)


# -- retention ---------------------------------------------------------------------------------


def test_without_a_retention_nothing_is_dropped() -> None:
    assert days_to_drop(NOON, days_before(TODAY, 1000, 500), None) == []


def test_a_partition_is_dropped_once_its_whole_day_is_older_than_the_retention() -> None:
    existing = days_before(TODAY, 0, 9, 10, 11, 30)
    # Its end (the next midnight) at least 10 days ago: the 11th day back ended 10 days ago.
    assert days_to_drop(MIDNIGHT, existing, timedelta(days=10)) == days_before(TODAY, 30, 11)
    assert days_to_drop(NOON, existing, timedelta(days=10)) == days_before(TODAY, 30, 11)
    later = MIDNIGHT + timedelta(days=1)
    assert days_to_drop(later, existing, timedelta(days=10)) == days_before(TODAY, 30, 11, 10)
