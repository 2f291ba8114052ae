"""Replicas as a user runs them: `balancewatch run` processes on one database and one simulated
Datastream, each with a key of its own (the simulator tells their connections apart), faulted
for real: SIGKILL, SIGSTOP past the lease, the database stopped under all of them."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import URL

from balancewatch.devtools.benchkit import bench_pairs
from balancewatch.devtools.localpg import LocalPostgres
from balancewatch.devtools.simulator import Simulator
from balancewatch.domain import room_for
from balancewatch.store.db import asyncpg_dsn
from tests.helpers import scratch_dir, wait_until
from tests.processes import DaemonProcess, StartDaemon, environment
from tests.streams import assert_stored_once, numbered_messages, stream_amounts

pytestmark = pytest.mark.timeout(240)

PAIRS = bench_pairs(40)
ROOMS = {room_for(*pair) for pair in PAIRS}
TTL = 3.0  # renewed every second; trusted for two


@pytest.fixture
async def stream() -> AsyncIterator[Simulator]:
    async with Simulator(ping_interval=None) as sim:
        yield sim


def replica_env(
    url: URL, sim: Simulator, name: str, ttl: float = TTL, **settings: str
) -> dict[str, str]:
    return environment(
        url,
        datastream_url=sim.url,
        api_key=f"key-{name}",
        replica_id=name,
        lease_ttl=str(ttl),
        rpc_url=sim.rpc_url,
        flush_interval="0.05",
        connect_timeout="1",
        backoff_max="0.5",
        **settings,
    )


async def start(
    start_daemon: StartDaemon, url: URL, sim: Simulator, name: str, ttl: float = TTL
) -> DaemonProcess:
    return await start_daemon(replica_env(url, sim, name, ttl))


def holders(sim: Simulator) -> list[set[str]]:
    return [sim.room_holders(room) for room in ROOMS]


def held_by(sim: Simulator, *clients: str) -> bool:
    """Every room held by exactly one client, and those are exactly `clients`."""
    found = holders(sim)
    return all(len(h) == 1 for h in found) and set().union(*found) == set(clients)


async def watch_all(db: Any) -> None:
    await db.executemany("INSERT INTO watchlist (wallet, token) VALUES ($1, $2)", PAIRS)


async def two_replicas(
    start_daemon: StartDaemon, url: URL, db: Any, stream: Simulator, ttl: float = TTL
) -> tuple[DaemonProcess, DaemonProcess]:
    """Replicas a and b on the whole watchlist, once they share its rooms."""
    await watch_all(db)
    a = await start(start_daemon, url, stream, "a", ttl)
    b = await start(start_daemon, url, stream, "b", ttl)
    await wait_until(lambda: held_by(stream, "key-a", "key-b"), timeout=30, what="rooms shared")
    return a, b


async def test_sigkill_of_one_replica_and_the_other_holds_every_room_within_ttl_and_renew(
    start_daemon: StartDaemon, database_url: URL, db: Any, stream: Simulator
) -> None:
    a, b = await two_replicas(start_daemon, database_url, db, stream)
    async with numbered_messages(stream, PAIRS, per_second=200) as reached:
        await asyncio.sleep(0.5)
        killed = time.monotonic()
        b.process.kill()
        await b.process.wait()
        await wait_until(lambda: held_by(stream, "key-a"), timeout=3 * TTL, what="failover")
        failover = time.monotonic() - killed
        await asyncio.sleep(0.5)
    assert failover <= TTL + TTL / 3 + 2.0  # expiry, the next round, and the joins
    assert max(reached.values()) == 1
    stored = await stream_amounts(db)
    assert len(stored) == len(set(stored)), "a message stored twice"
    # The gap is recorded: B's pairs have a period of A's that starts after the kill, and A
    # took a snapshot of each as it started.
    b_pairs = await db.fetch("SELECT DISTINCT wallet, token FROM coverage WHERE holder LIKE 'b/%'")
    assert b_pairs

    async def snapshotted() -> bool:
        count = await db.fetchval(
            "SELECT count(DISTINCT (h.wallet, h.token)) FROM balance_history h "
            "JOIN coverage c ON (c.wallet, c.token) = (h.wallet, h.token) "
            "WHERE c.holder LIKE 'b/%' AND h.source = 'snapshot' AND h.received_at > ("
            "  SELECT max(c2.started_at) FROM coverage c2 WHERE c2.holder LIKE 'b/%')"
        )
        return bool(count == len(b_pairs))

    await wait_until(snapshotted, timeout=15, what="a snapshot of every pair taken over")
    assert await a.stop() == 0
    assert stream.overlaps == []


async def test_sigterm_of_one_replica_hands_its_rooms_over_before_a_lease_could_expire(
    start_daemon: StartDaemon, database_url: URL, db: Any, stream: Simulator
) -> None:
    ttl = 15.0  # the default: a takeover after an expiry would take this long
    a, b = await two_replicas(start_daemon, database_url, db, stream, ttl)
    async with numbered_messages(stream, PAIRS, per_second=200) as reached:
        await asyncio.sleep(0.5)
        signalled = time.monotonic()
        assert await b.stop(signal.SIGTERM) == 0
        await wait_until(lambda: held_by(stream, "key-a"), timeout=ttl, what="the handover")
        handover = time.monotonic() - signalled
        await asyncio.sleep(0.5)
    assert handover < ttl / 3, "released by the stop, not waited out"
    assert max(reached.values()) == 1
    await assert_stored_once(db, [n for n, count in reached.items() if count == 1])
    # B's periods ended as it stopped (some earlier by the first balancing): none left open.
    ended = await db.fetch("SELECT end_reason FROM coverage WHERE holder LIKE 'b/%'")
    reasons = [row["end_reason"] for row in ended]
    assert "shutdown" in reasons
    assert set(reasons) <= {"shutdown", "handover"}
    assert await a.stop() == 0
    assert stream.overlaps == []


async def test_a_dead_replicas_spool_is_stored_once_by_the_next_process_on_it(
    start_daemon: StartDaemon, database_url: URL, db: Any, stream: Simulator
) -> None:
    await watch_all(db)
    a = await start(start_daemon, database_url, stream, "a")
    spool = str(scratch_dir("spool"))
    b_env = replica_env(database_url, stream, "b", spool_dir=spool, spool_mode="durable")
    b = await start_daemon(b_env)
    await wait_until(lambda: held_by(stream, "key-a", "key-b"), timeout=30, what="rooms shared")
    # Rows that cannot be stored before the kill: the table is locked against every writer.
    locker = await asyncpg.connect(asyncpg_dsn(database_url))
    await locker.execute("BEGIN; LOCK TABLE balance_history IN EXCLUSIVE MODE")
    async with numbered_messages(stream, PAIRS, per_second=200) as reached:
        await asyncio.sleep(1.0)
    b_rooms = {room for room in ROOMS if stream.room_holders(room) == {"key-b"}}
    # A pong from both connections proves every message before the ping was read.
    pongs = sum(e.kind == "pong" for e in stream.events)
    await stream.ping()
    await stream.wait_for(
        lambda: sum(e.kind == "pong" for e in stream.events) >= pongs + 2, timeout=10
    )
    b.process.kill()
    await b.process.wait()
    # a takes b's shards (the leases are not locked), then the table is free again.
    await wait_until(lambda: held_by(stream, "key-a"), timeout=4 * TTL, what="the takeover")
    await locker.execute("ROLLBACK")
    await locker.close()
    # The next process on b's spool (another replica id) replays it: b's rows were received
    # while b held its leases, so the fencing lets them through, each once.
    successor = await start_daemon(
        replica_env(database_url, stream, "b2", spool_dir=spool, spool_mode="durable")
    )
    delivered = [n for n, count in reached.items() if count == 1]
    assert any(room_for(*PAIRS[(n - 1) % len(PAIRS)]) in b_rooms for n in delivered), (
        "b must have received some of them"
    )
    await assert_stored_once(db, delivered, timeout=20)
    (replayed,) = successor.events("writer.spool_replayed")
    assert replayed["rows_replayed"] > 0
    assert await successor.stop() == 0
    assert await a.stop() == 0


async def test_sigstop_past_the_lease_then_sigcont_and_it_stores_nothing_received_after(
    start_daemon: StartDaemon, database_url: URL, db: Any, stream: Simulator
) -> None:
    a, b = await two_replicas(start_daemon, database_url, db, stream)
    async with numbered_messages(stream, PAIRS, per_second=200) as reached:
        await asyncio.sleep(0.5)
        # Every message sent so far is read before the freeze: the pongs to a ping sent after
        # them prove it. (One still in B's socket buffer at SIGSTOP is read after its lease
        # ended, and rightly refused: on a busy machine that made `before` below fail.)
        frozen_at = len(reached)
        pongs = sum(event.kind == "pong" for event in stream.events)
        await stream.ping()
        await stream.wait_for(
            lambda: sum(event.kind == "pong" for event in stream.events) >= pongs + 2, timeout=10
        )
        os.kill(b.process.pid, signal.SIGSTOP)
        frozen = time.monotonic()
        # A takes B's shards once they expire; B's connection still holds its rooms upstream
        # (the one allowed overlap: a process frozen too hard to leave).
        await wait_until(
            lambda: all("key-a" in h for h in holders(stream)), timeout=4 * TTL, what="takeover"
        )
        await asyncio.sleep(1.0)
        os.kill(b.process.pid, signal.SIGCONT)
        thawed = time.monotonic()
        # Awake, B finds its leases gone and leaves its rooms (later it may get its share
        # back, by a handover).
        await wait_until(lambda: held_by_some(stream), timeout=4 * TTL, what="B leaving")
        await asyncio.sleep(0.5)
    assert stream.overlaps, "the overlap of a frozen replica must really have happened"
    assert all(frozen <= o.at <= thawed for o in stream.overlaps), "an overlap while awake"
    # The messages that reached both (B frozen, A holding) are stored once, by A: B read them
    # after its lease had ended, and refused them.
    both = [n for n, count in reached.items() if count > 1]
    assert both, "the overlap of a frozen replica must really have happened"
    assert await _metric(b, "balancewatch_messages_fenced_total", layer="ingest") > 0
    assert await b.stop() == 0
    assert await a.stop() == 0
    stored = await stream_amounts(db)
    assert len(stored) == len(set(stored)), "a message stored twice"
    assert set(both) <= set(stored)
    # Before the freeze every message reached one replica, and was stored.
    before = [n for n, count in reached.items() if n <= frozen_at and count == 1]
    await assert_stored_once(db, sorted(set(stored) | set(before)))
    # B stored no row under a tenure after it ended.
    late = await db.fetchval(
        "SELECT count(*) FROM balance_history h JOIN shard_tenures t USING (epoch) "
        "WHERE t.ended_at IS NOT NULL AND h.received_at > t.ended_at"
    )
    assert late == 0


async def _metric(daemon: DaemonProcess, name: str, **labels: str) -> float:
    """One sample of the daemon's /metrics, on the port it logged."""
    (listening,) = daemon.events("http.listening")
    url = f"http://127.0.0.1:{listening['port']}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        page = await response.text()
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no {name}{labels} in {url}")


async def test_the_database_restarted_under_three_replicas_leaves_no_shard_with_two_owners(
    start_daemon: StartDaemon, stoppable_url: URL, cluster: LocalPostgres, stream: Simulator
) -> None:
    db = await asyncpg.connect(asyncpg_dsn(stoppable_url))
    await watch_all(db)
    await db.close()
    replicas = [await start(start_daemon, stoppable_url, stream, name) for name in "abc"]
    await wait_until(
        lambda: held_by(stream, "key-a", "key-b", "key-c"), timeout=30, what="rooms shared"
    )
    cluster.stop()
    # Past the trusted time, every replica lets go of its rooms: none can renew.
    await wait_until(lambda: not stream.joined_rooms(), timeout=4 * TTL, what="rooms left")
    cluster.start()
    await wait_until(lambda: held_by_some(stream), timeout=30, what="rooms held again")
    db = await asyncpg.connect(asyncpg_dsn(stoppable_url))
    owners = await db.fetch("SELECT shard, owner FROM shard_leases WHERE expires_at > now()")
    await db.close()
    assert len(owners) == 64  # one row per shard: one owner each, by construction
    for replica in replicas:
        assert await replica.stop() == 0
    assert stream.overlaps == []


def held_by_some(sim: Simulator) -> bool:
    return all(len(h) == 1 for h in holders(sim))
