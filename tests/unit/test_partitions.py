"""Which day partitions the daemon makes ahead, which days it rolls up, which it packs and
which it drops."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import pairwise

from balancewatch.daemon.partitions import (
    PACK_GRACE,
    PREMAKE_DAYS,
    days_completed,
    days_to_redo,
    missing_spans,
    spans_to_drop,
    spans_to_pack,
)
from balancewatch.store.partitions import Span

TODAY = date(2026, 12, 1)  # a Tuesday
MONDAY = date(2026, 11, 30)
MIDNIGHT = datetime(2026, 12, 1, tzinfo=UTC)
NOON = MIDNIGHT + timedelta(hours=12)


def days_before(start: date, *counts: int) -> list[date]:
    return [start - timedelta(days=n) for n in counts]


def day(n: int, width: int = 1) -> Span:
    """The partition of `width` days from TODAY + n days."""
    first = TODAY + timedelta(days=n)
    return Span(first, first + timedelta(days=width))


def week(n: int) -> Span:
    """The week from the nth Monday after MONDAY (0: this week's)."""
    first = MONDAY + timedelta(weeks=n)
    return Span(first, first + timedelta(weeks=1))


def days_in(spans: list[Span]) -> set[date]:
    return {s.first + timedelta(days=n) for s in spans for n in range((s.end - s.first).days)}


# -- partitions ahead --------------------------------------------------------------------------


def test_an_empty_table_gets_today_and_the_week_ahead_a_day_each() -> None:
    assert missing_spans(TODAY, set(), 1) == [day(n) for n in range(PREMAKE_DAYS + 1)]


def test_only_the_missing_days_are_made() -> None:
    existing = {day(0), day(1), day(3)}
    assert missing_spans(TODAY, existing, 1, ahead=3) == [day(2)]


def test_nothing_is_made_when_the_week_ahead_exists() -> None:
    existing = {day(n) for n in range(-30, PREMAKE_DAYS + 1)}
    assert missing_spans(TODAY, existing, 1) == []
    assert missing_spans(TODAY, existing, 7) == []


def test_past_days_are_not_made_again() -> None:
    assert all(span.first >= TODAY for span in missing_spans(TODAY, set(), 7))


def test_weeks_start_on_monday_the_first_from_today() -> None:
    # Today is a Tuesday: this week's partition starts today, not on yesterday's Monday.
    assert missing_spans(TODAY, set(), 7) == [Span(TODAY, week(1).first), week(1)]
    assert missing_spans(MONDAY, set(), 7) == [week(0), week(1)]


def test_weeks_fill_the_days_after_the_day_partitions_that_exist() -> None:
    existing = {day(n) for n in range(-3, 3)}  # to Wednesday: the rest of the week, then weeks
    assert missing_spans(TODAY, existing, 7) == [Span(day(3).first, week(1).first), week(1)]


def test_weeks_stop_short_of_a_partition_that_exists_further_on() -> None:
    existing = {day(4)}  # Saturday
    assert missing_spans(TODAY, existing, 7) == [
        Span(TODAY, day(4).first),
        Span(day(5).first, week(1).first),
        week(1),
    ]


def test_days_fill_the_days_after_the_weeks_that_exist() -> None:
    existing = {week(0)}
    after = [day(n) for n in range(6, PREMAKE_DAYS + 1)]
    assert missing_spans(TODAY, existing, 1) == after
    assert missing_spans(TODAY, {week(0), *after}, 7) == []


def test_made_spans_never_overlap_whatever_the_mix() -> None:
    for today in (TODAY + timedelta(days=n) for n in range(7)):
        for existing in ({day(2)}, {day(1, 3), day(6)}, {week(0)}, {Span(TODAY, day(9).first)}):
            made = missing_spans(today, existing, 7)
            spans = sorted([*existing, *made])
            assert all(a.end <= b.first for a, b in pairwise(spans))
            assert {today + timedelta(days=n) for n in range(PREMAKE_DAYS + 1)} <= days_in(spans)


# -- rollups -----------------------------------------------------------------------------------


def test_the_marked_days_before_the_watermarks_are_computed_again_oldest_first() -> None:
    invalid = set(days_before(TODAY, 0, 1, 10, 40))
    assert days_to_redo(TODAY - timedelta(days=1), invalid) == days_before(TODAY, 40, 10)
    assert days_to_redo(TODAY, set()) == []


def test_a_day_is_completed_when_the_watermark_passes_its_end() -> None:
    assert days_completed(NOON - timedelta(days=1), MIDNIGHT) == days_before(TODAY, 1)
    assert days_completed(MIDNIGHT, NOON) == []
    assert days_completed(MIDNIGHT - timedelta(days=3), NOON) == days_before(TODAY, 3, 2, 1)


def test_a_partition_is_packed_once_its_last_day_ended_an_hour_ago() -> None:
    spans = [day(-3), day(-2), day(-1), day(0)]
    assert spans_to_pack(MIDNIGHT + PACK_GRACE / 2, spans, set()) == [day(-3), day(-2)]
    assert spans_to_pack(MIDNIGHT + PACK_GRACE, spans, set()) == spans[:3]
    assert spans_to_pack(NOON, spans, {day(-3).first}) == [day(-2), day(-1)]


# -- retention ---------------------------------------------------------------------------------


def test_without_a_retention_nothing_is_dropped() -> None:
    assert spans_to_drop(NOON, [day(-1000), day(-500)], None) == []


def test_a_partition_is_dropped_once_its_whole_day_is_older_than_the_retention() -> None:
    existing = [day(-n) for n in (0, 9, 10, 11, 30)]
    # Its end (the next midnight) at least 10 days ago: the 11th day back ended 10 days ago.
    assert spans_to_drop(MIDNIGHT, existing, timedelta(days=10)) == [day(-30), day(-11)]
    assert spans_to_drop(NOON, existing, timedelta(days=10)) == [day(-30), day(-11)]
    later = MIDNIGHT + timedelta(days=1)
    assert spans_to_drop(later, existing, timedelta(days=10)) == [day(-30), day(-11), day(-10)]


def test_a_week_is_dropped_once_its_last_day_is_older_than_the_retention() -> None:
    existing = [week(-3), week(-2), day(-7)]
    monday = datetime.combine(MONDAY, datetime.min.time(), UTC)
    assert spans_to_drop(monday, existing, timedelta(days=7)) == [week(-3), week(-2)]
    assert spans_to_drop(monday - timedelta(seconds=1), existing, timedelta(days=7)) == [week(-3)]
