"""Where joins and leaves get sent: the rooms wanted, the rooms held, and the diff between them.

Two sides feed it: the watchlist sync says which rooms are wanted, the Datastream client says
when a connection opens or drops. Both go through one lock, so a diff is always computed
against what the live connection really holds, and a room is never joined twice on it, with
one deliberate exception: a join the server has not acknowledged in time is sent again on the
same connection, with growing delays (`join_acks.PendingJoins` decides when), until the
`joined` comes.

A room left because its wallet switched between its token rooms and its wallet room (an
all-tokens row added, removed, enabled or disabled) is still accepted until the server has
acknowledged the rooms that replace it. The leaves go out before the joins on one connection
and the server takes frames in order, so it never holds both kinds of room of one wallet at once
(no change delivered twice), and what it sent for the old rooms before it took the leaves in
arrives before the new rooms' `joined`: stored, not refused (no change lost).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Mapping, Set
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from balancewatch.aio import wait_first
from balancewatch.daemon.coverage import Coverage
from balancewatch.daemon.join_acks import PendingJoins
from balancewatch.daemon.rooms import Wanted, diff_rooms
from balancewatch.domain import EndReason, PairState, Watch, room_for, watch_for
from balancewatch.logs import get_logger

log = get_logger(__name__)

_JOINS_PER_SEND = 5_000
# The most joins left unanswered before the next piece goes: 4 pieces, so the server always has
# some to read while the acks of others come back.
_JOINS_IN_FLIGHT = 20_000


class RoomSender(Protocol):
    """The live connection, as far as subscriptions are concerned."""

    async def join(self, rooms: Collection[str]) -> None: ...

    async def leave(self, rooms: Collection[str]) -> None: ...


class StatusSink(Protocol):
    def set_status(
        self, watches: Collection[Watch], state: PairState, error: str | None = None
    ) -> None: ...


@dataclass(slots=True)
class _Switch:
    """A room left for a switch: accepted until the rooms that replace it are acknowledged,
    or until `until` (the server never answered them)."""

    waiting: set[str]
    until: float


class Subscriptions:
    def __init__(
        self,
        status: StatusSink,
        coverage: Coverage,
        *,
        join_ack_timeout: float = 10.0,
        join_retry_max: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._status = status
        self._coverage = coverage
        self._wanted: dict[str, Watch] = {}
        self._invalid: Mapping[Watch, str] = {}
        self._covered: dict[str, Watch] = {}  # token rooms held through their wallet's room
        self._join_ack_timeout = join_ack_timeout
        self._switching: dict[str, _Switch] = {}  # left for a switch, still accepted
        self._replacing: dict[str, set[str]] = {}  # joined for a switch -> the rooms it replaces
        self._held: set[str] = set()  # join sent on the live connection (acked or not)
        self._unacked = PendingJoins(join_ack_timeout, join_retry_max)  # a subset of held
        self._unacked_rooms = self._unacked.rooms
        self._unacked_added = asyncio.Event()
        # Set once at most `_send_more_at` joins wait for an answer (-1: nothing waits for it).
        self._may_send = asyncio.Event()
        self._send_more_at = -1
        self._clock = clock
        self._sender: RoomSender | None = None
        self._lock = asyncio.Lock()
        # True for a room the watchlist wants but another replica holds (sharding.py): leaving
        # it is a handover, and its state is that replica's to say.
        self.elsewhere: Callable[[str], bool] = lambda _room: False

    @property
    def wanted(self) -> frozenset[str]:
        return frozenset(self._wanted)

    @property
    def wanted_watches(self) -> Collection[Watch]:
        """The watch of each wanted room: a live view, not a copy."""
        return self._wanted.values()

    @property
    def wanted_count(self) -> int:
        return len(self._wanted)

    @property
    def held(self) -> frozenset[str]:
        return frozenset(self._held)

    @property
    def unacked(self) -> frozenset[str]:
        """Held rooms whose join the server has not acknowledged yet."""
        return frozenset(self._unacked)

    def is_held(self, room: str) -> bool:
        """Joined on the live connection, or left for a switch whose new rooms the server has
        not acknowledged yet: its messages are stored."""
        return room in self._held or (room in self._switching and self._still_switching(room))

    def switching(self, room: str) -> Watch | None:
        """The watch of a room left for a switch and still accepted, else None."""
        return watch_for(room) if room in self._switching and self._still_switching(room) else None

    async def want(self, wanted: Wanted) -> None:
        """The watchlist says these rooms are wanted now."""
        async with self._lock:
            previous = self._wanted
            self._wanted = dict(wanted.rooms)
            self._held = _rekeyed(self._held, self._wanted)
            self._record_invalid(wanted.invalid)
            self._record_covered(wanted.covered)
            if self._sender is None:
                self._status_offline(previous, wanted.rooms)
                return
            await self._apply(self._sender)

    async def update(self, checked: Collection[Watch], wanted: Wanted) -> None:
        """Only these rows were read again: `wanted` is what the watchlist says of them now.
        Every other room stays as it is, and only these rooms are diffed."""
        async with self._lock:
            scope = (
                {room_for(*watch) for watch in checked}
                | wanted.rooms.keys()
                | wanted.covered.keys()
            )
            previous = {room: self._wanted[room] for room in scope if room in self._wanted}
            for room in previous:
                del self._wanted[room]
            self._wanted.update(wanted.rooms)
            self._record_invalid(wanted.invalid, checked)
            self._record_covered(wanted.covered, scope)
            if self._sender is None:
                self._status_offline(previous, wanted.rooms)
                return
            await self._apply(self._sender, scope)

    async def connected(self, sender: RoomSender) -> None:
        """A new connection is open: it holds nothing yet, so every wanted room is joined."""
        async with self._lock:
            self._sender = sender
            self._held = set()
            self._unacked.clear()
            self._end_switches()
            await self._apply(sender)

    async def retry_unacked_joins(self, sender: RoomSender) -> None:
        """For the life of one connection (cancelled when it ends): send each join that was
        not acknowledged in time again, on that connection."""
        while True:
            self._unacked_added.clear()
            due_at = self._unacked.next_due() if self._sender is sender else None
            timeout = None if due_at is None else max(0.0, due_at - self._clock())
            await wait_first(self._unacked_added, timeout=timeout)
            await self.resend_unacked(sender)

    async def resend_unacked(self, sender: RoomSender) -> int:
        """Send again the joins whose ack is overdue; returns how many were sent."""
        async with self._lock:
            if self._sender is not sender:
                return 0
            now = self._clock()
            due = self._unacked.due(now)
            if not due:
                return 0
            reasons = {room: self._unacked.resent(room, now) for room in due}
            for room, reason in reasons.items():
                self._status.set_status(_pairs(self._wanted, [room]), "joining", reason)
            log.warning(
                "subscriptions.join_resent", rooms=len(due), room=due[0], status=reasons[due[0]]
            )
            try:
                await sender.join(due)
            except ConnectionError as exc:
                log.warning("subscriptions.send_failed", error=str(exc))
            return len(due)

    async def leave_all(self, sender: RoomSender) -> None:
        """On a clean stop: leave every held room, so that the server stops sending before the
        connection closes. The rooms stay held here: what the server sent before it took the
        leaves in is still read and stored, and the periods end at the disconnect."""
        async with self._lock:
            if self._sender is not sender or not self._held:
                return
            try:
                await sender.leave(frozenset(self._held))
            except ConnectionError as exc:
                log.warning("subscriptions.send_failed", error=str(exc))

    def disconnected(self, error: str | None, last_sign_of_life: datetime | None = None) -> None:
        """The connection is gone (error is None for a deliberate close): its rooms with it,
        listened to up to its last sign of life."""
        if self._sender is None:
            return
        self._sender = None
        reason: EndReason = "shutdown" if error is None else "disconnected"
        self._coverage.all_ended(reason, last_sign_of_life or datetime.now(UTC))
        # Every wanted room, not just the held ones: a join cut short was never held.
        self._status.set_status(list(self._wanted.values()), "joining", error)
        # A room being left when the connection went is left now: nothing holds it.
        gone = [
            room
            for room in self._held - set(self._wanted) - self._covered.keys()
            if not self.elsewhere(room)
        ]
        self._status.set_status(list(map(_watch_of, gone)), "left")
        self._held = set()
        self._unacked.clear()
        self._may_send.set()  # a piece waiting to go fails now, on the retired sender
        self._end_switches()

    def joined(self, room: str) -> None:
        self._answered(room)
        self._replaced(room)
        watch = self._wanted.get(room)
        if watch is not None and room in self._held:
            self._status.set_status([watch], "joined")
            self._coverage.started(watch)

    def delivered(self, room: str) -> None:
        """A balance arrived for the room: the join worked, even if its ack never came."""
        if room in self._unacked_rooms:
            self.joined(room)

    def room_error(self, room: str, error: str) -> None:
        # The server answered the join, if not with `joined`: sending it again on this
        # connection would only repeat the question (the next connection joins it again).
        self._answered(room)
        self._replaced(room)
        watch = self._wanted.get(room)
        if watch is not None:
            self._status.set_status([watch], "error", error)
            self._coverage.ended([watch], "error")

    def _status_offline(self, before: Mapping[str, Watch], after: Mapping[str, Watch]) -> None:
        """With no connection nothing is sent: the status says what the next one will do."""
        gone = [
            room
            for room in before.keys() - after.keys() - self._covered.keys()
            if not self.elsewhere(room)
        ]
        self._status.set_status(_pairs(before, gone), "left")
        self._status.set_status(_pairs(after, after.keys() - before.keys()), "joining")

    async def _apply(self, sender: RoomSender, scope: Set[str] | None = None) -> None:
        """Join and leave until the held rooms are the wanted ones (among `scope`, if given)."""
        if scope is None:
            diff = diff_rooms(self._wanted.keys(), self._held)
        else:
            diff = diff_rooms(scope & self._wanted.keys(), scope & self._held)
        moved = {room for room in diff.leave if self.elsewhere(room)}
        ended = [_watch_of(room) for room in diff.leave - moved]
        # A token room left because its wallet room now covers it keeps its `covered` state.
        leaving = [_watch_of(room) for room in diff.leave - moved - self._covered.keys()]
        try:
            if diff.leave:
                self._unacked.forget(diff.leave)
                self._status.set_status(leaving, "leaving")
                self._coverage.ended(ended, "left")
                self._coverage.ended(map(_watch_of, moved), "handover")
                self._start_switches(diff.leave - moved, diff.join)
                await sender.leave(diff.leave)
                if self._sender is not sender:
                    return  # dropped meanwhile: the next connection starts from nothing
                self._held -= diff.leave
                self._status.set_status(leaving, "left")
            if diff.join:
                self._status.set_status(_pairs(self._wanted, diff.join), "joining")
                # Held (and waiting for its ack) from before the frame leaves, so a message
                # or an ack racing the rest of the joins is never missed.
                self._held |= diff.join
                self._unacked.sent(diff.join, self._clock())
                self._unacked_added.set()
                await self._join(sender, list(diff.join))
        except ConnectionError as exc:
            # The read loop sees the same drop and reconnects; the next connection re-joins all.
            log.warning("subscriptions.send_failed", error=str(exc))
            return
        if diff.join or diff.leave:
            log.info(
                "subscriptions.synced",
                joined=len(diff.join),
                left=len(diff.leave),
                held=len(self._held),
            )

    async def _join(self, sender: RoomSender, rooms: list[str]) -> None:
        """Send the joins a few thousand at a time, each piece's wait for its acks counted
        from when it has left (100,000 joins take seconds to write).

        A piece goes once at most `_JOINS_IN_FLIGHT` joins sent before it are unanswered, or
        once an ack timeout has passed. Written as fast as the socket takes them, a million
        joins would wait in buffers for a server that reads more slowly: their acks would fall
        overdue before the server had even read them, and each join would be sent again, to a
        server already behind (at 1,000,000 pairs, twice over)."""
        for start in range(0, len(rooms), _JOINS_PER_SEND):
            piece = rooms[start : start + _JOINS_PER_SEND]
            # Every room of `rooms` was counted unanswered when the diff was taken.
            await self._answers_until(len(rooms) - start + _JOINS_IN_FLIGHT)
            if self._sender is not sender:
                raise ConnectionError("the connection ended while joins waited to be sent")
            await sender.join(piece)
            self._unacked.left_now(piece, self._clock())

    async def _answers_until(self, unanswered: int) -> None:
        """Until at most `unanswered` joins wait for their answer, or an ack timeout."""
        if len(self._unacked) <= unanswered:
            return
        self._may_send.clear()
        self._send_more_at = unanswered
        try:
            await wait_first(self._may_send, timeout=self._join_ack_timeout)
        finally:
            self._send_more_at = -1

    def _answered(self, room: str) -> None:
        """The server answered the join of `room` (an ack or an error)."""
        self._unacked.acked(room)
        if len(self._unacked) <= self._send_more_at:
            self._may_send.set()

    def _start_switches(self, left: Set[str], joining: Set[str]) -> None:
        """Each left room whose wallet has rooms in `joining` is replaced by them: accepted
        until they are acknowledged."""
        new_by_wallet: dict[str, set[str]] = {}
        for room in joining:
            new_by_wallet.setdefault(_watch_of(room)[0], set()).add(room)
        until = self._clock() + self._join_ack_timeout
        for room in left:
            replacements = new_by_wallet.get(_watch_of(room)[0])
            if replacements:
                self._switching[room] = _Switch(set(replacements), until)
                for new in replacements:
                    self._replacing.setdefault(new, set()).add(room)

    def _replaced(self, new: str) -> None:
        """The server answered the join of `new`: the rooms it replaces have sent their last."""
        for old in self._replacing.pop(new, ()):
            switch = self._switching.get(old)
            if switch is not None:
                switch.waiting.discard(new)
                if not switch.waiting:
                    del self._switching[old]

    def _still_switching(self, room: str) -> bool:
        if self._clock() < self._switching[room].until:
            return True
        del self._switching[room]  # the new rooms were never answered: stop accepting
        return False

    def _end_switches(self) -> None:
        self._switching.clear()
        self._replacing.clear()

    def _record_covered(
        self, covered: Mapping[str, Watch], scope: Collection[str] | None = None
    ) -> None:
        """`covered`: the token rooms their wallet room covers, of all rooms or of `scope`. A
        row no longer covered is joined (if wanted) or gone: then it is `left`."""
        fresh = [watch for room, watch in covered.items() if room not in self._covered]
        self._status.set_status(fresh, "covered")
        before = (
            self._covered
            if scope is None
            else {room: self._covered[room] for room in scope if room in self._covered}
        )
        gone = [
            watch
            for room, watch in before.items()
            if room not in covered and room not in self._wanted and not self.elsewhere(room)
        ]
        self._status.set_status(gone, "left")
        if scope is None:
            self._covered = dict(covered)
        else:
            for room in before:
                del self._covered[room]
            self._covered.update(covered)

    def _record_invalid(
        self, invalid: Mapping[Watch, str], checked: Collection[Watch] | None = None
    ) -> None:
        """`invalid`: the rows that cannot be joined, of all rows or of those `checked`."""
        fresh = {
            pair: reason for pair, reason in invalid.items() if self._invalid.get(pair) != reason
        }
        for pair, reason in fresh.items():
            log.warning("subscriptions.invalid_row", wallet=pair[0], token=pair[1], reason=reason)
            self._status.set_status([pair], "invalid", reason)
        if checked is None:
            self._invalid = dict(invalid)
        else:
            kept = {pair: reason for pair, reason in self._invalid.items() if pair not in checked}
            self._invalid = kept | dict(invalid)


def _rekeyed(held: set[str], wanted: Mapping[str, Watch]) -> set[str]:
    """The held rooms, each the very string the wanted rooms are keyed by where it is wanted:
    a whole read of the watchlist makes every room anew, and the rooms held since the last
    one would otherwise stay in memory twice (151 bytes a room)."""
    if not held:
        return held
    return {room for room in wanted if room in held} | {room for room in held if room not in wanted}


def _pairs(rooms: Mapping[str, Watch], subset: Collection[str]) -> list[Watch]:
    return [rooms[room] for room in subset if room in rooms]


def _watch_of(room: str) -> Watch:
    watch = watch_for(room)
    assert watch is not None  # only valid rooms are ever held
    return watch
