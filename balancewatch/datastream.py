"""The websocket connection to the Datastream: connect, read, answer pings, reconnect.

One connection at a time, by construction: a new one is opened only after the previous one
is closed and its rooms forgotten, so no room is ever held by two live sockets (the official
client's orphaned socket delivers every message twice).

The key is the URL's path, so the URL is a secret: it is built at connect time and never kept,
logged, or put in an error; aiohttp's own errors are described without it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from balancewatch.aio import wait_first
from balancewatch.backoff import Backoff
from balancewatch.ingest import Ingest
from balancewatch.logs import describe_error, get_logger
from balancewatch.protocol import PONG, join_frame, leave_frame
from balancewatch.subscriptions import RoomSender

log = get_logger(__name__)

_KEY_REJECTED = frozenset({401, 403})
_CONNECT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class StreamConfig:
    base_url: str
    backoff_initial: float
    backoff_max: float
    backoff_reset_after: float
    connect_timeout: float
    keepalive_interval: float
    idle_timeout: float
    max_frame_bytes: int


class WebSocketSender:
    """Join and leave frames on one live websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws

    async def join(self, rooms: Collection[str]) -> None:
        for room in rooms:
            await self._send(join_frame(room))

    async def leave(self, rooms: Collection[str]) -> None:
        for room in rooms:
            await self._send(leave_frame(room))

    async def _send(self, frame: str) -> None:
        if self._ws.closed:
            raise ConnectionError("the websocket is closed")
        await self._ws.send_str(frame)


class DatastreamClient:
    def __init__(
        self,
        config: StreamConfig,
        key: Callable[[], str],
        ingest: Ingest,
        on_connected: Callable[[RoomSender], Coroutine[Any, Any, None]],
        on_disconnected: Callable[[str | None], None],
    ) -> None:
        self._config = config
        self._key = key
        self._ingest = ingest
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._backoff = Backoff(config.backoff_initial, config.backoff_max)
        self._host = urlsplit(config.base_url).netloc
        self.connected = False
        self.connections = 0

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                started = time.monotonic()
                reason = await self._connect_and_read(session, stop)
                if stop.is_set():
                    return
                if time.monotonic() - started >= self._config.backoff_reset_after:
                    self._backoff.reset()
                delay = self._backoff.next_delay()
                log.info("datastream.reconnecting", reason=reason, delay=round(delay, 3))
                await wait_first(stop, timeout=delay)

    async def _connect_and_read(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> str:
        try:
            ws = await self._connect(session)
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in _KEY_REJECTED:
                log.error("datastream.key_rejected", message="API key rejected", status=exc.status)
                return "API key rejected"
            log.warning("datastream.handshake_failed", status=exc.status)
            return f"handshake refused with HTTP {exc.status}"
        except _CONNECT_ERRORS as exc:
            log.warning("datastream.connect_failed", host=self._host, error=_describe(exc))
            return "connect failed"
        self.connections += 1
        self.connected = True
        log.info("datastream.connected", host=self._host, connection=self.connections)
        reason = "closed"
        try:
            reason = await self._session(ws, stop)
        finally:
            self.connected = False
            self._on_disconnected(None if stop.is_set() else f"disconnected: {reason}")
            await ws.close()
        log.info("datastream.disconnected", reason=reason)
        return reason

    async def _connect(self, session: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        async with asyncio.timeout(self._config.connect_timeout):
            return await session.ws_connect(
                f"{self._config.base_url}/{self._key()}",
                heartbeat=self._config.keepalive_interval,
                # aiohttp would drop the connection on an oversized frame; allow more and
                # reject such a frame ourselves, so one bad frame costs one frame.
                max_msg_size=max(4 * 1024 * 1024, 16 * self._config.max_frame_bytes),
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
                autoclose=True,
                autoping=True,
            )

    async def _session(self, ws: aiohttp.ClientWebSocketResponse, stop: asyncio.Event) -> str:
        # Joins go out while the read loop already runs: pings are answered and early messages
        # read even while a large watchlist is still being joined.
        async with asyncio.TaskGroup() as tasks:
            joins = tasks.create_task(self._on_connected(WebSocketSender(ws)))
            closer = tasks.create_task(_close_when(stop, ws))
            reason = await self._read(ws)
            joins.cancel()
            if not stop.is_set():
                closer.cancel()  # else let it finish the closing handshake
        return reason

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        while True:
            try:
                message = await ws.receive(timeout=self._config.idle_timeout)
            except TimeoutError:
                log.warning("datastream.idle", seconds=self._config.idle_timeout)
                return "idle timeout"
            if message.type is aiohttp.WSMsgType.TEXT:
                if self._ingest.text(message.data) and not await _send_pong(ws):
                    return "pong failed"
            elif message.type is aiohttp.WSMsgType.BINARY:
                self._ingest.binary(message.data)
            elif message.type is aiohttp.WSMsgType.ERROR:
                return f"error: {_describe(ws.exception() or message.data)}"
            else:  # CLOSE, CLOSING, CLOSED
                return f"closed (code {ws.close_code})"


async def _send_pong(ws: aiohttp.ClientWebSocketResponse) -> bool:
    try:
        await ws.send_str(PONG)
    except ConnectionError:
        return False
    return True


async def _close_when(stop: asyncio.Event, ws: aiohttp.ClientWebSocketResponse) -> None:
    await stop.wait()
    await ws.close()


def _describe(error: object) -> str:
    if isinstance(error, aiohttp.ClientResponseError):
        # Its str() names the request URL, and the URL holds the key.
        return f"{type(error).__name__}: HTTP {error.status}"
    if isinstance(error, BaseException):
        return describe_error(error)
    return str(error)
