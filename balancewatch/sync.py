"""Keeps the wanted rooms equal to the enabled watchlist rows.

A trigger NOTIFYs on every statement that changes the table; this task LISTENs on its own
connection (outside the pool) and re-reads the table when told. Notifications are lost while
disconnected, so it also reconciles on a timer, after every reconnect of its own connection,
and whenever the websocket reconnects.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch import watchlist
from balancewatch.aio import wait_first
from balancewatch.backoff import Backoff
from balancewatch.db import connect_raw
from balancewatch.logs import describe_error, get_logger
from balancewatch.models import WATCHLIST_CHANNEL
from balancewatch.rooms import wanted_rooms
from balancewatch.subscriptions import Subscriptions

log = get_logger(__name__)

_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, SQLAlchemyError)


class ListenConnectionLost(ConnectionError):
    pass


@dataclass(frozen=True, slots=True)
class SyncConfig:
    reconcile_interval: float
    backoff_initial: float
    backoff_max: float
    connect_timeout: float = 10.0


class WatchlistSync:
    def __init__(
        self, engine: AsyncEngine, url: URL, subscriptions: Subscriptions, config: SyncConfig
    ) -> None:
        self._engine = engine
        self._url = url
        self._subscriptions = subscriptions
        self._config = config
        self._wake = asyncio.Event()
        self._backoff = Backoff(config.backoff_initial, config.backoff_max)
        self.reconciles = 0

    def request_reconcile(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                connection = await connect_raw(
                    self._url, role="listen", timeout=self._config.connect_timeout
                )
            except _DB_ERRORS as exc:
                log.warning("sync.connect_failed", error=describe_error(exc))
                await wait_first(stop, timeout=self._backoff.next_delay())
                continue
            try:
                await self._listen(connection, stop)
            except _DB_ERRORS as exc:
                log.warning("sync.listen_lost", error=describe_error(exc))
                await wait_first(stop, timeout=self._backoff.next_delay())
            finally:
                await _close_quietly(connection)

    async def reconcile(self) -> None:
        """Read the whole enabled watchlist and hand the wanted rooms to the subscriptions."""
        wanted = wanted_rooms(await watchlist.enabled_pairs(self._engine))
        await self._subscriptions.want(wanted)
        self.reconciles += 1

    async def _listen(self, connection: Any, stop: asyncio.Event) -> None:
        lost = asyncio.Event()
        await connection.add_listener(WATCHLIST_CHANNEL, lambda *_: self._wake.set())
        connection.add_termination_listener(lambda _: lost.set())
        log.info("sync.listening", channel=WATCHLIST_CHANNEL)
        self._wake.set()  # anything may have changed while we were not listening
        while True:
            await wait_first(self._wake, stop, lost, timeout=self._config.reconcile_interval)
            if stop.is_set():
                return
            if lost.is_set():
                raise ListenConnectionLost("the LISTEN connection closed")
            if not self._wake.is_set():
                # A quiet period: prove the LISTEN connection is still alive.
                await connection.execute("SELECT 1", timeout=self._config.connect_timeout)
            self._wake.clear()
            await self.reconcile()
            self._backoff.reset()


async def _close_quietly(connection: Any) -> None:
    try:
        await asyncio.wait_for(connection.close(), timeout=2.0)
    except _DB_ERRORS:
        connection.terminate()
