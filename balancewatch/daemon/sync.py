"""Keeps the wanted rooms equal to the enabled watchlist rows.

A trigger NOTIFYs on every statement that changes the table; this task LISTENs on its own
connection (outside the pool) and re-reads when told: just the wallets of the rows the
notification names when it names them (a statement of a few rows), else the whole table.
Either way the rows are the truth and the notification only a hint. Notifications are lost
while disconnected, so it also reads the whole table on a timer and after every reconnect of
its own connection. A reconnect of the websocket needs no read: this connection, not that one,
is what can miss a change, and the wanted rooms are kept through websocket drops (the next
connection joins them all).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

import msgspec
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.aio import Backoff, wait_first
from balancewatch.daemon.rooms import Wanted, all_tokens_wallets, wanted_rooms
from balancewatch.domain import Watch
from balancewatch.logs import describe_error, get_logger
from balancewatch.store import watchlist
from balancewatch.store.db import DB_ERRORS, RawConnection, connect_raw
from balancewatch.store.models import WATCHLIST_CHANNEL

log = get_logger(__name__)

_payload_decoder = msgspec.json.Decoder(list[tuple[str, str | None]])
_ROWS_PER_STEP = 5_000


class ListenConnectionLost(ConnectionError):
    pass


class RoomWants(Protocol):
    """Where the wanted rooms go (the shard filter in front of the subscriptions)."""

    async def want(self, wanted: Wanted) -> None: ...

    async def update(self, checked: Collection[Watch], wanted: Wanted) -> None: ...


@dataclass(frozen=True, slots=True)
class SyncConfig:
    reconcile_interval: float
    backoff_initial: float
    backoff_max: float
    connect_timeout: float


class WatchlistSync:
    def __init__(
        self, engine: AsyncEngine, url: URL, subscriptions: RoomWants, config: SyncConfig
    ) -> None:
        self._engine = engine
        self._url = url
        self._subscriptions = subscriptions
        self._config = config
        self._wake = asyncio.Event()
        self._full = True  # the next read is of the whole table
        self._touched: set[Watch] = set()  # else of just these rows' wallets
        self._last_read: list[Watch] | None = None  # the last whole read, if the rooms follow it
        self._backoff = Backoff(config.backoff_initial, config.backoff_max)
        self.reconciles = 0
        self.rechecks = 0

    def request_reconcile(self) -> None:
        self._full = True
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                connection = await connect_raw(
                    self._url, role="listen", timeout=self._config.connect_timeout
                )
            except DB_ERRORS as exc:
                log.warning("sync.connect_failed", error=describe_error(exc))
                await wait_first(stop, timeout=self._backoff.next_delay())
                continue
            try:
                await self._listen(connection, stop)
            except DB_ERRORS as exc:
                log.warning("sync.listen_lost", error=describe_error(exc))
                await wait_first(stop, timeout=self._backoff.next_delay())
            finally:
                await _close_quietly(connection)

    async def reconcile(self) -> None:
        """Read the whole enabled watchlist and hand the wanted rooms to the subscriptions."""
        rows = await watchlist.enabled_watches(self._engine)
        # The same rows as the last whole read, and nothing re-read in between: the rooms are
        # already what they ask for. A quiet watchlist of 100,000 rows is read every
        # reconcile_interval; working its rooms out again each time was most of the daemon's
        # idle CPU.
        if rows != self._last_read:
            self._last_read = None  # until the rooms are what `rows` asks for
            await self._subscriptions.want(await _wanted_in_steps(rows))
            self._last_read = rows
        self.reconciles += 1

    async def recheck(self, touched: set[Watch]) -> None:
        """Read the current rows of these rows' wallets only, and update just their rooms: every
        row of a wallet, since its all-tokens row decides for the others. The touched rows are
        checked too, so the room of one deleted is left."""
        self._last_read = None  # the rooms no longer follow one whole read
        wallets = {wallet for wallet, _ in touched}
        enabled = await watchlist.enabled_of_wallets(self._engine, wallets)
        await self._subscriptions.update(touched | set(enabled), wanted_rooms(enabled))
        self.rechecks += 1

    def _on_notify(self, _connection: object, _pid: int, _channel: str, payload: object) -> None:
        self._notified(payload if isinstance(payload, str) else "")

    def _notified(self, payload: str) -> None:
        touched = touched_watches(payload)
        if touched is None:
            self._full = True
        else:
            self._touched |= touched
        self._wake.set()

    async def _listen(self, connection: RawConnection, stop: asyncio.Event) -> None:
        lost = asyncio.Event()
        await connection.add_listener(WATCHLIST_CHANNEL, self._on_notify)

        def closed(_: object) -> None:
            lost.set()

        connection.add_termination_listener(closed)
        log.info("sync.listening", channel=WATCHLIST_CHANNEL)
        self.request_reconcile()  # anything may have changed while we were not listening
        while True:
            await wait_first(self._wake, stop, lost, timeout=self._config.reconcile_interval)
            if stop.is_set():
                return
            if lost.is_set():
                raise ListenConnectionLost("the LISTEN connection closed")
            if not self._wake.is_set():
                # A quiet period: prove the LISTEN connection is still alive.
                await connection.execute("SELECT 1", timeout=self._config.connect_timeout)
                self._full = True
            await self._read_what_changed()
            self._backoff.reset()

    async def _read_what_changed(self) -> None:
        # Taken before the read: a notification that arrives during it wakes the next one.
        self._wake.clear()
        full, touched = self._full, self._touched
        self._full, self._touched = False, set()
        try:
            if full:
                await self.reconcile()
            elif touched:
                await self.recheck(touched)
        except BaseException:
            self._full = True  # not read: read everything next time
            raise


async def _wanted_in_steps(rows: list[Watch]) -> Wanted:
    """`wanted_rooms`, a few thousand rows at a time: for 100,000 rows it is a tenth of a
    second of work, and the read loop gets its turns in between instead of waiting it out."""
    whole = all_tokens_wallets(rows)
    rooms: dict[str, Watch] = {}
    invalid: dict[Watch, str] = {}
    covered: dict[str, Watch] = {}
    for start in range(0, len(rows), _ROWS_PER_STEP):
        part = wanted_rooms(rows[start : start + _ROWS_PER_STEP], whole)
        rooms |= part.rooms
        invalid |= part.invalid
        covered |= part.covered
        await asyncio.sleep(0)
    return Wanted(rooms=rooms, invalid=invalid, covered=covered)


def touched_watches(payload: str) -> set[Watch] | None:
    """The rows a notification names ([wallet, null] for an all-tokens row), or None for
    "re-read everything" (an empty payload, 'TRUNCATE', or one sent by an older schema)."""
    try:
        pairs = _payload_decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return set(pairs) if pairs else None


async def _close_quietly(connection: RawConnection) -> None:
    try:
        await asyncio.wait_for(connection.close(), timeout=2.0)
    except DB_ERRORS:
        connection.terminate()
