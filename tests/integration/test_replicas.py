"""Several daemons in this process on one database and one simulated Datastream, each with a key
of its own, so the simulator tells their connections apart: every room held by exactly one, the
shards spread, a clean stop handing everything over in about a second, a newcomer taking its
share gracefully, and no message stored twice or lost while held.

The faults a process suffers (SIGKILL, SIGSTOP, the database restarted under it) are in
tests/system/test_replicas.py."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.devtools.benchkit import bench_pairs
from balancewatch.devtools.simulator import Simulator
from balancewatch.domain import room_for
from balancewatch.ops.status import render
from balancewatch.store.reports import gather
from tests.helpers import RunningDaemon, make_settings, running_daemon, wait_until
from tests.streams import assert_stored_once, numbered_messages

pytestmark = pytest.mark.timeout(120)

PAIRS = bench_pairs(48)
ROOMS = {room_for(*pair) for pair in PAIRS}
# The default: a handover in a few seconds cannot be a takeover after an expiry.
TTL = 15.0


@pytest.fixture
async def stream() -> AsyncIterator[Simulator]:
    """A simulator that takes any key: each replica's key names it."""
    async with Simulator(ping_interval=None) as sim:
        yield sim


async def watch_all(db: Any) -> None:
    await db.executemany("INSERT INTO watchlist (wallet, token) VALUES ($1, $2)", PAIRS)


@contextlib.asynccontextmanager
async def replica(database_url: URL, sim: Simulator, name: str) -> AsyncIterator[RunningDaemon]:
    settings = make_settings(
        database_url, sim.url, api_key=f"key-{name}", replica_id=name, lease_ttl=TTL
    )
    async with running_daemon(settings) as running:
        yield running


def held_once(sim: Simulator, clients: set[str]) -> bool:
    """Every room held, each by exactly one client, and every client holding some."""
    holders = [sim.room_holders(room) for room in ROOMS]
    return all(len(h) == 1 for h in holders) and set().union(*holders) == clients


async def owners(db: Any) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT r.replica_id, count(*) AS shards FROM shard_leases l "
        "JOIN replicas r ON r.instance = l.owner GROUP BY r.replica_id"
    )
    return {row["replica_id"]: row["shards"] for row in rows}


async def test_two_replicas_hold_every_room_exactly_once_and_share_the_shards(
    database_url: URL, db: Any, engine: AsyncEngine, stream: Simulator
) -> None:
    await watch_all(db)
    async with replica(database_url, stream, "a") as a, replica(database_url, stream, "b") as b:
        await wait_until(
            lambda: held_once(stream, {"key-a", "key-b"}), timeout=15, what="rooms shared"
        )
        shares = await owners(db)
        assert sum(shares.values()) == 64
        assert all(16 <= share <= 48 for share in shares.values()), shares
        # Each is ready, about the pairs it holds.
        for running in (a, b):
            readiness = running.daemon.readiness()
            assert readiness.pairs_wanted == len(running.daemon.subscriptions.held) > 0
        assert a.daemon.readiness().pairs_wanted + b.daemon.readiness().pairs_wanted == 48
        # status: both replicas, their shards, and no shard without a live owner.
        await wait_until(lambda: _pairs_reported(engine), timeout=10, what="pairs heartbeated")
        text = render(await gather(engine), None)
        assert "replicas 2 live; every one of the 64 shards held" in text
        assert re.search(rf"\n +a +{shares['a']} shards +\d+ pairs", text)
        assert re.search(rf"\n +b +{shares['b']} shards +\d+ pairs", text)
    text = render(await gather(engine), None)
    assert "replicas 0 live; 64 of 64 shards WITHOUT a live owner" in text
    assert stream.overlaps == []


async def _pairs_reported(engine: AsyncEngine) -> bool:
    report = await gather(engine)
    return sum(replica.pairs for replica in report.replicas) == len(PAIRS)


async def test_a_clean_stop_hands_every_shard_over_in_about_a_second_storing_each_message_once(
    database_url: URL, db: Any, stream: Simulator
) -> None:
    await watch_all(db)
    async with replica(database_url, stream, "a"):
        async with replica(database_url, stream, "b") as b:
            await wait_until(lambda: held_once(stream, {"key-a", "key-b"}), timeout=15)
            async with numbered_messages(stream, PAIRS) as reached:
                await asyncio.sleep(0.3)
                stopped = time.monotonic()
                await b.stop()
                await wait_until(lambda: held_once(stream, {"key-a"}), timeout=5, what="handover")
                handover = time.monotonic() - stopped
                await asyncio.sleep(0.3)
        await assert_stored_once(db, [n for n, count in reached.items() if count == 1])
        assert max(reached.values()) == 1
        assert handover < TTL / 3  # released, not waited out
        assert await owners(db) == {"a": 64}
        # B's periods ended as it stopped, A's began after: the gap is in coverage.
        reasons = await db.fetch("SELECT DISTINCT end_reason FROM coverage WHERE holder LIKE 'b/%'")
        assert {row["end_reason"] for row in reasons} <= {"shutdown", "handover"}
    assert stream.overlaps == []


async def test_a_third_replica_takes_its_share_gracefully(
    database_url: URL, db: Any, stream: Simulator
) -> None:
    await watch_all(db)
    async with replica(database_url, stream, "a"), replica(database_url, stream, "b"):
        await wait_until(lambda: held_once(stream, {"key-a", "key-b"}), timeout=15)
        async with numbered_messages(stream, PAIRS) as reached, replica(database_url, stream, "c"):
            await wait_until(
                lambda: held_once(stream, {"key-a", "key-b", "key-c"}),
                timeout=10,
                what="the third replica's share",
            )
            shares = await owners(db)
            assert set(shares) == {"a", "b", "c"}
            assert sum(shares.values()) == 64
        await assert_stored_once(db, [n for n, count in reached.items() if count == 1])
        assert max(reached.values()) == 1
    assert stream.overlaps == []


async def test_a_whole_wallet_moves_to_its_wallet_room_on_the_replica_that_held_its_tokens(
    database_url: URL, db: Any, stream: Simulator
) -> None:
    await watch_all(db)
    wallets = sorted({wallet for wallet, _ in PAIRS})[:6]
    async with replica(database_url, stream, "a"), replica(database_url, stream, "b"):
        await wait_until(lambda: held_once(stream, {"key-a", "key-b"}), timeout=15)
        holder_before = {
            wallet: stream.room_holders(room_for(*pair))
            for wallet in wallets
            for pair in PAIRS
            if pair[0] == wallet
        }
        await db.executemany("INSERT INTO watchlist (wallet) VALUES ($1)", [(w,) for w in wallets])
        covered = {room_for(*pair) for pair in PAIRS if pair[0] in wallets}

        def switched() -> bool:
            return all(stream.room_subscribers(room) == 0 for room in covered) and all(
                stream.room_holders(room_for(wallet, None)) == holder_before[wallet]
                for wallet in wallets
            )

        await wait_until(switched, timeout=10, what="each wallet room held by its shard's owner")
    assert stream.overlaps == []
