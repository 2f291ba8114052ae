"""The Datastream simulator, driven over a real websocket by an aiohttp client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType
from structlog.testing import capture_logs

from balancewatch.daemon.protocol import PONG, BalanceUpdate, join_frame, leave_frame, parse_frame
from balancewatch.devtools.simulator import Overlap, Simulator, serve
from balancewatch.domain import room_for
from tests.helpers import wait_until

KEY = "test-key-0123"
WALLET = "FV1r15rbNKkJanXLheoJA7fXEq6NDuMJ3bukXuhJWyV1"
USDT = "Es9vMFrzaCERmJfrF4H2FYD4KCoNkY11McCe8BenwNYB"
WSOL = "So11111111111111111111111111111111111111112"
ROOM_USDT = room_for(WALLET, USDT)
ROOM_WSOL = room_for(WALLET, WSOL)
# Long enough for a frame on loopback to arrive, short enough to keep the suite fast.
SILENCE = 0.15

Connect = Callable[..., Awaitable[ClientWebSocketResponse]]


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(api_key=KEY, ping_interval=None) as simulator:
        yield simulator


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Opens client websockets that are all closed at teardown."""
    async with aiohttp.ClientSession() as session, AsyncExitStack() as stack:

        async def open_ws(base_url: str, key: str = KEY) -> ClientWebSocketResponse:
            return await stack.enter_async_context(session.ws_connect(f"{base_url}/{key}"))

        yield open_ws


async def receive_json(ws: ClientWebSocketResponse) -> object:
    return json.loads(await ws.receive_str(timeout=2.0))


async def join(ws: ClientWebSocketResponse, room: str) -> None:
    await ws.send_str(join_frame(room).decode())
    assert await receive_json(ws) == {"type": "joined", "room": room}


async def assert_silent(ws: ClientWebSocketResponse) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await ws.receive(timeout=SILENCE)


async def test_wrong_key_is_refused_with_401_before_any_websocket(
    sim: Simulator, connect: Connect
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await connect(sim.url, "wrong-key")

    assert refused.value.status == 401
    assert sim.total_connections == 0
    assert sim.events == []


async def test_refuse_status_refuses_every_handshake_until_cleared(
    sim: Simulator, connect: Connect
) -> None:
    sim.refuse_status = 403
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await connect(sim.url)
    assert refused.value.status == 403

    sim.refuse_status = None
    await connect(sim.url)
    assert sim.live_connections == 1


async def test_join_is_acknowledged_and_tracked_per_connection(
    sim: Simulator, connect: Connect
) -> None:
    first = await connect(sim.url)
    second = await connect(sim.url)

    await join(first, ROOM_USDT)

    assert sim.joined_rooms() == {ROOM_USDT}
    assert sim.room_subscribers(ROOM_USDT) == 1
    assert [(e.kind, e.room, e.conn_id) for e in sim.events] == [
        ("connect", None, 1),
        ("connect", None, 2),
        ("join", ROOM_USDT, 1),
    ]
    await assert_silent(second)


async def test_join_is_not_acknowledged_when_ack_joins_is_off(
    sim: Simulator, connect: Connect
) -> None:
    sim.ack_joins = False
    ws = await connect(sim.url)

    await ws.send_str(join_frame(ROOM_USDT).decode())
    await sim.wait_for(lambda: ROOM_USDT in sim.joined_rooms())
    await sim.send_balance(WALLET, USDT, "1")

    # The balance message is the first frame: no "joined" came before it.
    assert await receive_json(ws) == {
        "type": "message",
        "room": ROOM_USDT,
        "data": {"wallet": WALLET, "token": USDT, "amount": 1},
    }


async def test_leave_unsubscribes_only_the_connection_that_left(
    sim: Simulator, connect: Connect
) -> None:
    leaver = await connect(sim.url)
    stayer = await connect(sim.url)
    await join(leaver, ROOM_USDT)
    await join(stayer, ROOM_USDT)
    assert sim.room_subscribers(ROOM_USDT) == 2

    await leaver.send_str(leave_frame(ROOM_USDT).decode())
    await sim.wait_for(lambda: sim.room_subscribers(ROOM_USDT) == 1)

    assert await sim.send_balance(WALLET, USDT, "5") == 1
    assert parse_frame(await stayer.receive_str(timeout=2.0)) == BalanceUpdate(
        WALLET, USDT, "5", room_for(WALLET, USDT)
    )
    await assert_silent(leaver)
    assert sim.events[-1].kind == "leave"


@pytest.mark.parametrize("amount", ["76989.158861", "1e-7", "2e+21", "0", "0.000000001"])
async def test_send_balance_puts_the_amount_text_on_the_wire_verbatim(
    sim: Simulator, connect: Connect, amount: str
) -> None:
    ws = await connect(sim.url)
    await join(ws, ROOM_USDT)

    assert await sim.send_balance(WALLET, USDT, amount) == 1

    assert await ws.receive_str(timeout=2.0) == (
        f'{{"type":"message","room":"{ROOM_USDT}",'
        f'"data":{{"wallet":"{WALLET}","token":"{USDT}","amount":{amount}}}}}'
    )


async def test_send_balance_reaches_only_connections_that_joined_the_room(
    sim: Simulator, connect: Connect
) -> None:
    usdt = await connect(sim.url)
    wsol = await connect(sim.url)
    idle = await connect(sim.url)
    await join(usdt, ROOM_USDT)
    await join(wsol, ROOM_WSOL)

    assert await sim.send_balance(WALLET, USDT, "12.5") == 1
    assert await sim.send_balance(WALLET, WSOL, "0.25") == 1

    assert parse_frame(await usdt.receive_str(timeout=2.0)) == BalanceUpdate(
        WALLET, USDT, "12.5", room_for(WALLET, USDT)
    )
    assert parse_frame(await wsol.receive_str(timeout=2.0)) == BalanceUpdate(
        WALLET, WSOL, "0.25", room_for(WALLET, WSOL)
    )
    await assert_silent(usdt)
    await assert_silent(idle)


async def test_ping_answered_with_pong_is_recorded(sim: Simulator, connect: Connect) -> None:
    ws = await connect(sim.url)

    await sim.ping()
    assert await receive_json(ws) == {"type": "ping"}
    await ws.send_str(PONG)

    await sim.wait_for(lambda: any(e.kind == "pong" for e in sim.events))


async def test_pings_are_sent_every_ping_interval(connect: Connect) -> None:
    async with Simulator(ping_interval=0.05) as sim:
        ws = await connect(sim.url, "any-key-is-accepted-without-api-key")
        for _ in range(2):
            assert await receive_json(ws) == {"type": "ping"}


async def test_unknown_client_frames_are_recorded_with_their_text(
    sim: Simulator, connect: Connect
) -> None:
    ws = await connect(sim.url)

    await ws.send_str('{"type":"subscribe","room":"x"}')
    await ws.send_str('{"type":"join"}')
    await ws.send_bytes(b"\x00\x01")
    await sim.wait_for(lambda: len(sim.events) == 4)

    assert [(e.kind, e.text) for e in sim.events[1:]] == [
        ("unknown", '{"type":"subscribe","room":"x"}'),
        ("unknown", '{"type":"join"}'),
        ("unknown", "<BINARY frame>"),
    ]


async def test_send_raw_sends_text_and_binary_frames_to_every_connection(
    sim: Simulator, connect: Connect
) -> None:
    clients = [await connect(sim.url), await connect(sim.url)]

    await sim.send_raw('{"type":"error"}')
    await sim.send_raw(b"\xff")

    for ws in clients:
        assert await ws.receive_str(timeout=2.0) == '{"type":"error"}'
        assert await ws.receive_bytes(timeout=2.0) == b"\xff"


async def test_drop_connections_ends_them_without_a_close_frame(
    sim: Simulator, connect: Connect
) -> None:
    ws = await connect(sim.url)
    await join(ws, ROOM_USDT)

    await sim.drop_connections()

    msg = await ws.receive(timeout=2.0)
    assert msg.type in (WSMsgType.CLOSED, WSMsgType.ERROR)
    assert ws.close_code != 1000
    assert sim.live_connections == 0
    assert sim.joined_rooms() == set()
    assert sim.events[-1].kind == "disconnect"


async def test_cut_after_joins_cuts_each_new_connection_at_its_count_of_joins(
    sim: Simulator, connect: Connect
) -> None:
    sim.cut_after_joins = [2, 0]
    first = await connect(sim.url)
    await join(first, ROOM_USDT)
    await first.send_str(join_frame(ROOM_WSOL).decode())  # the second join: cut, never acknowledged
    await first.send_str(leave_frame(ROOM_USDT).decode())  # already on its way: never arrives
    msg = await first.receive(timeout=2.0)
    assert msg.type in (WSMsgType.CLOSED, WSMsgType.ERROR)
    await sim.wait_for(lambda: sim.live_connections == 0)

    with contextlib.suppress(aiohttp.ClientError):  # cut right after the handshake
        second = await connect(sim.url)
        assert (await second.receive(timeout=2.0)).type in (WSMsgType.CLOSED, WSMsgType.ERROR)
    await sim.wait_for(lambda: sim.live_connections == 0)

    third = await connect(sim.url)  # the list is used up: a normal connection
    await join(third, ROOM_USDT)
    assert sim.cut_after_joins == []
    assert [(e.kind, e.room, e.conn_id) for e in sim.events] == [
        ("connect", None, 1),
        ("join", ROOM_USDT, 1),
        ("join", ROOM_WSOL, 1),
        ("disconnect", None, 1),
        ("connect", None, 2),
        ("disconnect", None, 2),
        ("connect", None, 3),
        ("join", ROOM_USDT, 3),
    ]


async def test_a_stalled_connection_sends_and_answers_nothing_but_notices_the_close(
    sim: Simulator,
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{sim.url}/{KEY}", autoping=False) as ws,
    ):
        await ws.ping(b"1")
        assert (await ws.receive(timeout=2.0)).type is WSMsgType.PONG
        await join(ws, ROOM_USDT)

        sim.stall_connections()
        await ws.ping(b"2")
        await ws.send_str(join_frame(ROOM_WSOL).decode())
        await sim.ping()
        assert await sim.send_balance(WALLET, USDT, "1") == 0
        await assert_silent(ws)
        assert sim.live_connections == 1
        assert sim.joined_rooms() == {ROOM_USDT}
    await sim.wait_for(lambda: sim.live_connections == 0)
    assert [e.kind for e in sim.events] == ["connect", "join", "disconnect"]


async def test_websocket_pings_go_unanswered_when_answer_pings_is_off(sim: Simulator) -> None:
    sim.answer_pings = False
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{sim.url}/{KEY}", autoping=False) as ws,
    ):
        await ws.ping()
        await assert_silent(ws)
        await sim.ping()  # JSON pings still go out
        assert await receive_json(ws) == {"type": "ping"}


async def test_listeners_see_every_event_and_overlapping_rooms_are_counted(
    sim: Simulator, connect: Connect
) -> None:
    seen: list[tuple[str, int]] = []
    sim.listeners.append(lambda event: seen.append((event.kind, sim.most_room_subscribers())))
    first = await connect(sim.url)
    second = await connect(sim.url)
    await join(first, ROOM_USDT)
    await join(second, ROOM_WSOL)
    await join(second, ROOM_USDT)
    assert seen == [("connect", 0), ("connect", 0), ("join", 1), ("join", 1), ("join", 2)]


# -- several clients: each replica connects with its own key -----------------------------------


@pytest.fixture
async def open_sim() -> AsyncIterator[Simulator]:
    """A simulator with no key set: it takes any, and names each connection's client by it."""
    async with Simulator(ping_interval=None) as simulator:
        yield simulator


async def test_two_clients_holding_one_room_at_once_is_one_overlap(
    open_sim: Simulator, connect: Connect
) -> None:
    a = await connect(open_sim.url, "replica-a")
    b = await connect(open_sim.url, "replica-b")
    await join(a, ROOM_USDT)
    await join(b, ROOM_WSOL)
    assert open_sim.overlaps == []

    before = open_sim.events[-1].at
    await join(b, ROOM_USDT)

    (overlap,) = open_sim.overlaps
    assert overlap == Overlap(ROOM_USDT, "replica-a", "replica-b", overlap.at)
    assert before <= overlap.at <= open_sim.events[-1].at
    assert open_sim.room_holders(ROOM_USDT) == {"replica-a", "replica-b"}
    assert open_sim.room_holders(ROOM_WSOL) == {"replica-b"}
    assert [(e.kind, e.client) for e in open_sim.events if e.room == ROOM_USDT] == [
        ("join", "replica-a"),
        ("join", "replica-b"),
    ]
    assert await open_sim.send_balance(WALLET, USDT, "3") == 2
    assert open_sim.delivered == Counter({("replica-a", ROOM_USDT): 1, ("replica-b", ROOM_USDT): 1})


async def test_the_same_client_reconnecting_is_no_overlap(
    open_sim: Simulator, connect: Connect
) -> None:
    old = await connect(open_sim.url, "replica-a")
    await join(old, ROOM_USDT)
    await old.close()
    await open_sim.wait_for(lambda: open_sim.live_connections == 0)
    assert open_sim.room_holders(ROOM_USDT) == set()

    new = await connect(open_sim.url, "replica-a")
    await join(new, ROOM_USDT)

    assert open_sim.overlaps == []
    assert open_sim.room_holders(ROOM_USDT) == {"replica-a"}
    assert [(e.kind, e.conn_id, e.client) for e in open_sim.events] == [
        ("connect", 1, "replica-a"),
        ("join", 1, "replica-a"),
        ("disconnect", 1, "replica-a"),
        ("connect", 2, "replica-a"),
        ("join", 2, "replica-a"),
    ]


async def test_a_room_left_then_joined_by_another_client_is_no_overlap_and_counts_apart(
    open_sim: Simulator, connect: Connect
) -> None:
    a = await connect(open_sim.url, "replica-a")
    b = await connect(open_sim.url, "replica-b")
    await join(a, ROOM_USDT)
    assert await open_sim.send_balance(WALLET, USDT, "1") == 1

    await a.send_str(leave_frame(ROOM_USDT).decode())
    await open_sim.wait_for(lambda: open_sim.room_holders(ROOM_USDT) == set())
    await join(b, ROOM_USDT)
    assert await open_sim.send_balance(WALLET, USDT, "2") == 1
    assert await open_sim.send_balance(WALLET, USDT, "3") == 1

    assert open_sim.overlaps == []
    assert open_sim.room_holders(ROOM_USDT) == {"replica-b"}
    assert open_sim.delivered == Counter({("replica-a", ROOM_USDT): 1, ("replica-b", ROOM_USDT): 2})
    assert parse_frame(await a.receive_str(timeout=2.0)) == BalanceUpdate(
        WALLET, USDT, "1", room_for(WALLET, USDT)
    )
    await assert_silent(a)


async def test_a_dropped_connection_holds_nothing_and_a_sole_key_is_one_client(
    sim: Simulator, connect: Connect
) -> None:
    first = await connect(sim.url)
    await join(first, ROOM_USDT)
    await sim.drop_connections()
    assert sim.room_holders(ROOM_USDT) == set()

    # With api_key set, every connection comes with that key: one client, never an overlap.
    second = await connect(sim.url)
    third = await connect(sim.url)
    await join(second, ROOM_USDT)
    await join(third, ROOM_USDT)
    assert sim.room_subscribers(ROOM_USDT) == 2
    assert sim.room_holders(ROOM_USDT) == {KEY}
    assert sim.overlaps == []


async def test_close_connections_sends_a_close_frame_with_the_code(
    sim: Simulator, connect: Connect
) -> None:
    ws = await connect(sim.url)

    closing = asyncio.create_task(sim.close_connections(code=4000))
    msg = await ws.receive(timeout=2.0)
    await closing

    assert (msg.type, msg.data) == (WSMsgType.CLOSE, 4000)
    assert sim.live_connections == 0
    assert sim.total_connections == 1


async def test_wait_for_timeout_explains_what_was_awaited(sim: Simulator) -> None:
    def two_connections() -> bool:
        return sim.live_connections == 2

    with pytest.raises(TimeoutError, match=r"two_connections still false .*live_connections=0"):
        await sim.wait_for(two_connections, timeout=0.05)


async def test_random_walk_sends_valid_balances_only_to_joined_rooms_until_stopped(
    sim: Simulator, connect: Connect
) -> None:
    joiner = await connect(sim.url)
    bystander = await connect(sim.url)
    stop = asyncio.Event()
    walk = asyncio.create_task(sim.run_random_walk(rate=400.0, stop=stop))

    await assert_silent(joiner)  # nothing is joined yet, so nothing is sent
    await join(joiner, ROOM_USDT)
    updates = [parse_frame(await joiner.receive_str(timeout=2.0)) for _ in range(40)]
    stop.set()
    await asyncio.wait_for(walk, timeout=1.0)

    for update in updates:
        assert isinstance(update, BalanceUpdate)
        assert (update.wallet, update.token) == (WALLET, USDT)
        amount = Decimal(update.amount)
        assert amount >= 0
        assert -int(amount.as_tuple().exponent) <= 9
    assert len({update.amount for update in updates if isinstance(update, BalanceUpdate)}) > 1
    await assert_silent(bystander)


async def test_serve_streams_to_a_joined_client_and_stops_when_told(connect: Connect) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stop = asyncio.Event()
    server = asyncio.create_task(serve("127.0.0.1", port, KEY, 100.0, stop))
    ws = await _connect_when_listening(connect, f"ws://127.0.0.1:{port}")

    await join(ws, ROOM_WSOL)
    assert isinstance(parse_frame(await ws.receive_str(timeout=2.0)), BalanceUpdate)
    stop.set()
    await asyncio.wait_for(server, timeout=3.0)

    while (msg := await ws.receive(timeout=2.0)).type is WSMsgType.TEXT:
        pass  # balances already in flight when the stop came
    assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)


async def _connect_when_listening(connect: Connect, url: str) -> ClientWebSocketResponse:
    for _ in range(50):
        try:
            return await connect(url)
        except aiohttp.ClientConnectorError:
            await asyncio.sleep(0.02)
    raise AssertionError(f"nothing listening at {url}")


# -- the chain behind the stream: Solana JSON-RPC on POST /rpc --------------------------------


async def rpc(sim: Simulator, payload: object, path: str = "") -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sim.rpc_url}{path}", json=payload) as response,
    ):
        return response.status, await response.json(content_type=None)


def token_accounts_call(call_id: int, wallet: str, mint: str) -> dict[str, object]:
    config = {"encoding": "jsonParsed", "commitment": "confirmed"}
    return {
        "jsonrpc": "2.0",
        "id": call_id,
        "method": "getTokenAccountsByOwner",
        "params": [wallet, {"mint": mint}, config],
    }


async def test_a_streamed_balance_is_the_chain_balance(sim: Simulator, connect: Connect) -> None:
    ws = await connect(sim.url)
    await join(ws, ROOM_USDT)
    sim.chain.set_layout(WALLET, USDT, accounts=3, decimals=6)

    await sim.send_balance(WALLET, USDT, "76989.158861")

    update = parse_frame(await ws.receive_str(timeout=2.0))
    assert isinstance(update, BalanceUpdate)
    assert sim.chain.balance(WALLET, USDT) == Decimal(update.amount) == Decimal("76989.158861")
    status, answer = await rpc(sim, token_accounts_call(4, WALLET, USDT), "/a-key?api-key=x")
    assert status == 200
    accounts = answer["result"]["value"]
    assert len(accounts) == 3
    raw = [int(a["account"]["data"]["parsed"]["info"]["tokenAmount"]["amount"]) for a in accounts]
    assert sum(raw) == 76989158861
    assert len(set(raw)) == 3  # split unevenly


@pytest.mark.parametrize("amount", ["1e-7", "2e+21", "-3", "0.0000000001", "1" * 30])
async def test_a_balance_the_chain_cannot_hold_is_streamed_but_leaves_the_chain_alone(
    sim: Simulator, connect: Connect, amount: str
) -> None:
    ws = await connect(sim.url)
    await join(ws, ROOM_USDT)
    sim.chain.set_balance(WALLET, USDT, "5")
    slot = sim.chain.slot

    await sim.send_balance(WALLET, USDT, amount)

    assert amount in await ws.receive_str(timeout=2.0)
    assert sim.chain.balance(WALLET, USDT) == 5
    assert sim.chain.slot == slot


async def test_set_balance_changes_the_chain_without_a_message(
    sim: Simulator, connect: Connect
) -> None:
    ws = await connect(sim.url)
    await join(ws, ROOM_USDT)
    slot = sim.chain.slot

    sim.chain.set_balance(WALLET, USDT, Decimal("12.5"))

    await assert_silent(ws)
    assert sim.chain.balance(WALLET, USDT) == Decimal("12.5")
    assert sim.chain.slot > slot
    with pytest.raises(ValueError, match="not a balance this mint can hold"):
        sim.chain.set_balance(WALLET, USDT, "0.0000000001")  # 10 decimals; the mint has 9


async def test_the_random_walk_leaves_the_chain_at_the_last_amount_streamed(
    sim: Simulator, connect: Connect
) -> None:
    sim.chain.set_layout(WALLET, USDT, decimals=2)
    ws = await connect(sim.url)
    await join(ws, ROOM_USDT)
    stop = asyncio.Event()
    walk = asyncio.create_task(sim.run_random_walk(rate=400.0, stop=stop))
    updates = [parse_frame(await ws.receive_str(timeout=2.0)) for _ in range(20)]
    stop.set()
    await asyncio.wait_for(walk, timeout=1.0)
    with contextlib.suppress(asyncio.TimeoutError):  # the walk's last ones, already sent
        while True:
            updates.append(parse_frame(await ws.receive_str(timeout=SILENCE)))

    last = updates[-1]
    assert isinstance(last, BalanceUpdate)
    assert sim.chain.balance(WALLET, USDT) == Decimal(last.amount)
    for update in updates:
        assert isinstance(update, BalanceUpdate)
        assert -int(Decimal(update.amount).as_tuple().exponent) <= 2


async def test_rpc_answers_single_calls_and_batches_in_the_documented_shape(
    sim: Simulator,
) -> None:
    sim.chain.set_layout(WALLET, USDT, accounts=1, program="spl-token-2022", decimals=6)
    sim.chain.set_balance(WALLET, USDT, "76989.158861")
    sim.chain.set_balance(WALLET, WSOL, "1.5")

    status, answer = await rpc(sim, token_accounts_call(1, WALLET, USDT))
    assert status == 200
    [account] = answer["result"]["value"]
    assert answer["id"] == 1
    assert set(answer["result"]["context"]) == {"apiVersion", "slot"}
    assert account["account"]["owner"] == "TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb"
    assert account["account"]["data"]["program"] == "spl-token-2022"
    assert account["account"]["data"]["parsed"]["info"] == {
        "isNative": False,
        "mint": USDT,
        "owner": WALLET,
        "state": "initialized",
        "tokenAmount": {
            "amount": "76989158861",
            "decimals": 6,
            "uiAmount": 76989.158861,
            "uiAmountString": "76989.158861",
        },
    }
    get_balance = {"jsonrpc": "2.0", "id": 2, "method": "getBalance", "params": [WALLET]}
    unknown = {"jsonrpc": "2.0", "id": 3, "method": "getSlot", "params": []}
    nobody = token_accounts_call(4, WALLET, WSOL.replace("1", "2"))
    status, answers = await rpc(sim, [get_balance, unknown, nobody], "/path-key")
    assert status == 200
    by_id = {a["id"]: a for a in answers}
    assert by_id[2]["result"]["value"] == 1_500_000_000
    assert by_id[3]["error"]["code"] == -32601
    assert by_id[4]["result"]["value"] == []  # never given a balance: no account
    assert by_id[2]["result"]["context"]["slot"] > answer["result"]["context"]["slot"]
    assert [(r.calls, r.batch, r.status) for r in sim.chain.requests] == [
        (1, False, 200),
        (3, True, 200),
    ]


async def test_refused_batches_and_faults_apply_to_the_next_requests(sim: Simulator) -> None:
    call = token_accounts_call(1, WALLET, USDT)
    sim.chain.refuse_batches = True
    status, refused = await rpc(sim, [call])
    assert status == 400
    assert "error" in refused
    assert (await rpc(sim, call))[0] == 200  # single calls still answered

    sim.chain.fail_next("429", times=2, retry_after=7)
    sim.chain.fail_next("bad_decimals")
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.post(sim.rpc_url, json=call) as response:
                assert (response.status, response.headers["Retry-After"]) == (429, "7")
    status, corrupted = await rpc(sim, call)
    decimals = corrupted["result"]["value"][0]["account"]["data"]["parsed"]["info"]
    assert decimals["tokenAmount"]["decimals"] == 300  # an owner with no account gets a bad one
    assert (await rpc(sim, call))[1]["result"]["value"] == []
    assert [r.fault for r in sim.chain.requests] == [None, None, "429", "429", "bad_decimals", None]


async def test_a_held_request_is_let_go_when_the_simulator_stops() -> None:
    sim = Simulator(ping_interval=None)
    await sim.start()
    sim.chain.fail_next("timeout")
    held = asyncio.create_task(rpc(sim, token_accounts_call(1, WALLET, USDT)))
    await wait_until(lambda: len(sim.chain.requests) == 1, what="the request to arrive")

    async with asyncio.timeout(3.0):
        await sim.stop()
        with contextlib.suppress(aiohttp.ClientError):
            assert (await held)[0] == 504
    assert sim.chain.requests[0].status is None


async def test_serve_logs_the_rpc_url_at_start() -> None:
    stop = asyncio.Event()
    with capture_logs() as logged:
        server = asyncio.create_task(serve("127.0.0.1", 0, None, 0, stop))
        await wait_until(lambda: any(e["event"] == "simulator.started" for e in logged))
        stop.set()
        await asyncio.wait_for(server, timeout=3.0)
    started = next(e for e in logged if e["event"] == "simulator.started")
    assert started["rpc_url"] == f"http://127.0.0.1:{started['port']}/rpc"
