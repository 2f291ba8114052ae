"""Nothing received is lost while the database fails: outages, killed connections, SIGTERM in
a burst, SIGKILL. Each test causes the fault for real, with the daemon as a subprocess, on a
Postgres cluster of its own that it stops and starts, and counts rows."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from sqlalchemy.engine import URL

from balancewatch.devtools.localpg import LocalPostgres
from balancewatch.devtools.simulator import Simulator
from tests.helpers import (
    API_KEY,
    TOKEN,
    WALLET,
    connect,
    count_is,
    room,
    scalar,
    scratch_dir,
    stored_amounts,
    wait_until,
)
from tests.processes import DaemonProcess, environment, started

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def url(stoppable_url: URL) -> URL:
    return stoppable_url


@dataclass
class Sender:
    """Sends numbered balance messages (amount = sequence number) at a steady rate."""

    simulator: Simulator
    rate: float
    sent: int = 0
    undelivered: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        tick = 0.05
        per_tick = max(1, round(self.rate * tick))
        next_at = time.monotonic()
        while not self._stop.is_set():
            for _ in range(per_tick):
                if await self.simulator.send_balance(WALLET, TOKEN, str(self.sent)) != 1:
                    self.undelivered += 1
                self.sent += 1
            next_at += tick
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()


@contextlib.asynccontextmanager
async def sending(simulator: Simulator, rate: float) -> AsyncIterator[Sender]:
    sender = Sender(simulator, rate)
    task = asyncio.create_task(sender.run())
    try:
        yield sender
    finally:
        sender.stop()
        await task


@contextlib.asynccontextmanager
async def daemon_process(
    url: URL, simulator: Simulator, **settings: str
) -> AsyncIterator[DaemonProcess]:
    env = environment(
        url,
        datastream_url=simulator.url,
        api_key=API_KEY,
        flush_interval="0.1",
        backoff_initial="0.1",
        backoff_max="1.0",
        reconcile_interval="2",
        connect_timeout="2",
        **settings,
    )
    async with started(env, deadline=10.0) as daemon:
        yield daemon


async def watch_one(url: URL, simulator: Simulator) -> None:
    connection = await connect(url)
    await connection.execute("INSERT INTO watchlist (wallet, token) VALUES ($1, $2)", WALLET, TOKEN)
    await connection.close()
    await simulator.wait_for(lambda: room() in simulator.joined_rooms(), timeout=20)


async def outage(cluster: LocalPostgres, seconds: float) -> None:
    await asyncio.to_thread(cluster.stop, "fast")
    await asyncio.sleep(seconds)
    await asyncio.to_thread(cluster.start)


async def test_database_outages_of_10_and_60_seconds_lose_nothing_and_keep_the_socket(
    cluster: LocalPostgres, url: URL, simulator: Simulator
) -> None:
    spool_dir = scratch_dir("spool")
    # A small memory bound, so the 60 s outage (12,000 rows) spills to the spool.
    async with daemon_process(
        url, simulator, max_buffered_rows="2000", spool_dir=str(spool_dir)
    ) as daemon:
        await watch_one(url, simulator)
        async with sending(simulator, rate=200) as sender:
            await asyncio.sleep(2)
            await outage(cluster, 10)
            await asyncio.sleep(5)
            await outage(cluster, 60)
            await asyncio.sleep(3)
        sent = sender.sent
        await wait_until(lambda: count_is(url, sent), timeout=180, what=f"all {sent} rows")
        # The LISTEN connection and the sync came back by themselves.
        connection = await connect(url)
        await connection.execute("UPDATE watchlist SET enabled = false")
        await connection.close()
        await simulator.wait_for(lambda: room() not in simulator.joined_rooms(), timeout=10)
        peak_kib = daemon.peak_rss_kib()
        assert await daemon.stop() == 0
    assert sender.undelivered == 0
    assert simulator.total_connections == 1, "the websocket must stay up through the outages"
    assert await stored_amounts(url) == list(range(sent))
    assert daemon.events("writer.flush_failed"), "the outage must really have been felt"
    print(
        f"\noutages 10 s + 60 s at 200 msg/s: sent {sent}, stored {sent}, peak RSS {peak_kib} KiB"
    )


async def test_killed_database_connections_lose_nothing(url: URL, simulator: Simulator) -> None:
    async with daemon_process(url, simulator, spool_dir=str(scratch_dir("spool"))) as daemon:
        await watch_one(url, simulator)
        async with sending(simulator, rate=200) as sender:
            for _ in range(5):
                await asyncio.sleep(1)
                # Wait for the daemon to have reconnected since the last kill, then kill again.
                await wait_until(lambda: _daemon_connections(url), timeout=20, what="a reconnect")
                killed = await scalar(
                    url,
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name LIKE 'balancewatch%' AND datname = current_database()",
                )
                assert killed >= 1
        sent = sender.sent
        await wait_until(lambda: count_is(url, sent), timeout=30, what=f"all {sent} rows")
        connection = await connect(url)
        await connection.execute("DELETE FROM watchlist")
        await connection.close()
        await simulator.wait_for(lambda: room() not in simulator.joined_rooms(), timeout=10)
        assert await daemon.stop() == 0
    assert await stored_amounts(url) == list(range(sent))
    assert simulator.total_connections == 1


async def _daemon_connections(url: URL) -> bool:
    found = await scalar(
        url,
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE application_name LIKE 'balancewatch%' AND datname = current_database()",
    )
    return bool(found)


async def test_sigterm_in_the_middle_of_a_burst_stores_everything_read(
    url: URL, simulator: Simulator
) -> None:
    async with daemon_process(url, simulator, spool_dir=str(scratch_dir("spool"))) as daemon:
        await watch_one(url, simulator)
        async with sending(simulator, rate=5000):
            await asyncio.sleep(1.5)
            started = time.monotonic()
            code = await daemon.stop()
            elapsed = time.monotonic() - started
    assert code == 0
    assert elapsed < 10
    read = daemon.events("daemon.stopped")[0]["messages"]
    stored = await stored_amounts(url)
    assert stored == list(range(read)), "every message read is stored, in order, once"
    assert read > 1000


@pytest.mark.parametrize("mode", ["overflow", "durable"])
async def test_sigkill_loses_at_most_the_unflushed_batch_and_nothing_in_durable_mode(
    url: URL, simulator: Simulator, mode: str
) -> None:
    spool_dir = str(scratch_dir("spool"))
    flushed, unflushed = 300, 200
    async with daemon_process(url, simulator, spool_dir=spool_dir, spool_mode=mode) as daemon:
        await watch_one(url, simulator)
        for i in range(flushed):
            await simulator.send_balance(WALLET, TOKEN, str(i))
        await wait_until(lambda: count_is(url, flushed), timeout=10, what="the first rows")
        # Then a batch that cannot flush before the kill: the database is locked against it.
        locker = await connect(url)
        await locker.execute("BEGIN; LOCK TABLE balance_history IN EXCLUSIVE MODE")
        for i in range(flushed, flushed + unflushed):
            await simulator.send_balance(WALLET, TOKEN, str(i))
        await simulator.ping()  # its pong proves every message before it was read
        await simulator.wait_for(lambda: any(e.kind == "pong" for e in simulator.events))
        await daemon.stop(signal.SIGKILL)
        await locker.close()

    async with daemon_process(url, simulator, spool_dir=spool_dir, spool_mode=mode) as restarted:
        expected = flushed + unflushed if mode == "durable" else flushed
        await simulator.wait_for(lambda: simulator.live_connections == 1, timeout=20)
        await wait_until(lambda: count_is(url, expected), timeout=20, what=f"{expected} rows")
        await asyncio.sleep(0.5)  # nothing more arrives: no duplicates from a replay
        assert await restarted.stop() == 0
    assert await stored_amounts(url) == list(range(expected))


async def test_sigterm_during_an_outage_with_rows_spilled_keeps_id_in_arrival_order(
    cluster: LocalPostgres, url: URL, simulator: Simulator
) -> None:
    """Memory holds the oldest rows and the spool the newer ones: rows still in memory at
    exit must be stored before the spool, or `id` is no longer in arrival order."""
    spool_dir = str(scratch_dir("spool"))
    bound = 150
    settings = {"max_buffered_rows": str(bound), "spool_dir": spool_dir, "shutdown_timeout": "3"}
    async with daemon_process(url, simulator, **settings) as daemon:
        await watch_one(url, simulator)
        async with sending(simulator, rate=200) as sender:
            await asyncio.sleep(1)
            await asyncio.to_thread(cluster.stop, "fast")
            before_outage = sender.sent
            await asyncio.sleep(3)  # about 600 rows: memory fills to its bound, the rest spills
        sent = sender.sent
        assert sent - before_outage > 2 * bound
        pongs = sum(event.kind == "pong" for event in simulator.events)
        await simulator.ping()  # its pong proves every message before it was read
        await simulator.wait_for(
            lambda: sum(event.kind == "pong" for event in simulator.events) > pongs, timeout=10
        )
        assert await daemon.stop() == 0
    assert sender.undelivered == 0
    assert daemon.events("daemon.stopped")[0]["messages"] == sent
    assert daemon.events("writer.spooled_on_exit"), "rows must still be in memory at exit"

    await asyncio.to_thread(cluster.start)
    async with daemon_process(url, simulator, **settings) as restarted:
        await wait_until(lambda: count_is(url, sent), timeout=60, what=f"all {sent} rows")
        await asyncio.sleep(0.5)  # nothing more arrives: no duplicates from a replay
        assert await restarted.stop() == 0
    connection = await connect(url)
    try:
        rows = await connection.fetch("SELECT amount, received_at FROM balance_history ORDER BY id")
    finally:
        await connection.close()
    amounts = [int(row["amount"]) for row in rows]
    assert sorted(amounts) == list(range(sent)), "none missing, none twice"
    assert amounts == list(range(sent)), "id follows arrival order"
    times = [row["received_at"] for row in rows]
    assert times == sorted(times), "received_at does not go back as id grows"
