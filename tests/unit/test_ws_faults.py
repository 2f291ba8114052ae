"""A send stuck on a dead socket, with fake sockets: it must not hold the subscriptions' lock
past the end of its connection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection

import pytest
from aiohttp import WSMsgType

from balancewatch.daemon.datastream import WebSocketSender
from balancewatch.daemon.rooms import wanted_rooms
from balancewatch.daemon.subscriptions import Subscriptions
from balancewatch.domain import Watch
from tests.helpers import SOL, TOKEN, WALLET, WALLET2, room, unrecorded_coverage, wait_until


class StuckSocket:
    """A websocket whose peer stopped reading: every send waits for buffer space forever."""

    closed = False

    def __init__(self) -> None:
        self.sends = 0

    async def send_frame(
        self, message: bytes, opcode: WSMsgType, compress: int | None = None
    ) -> None:
        self.sends += 1
        await asyncio.Event().wait()


class RecordingSocket:
    closed = False

    def __init__(self) -> None:
        self.frames: list[tuple[WSMsgType, bytes]] = []

    async def send_frame(
        self, message: bytes, opcode: WSMsgType, compress: int | None = None
    ) -> None:
        self.frames.append((opcode, message))


class NoStatus:
    def set_status(self, pairs: Collection[Watch], state: str, error: str | None = None) -> None:
        pass


async def test_a_send_stuck_on_a_dead_socket_fails_when_its_connection_ends() -> None:
    """Else the stuck send would hold the subscriptions' lock and the next connection could
    never join anything."""
    subs = Subscriptions(NoStatus(), unrecorded_coverage())
    dead = StuckSocket()
    stuck = WebSocketSender(dead)
    await subs.connected(stuck)
    watching = asyncio.create_task(subs.want(wanted_rooms([(WALLET, TOKEN), (WALLET2, SOL)])))
    await wait_until(lambda: dead.sends == 1, what="the first join to reach the dead socket")
    assert not watching.done()  # stuck in the first join, holding the lock

    subs.disconnected("idle timeout")
    stuck.retire()
    await asyncio.wait_for(watching, timeout=1.0)
    live = RecordingSocket()
    await asyncio.wait_for(subs.connected(WebSocketSender(live)), timeout=1.0)
    assert len(live.frames) == 2
    assert subs.held == {room(), room(WALLET2, SOL)}
    with pytest.raises(ConnectionError):
        await stuck.join([room()])


async def test_a_join_sends_one_text_frame_per_room_in_order() -> None:
    """The protocol is one room per join frame, however many rooms one call joins."""
    live = RecordingSocket()
    rooms = [room(), room(WALLET2, SOL), room(WALLET, None)]
    await WebSocketSender(live).join(rooms)
    await WebSocketSender(live).leave(rooms[:1])

    assert [opcode for opcode, _ in live.frames] == [WSMsgType.TEXT] * 4
    assert [json.loads(frame) for _, frame in live.frames] == [
        *({"type": "join", "room": name} for name in rooms),
        {"type": "leave", "room": room()},
    ]
