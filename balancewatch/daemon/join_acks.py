"""Pure decisions about joins the server has not acknowledged: when to send each one again.

The server answers a join with `joined`. A join left unanswered for `ack_timeout` seconds is
sent again on the same connection, then again after twice as long, and so on up to
`max_delay` between two attempts, until a `joined` (or an error about the room) ends the wait.
Times are plain floats from one monotonic clock, passed in by the caller, so this is tested
without sleeping.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, eq=False)
class PendingJoin:
    """Shared by every room sent at one moment (and sent again together): a large join costs
    one entry per room, not one object (100 bytes more a room)."""

    first_sent: float
    attempts: int
    next_retry: float


class PendingJoins:
    """The joins sent on the live connection and not acknowledged yet, room -> PendingJoin."""

    def __init__(self, ack_timeout: float, max_delay: float) -> None:
        if ack_timeout <= 0:
            raise ValueError("ack_timeout must be positive")
        self.ack_timeout = ack_timeout
        self.max_delay = max(max_delay, ack_timeout)
        self._pending: dict[str, PendingJoin] = {}
        # The rooms sent again at `_resent_at`: what each one's old wait became, to share.
        self._resent_at: float | None = None
        self._became: dict[PendingJoin, PendingJoin] = {}

    @property
    def rooms(self) -> Collection[str]:
        """The rooms waiting, as a live view that stays this one object: a caller asking for
        every message (`Subscriptions.delivered`) keeps it and pays a dict look-up, not a
        method call (2 % of a message's CPU)."""
        return self._pending.keys()

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, room: object) -> bool:
        return room in self._pending

    def __iter__(self) -> Iterator[str]:
        return iter(self._pending)

    def get(self, room: str) -> PendingJoin | None:
        return self._pending.get(room)

    def retry_delay(self, attempts: int) -> float:
        """Seconds to wait for an ack after the `attempts`-th join of a room."""
        return min(self.max_delay, self.ack_timeout * 2.0 ** min(attempts - 1, 32))

    def sent(self, rooms: Iterable[str], now: float) -> None:
        """First joins of these rooms on this connection."""
        pending = PendingJoin(now, 1, now + self.ack_timeout)
        for room in rooms:
            self._pending[room] = pending

    def left_now(self, rooms: Iterable[str], now: float) -> None:
        """The first join frames of these rooms (`sent` earlier) have only now left: their
        wait counts from here. A large join takes longer to write than the ack timeout, and
        its last rooms must not be sent again for waiting behind the first."""
        pending = PendingJoin(now, 1, now + self.ack_timeout)
        for room in rooms:
            if room in self._pending:
                self._pending[room] = pending

    def acked(self, room: str) -> bool:
        """The server acknowledged the room (or answered it otherwise): stop waiting for it."""
        return self._pending.pop(room, None) is not None

    def forget(self, rooms: Iterable[str]) -> None:
        for room in rooms:
            self._pending.pop(room, None)

    def clear(self) -> None:
        self._pending.clear()
        self._became.clear()

    def due(self, now: float) -> list[str]:
        """The rooms whose join should be sent again now, oldest first."""
        due = [(p.first_sent, room) for room, p in self._pending.items() if p.next_retry <= now]
        return [room for _, room in sorted(due)]

    def resent(self, room: str, now: float) -> str:
        """Record one more join of `room`; returns why, for its subscription status."""
        if now != self._resent_at:
            self._resent_at, self._became = now, {}
        before = self._pending[room]
        pending = self._became.get(before)
        if pending is None:
            attempts = before.attempts + 1
            pending = PendingJoin(before.first_sent, attempts, now + self.retry_delay(attempts))
            self._became[before] = pending
        self._pending[room] = pending
        return no_ack(now - pending.first_sent, pending.attempts)

    def next_due(self) -> float | None:
        """When the earliest retry falls due, or None when nothing is waiting."""
        return min((p.next_retry for p in self._pending.values()), default=None)


def no_ack(waited: float, attempt: int) -> str:
    return f"no ack after {round(waited, 1):g} s (attempt {attempt})"
