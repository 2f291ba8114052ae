"""Listening periods: when this daemon was listening to each pair, kept so that the history can
say which of its answers are certain.

A period opens when the server acknowledges a pair's join, or its first message arrives,
whichever comes first; it closes at the leave, at a disconnect, or at shutdown. A connection
that ends closes its periods at its last sign of life (the last frame read on it), not at the
moment its end was noticed: the silence before a dead connection is found out was not
listened to. Every few seconds the process confirms, in one row of its own, how far it has
been listening (the connection's last sign of life): if it dies without closing its periods,
a later process closes them at that confirmation. A database outage ends nothing: the events
wait in the bookkeeping and are written when it is back.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Collection, Iterable
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

from balancewatch.aio import wait_first
from balancewatch.domain import EndReason, Watch
from balancewatch.store.writes import PeriodEnd, PeriodId, PeriodStart

# How often the process confirms its periods, and how long a silent process keeps its own:
# several missed confirmations, so that a slow database does not cost a live daemon them.
CONFIRM_INTERVAL: Final = 5.0
SILENT_AFTER: Final = timedelta(seconds=3 * CONFIRM_INTERVAL)


def holder_name(replica_id: str) -> str:
    """This process among all that ever listened, and among the replicas: its replica id and
    a random part (a replica id is kept across restarts, a pid and a host name are reused)."""
    return f"{replica_id}/{secrets.token_hex(4)}"


def now_utc() -> datetime:
    """Exact, never shared (aio.SharedClock): a period's start is the moment of its ack, and a
    snapshot read right after it must not look older than the period."""
    return datetime.now(UTC)


class PeriodSink(Protocol):
    def period_started(self, start: PeriodStart) -> None: ...

    def period_ended(self, end: PeriodEnd) -> None: ...

    def confirm(self, listening_until: datetime | None, silent_since: datetime) -> None: ...


class PairWatcher(Protocol):
    """Told when a watch's listening starts and ends (the snapshots of the chain reads)."""

    def pair_started(self, watch: Watch) -> None: ...

    def pair_ended(self, watch: Watch) -> None: ...


class Coverage:
    """The open period of each pair, from what the subscriptions see on the live connection."""

    def __init__(self, sink: PeriodSink, *, clock: Callable[[], datetime] = now_utc) -> None:
        self._sink = sink
        self._clock = clock
        # A period's id: this instance's random half, then a counter. Only the counter is kept
        # per open pair (a small int, not a UUID and a start time): 100,000 pairs cost 3 MB;
        # and only the number until the write makes it a UUID.
        self._prefix = secrets.randbits(64) << 64
        self._count = 0
        self._open: dict[Watch, int] = {}
        self.watchers: list[PairWatcher] = []

    @property
    def listening(self) -> int:
        """Pairs with an open period."""
        return len(self._open)

    def open_pairs(self) -> Collection[Watch]:
        """The pairs being listened to now (a live view, not a copy)."""
        return self._open.keys()

    def started(self, pair: Watch) -> None:
        """The pair is being listened to now (its join acknowledged, or a message came)."""
        if pair not in self._open:
            self._count += 1
            self._open[pair] = self._count
            self._sink.period_started(PeriodStart(self._id(self._count), pair, self._clock()))
            for watcher in self.watchers:
                watcher.pair_started(pair)

    def ended(self, pairs: Iterable[Watch], reason: EndReason, at: datetime | None = None) -> None:
        """These pairs are no longer listened to, since `at` (now if not given)."""
        when = self._clock() if at is None else at
        for pair in pairs:
            number = self._open.pop(pair, None)
            if number is not None:
                # Never before its start: the store writes greatest(ended_at, started_at).
                self._sink.period_ended(PeriodEnd(self._id(number), when, reason))
                for watcher in self.watchers:
                    watcher.pair_ended(pair)

    def _id(self, number: int) -> PeriodId:
        return self._prefix | number

    def all_ended(self, reason: EndReason, at: datetime) -> None:
        self.ended(list(self._open), reason, at)

    async def confirm_until(
        self, stop: asyncio.Event, last_sign_of_life: Callable[[], datetime | None]
    ) -> None:
        """Every CONFIRM_INTERVAL, from the start: how far this process has been listening
        (None while no connection is open), and the silence after which another holder's
        periods are closed as lost."""
        while not stop.is_set():
            alive = last_sign_of_life() if self._open else None
            self._sink.confirm(alive, self._clock() - SILENT_AFTER)
            await wait_first(stop, timeout=CONFIRM_INTERVAL)
