"""Which day partitions the daemon makes ahead."""

from __future__ import annotations

from datetime import date, timedelta

from balancewatch.daemon.partitions import PREMAKE_DAYS, missing_days

TODAY = date(2026, 12, 1)


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
