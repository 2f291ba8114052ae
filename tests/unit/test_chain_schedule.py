"""Which pairs are read from the chain next: snapshots in the order their periods started,
failed ones later, checks spread evenly over the interval."""

from __future__ import annotations

import pytest

from balancewatch.daemon.chain_schedule import CheckRounds, SnapshotQueue
from balancewatch.domain import Pair

PAIRS: list[Pair] = [(f"wallet{n}", f"token{n}") for n in range(10)]


def test_snapshots_are_taken_in_the_order_their_periods_started_and_each_once() -> None:
    queue = SnapshotQueue()
    for pair in [*PAIRS[:3], PAIRS[0]]:
        queue.add(pair)
    assert len(queue) == 3
    assert queue.take(2, now=0) == PAIRS[:2]
    assert queue.take(5, now=0) == [PAIRS[2]]
    assert queue.take(5, now=0) == []


def test_a_pair_no_longer_listened_to_leaves_the_queue() -> None:
    queue = SnapshotQueue()
    queue.add(PAIRS[0])
    queue.add(PAIRS[1])
    queue.retry(PAIRS[2], at=5)
    queue.discard(PAIRS[0])
    queue.discard(PAIRS[2])
    assert queue.take(5, now=10) == [PAIRS[1]]
    assert len(queue) == 0
    assert queue.next_retry() is None


def test_a_failed_snapshot_comes_back_when_its_retry_is_due_behind_those_waiting() -> None:
    queue = SnapshotQueue()
    queue.retry(PAIRS[0], at=30)
    queue.add(PAIRS[1])
    assert len(queue) == 2
    assert queue.take(5, now=29) == [PAIRS[1]]
    assert queue.next_retry() == 30
    queue.add(PAIRS[2])
    assert queue.take(5, now=30) == [PAIRS[2], PAIRS[0]]


def test_a_new_period_brings_a_waiting_retry_forward() -> None:
    queue = SnapshotQueue()
    queue.retry(PAIRS[0], at=30)
    queue.add(PAIRS[0])
    assert queue.take(5, now=0) == [PAIRS[0]]
    assert queue.next_retry() is None
    assert len(queue) == 0


def test_checks_are_spread_evenly_over_the_interval() -> None:
    rounds = CheckRounds(100.0, lambda: PAIRS)
    assert rounds.take(100, now=0) == []
    assert rounds.next_due() == pytest.approx(10)
    assert rounds.take(100, now=10) == [PAIRS[0]]
    assert rounds.take(100, now=35) == PAIRS[1:3]
    assert rounds.take(1, now=99) == [PAIRS[3]]  # behind: one batch at a time
    assert rounds.take(100, now=99) == PAIRS[4:9]
    assert rounds.take(100, now=100) == [PAIRS[9]]
    assert rounds.next_due() == pytest.approx(100)  # the round is done: the next one starts


def test_a_new_round_reads_the_pairs_listened_to_then() -> None:
    listening = list(PAIRS[:2])
    rounds = CheckRounds(10.0, lambda: listening)
    assert rounds.take(10, now=10) == []  # the first round starts
    assert rounds.take(10, now=20) == PAIRS[:2]
    listening.append(PAIRS[2])
    assert rounds.take(10, now=25) == []  # a new round, of three pairs
    assert rounds.take(10, now=30) == PAIRS[:1]
    assert rounds.take(10, now=35) == PAIRS[1:3]


def test_no_check_interval_is_not_a_schedule() -> None:
    with pytest.raises(ValueError, match="positive"):
        CheckRounds(0, lambda: PAIRS)


def test_a_pair_discarded_and_added_again_is_taken_once() -> None:
    queue = SnapshotQueue()
    queue.add(PAIRS[0])
    queue.add(PAIRS[1])
    queue.discard(PAIRS[0])
    queue.add(PAIRS[0])
    assert len(queue) == 2
    assert sorted(queue.take(5, now=0)) == PAIRS[:2]
    assert queue.take(5, now=0) == []
    queue.add(PAIRS[0])
    assert queue.take(5, now=0) == [PAIRS[0]]
