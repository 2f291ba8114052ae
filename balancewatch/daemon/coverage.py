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
import os
import secrets
import socket
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

from balancewatch.aio import wait_first
from balancewatch.domain import EndReason, Pair
from balancewatch.store.writes import PeriodEnd, PeriodStart

# How often the process confirms its periods, and how long a silent process keeps its own:
# several missed confirmations, so that a slow database does not cost a live daemon them.
CONFIRM_INTERVAL: Final = 5.0
SILENT_AFTER: Final = timedelta(seconds=3 * CONFIRM_INTERVAL)


def now_utc() -> datetime:
    return datetime.now(UTC)


def holder_name() -> str:
    """This process among all that ever listened: the host, the pid and a random part (a pid
    is reused after a restart, a container's host name too)."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"


class PeriodSink(Protocol):
    def period_started(self, start: PeriodStart) -> None: ...

    def period_ended(self, end: PeriodEnd) -> None: ...

    def confirm(self, listening_until: datetime | None, silent_since: datetime) -> None: ...


class Coverage:
    """The open period of each pair, from what the subscriptions see on the live connection."""

    def __init__(self, sink: PeriodSink, *, clock: Callable[[], datetime] = now_utc) -> None:
        self._sink = sink
        self._clock = clock
        self._open: dict[Pair, PeriodStart] = {}

    @property
    def listening(self) -> int:
        """Pairs with an open period."""
        return len(self._open)

    def started(self, pair: Pair) -> None:
        """The pair is being listened to now (its join acknowledged, or a message came)."""
        if pair not in self._open:
            start = PeriodStart(uuid.uuid4(), pair, self._clock())
            self._open[pair] = start
            self._sink.period_started(start)

    def ended(self, pairs: Iterable[Pair], reason: EndReason, at: datetime | None = None) -> None:
        """These pairs are no longer listened to, since `at` (now if not given)."""
        when = self._clock() if at is None else at
        for pair in pairs:
            start = self._open.pop(pair, None)
            if start is not None:
                self._sink.period_ended(PeriodEnd(start.id, max(when, start.at), reason))

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
