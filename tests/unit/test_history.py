"""The pure parts of `balancewatch history`: times as given on the command line, the chart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from balancewatch.ops.history import UsageError, parse_time, render_chart
from balancewatch.store.history import Gap, Row
from tests.data import T0
from tests.helpers import TOKEN

# --- pure parts -----------------------------------------------------------------------------

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("90s", NOW - timedelta(seconds=90)),
        ("15m", NOW - timedelta(minutes=15)),
        ("1h", NOW - timedelta(hours=1)),
        ("2d", NOW - timedelta(days=2)),
        ("1w", NOW - timedelta(weeks=1)),
        ("2026-11-20T12:00:00Z", T0),
        ("2026-11-20 13:00:00+01:00", T0),
        ("2026-11-20T12:00", T0),  # naive means UTC
    ],
)
def test_times_are_iso_8601_or_a_span_back_from_now(given: str, expected: datetime) -> None:
    assert parse_time(given, NOW) == expected


@pytest.mark.parametrize("given", ["yesterday", "1y", "-1h", "1.5h", ""])
def test_an_unreadable_time_is_a_usage_error(given: str) -> None:
    with pytest.raises(UsageError):
        parse_time(given, NOW)


def test_the_chart_is_a_braille_step_line_labelled_with_the_exact_extremes() -> None:
    rows = [
        Row(TOKEN, T0 + timedelta(minutes=i), a) for i, a in enumerate(["1.5", "3", "0.25", "3"])
    ]
    lines = render_chart(rows, width=40, height=6).splitlines()
    assert len(lines) == 6 + 2
    assert lines[0].startswith("   3 ┤")
    assert lines[5].startswith("0.25 ┤")
    plot = [line[6:] for line in lines[:6]]
    assert all(len(row) == 40 for row in plot)
    assert all(0x2800 <= ord(ch) <= 0x28FF for row in plot for ch in row)
    # Every column has at least one dot: the line is continuous.
    assert all(any(ord(row[col]) != 0x2800 for row in plot) for col in range(40))
    assert lines[-1].strip().startswith("2026-11-20T12:00:00.000000Z")
    assert lines[-1].strip().endswith("2026-11-20T12:03:00.000000Z")


def test_a_flat_history_draws_a_flat_line_and_one_row_draws_nothing() -> None:
    flat = [Row(TOKEN, T0 + timedelta(minutes=i), "7") for i in range(3)]
    plot = [line.split("┤")[-1].split("│")[-1] for line in render_chart(flat).splitlines()[:8]]
    assert sum(any(ch != "\u2800" for ch in row) for row in plot) == 1
    assert render_chart(flat[:1]) == ""


def test_the_chart_marks_the_gaps_under_its_time_axis() -> None:
    start = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    rows = [Row(TOKEN, start + timedelta(minutes=m), str(m)) for m in (0, 10, 20)]
    gap = Gap(start + timedelta(minutes=5), start + timedelta(minutes=15), "disconnected")
    lines = render_chart(rows, [gap], width=20, height=4).splitlines()
    marks = lines[-1]
    assert marks.endswith("░ not listening")
    axis = marks[: -len("  ░ not listening")].lstrip(" ")
    # The middle half of the time axis, and only that, is marked.
    assert axis.strip() == "░" * axis.count("░")
    assert 9 <= axis.count("░") <= 11
    assert render_chart(rows).splitlines()[-1].strip().startswith("2026")  # no gap, no line
