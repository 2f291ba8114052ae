"""A local stand-in for the Solana Tracker Datastream, speaking its protocol over a real websocket.

The real Datastream needs a paid key, so development, the demo and the tests run against this.
It keeps a record of everything the clients did (`events`) so tests can assert on the client's
behaviour from the server's side, and it can misbehave on demand: refuse the handshake, stay
silent on joins, drop every TCP connection without a close frame. Given an `ssl_context`, it
serves TLS (`wss://`), so tests can check the client's certificate verification.
It can also cut a connection once it has received N joins (or right after the handshake), go
silent as a dead peer would (`stall_connections`), and ignore websocket-level pings.

Each connection belongs to a client, named by the key in its URL (any key is accepted when no
`api_key` is set, so tests give each replica its own). For tests of several replicas it keeps
who holds each room (`room_holders`), every moment two clients held one room at once
(`overlaps`), and how many balance messages each client got per room (`delivered`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import secrets
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from types import TracebackType
from typing import Final, Literal, Self

import structlog
from aiohttp import WSMessage, WSMsgType, web

from balancewatch import logs
from balancewatch.aio import run_to_exit_code
from balancewatch.chain.answers import U64_MAX
from balancewatch.daemon.protocol import PING
from balancewatch.daemon.signals import stop_on_signals
from balancewatch.devtools.chainsim import DEFAULT_DECIMALS, Chain, base58
from balancewatch.domain import room_for, watch_for

log = structlog.get_logger(__name__)

EventKind = Literal["connect", "join", "leave", "pong", "unknown", "disconnect"]

# A short close handshake and shutdown, so a client that stops reading cannot stall `stop()`.
_CLOSE_TIMEOUT: Final = 1.0
_SHUTDOWN_TIMEOUT: Final = 2.0
# Above 20 messages a second the random walk sends batches instead of sleeping for less.
_MIN_TICK: Final = 0.05
_ZERO_CHANCE: Final = 0.03
# How often a random walk on a wallet room moves a token the wallet never held before.
_NEW_TOKEN_CHANCE: Final = 0.03
_MAX_STEP_PER_10K: Final = 500  # a balance moves by at most 5 % per message
# The bench fast path's flow control: the most unsent bytes a socket may hold before a write
# waits, and how long it waits between looks.
_PREBUILT_HIGH_WATER: Final = 4 * 1024 * 1024
_PREBUILT_WAIT: Final = 0.0005


@dataclass(frozen=True, slots=True)
class SimEvent:
    kind: EventKind
    room: str | None
    conn_id: int
    at: float  # time.monotonic()
    text: str | None = None  # the frame, for "unknown"
    client: str = ""  # the key the connection came with


@dataclass(frozen=True, slots=True)
class Overlap:
    """A join that made two clients hold one room at once: `joiner`'s join, acknowledged at
    `at`, of a room a live connection of `holder` held."""

    room: str
    holder: str
    joiner: str
    at: float  # time.monotonic()


@dataclass(eq=False, slots=True)
class _Connection:
    conn_id: int
    client: str  # the key in the URL it connected with
    ws: web.WebSocketResponse
    transport: asyncio.Transport
    rooms: set[str] = field(default_factory=set)
    joins: int = 0  # join frames received
    cut_after_joins: int | None = None
    stalled: bool = False
    acks: list[bytes] = field(default_factory=list)  # coalesced acks not written yet


class Simulator:
    def __init__(
        self,
        *,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        ping_interval: float | None = 20.0,
        ack_joins: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._api_key = api_key
        self._ssl_context = ssl_context
        self._host = host
        self._requested_port = port
        self._ping_interval = ping_interval
        self.ack_joins = ack_joins
        self.refuse_status: int | None = None
        self.events: list[SimEvent] = []
        self.total_connections = 0
        # Each new connection takes the first number off this list, if any: it is cut without
        # a close frame once it has received that many joins (0: right after the handshake).
        self.cut_after_joins: list[int] = []
        # Off: the client's websocket-level pings go unanswered (only frames show life).
        self.answer_pings = True
        # The bench's fast path for many joins: acks are written together, once per turn of
        # the event loop, in one socket write (a balance sent meanwhile may overtake them).
        self.coalesce_acks = False
        # How long the server takes to act on a leave, as a far server does: the room's messages
        # go on until then, and the frames after the leave wait their turn.
        self.leave_delay = 0.0
        # Called with each event as it is recorded, to check an invariant at every step.
        self.listeners: list[Callable[[SimEvent], None]] = []
        # The chain behind the stream, served as Solana JSON-RPC on POST /rpc.
        self.chain = Chain()
        # Rooms the random walk never sends a message to: cold wallets.
        self.quiet_rooms: set[str] = set()
        # Every join that made two clients hold one room at once, in order.
        self.overlaps: list[Overlap] = []
        # Balance messages sent by `send_balance` (and so the random walk), per (client, room)
        # that got them; `write_prebuilt` is not counted.
        self.delivered: Counter[tuple[str, str]] = Counter()
        self._connections: dict[int, _Connection] = {}
        # room -> ids of the live connections holding it, kept on join, leave and disconnect.
        self._holders: dict[str, set[int]] = {}
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        # A provider's key may be in the path or the query: any is accepted.
        app.router.add_post("/rpc", self.chain.handle)
        app.router.add_post("/rpc/{key:.*}", self.chain.handle)
        app.router.add_get("/{key:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await self._runner.setup()
        await web.TCPSite(
            self._runner, self._host, self._requested_port, ssl_context=self._ssl_context
        ).start()

    async def stop(self) -> None:
        if self._runner is None:
            return
        self.chain.release()
        await self.close_connections()
        await self._runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._runner is None:
            raise RuntimeError("the simulator is not started")
        port: int = self._runner.addresses[0][1]
        return port

    @property
    def url(self) -> str:
        """The base URL (`wss://` when serving TLS); the client appends /KEY."""
        scheme = "ws" if self._ssl_context is None else "wss"
        return f"{scheme}://{self._host}:{self.port}"

    @property
    def rpc_url(self) -> str:
        """The simulated Solana JSON-RPC endpoint (`https://` when serving TLS)."""
        scheme = "http" if self._ssl_context is None else "https"
        return f"{scheme}://{self._host}:{self.port}/rpc"

    # -- introspection -----------------------------------------------------------------------

    @property
    def live_connections(self) -> int:
        return len(self._connections)

    def joined_rooms(self) -> set[str]:
        return set(self._holders)

    def room_subscribers(self, room: str) -> int:
        return len(self._holders.get(room, ()))

    def room_holders(self, room: str) -> set[str]:
        """The clients whose live connections hold `room` right now."""
        return {self._connections[conn_id].client for conn_id in self._holders.get(room, ())}

    def most_room_subscribers(self) -> int:
        """The most open connections that hold any one room right now (0 if none holds any)."""
        counts = Counter(room for conn in self._connections.values() for room in conn.rooms)
        return max(counts.values(), default=0)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until `predicate()` is true, re-checking it after every recorded event."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._changed.wait()
        except TimeoutError:
            name = getattr(predicate, "__qualname__", repr(predicate))
            recent = "\n  ".join(map(repr, self.events[-10:])) or "(none)"
            raise TimeoutError(
                f"{name} still false after {timeout}s; live_connections={self.live_connections},"
                f" joined_rooms={sorted(self.joined_rooms())}; last events:\n  {recent}"
            ) from None

    # -- sending -----------------------------------------------------------------------------

    async def send_balance(self, wallet: str, token: str, amount: str) -> int:
        """Send a balance message to the connections that joined its room, and to those that
        joined its wallet's room (each message names its own room); returns how many.

        `amount` goes on the wire verbatim as the JSON number, so a test can send exactly the
        text the real server might (or a malformed one). It is the chain's balance from then
        on when the chain can hold it (a plain non-negative decimal with at most the mint's
        decimals, within a u64); a malformed one leaves the chain alone.
        """
        if (on_chain := self.chain.chain_amount(token, amount)) is not None:
            self.chain.set_balance(wallet, token, on_chain)
        reached = 0
        for room in (room_for(wallet, token), room_for(wallet, None)):
            frame = (
                f'{{"type":"message","room":{json.dumps(room)},'
                f'"data":{{"wallet":{json.dumps(wallet)},'
                f'"token":{json.dumps(token)},"amount":{amount}}}}}'
            )
            holders = [self._connections[i] for i in sorted(self._holders.get(room, ()))]
            for conn in await _send_each(holders, frame):
                self.delivered[conn.client, room] += 1
                reached += 1
        return reached

    async def send_raw(self, data: str | bytes) -> None:
        await _send(self._connections.values(), data)

    async def write_prebuilt(self, frames: bytes, *, high_water: int = _PREBUILT_HIGH_WATER) -> int:
        """The benchmark's fast path: write ready-made websocket frames (see `text_frame`),
        many at once, straight to every live connection's socket, past aiohttp's per-frame
        writer; returns how many connections were written to. The caller keeps the frames
        whole and sends nothing else meanwhile. Waits while a socket holds more than
        `high_water` unsent bytes, so a slow reader is not buried in memory."""
        written = 0
        for conn in list(self._connections.values()):
            transport = conn.transport
            if conn.stalled or transport.is_closing():
                continue
            # aiohttp owns the protocol, so no drain event is ours to wait on: look again.
            while transport.get_write_buffer_size() > high_water and not transport.is_closing():  # noqa: ASYNC110
                await asyncio.sleep(_PREBUILT_WAIT)
            transport.write(frames)
            written += 1
        return written

    async def ping(self) -> None:
        await _send(self._connections.values(), PING)

    async def drop_connections(self) -> None:
        """Cut every TCP connection without a close frame, as a network failure would."""
        dropped = set(self._connections)
        for conn in list(self._connections.values()):
            conn.transport.abort()
        await self.wait_for(lambda: dropped.isdisjoint(self._connections))

    def stall_connections(self) -> None:
        """Make every open connection a dead peer: its TCP stays open, but nothing is sent on
        it (no ping, ack or balance) and nothing it receives is answered, not even a
        websocket ping. It still notices the client closing it."""
        for conn in self._connections.values():
            conn.stalled = True

    async def close_connections(self, code: int = 1001) -> None:
        connections = list(self._connections.values())
        await asyncio.gather(*(conn.ws.close(code=code) for conn in connections))
        closed = {conn.conn_id for conn in connections}
        await self.wait_for(lambda: closed.isdisjoint(self._connections))

    # -- random walk -------------------------------------------------------------------------

    async def run_random_walk(self, rate: float, stop: asyncio.Event) -> None:
        """Send about `rate` balance changes a second over the joined rooms until `stop` is set."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        tick = max(1.0 / rate, _MIN_TICK)
        per_tick = max(1, round(rate * tick))
        walk = _RandomWalk(random.Random())
        while not stop.is_set():
            rooms = self.joined_rooms() - self.quiet_rooms
            watches = [watch for room in rooms if (watch := watch_for(room))]
            for wallet, room_token in walk.rng.choices(watches, k=per_tick) if watches else ():
                # A wallet room: one of its tokens, now and then a new one.
                token = room_token or walk.token_of(self.chain.tokens_of(wallet))
                # The walk goes on from the chain's balance: a snapshot and the messages after
                # it tell one story.
                current = self.chain.balance(wallet, token)
                amount = walk.next_amount(current, self.chain.decimals(token))
                await self.send_balance(wallet, token, amount)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick)

    # -- one connection ----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        status = self._refusal(request.match_info["key"])
        if status is not None:
            log.info("simulator.refused", status=status)
            return web.Response(status=status)
        ws = web.WebSocketResponse(timeout=_CLOSE_TIMEOUT, autoping=False)
        await ws.prepare(request)
        conn = self._open(ws, request)
        if conn.cut_after_joins == 0:
            conn.transport.abort()
        pinger = asyncio.create_task(self._ping_loop(conn)) if self._ping_interval else None
        try:
            async for msg in ws:
                await self._on_frame(conn, msg)
        finally:
            if pinger is not None:
                pinger.cancel()
            for room in list(conn.rooms):
                self._release(conn, room)
            del self._connections[conn.conn_id]
            self._record("disconnect", conn)
            log.info("simulator.disconnected", conn_id=conn.conn_id, close_code=ws.close_code)
        return ws

    def _refusal(self, key: str) -> int | None:
        if self.refuse_status is not None:
            return self.refuse_status
        if self._api_key is not None and not secrets.compare_digest(key, self._api_key):
            return 401
        return None

    def _open(self, ws: web.WebSocketResponse, request: web.Request) -> _Connection:
        # The transport is kept from the handshake: aborting it is the only way to end the
        # connection without aiohttp sending a close frame.
        transport = request.transport
        assert transport is not None  # set for as long as the request is being handled
        self.total_connections += 1
        cut = self.cut_after_joins.pop(0) if self.cut_after_joins else None
        client = request.match_info["key"]
        conn = _Connection(self.total_connections, client, ws, transport, cut_after_joins=cut)
        self._connections[conn.conn_id] = conn
        self._record("connect", conn)
        log.info("simulator.connected", conn_id=conn.conn_id, live=self.live_connections)
        return conn

    async def _on_frame(self, conn: _Connection, msg: WSMessage) -> None:
        if conn.transport.is_closing():
            return  # cut by us: frames still buffered from before the cut never arrived
        if msg.type is WSMsgType.PING:
            if self.answer_pings and not conn.stalled:
                await conn.ws.pong(msg.data)
            return
        if msg.type is WSMsgType.PONG or conn.stalled:
            return
        if msg.type is not WSMsgType.TEXT:
            self._record("unknown", conn, text=f"<{msg.type.name} frame>")
            return
        kind, room = _classify(msg.data)
        if kind == "join" and room is not None:
            conn.joins += 1
            if conn.joins == conn.cut_after_joins:
                self._record(kind, conn, room)  # received, never acknowledged
                conn.transport.abort()
                return
            # Acknowledged before it counts as joined, so no message can overtake the "joined".
            if self.ack_joins and watch_for(room) is not None:
                await self._ack(conn, room)
            self._hold(conn, room)
        elif kind == "leave" and room is not None:
            await asyncio.sleep(self.leave_delay)
            self._release(conn, room)
        self._record(kind, conn, room, text=msg.data if kind == "unknown" else None)

    def _hold(self, conn: _Connection, room: str) -> None:
        if room in conn.rooms:
            return
        holders = self._holders.setdefault(room, set())
        if holders:  # else no overlap: the common case, once per join of a large watchlist
            others = {self._connections[conn_id].client for conn_id in holders} - {conn.client}
            now = time.monotonic()
            self.overlaps.extend(Overlap(room, other, conn.client, now) for other in sorted(others))
        holders.add(conn.conn_id)
        conn.rooms.add(room)

    def _release(self, conn: _Connection, room: str) -> None:
        holders = self._holders.get(room)
        if holders is not None:
            holders.discard(conn.conn_id)
            if not holders:
                del self._holders[room]
        conn.rooms.discard(room)

    async def _ack(self, conn: _Connection, room: str) -> None:
        if not self.coalesce_acks:
            await _send([conn], _joined_frame(room))
            return
        if not conn.acks:
            asyncio.get_running_loop().call_soon(_write_acks, conn)
        conn.acks.append(text_frame(_joined_frame(room)))

    async def _ping_loop(self, conn: _Connection) -> None:
        assert self._ping_interval is not None
        while not conn.ws.closed:
            await asyncio.sleep(self._ping_interval)
            await _send([conn], PING)

    def _record(
        self, kind: EventKind, conn: _Connection, room: str | None = None, text: str | None = None
    ) -> None:
        event = SimEvent(kind, room, conn.conn_id, time.monotonic(), text, conn.client)
        self.events.append(event)
        for listener in self.listeners:
            listener(event)
        # Wake every waiter, then give later waiters a fresh, unset event to wait on.
        self._changed.set()
        self._changed = asyncio.Event()


class _RandomWalk:
    """A balance moving a few percent per message, sometimes sold down to 0; with no more
    digits after the point than the mint's decimals, and within a u64 of base units, so that
    the chain holds exactly what is streamed."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def token_of(self, held: list[str]) -> str:
        """A token of a watched wallet to move: one it holds, or now and then one it receives
        for the first time (a mint made up on the spot)."""
        if held and self.rng.random() >= _NEW_TOKEN_CHANCE:
            return self.rng.choice(held)
        return base58(self.rng.randbytes(32))

    def next_amount(self, current: Decimal, mint_decimals: int = DEFAULT_DECIMALS) -> str:
        if self.rng.random() < _ZERO_CHANCE:
            amount = Decimal(0)
        else:
            # A balance at 0 (sold out, or never held) starts over from a fresh one.
            current = current or Decimal(self.rng.randint(1, 10**15)).scaleb(-9)
            step = Decimal(self.rng.randint(-_MAX_STEP_PER_10K, _MAX_STEP_PER_10K)).scaleb(-4)
            amount = max(current + current * step, Decimal(0))
        amount = min(amount, Decimal(U64_MAX).scaleb(-mint_decimals))
        decimals = self.rng.randint(0, mint_decimals)
        amount = amount.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_DOWN)
        return format(amount, "f")


def _write_acks(conn: _Connection) -> None:
    acks, conn.acks = conn.acks, []
    if not conn.stalled and not conn.transport.is_closing():
        conn.transport.write(b"".join(acks))


def _classify(text: str) -> tuple[EventKind, str | None]:
    try:
        frame = json.loads(text)
    except ValueError:
        return "unknown", None
    if not isinstance(frame, dict):
        return "unknown", None
    kind, room = frame.get("type"), frame.get("room")
    if kind in ("join", "leave") and isinstance(room, str):
        return kind, room
    if kind == "pong":
        return "pong", None
    return "unknown", None


def _joined_frame(room: str) -> str:
    # The text json.dumps makes of {"type": "joined", "room": room} with no spaces, in a third
    # of the time: the bench's simulator writes a million of them, on the daemon's cores.
    return f'{{"type":"joined","room":{json.dumps(room)}}}'


async def _send(connections: Iterable[_Connection], data: str | bytes) -> int:
    """Send to each connection; returns to how many (see `_send_each`)."""
    return len(await _send_each(connections, data))


async def _send_each(connections: Iterable[_Connection], data: str | bytes) -> list[_Connection]:
    """Send to each connection; one that is going away (or stalled) is skipped, not an error.
    Returns the connections it was sent to."""
    sent = []
    for conn in list(connections):
        if conn.stalled:
            continue
        try:
            if isinstance(data, bytes):
                await conn.ws.send_bytes(data)
            else:
                await conn.ws.send_str(data)
        except ConnectionResetError:
            continue
        sent.append(conn)
    return sent


def command(args: argparse.Namespace) -> int:
    """`balancewatch simulate`: a simulated Datastream until SIGTERM or SIGINT."""
    logs.configure()

    async def simulate() -> None:
        stop = asyncio.Event()
        with stop_on_signals(stop):
            await serve(args.host, args.port, args.key, args.rate, stop)

    return run_to_exit_code(simulate)


async def serve(
    host: str, port: int, api_key: str | None, rate: float, stop: asyncio.Event
) -> None:
    """Run a simulator with a random walk until `stop` is set (`balancewatch simulate`).

    A rate of 0 serves without traffic, for trying joins and reconnects by hand.
    """
    async with Simulator(api_key=api_key, host=host, port=port) as sim:
        bound = sim.port
        log.info(
            "simulator.started",
            host=host,
            port=bound,
            rpc_url=sim.rpc_url,
            rate=rate,
            key_required=api_key is not None,
        )
        await (sim.run_random_walk(rate, stop) if rate > 0 else stop.wait())
    log.info("simulator.stopped", host=host, port=bound)


def balance_frame(wallet: str, token: str, amount: str) -> str:
    """The text of a balance message; `amount` goes on the wire verbatim as the JSON number."""
    room = room_for(wallet, token)
    return (
        f'{{"type":"message","room":"{room}","data":{{"wallet":"{wallet}",'
        f'"token":"{token}","amount":{amount}}}}}'
    )


def text_frame(payload: str) -> bytes:
    """One complete, unmasked (server to client) websocket text frame holding `payload`."""
    data = payload.encode()
    size = len(data)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return header + data
