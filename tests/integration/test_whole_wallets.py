"""Whole wallets: an all-tokens watchlist row joins the wallet's room, whose messages are rows of
every token of the wallet; and the switch between a wallet's token rooms and its wallet room
stores every message the server delivered exactly once."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy.engine import URL

from balancewatch.devtools.chainsim import base58
from balancewatch.devtools.simulator import Simulator
from balancewatch.domain import Pair
from tests.helpers import SOL, TOKEN, WALLET, make_settings, room, running_daemon, wait_until, watch
from tests.streams import assert_stored_once, numbered_messages

WHOLE = room(WALLET, None)
PAIRS: list[Pair] = [(WALLET, TOKEN), (WALLET, SOL)]


def joins(sim: Simulator, room_name: str) -> int:
    return sum(1 for event in sim.events if event.kind == "join" and event.room == room_name)


async def states(db: Any) -> dict[str | None, str]:
    rows = await db.fetch("SELECT token, state FROM subscription_status WHERE wallet = $1", WALLET)
    return {row["token"]: row["state"] for row in rows}


async def test_an_all_tokens_row_joins_one_room_and_stores_every_token_it_sends(
    database_url: URL, db: Any, simulator: Simulator
) -> None:
    received_later = base58(hashlib.sha256(b"a mint first received after the join").digest())
    await watch(db, WALLET, None)
    async with running_daemon(make_settings(database_url, simulator.url)):
        await simulator.wait_for(lambda: simulator.joined_rooms() == {WHOLE})
        for token, amount in ((TOKEN, "5"), (SOL, "0.25"), (received_later, "7")):
            await simulator.send_balance(WALLET, token, amount)

        async def three_rows() -> bool:
            count: int = await db.fetchval("SELECT count(*) FROM balance_history")
            return count == 3

        await wait_until(three_rows, what="a row for each token")
        await wait_until(lambda: _is(db, {None: "joined"}), what="the wallet's state")
    rows = await db.fetch("SELECT wallet, token, amount::text FROM balance_history ORDER BY id")
    assert [tuple(row) for row in rows] == [
        (WALLET, TOKEN, "5"),
        (WALLET, SOL, "0.25"),
        (WALLET, received_later, "7"),
    ]
    assert joins(simulator, WHOLE) == 1
    periods = await db.fetch("SELECT token FROM coverage WHERE wallet = $1", WALLET)
    assert [row["token"] for row in periods] == [None]


async def _is(db: Any, expected: dict[str | None, str]) -> bool:
    return await states(db) == expected


async def test_switching_to_the_wallet_room_and_back_stores_each_delivered_message_once(
    database_url: URL, db: Any, simulator: Simulator
) -> None:
    for wallet, token in PAIRS:
        await watch(db, wallet, token)
    token_rooms = {room(*pair) for pair in PAIRS}
    # Messages of the rooms left are still on their way when the new rooms are joined.
    simulator.leave_delay = 0.05
    async with running_daemon(make_settings(database_url, simulator.url)):
        await simulator.wait_for(lambda: simulator.joined_rooms() == token_rooms)
        async with numbered_messages(simulator, PAIRS, per_second=1000) as reached:
            await wait_until(lambda: len(reached) > 100, what="messages on the token rooms")
            await watch(db, WALLET, None)
            await simulator.wait_for(lambda: simulator.joined_rooms() == {WHOLE})
            await wait_until(lambda: _is(db, {None: "joined", TOKEN: "covered", SOL: "covered"}))
            switched_at = len(reached)
            await wait_until(lambda: len(reached) > switched_at + 100, what="on the wallet room")
            await db.execute("DELETE FROM watchlist WHERE token IS NULL")
            await simulator.wait_for(lambda: simulator.joined_rooms() == token_rooms)
            back_at = len(reached)
            await wait_until(lambda: len(reached) > back_at + 100, what="on the token rooms")
        # The server never held both kinds of room of the wallet: no change came twice.
        assert max(reached.values()) == 1
        await assert_stored_once(db, [n for n, count in reached.items() if count == 1])
        await wait_until(lambda: _is(db, {None: "left", TOKEN: "joined", SOL: "joined"}))
    assert joins(simulator, WHOLE) == 1
    rejected = await db.fetchval("SELECT count(*) FROM rejected_messages")
    assert rejected == 0
