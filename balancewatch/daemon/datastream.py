"""The websocket connection to the Datastream: connect, read, answer pings, reconnect.

One connection at a time, by construction: a new one is opened only after the previous one
is closed and its rooms forgotten, so no room is ever held by two live sockets (the official
client's orphaned socket delivers every message twice). Nothing on a finished connection can
hold up the next one: a send still waiting on it fails at once, and a connection declared
dead (no pong to our keepalive, nothing at all for `idle_timeout`) is dropped without waiting
for a closing handshake that will not come.

The key is the URL's path, so the URL is a secret: it is built at connect time and never kept,
logged, or put in an error; aiohttp's own errors are described without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Collection, Coroutine, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import aiohttp

from balancewatch.aio import Backoff, wait_first
from balancewatch.daemon.ingest import Ingest
from balancewatch.daemon.protocol import PONG, join_frame, leave_frame
from balancewatch.daemon.subscriptions import RoomSender
from balancewatch.logs import describe_error, get_logger, scrubber

log = get_logger(__name__)

_KEY_REJECTED = frozenset({401, 403})
_CONNECT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)
# How long a deliberate close (on stop) waits for the server's half of the closing handshake.
_CLOSE_GRACE: Final = 2.0

# receive() does not give up the event loop while frames are waiting, and one socket read can
# hold a thousand: the read loop yields after this many, so the writer's round trips to the
# database are not held up for the whole backlog.
_FRAMES_PER_TURN: Final = 100

PerConnection = Callable[[RoomSender], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class StreamConfig:
    datastream_url: str
    backoff_initial: float
    backoff_max: float
    backoff_reset_after: float
    connect_timeout: float
    keepalive_interval: float
    idle_timeout: float
    max_frame_bytes: int


class FrameSocket(Protocol):
    """The part of a websocket the sender uses."""

    @property
    def closed(self) -> bool: ...

    async def send_frame(
        self, message: bytes, opcode: aiohttp.WSMsgType, compress: int | None = None
    ) -> None: ...


class WebSocketSender:
    """Join and leave frames on one live websocket, one frame per room (the protocol's).

    Retired when its connection ends. A send still waiting then fails at once with
    ConnectionError: to a peer that stopped reading, a send can wait for buffer space for
    as long as the kernel keeps the socket, and the task sending holds the subscriptions'
    lock, which the next connection needs to join anything.
    """

    def __init__(self, ws: FrameSocket) -> None:
        self._ws = ws
        self._retired = False
        self._sending: set[asyncio.Timeout] = set()

    async def join(self, rooms: Collection[str]) -> None:
        await self._send(map(join_frame, rooms))

    async def leave(self, rooms: Collection[str]) -> None:
        await self._send(map(leave_frame, rooms))

    def retire(self) -> None:
        if self._retired:
            return
        self._retired = True
        now = asyncio.get_running_loop().time()
        for sending in self._sending:
            sending.reschedule(now)  # ends that send with a TimeoutError, in its own task

    async def _send(self, frames: Iterable[bytes]) -> None:
        """Every frame, under one timeout that `retire` ends: a timeout armed per frame cost
        more than the frame's own write. A frame waits only when aiohttp's buffer is full (its
        flow control), so the frames of one call can be many; once the connection is closing,
        aiohttp refuses the next frame with a ConnectionResetError."""
        if self._retired or self._ws.closed:
            raise ConnectionError("the websocket is closed")
        send, text = self._ws.send_frame, aiohttp.WSMsgType.TEXT
        sending = asyncio.timeout(None)
        self._sending.add(sending)
        try:
            async with sending:
                for frame in frames:
                    await send(frame, text)
        except TimeoutError:
            raise ConnectionError("the websocket closed while a frame was being sent") from None
        finally:
            self._sending.discard(sending)


class DatastreamClient:
    def __init__(
        self,
        config: StreamConfig,
        key: Callable[[], str],
        ingest: Ingest,
        *,
        on_connected: PerConnection,
        on_disconnected: Callable[[str | None, datetime], None],
        while_connected: PerConnection | None = None,
        before_close: PerConnection | None = None,
        may_read: asyncio.Event | None = None,
    ) -> None:
        """`on_connected` (the joins) and `while_connected` (the join retries) run beside
        the read loop on each new connection and are cancelled when it ends;
        `before_close` (the leaves) runs on a clean stop, before the closing handshake;
        `on_disconnected` is told when it has ended (why, and its last sign of life), before
        the next one opens."""
        self._config = config
        self._key = key
        self._ingest = ingest
        self._on_connected = on_connected
        self._while_connected = while_connected
        # Cleared by the writer when its spool is full: reading waits rather than grow it.
        self._may_read = may_read or asyncio.Event()
        if may_read is None:
            self._may_read.set()
        self._on_disconnected = on_disconnected
        self._before_close = before_close
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._round_trips: dict[bytes, asyncio.Event] = {}  # ping payload -> its pong came
        self.backoff = Backoff(config.backoff_initial, config.backoff_max)
        self._host = urlsplit(config.datastream_url).netloc
        self.connected = False
        self.connections = 0
        # time.monotonic() of the last frame read: the clock of the default event loop, read
        # with no Python frame between (this runs for every frame)
        self._last_frame = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                reason, lasted = await self._connect_and_read(session, stop)
                if stop.is_set():
                    return
                # Only a connection that stayed up resets the backoff: a server that accepts
                # and drops at once is retried ever more slowly, like one that refuses.
                if lasted is not None and lasted >= self._config.backoff_reset_after:
                    self.backoff.reset()
                delay = self.backoff.next_delay()
                log.info(
                    "datastream.reconnecting",
                    reason=reason,
                    delay=round(delay, 3),
                    attempt=self.backoff.attempt,
                )
                await wait_first(stop, timeout=delay)

    async def _connect_and_read(
        self, session: aiohttp.ClientSession, stop: asyncio.Event
    ) -> tuple[str, float | None]:
        """One connection, from connect to closed; why it ended, and how long it was up."""
        try:
            ws = await self._connect(session)
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in _KEY_REJECTED:
                log.error("datastream.key_rejected", message="API key rejected", status=exc.status)
                return "API key rejected", None
            log.warning("datastream.handshake_failed", status=exc.status)
            return f"handshake refused with HTTP {exc.status}", None
        except _CONNECT_ERRORS as exc:
            log.warning("datastream.connect_failed", host=self._host, error=_describe(exc))
            return "connect failed", None
        opened = time.monotonic()
        reason = "closed"
        try:
            self.connections += 1
            self.connected = True
            log.info("datastream.connected", host=self._host, connection=self.connections)
            reason = await self._session(ws, stop)
        finally:
            self.connected = False
            error = None if stop.is_set() else f"disconnected: {reason}"
            self._on_disconnected(error, self._wall_time(self._last_frame))
            # A deliberate close has done its closing handshake by now; after a drop, an
            # idle timeout or a missing pong there is nobody to wait for.
            await _close(ws, grace=0.0)
        lasted = time.monotonic() - opened
        log.info("datastream.disconnected", reason=reason, lasted=round(lasted, 3))
        return reason, lasted

    async def _connect(self, session: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        async with asyncio.timeout(self._config.connect_timeout):
            return await session.ws_connect(
                f"{self._config.datastream_url}/{self._secret_key()}",
                heartbeat=self._config.keepalive_interval,
                # aiohttp would drop the connection on an oversized frame; allow more and
                # reject such a frame ourselves, so one bad frame costs one frame.
                max_msg_size=max(4 * 1024 * 1024, 16 * self._config.max_frame_bytes),
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
                autoclose=True,
                # Pings and pongs come to the read loop: a pong to our keepalive is a sign of
                # life, the last one of a quiet connection (aiohttp's heartbeat still runs).
                autoping=False,
            )

    async def _session(self, ws: aiohttp.ClientWebSocketResponse, stop: asyncio.Event) -> str:
        # Joins go out while the read loop already runs: pings are answered and early messages
        # read even while a large watchlist is still being joined.
        sender = WebSocketSender(ws)
        self._ws = ws
        try:
            async with asyncio.TaskGroup() as tasks:
                per_connection = [tasks.create_task(self._on_connected(sender))]
                if self._while_connected is not None:
                    per_connection.append(tasks.create_task(self._while_connected(sender)))
                closer = tasks.create_task(self._close_when(stop, ws, sender))
                self._last_frame = time.monotonic()
                reason = await _first_of(self._read(ws), self._watch_idle())
                sender.retire()
                for task in per_connection:
                    task.cancel()
                if not stop.is_set():
                    closer.cancel()  # else let it finish the closing handshake
        finally:
            sender.retire()
            self._ws = None
        return reason

    def last_sign_of_life(self) -> datetime | None:
        """When the last frame was read on the open connection; None when none is open."""
        return self._wall_time(self._last_frame) if self.connected else None

    @staticmethod
    def _wall_time(loop_time: float) -> datetime:
        # Kept as monotonic time, read on every frame; turned into a wall-clock time only here.
        ago = time.monotonic() - loop_time
        return datetime.now(UTC) - timedelta(seconds=max(0.0, ago))

    def _secret_key(self) -> str:
        # A key file is re-read at every connect; a rotated key is scrubbed from logs too.
        key = self._key()
        scrubber.register([key])
        return key

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        # Runs for every frame: what it looks up each time is looked up once, here.
        clock = time.monotonic
        receive, text, may_read = ws.receive, self._ingest.text, self._may_read
        text_type = aiohttp.WSMsgType.TEXT
        while True:
            for _ in range(_FRAMES_PER_TURN):
                if not may_read.is_set():
                    log.warning("datastream.reading_paused", reason="the spool is full")
                    await may_read.wait()
                    log.info("datastream.reading_resumed")
                message = await receive()
                self._last_frame = clock()
                if message.type is text_type:
                    if text(message.data) and not await self._answer(ws.send_str(PONG)):
                        return "pong failed"
                elif message.type is aiohttp.WSMsgType.BINARY:
                    self._ingest.binary(message.data)
                else:
                    ended = await self._control(ws, message)
                    if ended is not None:
                        return ended
            await asyncio.sleep(0)

    async def _control(
        self, ws: aiohttp.ClientWebSocketResponse, message: aiohttp.WSMessage
    ) -> str | None:
        """A frame that is not data: why the connection ended, or None if it goes on."""
        if message.type is aiohttp.WSMsgType.PING:
            return None if await self._answer(ws.pong(message.data)) else "pong failed"
        if message.type is aiohttp.WSMsgType.PONG:
            answered = self._round_trips.get(message.data)
            if answered is not None:
                answered.set()
            return None  # the answer to our keepalive: its time is a sign of life
        if message.type is aiohttp.WSMsgType.ERROR:
            return f"error: {_describe(ws.exception() or message.data)}"
        return f"closed (code {ws.close_code})"  # CLOSE, CLOSING, CLOSED

    async def _watch_idle(self) -> str:
        """Return once nothing at all has been read for `idle_timeout` while reading was on.

        A deadline armed and disarmed around every read costs a third of the read loop at
        high rates; this looks at the time of the last frame once per deadline instead.
        """
        idle = self._config.idle_timeout
        while True:
            if not self._may_read.is_set():  # paused by us, not silence from the peer
                await self._may_read.wait()
                self._last_frame = time.monotonic()
            remaining = self._last_frame + idle - time.monotonic()
            if remaining <= 0:
                log.warning("datastream.idle", seconds=idle)
                return "idle timeout"
            await asyncio.sleep(remaining)

    async def _close_when(
        self, stop: asyncio.Event, ws: aiohttp.ClientWebSocketResponse, sender: RoomSender
    ) -> None:
        """On stop: leave the rooms, then wait for a pong before closing. The server answers
        frames in order, so by the pong it has taken the leaves in, and every message it sent
        before them has been read (a close right away would drop those still in flight)."""
        await stop.wait()
        if self._before_close is not None:
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(_CLOSE_GRACE):
                    await self._before_close(sender)
                    await self._round_trip(ws)
        await _close(ws, grace=_CLOSE_GRACE)

    async def round_trip(self, timeout: float) -> None:
        """Until the server has answered everything sent so far on the open connection (a
        ping's pong: the server answers in order), or `timeout` passes. A handover waits for
        this after its leaves: every message sent before them has then been read."""
        ws = self._ws
        if ws is None or ws.closed:
            return
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(timeout):
                await self._round_trip(ws)

    async def _round_trip(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        payload = secrets.token_bytes(8)
        answered = self._round_trips[payload] = asyncio.Event()
        try:
            await ws.ping(payload)
            await answered.wait()
        finally:
            del self._round_trips[payload]

    async def _answer(self, pong: Coroutine[Any, Any, None]) -> bool:
        # Bounded, as the read loop waits for it: a pong that cannot be sent for a whole
        # keepalive interval means a peer that stopped reading.
        try:
            async with asyncio.timeout(self._config.keepalive_interval):
                await pong
        except (ConnectionError, TimeoutError):
            return False
        return True


async def _first_of(*coroutines: Coroutine[Any, Any, str]) -> str:
    """The result of whichever coroutine finishes first; the others are cancelled."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
    return done.pop().result()


async def _close(ws: aiohttp.ClientWebSocketResponse, grace: float) -> None:
    """Close the websocket, giving the closing handshake at most `grace` seconds; past that
    (a peer that stopped reading can stall even the sending of the close frame), aiohttp
    drops the connection, and the socket is closed all the same."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace):
            await ws.close()


def _describe(error: object) -> str:
    if isinstance(error, aiohttp.ClientResponseError):
        # Its str() names the request URL, and the URL holds the key.
        return f"{type(error).__name__}: HTTP {error.status}"
    if isinstance(error, BaseException):
        return describe_error(error)
    return str(error)
