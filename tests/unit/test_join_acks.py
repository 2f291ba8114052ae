"""PendingJoins as a pure unit: when an unacknowledged join is due to be sent again."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balancewatch.daemon.join_acks import PendingJoins, no_ack

A = "room-a"
B = "room-b"


def test_nothing_is_due_before_the_ack_timeout_and_everything_unacked_after_it() -> None:
    pending = PendingJoins(ack_timeout=10.0, max_delay=30.0)
    pending.sent([A, B], now=100.0)
    assert pending.next_due() == 110.0
    assert pending.due(109.99) == []
    assert sorted(pending.due(110.0)) == [A, B]
    assert pending.acked(A)
    assert pending.due(110.0) == [B]


def test_retries_double_the_wait_up_to_the_maximum_and_say_why() -> None:
    pending = PendingJoins(ack_timeout=10.0, max_delay=30.0)
    pending.sent([A], now=0.0)
    now, reasons, sent_at = 0.0, [], [0.0]
    for _ in range(5):
        due_at = pending.next_due()
        assert due_at is not None
        now = due_at
        assert pending.due(now) == [A]
        reasons.append(pending.resent(A, now))
        sent_at.append(now)
    assert [b - a for a, b in itertools.pairwise(sent_at)] == [10, 20, 30, 30, 30]
    assert reasons == [
        "no ack after 10 s (attempt 2)",
        "no ack after 30 s (attempt 3)",
        "no ack after 60 s (attempt 4)",
        "no ack after 90 s (attempt 5)",
        "no ack after 120 s (attempt 6)",
    ]
    entry = pending.get(A)
    assert entry is not None
    assert entry.attempts == 6


def test_an_ack_a_forget_or_a_clear_ends_the_wait() -> None:
    pending = PendingJoins(ack_timeout=1.0, max_delay=1.0)
    pending.sent([A, B], now=0.0)
    assert not pending.acked("never-sent")
    pending.forget([A])
    assert list(pending) == [B]
    assert B in pending
    assert A not in pending
    pending.clear()
    assert len(pending) == 0
    assert pending.next_due() is None
    assert pending.due(1e9) == []


def test_a_join_sent_again_from_the_start_waits_the_full_ack_timeout() -> None:
    pending = PendingJoins(ack_timeout=1.0, max_delay=8.0)
    pending.sent([A], now=0.0)
    pending.resent(A, now=1.0)
    pending.sent([A], now=5.0)  # a new connection's first join
    assert pending.due(5.9) == []
    assert pending.resent(A, now=6.0) == "no ack after 1 s (attempt 2)"


def test_due_rooms_come_oldest_first() -> None:
    pending = PendingJoins(ack_timeout=1.0, max_delay=1.0)
    pending.sent([B], now=0.0)
    pending.sent([A], now=0.5)
    assert pending.due(2.0) == [B, A]


def test_a_maximum_below_the_ack_timeout_is_raised_to_it() -> None:
    pending = PendingJoins(ack_timeout=5.0, max_delay=1.0)
    assert pending.retry_delay(1) == pending.retry_delay(10) == 5.0
    with pytest.raises(ValueError, match="ack_timeout"):
        PendingJoins(ack_timeout=0.0, max_delay=1.0)


@pytest.mark.parametrize(
    ("waited", "attempt", "text"),
    [
        (0.2999, 2, "no ack after 0.3 s (attempt 2)"),
        (10.04, 3, "no ack after 10 s (attempt 3)"),
        (1234.56, 9, "no ack after 1234.6 s (attempt 9)"),
    ],
)
def test_no_ack_text(waited: float, attempt: int, text: str) -> None:
    assert no_ack(waited, attempt) == text


@given(
    st.floats(0.01, 100.0),
    st.floats(0.0, 1000.0),
    st.lists(st.floats(0.0, 50.0), max_size=30),
)
def test_waits_between_attempts_never_shrink_and_stay_within_bounds(
    ack_timeout: float, max_delay: float, steps: list[float]
) -> None:
    pending = PendingJoins(ack_timeout, max_delay)
    pending.sent([A], now=0.0)
    now, waits = 0.0, []
    for step in steps:
        now += step
        if pending.due(now):
            entry = pending.get(A)
            assert entry is not None
            before = entry.next_retry
            pending.resent(A, now)
            after = pending.get(A)  # a new wait: the one before may be shared with other rooms
            assert after is not None
            waits.append(after.next_retry - now)
            assert before <= now
    slack = 1e-9 * (1 + now)  # next_retry - now loses a few bits to rounding
    assert all(b >= a - slack for a, b in itertools.pairwise(waits))
    assert all(ack_timeout - slack <= w <= max(ack_timeout, max_delay) + slack for w in waits)


def test_rooms_sent_together_share_their_wait_until_one_of_them_is_sent_again() -> None:
    pending = PendingJoins(ack_timeout=1.0, max_delay=8.0)
    pending.sent([A, B], now=0.0)
    assert pending.get(A) is pending.get(B)
    pending.resent(A, now=1.0)
    first, second = pending.get(A), pending.get(B)
    assert first is not None
    assert second is not None
    assert (first.attempts, first.next_retry) == (2, 3.0)
    assert (second.attempts, second.next_retry) == (1, 1.0)
    pending.resent(B, now=1.0)
    assert pending.get(B) is pending.get(A)
