"""The daemon's HTTP endpoints: `/healthz` (liveness), `/readyz` (readiness), `/metrics`.

`/readyz` answers 200 only while the websocket is connected, every enabled pair is joined (or
has an error status: the server answered it), and the database answers a `SELECT 1`; else 503,
with a JSON body naming each failing condition. The database check is shared by concurrent
requests and its result reused for a second, so a busy prober costs at most one query a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.errors import StartupError
from balancewatch.logs import describe_error, get_logger, scrubber
from balancewatch.store.db import DB_ERRORS

log = get_logger(__name__)

DB_CHECK_TIMEOUT: Final = 2.0
DB_CHECK_MAX_AGE: Final = 1.0


class HttpServerError(StartupError):
    """The HTTP server cannot listen on the configured address."""

    event = "http.cannot_listen"


class DatabaseProbe:
    """`SELECT 1` through the daemon's pool, with a short timeout; one at a time, its result
    reused for `max_age` seconds. Needs no grant at all (the least-privilege role works)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        timeout: float = DB_CHECK_TIMEOUT,
        max_age: float = DB_CHECK_MAX_AGE,
    ) -> None:
        self._engine = engine
        self._timeout = timeout
        self._max_age = max_age
        self._checked_at: float | None = None
        self._running: asyncio.Task[str | None] | None = None
        self.error: str | None = None

    @property
    def up(self) -> bool | None:
        """The last result: None before the first check."""
        return None if self._checked_at is None else self.error is None

    async def check(self) -> str | None:
        """None if the database answers, else why not."""
        now = time.monotonic()
        if self._checked_at is not None and now - self._checked_at < self._max_age:
            return self.error
        if self._running is None:
            self._running = asyncio.create_task(self._select_one())
        # Shielded: a prober that gives up does not cancel the check the others wait for.
        return await asyncio.shield(self._running)

    def close(self) -> None:
        if self._running is not None:
            self._running.cancel()

    async def _select_one(self) -> str | None:
        try:
            async with asyncio.timeout(self._timeout), self._engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            error = None
        except TimeoutError:
            error = f"no answer within {self._timeout:g} s"
        except DB_ERRORS as exc:
            error = scrubber.scrub(describe_error(exc))
        finally:
            self._running = None
        self.error = error
        self._checked_at = time.monotonic()
        return error


@dataclass(frozen=True, slots=True)
class Readiness:
    websocket_connected: bool
    watchlist_read: bool
    pairs_wanted: int
    pairs_pending: int  # wanted and neither joined nor in error
    # A lease round succeeded and its leases are still trusted: the pairs wanted are this
    # replica's own (before that, it holds nothing and "every pair joined" would be vacuous).
    leases_trusted: bool

    def failing(self, database_error: str | None) -> dict[str, str]:
        failing = {}
        if not self.websocket_connected:
            failing["websocket"] = "not connected"
        if not self.watchlist_read:
            failing["pairs"] = "the watchlist has not been read yet"
        elif self.pairs_pending:
            failing["pairs"] = (
                f"{self.pairs_pending} of {self.pairs_wanted} enabled pairs not joined"
            )
        if not self.leases_trusted:
            failing["leases"] = "no shard lease renewed in time: this replica's pairs are unknown"
        if database_error is not None:
            failing["database"] = database_error
        return failing


class HttpServer:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        readiness: Callable[[], Readiness],
        database: DatabaseProbe,
        registry: CollectorRegistry,
    ) -> None:
        self._host = host
        self._port = port
        self._readiness = readiness
        self._database = database
        self._registry = registry
        self._runner: web.AppRunner | None = None
        self.port = port  # the bound port once started (port 0: the one the system chose)

    async def start(self) -> None:
        """Bind the address; raises HttpServerError if it cannot."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise HttpServerError(
                f"cannot listen on {self._host}:{self._port} (BALANCEWATCH_HTTP_HOST, "
                f"BALANCEWATCH_HTTP_PORT): {exc.strerror or exc}"
            ) from None
        self._runner = runner
        self.port = _bound_port(runner, self._port)
        log.info("http.listening", host=self._host, port=self.port)

    async def serve(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set (or the task is cancelled), then close."""
        try:
            await stop.wait()
        finally:
            await self.close()

    async def close(self) -> None:
        self._database.close()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        # Answering at all proves the event loop turns.
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        state = self._readiness()
        database_error = await self._database.check()
        failing = state.failing(database_error)
        body: dict[str, Any] = {
            "ready": not failing,
            "failing": failing,
            "websocket": "connected" if state.websocket_connected else "not connected",
            "pairs": {"enabled": state.pairs_wanted, "not_joined": state.pairs_pending},
            "database": database_error or "ok",
        }
        return web.json_response(body, status=503 if failing else 200)

    async def _metrics(self, _: web.Request) -> web.Response:
        await self._database.check()  # for balancewatch_database_up; cached, bounded
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


def _bound_port(runner: web.AppRunner, configured: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return configured
