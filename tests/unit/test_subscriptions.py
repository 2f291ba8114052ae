"""Subscriptions as a pure unit: which join and leave frames go out, and which states are recorded.

The sender and the status sink are in-memory fakes; nothing here touches a socket or a database.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from balancewatch.daemon.coverage import Coverage
from balancewatch.daemon.rooms import Wanted, wanted_rooms
from balancewatch.daemon.subscriptions import Subscriptions
from balancewatch.devtools.benchkit import bench_pairs
from balancewatch.domain import Pair, Watch
from tests.fakes import FakeClock, FakeSender, FakeStatus
from tests.helpers import (
    SOL,
    TOKEN,
    WALLET,
    WALLET2,
    RecordedPeriods,
    room,
    unrecorded_coverage,
    wait_until,
)

A: Pair = (WALLET, TOKEN)
B: Pair = (WALLET2, SOL)
C: Pair = (WALLET, SOL)
D: Pair = (WALLET2, TOKEN)
BAD: Pair = ("not-a-wallet-0OIl", TOKEN)

# Every ordered pair of four valid addresses: 16 rooms for the property test.
_ADDRESSES = (WALLET, WALLET2, TOKEN, SOL)
POOL: list[Pair] = [(wallet, token) for wallet in _ADDRESSES for token in _ADDRESSES]


def r(pair: Watch) -> str:
    return room(*pair)


def want(*pairs: Watch) -> Wanted:
    return wanted_rooms(pairs)


async def holding(subs: Subscriptions, status: FakeStatus, *pairs: Watch) -> FakeSender:
    """A live connection that holds `pairs`, the frames and states that got it there cleared."""
    sender = FakeSender()
    await subs.connected(sender)
    await subs.want(want(*pairs))
    sender.frames.clear()
    status.changes.clear()
    return sender


@pytest.fixture
def status() -> FakeStatus:
    return FakeStatus()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def periods() -> RecordedPeriods:
    return RecordedPeriods()


@pytest.fixture
def subs(status: FakeStatus, clock: FakeClock, periods: RecordedPeriods) -> Subscriptions:
    coverage = Coverage(periods)
    return Subscriptions(status, coverage, join_ack_timeout=10.0, join_retry_max=30.0, clock=clock)


# --- disconnected -----------------------------------------------------------------------------


async def test_wanting_rooms_while_disconnected_sends_nothing_and_records_joining_and_left(
    subs: Subscriptions, status: FakeStatus
) -> None:
    await subs.want(want(A, B))
    assert sorted(status.changes) == sorted([(A, "joining", None), (B, "joining", None)])

    status.changes.clear()
    await subs.want(want(B, C))
    assert sorted(status.changes) == sorted([(A, "left", None), (C, "joining", None)])
    assert subs.held == frozenset()
    assert subs.wanted == {r(B), r(C)}


async def test_connecting_joins_every_wanted_room_once(
    subs: Subscriptions, status: FakeStatus
) -> None:
    await subs.want(want(A, B, C))
    sender = FakeSender()
    await subs.connected(sender)
    assert sorted(sender.joins()) == sorted([r(A), r(B), r(C)])
    assert sender.leaves() == []
    assert subs.held == subs.wanted == {r(A), r(B), r(C)}
    assert {status.last(pair) for pair in (A, B, C)} == {("joining", None)}


async def test_connecting_with_nothing_wanted_sends_nothing(subs: Subscriptions) -> None:
    sender = FakeSender()
    await subs.connected(sender)
    await subs.want(want())
    assert sender.frames == []


# --- connected --------------------------------------------------------------------------------


async def test_wanting_more_rooms_joins_only_the_new_ones(
    subs: Subscriptions, status: FakeStatus
) -> None:
    sender = FakeSender()
    await subs.connected(sender)
    await subs.want(want(A))
    status.changes.clear()

    await subs.want(want(A, B, C))
    assert sender.joins() == [r(A), *sorted([r(B), r(C)])]
    assert sorted(status.changes) == sorted([(B, "joining", None), (C, "joining", None)])
    assert subs.held == {r(A), r(B), r(C)}


async def test_wanting_the_same_rooms_again_sends_nothing(subs: Subscriptions) -> None:
    sender = FakeSender()
    await subs.connected(sender)
    await subs.want(want(A, B))
    frames = list(sender.frames)
    await subs.want(want(B, A))
    assert sender.frames == frames


async def test_a_whole_read_again_leaves_each_held_room_in_memory_once(
    subs: Subscriptions, status: FakeStatus
) -> None:
    """A whole read makes every room string anew: the held rooms take the new ones, or each
    room would stay in memory twice (rooms are not interned)."""
    sender = await holding(subs, status, A, B)
    again = want(A, B, C)
    await subs.want(again)
    assert sender.frames == [("join", r(C))]
    new_keys = {id(key) for key in again.rooms}
    assert {id(held) for held in subs.held} == new_keys


async def test_unwanting_rooms_leaves_them_and_records_leaving_then_left(
    subs: Subscriptions, status: FakeStatus
) -> None:
    sender = await holding(subs, status, A, B, C)

    await subs.want(want(A))
    assert sorted(sender.leaves()) == sorted([r(B), r(C)])
    assert sender.joins() == []
    assert status.states(B) == status.states(C) == ["leaving", "left"]
    assert status.states(A) == []
    assert subs.held == {r(A)}


async def test_one_change_can_leave_and_join_at_once_leaves_first(
    subs: Subscriptions, status: FakeStatus
) -> None:
    sender = FakeSender()
    await subs.connected(sender)
    await subs.want(want(A))
    sender.frames.clear()

    await subs.want(want(B))
    assert sender.frames == [("leave", r(A)), ("join", r(B))]
    assert status.states(A)[-2:] == ["leaving", "left"]
    assert status.last(B) == ("joining", None)


# --- reconnects -------------------------------------------------------------------------------


async def test_a_reconnect_rejoins_everything_on_the_new_sender_and_nothing_on_the_old(
    subs: Subscriptions, status: FakeStatus
) -> None:
    old = FakeSender()
    await subs.connected(old)
    await subs.want(want(A, B))
    old_frames = list(old.frames)

    subs.disconnected("connection lost")
    assert subs.held == frozenset()
    await subs.want(want(A, C))  # changes while down are only recorded
    assert old.frames == old_frames

    new = FakeSender()
    await subs.connected(new)
    assert sorted(new.joins()) == sorted([r(A), r(C)])
    assert new.leaves() == []
    assert old.frames == old_frames
    assert subs.held == {r(A), r(C)}
    assert status.last(B) == ("left", None)


@pytest.mark.parametrize(
    ("error", "recorded"),
    [(None, None), ("connection reset by peer", "connection reset by peer")],
    ids=["deliberate close", "dropped"],
)
async def test_a_disconnect_puts_held_rooms_back_to_joining_with_its_error(
    subs: Subscriptions, status: FakeStatus, error: str | None, recorded: str | None
) -> None:
    await subs.connected(FakeSender())
    await subs.want(want(A, B))
    status.changes.clear()

    subs.disconnected(error)
    assert sorted(status.changes) == sorted([(A, "joining", recorded), (B, "joining", recorded)])


async def test_a_second_disconnect_records_nothing(subs: Subscriptions, status: FakeStatus) -> None:
    await subs.connected(FakeSender())
    await subs.want(want(A))
    subs.disconnected("gone")
    status.changes.clear()
    subs.disconnected("gone again")
    assert status.changes == []


# --- acknowledgements and room errors ---------------------------------------------------------


async def test_joined_is_recorded_only_for_a_room_that_is_held_and_wanted(
    subs: Subscriptions, status: FakeStatus
) -> None:
    await subs.want(want(A))
    subs.joined(r(A))  # wanted, not held: no connection yet
    assert "joined" not in status.states(A)

    sender = FakeSender()
    await subs.connected(sender)
    subs.joined(r(A))
    assert status.last(A) == ("joined", None)

    subs.joined(r(D))  # never wanted
    assert status.states(D) == []

    await subs.want(want(A, B))
    sender.broken = True
    await subs.want(want(A))  # the leave of B fails: B is still held but no longer wanted
    assert subs.is_held(r(B))
    subs.joined(r(B))
    assert "joined" not in status.states(B)


async def test_a_room_error_is_recorded_against_a_wanted_pair_only(
    subs: Subscriptions, status: FakeStatus
) -> None:
    await subs.connected(FakeSender())
    await subs.want(want(A))
    subs.room_error(r(A), "no such room")
    subs.room_error(r(B), "no such room")
    assert status.last(A) == ("error", "no such room")
    assert status.states(B) == []


# --- joins the server does not acknowledge ----------------------------------------------------


async def test_an_unacked_join_is_sent_again_with_growing_delays_and_its_status_says_so(
    subs: Subscriptions, status: FakeStatus, clock: FakeClock
) -> None:
    await subs.want(want(A))
    sender = FakeSender()
    await subs.connected(sender)
    assert subs.unacked == {r(A)}

    clock.now += 9.9
    assert await subs.resend_unacked(sender) == 0
    clock.now += 0.1
    assert await subs.resend_unacked(sender) == 1
    assert status.last(A) == ("joining", "no ack after 10 s (attempt 2)")
    clock.now += 19.9
    assert await subs.resend_unacked(sender) == 0
    clock.now += 0.1
    assert await subs.resend_unacked(sender) == 1
    assert status.last(A) == ("joining", "no ack after 30 s (attempt 3)")
    assert sender.joins() == [r(A)] * 3
    assert subs.held == {r(A)}

    subs.joined(r(A))
    assert status.last(A) == ("joined", None)
    assert subs.unacked == frozenset()
    clock.now += 1000
    assert await subs.resend_unacked(sender) == 0
    assert sender.joins() == [r(A)] * 3


async def test_only_the_unacked_rooms_are_sent_again(subs: Subscriptions, clock: FakeClock) -> None:
    sender = FakeSender()
    await subs.connected(sender)
    await subs.want(want(A, B, C))
    subs.joined(r(A))
    subs.joined(r(C))
    clock.now += 10
    await subs.resend_unacked(sender)
    assert sorted(sender.joins()) == sorted([r(A), r(B), r(B), r(C)])


async def test_a_balance_for_an_unacked_room_counts_as_its_ack(
    subs: Subscriptions, status: FakeStatus, clock: FakeClock
) -> None:
    sender = FakeSender()
    await subs.connected(sender)
    await subs.want(want(A, B))
    subs.delivered(r(A))
    subs.delivered(r(A))
    clock.now += 10
    assert await subs.resend_unacked(sender) == 1
    assert sorted(sender.joins()) == sorted([r(A), r(B), r(B)])
    assert status.last(A) == ("joined", None)


async def test_a_room_left_or_answered_with_an_error_is_not_sent_again(
    subs: Subscriptions, status: FakeStatus, clock: FakeClock
) -> None:
    sender = FakeSender()
    await subs.connected(sender)
    await subs.want(want(A, B))
    await subs.want(want(A))  # B is left before any ack
    subs.room_error(r(A), "server said: no such room")
    clock.now += 100
    assert await subs.resend_unacked(sender) == 0
    assert sorted(sender.joins()) == sorted([r(A), r(B)])
    assert status.last(A) == ("error", "server said: no such room")
    assert status.last(B) == ("left", None)


async def test_a_new_connection_forgets_the_old_ones_unacked_joins(
    subs: Subscriptions, clock: FakeClock
) -> None:
    await subs.want(want(A))
    old = FakeSender()
    await subs.connected(old)
    subs.disconnected("dropped")
    assert subs.unacked == frozenset()
    clock.now += 5
    new = FakeSender()
    await subs.connected(new)
    clock.now += 9  # 14 s after the first join on the old connection, 9 on the new one
    assert await subs.resend_unacked(old) == 0
    assert await subs.resend_unacked(new) == 0
    clock.now += 1
    assert await subs.resend_unacked(new) == 1
    assert old.joins() == [r(A)]
    assert new.joins() == [r(A), r(A)]


async def test_a_failed_resend_is_swallowed(subs: Subscriptions, clock: FakeClock) -> None:
    sender = FakeSender()
    await subs.connected(sender)
    await subs.want(want(A))
    sender.broken = True
    clock.now += 10
    with capture_logs() as logs:
        assert await subs.resend_unacked(sender) == 1
    assert [entry["event"] for entry in logs] == [
        "subscriptions.join_resent",
        "subscriptions.send_failed",
    ]


async def test_the_retry_loop_resends_on_time_and_waits_for_new_joins_when_idle(
    status: FakeStatus, clock: FakeClock
) -> None:
    # The loop sleeps for real until a join is due, but what is due is decided by the clock,
    # which only this test moves: no fourth join can slip in before the ack, however slow the
    # machine.
    subs = Subscriptions(
        status, unrecorded_coverage(), join_ack_timeout=0.05, join_retry_max=0.1, clock=clock
    )
    sender = FakeSender()
    await subs.connected(sender)
    retries = asyncio.create_task(subs.retry_unacked_joins(sender))
    try:
        await asyncio.sleep(0)  # the loop's first step: nothing unacked, it waits for a join
        await subs.want(want(A))  # wakes the loop, which had nothing to wait for
        clock.now += 0.05
        await wait_until(lambda: len(sender.joins()) >= 2, timeout=2.0, what="one re-sent join")
        clock.now += 0.1
        await wait_until(lambda: len(sender.joins()) >= 3, timeout=2.0, what="two re-sent joins")
        subs.joined(r(A))
        clock.now += 1000
        await asyncio.sleep(0.25)
        assert sender.joins() == [r(A)] * 3
    finally:
        retries.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await retries
    assert status.last(A) == ("joined", None)


# --- send failures ----------------------------------------------------------------------------


async def test_a_failed_join_is_swallowed_and_the_next_connection_joins_everything(
    subs: Subscriptions, status: FakeStatus
) -> None:
    await subs.want(want(A, B))
    broken = FakeSender(broken=True)
    with capture_logs() as logs:
        await subs.connected(broken)  # no exception escapes
    assert [entry["event"] for entry in logs] == ["subscriptions.send_failed"]
    assert "connection reset" in logs[0]["error"]

    subs.disconnected("connection reset by peer")
    fresh = FakeSender()
    await subs.connected(fresh)
    assert sorted(fresh.joins()) == sorted([r(A), r(B)])
    assert fresh.holding() == subs.held == subs.wanted
    assert broken.frames == []


async def test_a_failed_leave_is_swallowed_and_the_next_connection_joins_only_what_is_wanted(
    subs: Subscriptions, status: FakeStatus
) -> None:
    sender = FakeSender()
    await subs.connected(sender)
    await subs.want(want(A, B))
    sender.broken = True
    with capture_logs() as logs:
        await subs.want(want(A))
    assert [entry["event"] for entry in logs] == ["subscriptions.send_failed"]

    subs.disconnected("connection reset by peer")
    assert status.last(B) == ("left", None)  # nothing holds it once the connection is gone
    fresh = FakeSender()
    await subs.connected(fresh)
    assert fresh.joins() == [r(A)]
    assert subs.held == {r(A)}


async def test_a_wanted_room_cut_off_by_a_failed_leave_is_joining_while_disconnected(
    subs: Subscriptions, status: FakeStatus
) -> None:
    sender = FakeSender()
    await subs.connected(sender)
    await subs.want(want(A))
    await subs.want(want(B))  # A: leaving, left
    sender.broken = True
    await subs.want(want(A))  # the leave of B fails, so A's join is never attempted
    subs.disconnected("connection reset by peer")

    assert subs.wanted == {r(A)}
    assert status.last(A) == ("joining", "connection reset by peer")


# --- invalid rows -----------------------------------------------------------------------------


async def test_an_invalid_row_is_recorded_once_with_its_reason_and_never_joined(
    subs: Subscriptions, status: FakeStatus
) -> None:
    sender = FakeSender()
    await subs.connected(sender)
    with capture_logs() as logs:
        await subs.want(wanted_rooms([BAD, A]))
        await subs.want(wanted_rooms([BAD, A]))
    assert [entry["event"] for entry in logs].count("subscriptions.invalid_row") == 1

    [(state, reason)] = [(s, e) for p, s, e in status.changes if p == BAD]
    assert state == "invalid"
    assert reason is not None
    assert "is not a base58 address" in reason
    assert reason.startswith("wallet ")
    assert sender.joins() == [r(A)]


async def test_an_invalid_row_removed_and_added_again_is_recorded_again(
    subs: Subscriptions, status: FakeStatus
) -> None:
    await subs.want(wanted_rooms([BAD]))
    await subs.want(wanted_rooms([]))
    await subs.want(wanted_rooms([BAD]))
    assert status.states(BAD) == ["invalid", "invalid"]


# --- updates of a few pairs ---------------------------------------------------------------------


async def test_an_update_diffs_only_the_pairs_read_again_and_keeps_the_rest(
    subs: Subscriptions, status: FakeStatus
) -> None:
    sender = await holding(subs, status, A, B)

    # B was deleted, C inserted, D read again and still absent; A was not read at all.
    await subs.update({B, C, D}, want(C))
    assert sender.frames == [("leave", r(B)), ("join", r(C))]
    assert subs.wanted == subs.held == {r(A), r(C)}
    assert status.states(A) == status.states(D) == []


async def test_an_update_of_a_pair_still_wanted_sends_nothing(
    subs: Subscriptions, status: FakeStatus
) -> None:
    sender = await holding(subs, status, A)

    await subs.update({A}, want(A))  # its label changed, say
    assert sender.frames == []
    assert status.changes == []


async def test_an_update_while_disconnected_records_joining_and_left_for_those_pairs(
    subs: Subscriptions, status: FakeStatus
) -> None:
    await subs.want(want(A, B))
    status.changes.clear()
    await subs.update({B, C}, want(C))
    assert status.states(B) == ["left"]
    assert status.states(C) == ["joining"]
    assert status.states(A) == []


async def test_an_invalid_row_read_again_stays_recorded_once_and_leaves_the_others_alone(
    subs: Subscriptions, status: FakeStatus
) -> None:
    await subs.want(wanted_rooms([BAD, A]))
    await subs.update({BAD}, wanted_rooms([BAD]))
    assert status.states(BAD) == ["invalid"]
    await subs.update({BAD}, wanted_rooms([]))  # deleted
    await subs.update({BAD}, wanted_rooms([BAD]))  # and inserted again
    assert status.states(BAD) == ["invalid", "invalid"]
    assert subs.wanted == {r(A)}


# --- property ---------------------------------------------------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("want"), st.frozensets(st.integers(0, len(POOL) - 1))),
        st.tuples(  # (pairs read again, those of them now enabled)
            st.just("update"),
            st.tuples(
                st.frozensets(st.integers(0, len(POOL) - 1), min_size=1),
                st.frozensets(st.integers(0, len(POOL) - 1)),
            ),
        ),
        st.tuples(st.just("connect"), st.none()),
        st.tuples(st.just("disconnect"), st.sampled_from([None, "dropped"])),
        st.tuples(st.just("break"), st.none()),
        st.tuples(st.just("ack"), st.integers(0, len(POOL) - 1)),
        st.tuples(st.just("tick"), st.floats(0, 40)),
    ),
    max_size=25,
)


class Session:
    """Subscriptions driven the way the Datastream client does: one connection at a time."""

    def __init__(self) -> None:
        self.status = FakeStatus()
        self.clock = FakeClock()
        self.subs = Subscriptions(self.status, unrecorded_coverage(), clock=self.clock)
        self.senders: list[FakeSender] = []
        self.current: FakeSender | None = None
        self.watchlist: set[Pair] = set()  # what the watchlist says, by the ops so far

    async def apply(self, op: str, arg: Any) -> None:
        if op in ("want", "update"):
            await self.read_watchlist(op, arg)
        elif op == "connect":
            if self.current is not None:  # the old connection closes before a new one opens
                self.subs.disconnected(None)
            await self.connect()
        elif op == "disconnect":
            self.subs.disconnected(arg)
            self.current = None
        elif op == "break" and self.current is not None:
            self.current.broken = True
        elif op == "ack":
            if self.current is not None:
                self.current.frames.append(("acked", r(POOL[arg])))
            self.subs.joined(r(POOL[arg]))
        elif op == "tick":
            self.clock.now += arg
            if self.current is not None:
                await self.subs.resend_unacked(self.current)

    async def read_watchlist(self, op: str, arg: Any) -> None:
        """The sync's two reads: all of the watchlist, or a few pairs of it again."""
        if op == "want":
            self.watchlist = {POOL[i] for i in arg}
            await self.subs.want(wanted_rooms([POOL[i] for i in sorted(arg)]))
            return
        checked = {POOL[i] for i in arg[0]}
        enabled = {POOL[i] for i in arg[0] & arg[1]}
        self.watchlist = (self.watchlist - checked) | enabled
        await self.subs.update(checked, wanted_rooms(sorted(enabled)))

    async def connect(self) -> None:
        self.current = FakeSender()
        self.senders.append(self.current)
        await self.subs.connected(self.current)

    async def settle(self) -> None:
        if self.current is not None and self.current.broken:
            # The read loop sees the same drop, and reconnects.
            self.subs.disconnected("dropped")
            await self.connect()


@settings(max_examples=100, deadline=None)
@given(_ops)
async def test_a_room_is_joined_again_on_one_connection_only_while_unacked_and_held_ends_wanted(
    ops: list[tuple[str, Any]],
) -> None:
    session = Session()
    for op, arg in ops:
        await session.apply(op, arg)
    await session.settle()
    assert session.subs.wanted == {r(pair) for pair in session.watchlist}

    for sender in session.senders:
        # Asserts: no leave of a room not held, no join of a held room but a re-sent join of
        # one not acknowledged yet.
        sender.holding(resends=True)
    subs, current = session.subs, session.current
    if current is None:
        assert subs.held == frozenset()
        return
    assert subs.held == subs.wanted == current.holding(resends=True)
    assert subs.unacked <= subs.held
    # Statuses agree with the live connection: joining (or acked) if wanted, else left.
    for pair in POOL:
        last = session.status.last(pair)
        if r(pair) in subs.wanted:
            assert last is not None
            assert last[0] in ("joining", "joined")
        elif last is not None:
            assert last[0] == "left"


# --- listening periods -----------------------------------------------------------------------


async def test_a_period_opens_at_the_ack_once_and_ends_at_the_leave(
    subs: Subscriptions, status: FakeStatus, periods: RecordedPeriods
) -> None:
    await holding(subs, status, A, B)
    assert periods.started == []  # joined is not listened to until the server says so
    subs.joined(r(A))
    subs.joined(r(A))  # a repeated ack opens nothing more
    subs.delivered(r(A))
    assert [start.pair for start in periods.started] == [A]
    await subs.want(want(B))
    [end] = periods.ended
    assert (end.id, end.reason) == (periods.started[0].id, "left")
    assert end.at >= periods.started[0].at


async def test_a_message_before_the_ack_opens_the_period(
    subs: Subscriptions, status: FakeStatus, periods: RecordedPeriods
) -> None:
    await holding(subs, status, A)
    subs.delivered(r(A))
    subs.joined(r(A))
    assert [start.pair for start in periods.started] == [A]


async def test_a_drop_ends_every_period_at_the_connections_last_sign_of_life(
    subs: Subscriptions, status: FakeStatus, periods: RecordedPeriods
) -> None:
    await holding(subs, status, A, B)
    subs.joined(r(A))
    subs.joined(r(B))
    last_frame = max(start.at for start in periods.started)
    subs.disconnected("disconnected: idle timeout", last_frame)
    assert sorted(end.reason for end in periods.ended) == ["disconnected", "disconnected"]
    assert {end.at for end in periods.ended} == {last_frame}
    assert {end.id for end in periods.ended} == {start.id for start in periods.started}


async def test_a_shutdown_ends_the_periods_as_shutdown_and_a_new_connection_opens_new_ones(
    subs: Subscriptions, status: FakeStatus, periods: RecordedPeriods
) -> None:
    await holding(subs, status, A)
    subs.joined(r(A))
    subs.disconnected(None)
    assert [end.reason for end in periods.ended] == ["shutdown"]
    await subs.connected(FakeSender())
    subs.joined(r(A))
    assert len(periods.started) == 2
    assert periods.started[0].id != periods.started[1].id


async def test_a_room_error_ends_its_period_and_opens_none(
    subs: Subscriptions, status: FakeStatus, periods: RecordedPeriods
) -> None:
    await holding(subs, status, A, B)
    subs.joined(r(A))
    subs.room_error(r(A), "server said: no")
    subs.room_error(r(B), "server said: no")
    assert [end.reason for end in periods.ended] == ["error"]
    assert [start.pair for start in periods.started] == [A]


# --- whole wallets: switching between a wallet's token rooms and its wallet room ----------------

WHOLE: Watch = (WALLET, None)


def frames(kind: str, *watches: Watch) -> list[tuple[str, str]]:
    """One frame per room, in the order the fake sender records them."""
    return [(kind, name) for name in sorted(r(watch) for watch in watches)]


async def test_an_all_tokens_row_leaves_the_token_rooms_before_it_joins_the_wallet_room(
    subs: Subscriptions, status: FakeStatus, periods: RecordedPeriods
) -> None:
    sender = await holding(subs, status, A, C, B)
    for pair in (A, C, B):
        subs.joined(r(pair))
    await subs.want(want(A, C, B, WHOLE))
    # The server takes frames in order: it never holds both kinds of room of the wallet.
    assert sender.frames == [*frames("leave", A, C), ("join", r(WHOLE))]
    assert subs.held == {r(WHOLE), r(B)}
    assert status.last(A) == status.last(C) == ("covered", None)
    assert status.last(WHOLE) == ("joining", None)
    assert len(periods.ended) == 2  # A's and C's periods; B's goes on


async def test_a_switched_room_is_accepted_until_the_room_replacing_it_is_acknowledged(
    subs: Subscriptions, status: FakeStatus
) -> None:
    await holding(subs, status, A, C)
    await subs.want(want(A, C, WHOLE))
    assert subs.is_held(r(A))
    assert subs.switching(r(A)) == A
    subs.joined(r(WHOLE))
    assert not subs.is_held(r(A))
    assert not subs.is_held(r(C))
    assert subs.switching(r(A)) is None


async def test_a_switched_room_is_refused_once_its_replacement_went_unanswered_too_long(
    subs: Subscriptions, status: FakeStatus, clock: FakeClock
) -> None:
    await holding(subs, status, A)
    await subs.want(want(A, WHOLE))
    clock.now += 9.9
    assert subs.is_held(r(A))
    clock.now += 0.2  # past the join-ack timeout
    assert not subs.is_held(r(A))


async def test_removing_the_all_tokens_row_goes_back_to_the_token_rooms(
    subs: Subscriptions, status: FakeStatus
) -> None:
    sender = await holding(subs, status, A, C, WHOLE)
    assert subs.held == {r(WHOLE)}
    subs.joined(r(WHOLE))
    # What the sync does when the row is deleted: every row of the wallet read again.
    await subs.update({WHOLE, A, C}, want(A, C))
    assert sender.frames == [("leave", r(WHOLE)), *frames("join", A, C)]
    assert status.last(WHOLE) == ("left", None)
    assert status.last(A) == status.last(C) == ("joining", None)
    # The wallet room's messages are stored until both token rooms are acknowledged.
    subs.joined(r(A))
    assert subs.is_held(r(WHOLE))
    subs.joined(r(C))
    assert not subs.is_held(r(WHOLE))


async def test_a_token_row_added_beside_an_all_tokens_row_is_covered_and_never_joined(
    subs: Subscriptions, status: FakeStatus
) -> None:
    sender = await holding(subs, status, WHOLE)
    await subs.update({A}, want(A, WHOLE))
    assert sender.frames == []
    assert status.last(A) == ("covered", None)


async def test_a_new_connection_ends_every_switch(subs: Subscriptions, status: FakeStatus) -> None:
    await holding(subs, status, A)
    await subs.want(want(A, WHOLE))
    subs.disconnected("reset")
    await subs.connected(FakeSender())
    assert not subs.is_held(r(A))
    assert status.last(A) == ("covered", None)


async def test_a_covered_row_deleted_is_left(subs: Subscriptions, status: FakeStatus) -> None:
    sender = await holding(subs, status, A, WHOLE)
    await subs.update({A, WHOLE}, want(WHOLE))
    assert sender.frames == []
    assert status.last(A) == ("left", None)


async def test_a_large_join_sends_more_only_as_the_server_answers(
    status: FakeStatus, clock: FakeClock
) -> None:
    """Joins written faster than the server reads wait in buffers until their acks fall
    overdue: with 20,000 sent and unanswered, the next piece waits for answers."""
    subs = Subscriptions(status, unrecorded_coverage(), join_ack_timeout=60.0, clock=clock)
    sender = FakeSender()
    await subs.connected(sender)
    joining = asyncio.create_task(subs.want(wanted_rooms(bench_pairs(30_000))))
    await wait_until(lambda: len(sender.joins()) == 25_000, what="the first five pieces")
    await asyncio.sleep(0.05)
    assert len(sender.joins()) == 25_000
    assert not joining.done()

    for name in sender.joins()[:4_999]:
        subs.joined(name)
    await asyncio.sleep(0.05)
    assert len(sender.joins()) == 25_000  # 20,001 unanswered still
    subs.room_error(sender.joins()[4_999], "room not found")  # an answer all the same
    await asyncio.wait_for(joining, timeout=1.0)
    assert len(sender.joins()) == len(set(sender.joins())) == 30_000


async def test_a_server_that_never_answers_still_gets_every_join_an_ack_timeout_later(
    status: FakeStatus,
) -> None:
    subs = Subscriptions(status, unrecorded_coverage(), join_ack_timeout=0.2)
    sender = FakeSender()
    await subs.connected(sender)
    await asyncio.wait_for(subs.want(wanted_rooms(bench_pairs(30_000))), timeout=5.0)
    assert len(set(sender.joins())) == 30_000


async def test_joins_waiting_for_answers_are_not_sent_once_the_connection_drops(
    subs: Subscriptions, status: FakeStatus
) -> None:
    """The next connection joins them; the lock it needs is free at once."""
    sender = FakeSender()
    await subs.connected(sender)
    joining = asyncio.create_task(subs.want(wanted_rooms(bench_pairs(30_000))))
    await wait_until(lambda: len(sender.joins()) == 25_000, what="the first five pieces")

    subs.disconnected("idle timeout")
    await asyncio.wait_for(joining, timeout=1.0)
    assert len(sender.joins()) == 25_000
    again = FakeSender()
    rejoining = asyncio.create_task(subs.connected(again))
    await wait_until(lambda: len(again.joins()) == 25_000, what="the new connection's joins")
    rejoining.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await rejoining
