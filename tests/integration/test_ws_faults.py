"""The daemon under websocket faults, end to end: a real Postgres, real sockets on loopback.

Each fault is caused for real by the simulator (a drop without a close frame, a cut in the
middle of the re-join, a server that accepts and drops at once, a dead peer that keeps its TCP
open, joins never acknowledged) and the outcome is asserted on what was stored and on what
the server saw: rows in balance_history, states in subscription_status, frames and
connections recorded by the simulator. At every simulator event, no room may be held by two
open connections.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Collection
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.aio import Backoff
from balancewatch.devtools.simulator import SimEvent, Simulator
from balancewatch.domain import Pair
from tests.helpers import (
    API_KEY,
    SOL,
    TOKEN,
    WALLET,
    WALLET2,
    make_settings,
    room,
    running_daemon,
    wait_until,
)

# Loopback and an event loop shared with Postgres clients: generous for a busy CI machine.
SLACK = 0.3


class SubscriberSampler:
    """Checks, at every simulator event, that no room is held by two open connections."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.most = 0
        self.samples = 0
        sim.listeners.append(self.sample)

    def sample(self, _event: SimEvent) -> None:
        self.samples += 1
        self.most = max(self.most, self.sim.most_room_subscribers())


async def watch(db: Any, *pairs: Pair) -> None:
    await db.executemany("INSERT INTO watchlist (wallet, token) VALUES ($1, $2)", pairs)


async def watch_many(db: Any, count: int) -> list[Pair]:
    # md5 hex with '0' swapped for 'z' is a valid 32-character base58 string.
    rows = await db.fetch(
        "INSERT INTO watchlist (wallet, token) "
        "SELECT $1, translate(md5(i::text), '0', 'z') FROM generate_series(1, $2) AS i "
        "RETURNING wallet, token",
        WALLET,
        count,
    )
    return [(row["wallet"], row["token"]) for row in rows]


async def stored(db: Any) -> Counter[tuple[str, str, Decimal]]:
    rows = await db.fetch("SELECT wallet, token, amount FROM balance_history")
    return Counter((row["wallet"], row["token"], row["amount"]) for row in rows)


def row_count(db: Any, expected: int) -> Any:
    async def check() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM balance_history") >= expected)

    return check


def states_are(db: Any, state: str, count: int) -> Any:
    async def check() -> bool:
        found = await db.fetchval(
            "SELECT count(*) FROM subscription_status WHERE state = $1", state
        )
        return bool(found == count)

    return check


async def status_of(db: Any, pair: Pair) -> tuple[str, str | None]:
    row = await db.fetchrow(
        "SELECT state, last_error FROM subscription_status WHERE wallet = $1 AND token = $2",
        *pair,
    )
    assert row is not None
    return row["state"], row["last_error"]


def events(sim: Simulator, kind: str) -> list[SimEvent]:
    return [event for event in sim.events if event.kind == kind]


def joins_by_connection(sim: Simulator) -> dict[int, list[str]]:
    joins: dict[int, list[str]] = defaultdict(list)
    for event in events(sim, "join"):
        assert event.room is not None
        joins[event.conn_id].append(event.room)
    return joins


def joins_of(sim: Simulator, room_name: str) -> list[SimEvent]:
    return [event for event in events(sim, "join") if event.room == room_name]


def disconnected(sim: Simulator, conn_id: int) -> bool:
    return any(e.kind == "disconnect" and e.conn_id == conn_id for e in sim.events)


def rooms_of(pairs: Collection[Pair]) -> set[str]:
    return {room(*pair) for pair in pairs}


async def send_to_each(
    sim: Simulator, pairs: list[Pair], tag: int
) -> set[tuple[str, str, Decimal]]:
    """One balance per pair, each amount unique to this call; every one must reach the daemon."""
    sent = set()
    for i, (wallet, token) in enumerate(pairs):
        amount = f"{tag}.{i:04d}1"
        assert await sim.send_balance(wallet, token, amount) == 1
        sent.add((wallet, token, Decimal(amount)))
    return sent


# --- drops without a close frame ----------------------------------------------------------------


async def test_cuts_in_the_middle_of_rejoining_a_large_watchlist_lose_no_room(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator
) -> None:
    pairs = await watch_many(db, 300)
    sampler = SubscriberSampler(simulator)
    cuts = [120, 1, 299, 40]
    simulator.cut_after_joins = list(cuts)
    async with running_daemon(make_settings(database_url, simulator.url)):
        await simulator.wait_for(
            lambda: (
                simulator.total_connections == len(cuts) + 1
                and len(simulator.joined_rooms()) == len(pairs)
            ),
            timeout=15.0,
        )
        sent = await send_to_each(simulator, pairs, tag=1)
        await wait_until(row_count(db, len(sent)), timeout=10.0, what="a row per room")
        await wait_until(states_are(db, "joined", len(pairs)), what="every pair joined")
    assert await stored(db) == Counter(sent)

    joins = joins_by_connection(simulator)
    # Each cut connection got exactly the joins it was cut at, the last one all of them...
    assert [len(joins[conn_id]) for conn_id in range(1, len(cuts) + 1)] == cuts
    assert sorted(joins[len(cuts) + 1]) == sorted(rooms_of(pairs))
    # ...and no connection was ever sent a join for a room it already held.
    assert all(len(set(rooms)) == len(rooms) for rooms in joins.values())
    assert simulator.total_connections == len(cuts) + 1
    assert sampler.samples > sum(cuts) + len(pairs)  # every join, connect and disconnect
    assert sampler.most == 1


async def test_repeated_drops_store_every_message_sent_after_each_reconnect_exactly_once(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator
) -> None:
    pairs = await watch_many(db, 20)
    sampler = SubscriberSampler(simulator)
    sent: set[tuple[str, str, Decimal]] = set()
    async with running_daemon(make_settings(database_url, simulator.url)):
        for drop in range(5):
            await simulator.wait_for(lambda: simulator.joined_rooms() == rooms_of(pairs))
            sent |= await send_to_each(simulator, pairs, tag=drop)
            await wait_until(row_count(db, len(sent)), what=f"the rows before drop {drop}")
            await simulator.drop_connections()
        await simulator.wait_for(lambda: simulator.joined_rooms() == rooms_of(pairs))
        sent |= await send_to_each(simulator, pairs, tag=99)
        await wait_until(row_count(db, len(sent)), what="the rows after the last drop")
    assert await stored(db) == Counter(sent)
    assert simulator.total_connections == 6
    assert all(len(rooms) == len(pairs) for rooms in joins_by_connection(simulator).values())
    assert sampler.most == 1


async def test_a_server_that_accepts_and_drops_at_once_is_retried_with_growing_backoff(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator
) -> None:
    await watch(db, (WALLET, TOKEN))
    initial, maximum, drops, seed = 0.05, 0.8, 6, 5
    simulator.cut_after_joins = [0] * drops  # cut right after the handshake, six times
    settings = make_settings(
        database_url, simulator.url, backoff_initial=initial, backoff_max=maximum
    )
    async with running_daemon(settings) as running:
        # Seeded before the daemon first runs, so the delays it will draw are known here.
        running.daemon.client.backoff.rng = random.Random(seed)
        expected = Backoff(initial, maximum, rng=random.Random(seed))
        ceilings, delays = [], []
        for _ in range(drops):
            ceilings.append(expected.ceiling())
            delays.append(expected.next_delay())

        await simulator.wait_for(lambda: room() in simulator.joined_rooms(), timeout=10.0)
        await simulator.send_balance(WALLET, TOKEN, "7")
        await wait_until(row_count(db, 1), what="the row once the server behaves")
        # Bounded: once a connection stays up, there is no further attempt.
        await asyncio.sleep(0.3)
        assert simulator.total_connections == drops + 1

    connects = [event.at for event in events(simulator, "connect")]
    gaps = [later - earlier for earlier, later in itertools.pairwise(connects)]
    assert ceilings == [0.05, 0.1, 0.2, 0.4, 0.8, 0.8]
    for gap, delay, ceiling in zip(gaps, delays, ceilings, strict=True):
        # The wait between two attempts is the backoff's draw (plus connecting), never more
        # than its ceiling: full jitter, exponential, capped.
        assert delay <= gap <= delay + SLACK
        assert gap <= ceiling + SLACK
    assert connects[-1] - connects[0] >= sum(delays)
    assert sum(gaps[3:]) > sum(gaps[:3])
    assert await stored(db) == Counter({(WALLET, TOKEN, Decimal(7)): 1})


# --- silent dead connections ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keepalive", "idle", "detected_within"),
    [(0.3, 1.0, 0.3 * 1.5), (30.0, 0.5, 0.5)],
    ids=["keepalive", "idle deadline"],
)
async def test_a_silent_dead_connection_is_detected_dropped_and_rejoined(
    engine: AsyncEngine,
    database_url: URL,
    db: Any,
    simulator: Simulator,
    keepalive: float,
    idle: float,
    detected_within: float,
) -> None:
    pairs = [(WALLET, TOKEN), (WALLET2, SOL)]
    await watch(db, *pairs)
    sampler = SubscriberSampler(simulator)
    settings = make_settings(
        database_url, simulator.url, keepalive_interval=keepalive, idle_timeout=idle
    )
    async with running_daemon(settings):
        await simulator.wait_for(lambda: simulator.joined_rooms() == rooms_of(pairs))
        await wait_until(states_are(db, "joined", 2), what="both pairs joined")

        stalled_at = time.monotonic()
        simulator.stall_connections()  # TCP open; no frame, no ping, no pong from now on
        await simulator.wait_for(lambda: disconnected(simulator, 1), timeout=idle + 2.0)
        detected = events(simulator, "disconnect")[0].at - stalled_at
        await simulator.wait_for(lambda: simulator.joined_rooms() == rooms_of(pairs))
        rejoined = simulator.events[-1].at - stalled_at

        sent = await send_to_each(simulator, pairs, tag=1)
        await wait_until(row_count(db, 2), what="the rows on the new connection")
        await wait_until(states_are(db, "joined", 2), what="both pairs joined again")
    assert await stored(db) == Counter(sent)
    # Closed by the client (the stalled server never closes anything) within the deadline of
    # the mechanism under test, and replaced at once.
    assert detected <= detected_within + SLACK
    assert rejoined - detected <= settings.backoff_initial + SLACK
    assert simulator.total_connections == 2
    assert sampler.most == 1


async def test_server_json_pings_keep_a_quiet_connection_alive_past_the_idle_timeout(
    engine: AsyncEngine, database_url: URL, db: Any
) -> None:
    async with Simulator(api_key=API_KEY, ping_interval=0.1) as simulator:
        simulator.answer_pings = False  # only the JSON pings can show the server is alive
        await watch(db, (WALLET, TOKEN))
        settings = make_settings(
            database_url, simulator.url, keepalive_interval=0.2, idle_timeout=0.4
        )
        async with running_daemon(settings):
            await simulator.wait_for(lambda: room() in simulator.joined_rooms())
            # 1.5 s of pings only: almost four idle timeouts, seven keepalive intervals.
            await simulator.wait_for(lambda: len(events(simulator, "pong")) >= 15, timeout=5.0)
            assert events(simulator, "disconnect") == []
            assert simulator.total_connections == 1
            await simulator.send_balance(WALLET, TOKEN, "3")
            await wait_until(row_count(db, 1), what="the row on the same connection")
    assert await stored(db) == Counter({(WALLET, TOKEN, Decimal(3)): 1})


# --- joins never acknowledged -----------------------------------------------------------------


async def test_an_unacknowledged_join_is_sent_again_with_growing_delays_until_acked(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator
) -> None:
    simulator.ack_joins = False
    await watch(db, (WALLET, TOKEN))
    settings = make_settings(database_url, simulator.url, join_ack_timeout=0.2, backoff_max=0.8)
    async with running_daemon(settings):
        await simulator.wait_for(lambda: len(joins_of(simulator, room())) >= 3, timeout=5.0)
        await wait_until(
            _last_error_matches(db, r"no ack after 0\.\d s \(attempt 3\)"),
            what="the third attempt in the status",
        )
        assert (await status_of(db, (WALLET, TOKEN)))[0] == "joining"

        simulator.ack_joins = True  # the next retry (0.8 s after the third) is acknowledged
        await wait_until(states_are(db, "joined", 1), timeout=3.0, what="the joined state")
        attempts = len(joins_of(simulator, room()))
        await asyncio.sleep(1.0)  # bounded: longer than the longest retry delay
        assert len(joins_of(simulator, room())) == attempts

        await simulator.send_balance(WALLET, TOKEN, "11")
        await wait_until(row_count(db, 1), what="the row")
    sent_at = [event.at for event in joins_of(simulator, room())]
    gaps = [later - earlier for earlier, later in itertools.pairwise(sent_at)]
    for gap, delay in zip(gaps, [0.2, 0.4, 0.8], strict=False):
        assert delay <= gap + 0.01 <= delay + SLACK
    assert attempts == 4
    assert simulator.total_connections == 1  # retried on the same connection
    assert await stored(db) == Counter({(WALLET, TOKEN, Decimal(11)): 1})


def _last_error_matches(db: Any, pattern: str) -> Any:
    async def check() -> bool:
        _, last_error = await status_of(db, (WALLET, TOKEN))
        return last_error is not None and re.fullmatch(pattern, last_error) is not None

    return check


async def test_only_a_room_still_unacknowledged_is_joined_again(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator
) -> None:
    await watch(db, (WALLET, TOKEN))
    settings = make_settings(database_url, simulator.url, join_ack_timeout=0.2, backoff_max=0.4)
    async with running_daemon(settings):
        await wait_until(states_are(db, "joined", 1), what="the first pair joined")
        simulator.ack_joins = False
        await watch(db, (WALLET2, SOL))
        await simulator.wait_for(lambda: len(joins_of(simulator, room(WALLET2, SOL))) >= 3)
        simulator.ack_joins = True
        await wait_until(states_are(db, "joined", 2), what="the second pair joined")
    assert len(joins_of(simulator, room())) == 1
    assert simulator.total_connections == 1


async def test_an_error_frame_about_an_unacknowledged_room_ends_its_retries_and_is_recorded(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator
) -> None:
    simulator.ack_joins = False
    await watch(db, (WALLET, TOKEN))
    settings = make_settings(database_url, simulator.url, join_ack_timeout=0.5)
    async with running_daemon(settings):
        await simulator.wait_for(lambda: room() in simulator.joined_rooms())
        await simulator.send_raw(f'{{"type":"error","room":"{room()}","message":"not allowed"}}')
        await wait_until(states_are(db, "error", 1), what="the error state")
        await asyncio.sleep(1.2)  # bounded: two retry delays
        assert len(joins_of(simulator, room())) == 1
        state, last_error = await status_of(db, (WALLET, TOKEN))
    assert state == "error"
    assert last_error is not None
    assert "not allowed" in last_error
