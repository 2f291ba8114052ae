"""The fencing decision of a batch: which rows may be stored, given when each tenure ends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from balancewatch.pipeline.fencing import epochs_in, split
from balancewatch.pipeline.records import BalanceLine, balance_line, stamp_from_micros
from tests.helpers import TOKEN, WALLET

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def row(epoch: int | None, at: datetime, amount: str = "1") -> BalanceLine:
    micros = (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    return balance_line(WALLET, TOKEN, amount, stamp_from_micros(micros), epoch)


def test_rows_of_held_tenures_are_all_kept() -> None:
    lines = [row(7, NOW - timedelta(seconds=1)), row(8, NOW), row(None, NOW)]
    ends = {b"7": NOW + timedelta(seconds=10), b"8": NOW + timedelta(seconds=3)}
    fenced = split(lines, ends, NOW)
    assert fenced.kept == lines
    assert fenced.refused == 0


def test_an_ended_tenure_keeps_the_rows_received_before_its_end_and_refuses_the_rest() -> None:
    ended_at = NOW - timedelta(seconds=5)
    before = row(7, ended_at - timedelta(milliseconds=1), "before")
    at_end = row(7, ended_at, "at")
    after = row(7, ended_at + timedelta(milliseconds=1), "after")
    other = row(8, NOW, "other")
    ends = {b"7": ended_at, b"8": NOW + timedelta(seconds=10)}
    fenced = split([before, after, other, at_end], ends, NOW)
    assert fenced.kept == [before, other, at_end]
    assert fenced.refused == 1


def test_rows_of_a_tenure_the_database_never_had_are_refused() -> None:
    fenced = split([row(99, NOW), row(None, NOW)], {}, NOW)
    assert fenced.kept == [row(None, NOW)]
    assert fenced.refused == 1


def test_a_current_tenure_has_no_end_however_late_its_rows_come() -> None:
    # tenure_ends() gives no end (None) for a tenure nobody took over.
    fenced = split(
        [row(7, NOW - timedelta(hours=1)), row(7, NOW + timedelta(hours=1))], {b"7": None}, NOW
    )
    assert fenced.refused == 0


@given(
    st.lists(
        st.tuples(st.one_of(st.none(), st.integers(1, 5)), st.integers(-100, 100)), max_size=40
    ),
    st.dictionaries(st.integers(1, 5), st.one_of(st.none(), st.integers(-100, 100))),
)
def test_a_row_is_kept_exactly_when_received_by_the_end_of_a_known_tenure(
    specs: list[tuple[int | None, int]], ends_at: dict[int, int | None]
) -> None:
    lines = [row(epoch, NOW + timedelta(seconds=s)) for epoch, s in specs]
    ends = {
        str(e).encode(): None if s is None else NOW + timedelta(seconds=s)
        for e, s in ends_at.items()
    }
    fenced = split(lines, ends, NOW)

    def kept(epoch: int | None, s: int) -> bool:
        if epoch is None:
            return True
        if epoch not in ends_at:
            return False
        end = ends_at[epoch]
        return end is None or end > 0 or s <= end

    expected = [line for line, spec in zip(lines, specs, strict=True) if kept(*spec)]
    assert fenced.kept == expected
    assert fenced.refused == len(lines) - len(expected)
    assert epochs_in(lines) == {str(e).encode() for e, _ in specs if e is not None}
