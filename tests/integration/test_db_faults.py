"""Nothing received is lost while the database is slow or the spool is full: the daemon in
process, against the suite's Postgres, and rows counted."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.engine import URL

from balancewatch.devtools.simulator import Simulator
from balancewatch.store.db import create_engine
from tests.helpers import (
    TOKEN,
    WALLET,
    connect,
    count_is,
    make_settings,
    room,
    running_daemon,
    stored_amounts,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def url(database_url: URL) -> URL:
    """A migrated database of the suite's server: these faults are made in the database (a slow
    trigger, a lock), never by stopping the server, so no cluster of their own is needed."""
    return database_url


async def test_a_slow_database_fills_memory_to_its_bound_then_the_spool_and_drops_nothing(
    url: URL, simulator: Simulator
) -> None:
    connection = await connect(url)
    await connection.execute("INSERT INTO watchlist (wallet, token) VALUES ($1, $2)", WALLET, TOKEN)
    await connection.execute(
        """
        CREATE FUNCTION slow_down() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$;
        CREATE TRIGGER slow_writes AFTER INSERT ON balance_rows
        FOR EACH STATEMENT EXECUTE FUNCTION slow_down();
        """
    )
    bound = 500
    settings = make_settings(url, simulator.url, max_buffered_rows=bound, batch_size=200)
    engine = create_engine(url)
    peak_memory = 0
    async with running_daemon(settings) as running:
        await simulator.wait_for(lambda: room() in simulator.joined_rooms())
        for i in range(5000):
            await simulator.send_balance(WALLET, TOKEN, str(i))
            if i % 50 == 0:
                await asyncio.sleep(0)
                peak_memory = max(peak_memory, len(running.daemon.writer._buffer.memory))
        await wait_until(lambda: running.daemon.ingest.messages == 5000, timeout=20)
        assert running.daemon.writer._buffer.spilled
        await connection.execute("DROP TRIGGER slow_writes ON balance_rows")
        await wait_until(
            lambda: count_is(url, 5000), timeout=60, what="all rows after the slowdown"
        )
    await engine.dispose()
    await connection.close()
    assert peak_memory <= bound
    assert await stored_amounts(url) == list(range(5000))


async def test_a_full_spool_pauses_reading_and_loses_nothing_nor_the_connection(
    url: URL, simulator: Simulator
) -> None:
    connection = await connect(url)
    await connection.execute("INSERT INTO watchlist (wallet, token) VALUES ($1, $2)", WALLET, TOKEN)
    settings = make_settings(
        url,
        simulator.url,
        max_buffered_rows=100,
        spool_max_bytes=1024 * 1024,
        keepalive_interval=60,
        idle_timeout=0.5,  # reading is paused for longer: that must not count as silence
    )
    total = 12_000  # about 1.4 MB of spool: more than it may hold
    engine = create_engine(url)
    async with running_daemon(settings) as running:
        await simulator.wait_for(lambda: room() in simulator.joined_rooms())
        await connection.execute("BEGIN; LOCK TABLE balance_history IN EXCLUSIVE MODE")

        async def send_all() -> None:
            for i in range(total):
                await simulator.send_balance(WALLET, TOKEN, str(i))

        sender = asyncio.create_task(send_all())
        await wait_until(
            lambda: not running.daemon.writer.may_read.is_set(), timeout=30, what="a full spool"
        )
        paused_at = running.daemon.ingest.messages
        await asyncio.sleep(1.0)
        assert running.daemon.ingest.messages == paused_at < total
        await connection.execute("COMMIT")
        await sender
        await wait_until(lambda: count_is(url, total), timeout=60, what="every row")
    await engine.dispose()
    await connection.close()
    assert await stored_amounts(url) == list(range(total))
    assert simulator.total_connections == 1
