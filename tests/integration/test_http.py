"""The daemon's HTTP endpoints against a real daemon: a real Postgres, a real websocket."""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import Any

import aiohttp
import asyncpg
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from balancewatch.daemon.http import HttpServerError
from balancewatch.daemon.service import Daemon
from balancewatch.devtools.simulator import Simulator
from balancewatch.ops import status
from balancewatch.store.db import asyncpg_dsn
from tests.helpers import (
    API_KEY,
    SOL,
    TOKEN,
    WALLET,
    WALLET2,
    make_settings,
    room,
    running_daemon,
    scrape,
    value,
    wait_until,
    watch,
)
from tests.writing import make_rows, make_writer, open_test_spool


async def url_of(daemon: Daemon, path: str) -> str:
    await wait_until(lambda: daemon.http.port != 0, what="the HTTP server to listen")
    return f"http://127.0.0.1:{daemon.http.port}{path}"


async def get(daemon: Daemon, path: str) -> tuple[int, str]:
    url = await url_of(daemon, path)
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response,
    ):
        return response.status, await response.text()


async def readyz(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    url = await url_of(daemon, "/readyz")
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response,
    ):
        body: dict[str, Any] = await response.json()
        return response.status, body


async def ready_is(daemon: Daemon, status: int, failing: set[str]) -> bool:
    """/readyz answers `status` for `failing`, and the `balancewatch_ready` gauge agrees."""
    got, body = await readyz(daemon)
    if got != status or set(body["failing"]) != failing:
        return False
    _, page = await get(daemon, "/metrics")
    return value(scrape(page), "balancewatch_ready") == (status == 200)


async def test_healthz_answers_while_the_daemon_runs(
    engine: AsyncEngine, database_url: URL, simulator: Simulator
) -> None:
    async with running_daemon(make_settings(database_url, simulator.url)) as running:
        status, body = await get(running.daemon, "/healthz")
        assert status == 200
        assert '"ok"' in body
        port = running.daemon.http.port
    # Closed with the daemon.
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session:
            await session.get(f"http://127.0.0.1:{port}/healthz")


async def test_readyz_follows_the_joins_the_websocket_and_the_database(
    engine: AsyncEngine, database_url: URL, server_url: URL, db: Any
) -> None:
    await watch(db)
    await watch(db, WALLET2, SOL)
    settings = make_settings(database_url, "ws://127.0.0.1:1", join_ack_timeout=0.3)
    async with (
        Simulator(api_key=API_KEY, ping_interval=None, ack_joins=False) as simulator,
        running_daemon(settings.model_copy(update={"datastream_url": simulator.url})) as running,
    ):
        daemon = running.daemon
        # Connected, but the server acknowledges no join: not ready, and the body says why.
        await simulator.wait_for(lambda: len(simulator.joined_rooms()) == 2)
        await wait_until(lambda: ready_is(daemon, 503, {"pairs"}), what="503 for the pairs")
        _, body = await readyz(daemon)
        assert body["pairs"] == {"enabled": 2, "not_joined": 2}
        assert body["websocket"] == "connected"
        assert body["database"] == "ok"

        # The server acknowledges the joins sent again: ready.
        simulator.ack_joins = True
        await wait_until(lambda: ready_is(daemon, 200, set()), what="200 once joined")

        # The websocket drops and cannot come back: not ready.
        simulator.refuse_status = 503
        await simulator.drop_connections()
        await wait_until(lambda: ready_is(daemon, 503, {"websocket", "pairs"}), what="503")
        simulator.refuse_status = None
        await wait_until(lambda: ready_is(daemon, 200, set()), timeout=10, what="200 again")

        # The database refuses connections: not ready, and ready again once it is back.
        name = database_url.database
        admin = await asyncpg.connect(asyncpg_dsn(server_url))
        try:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
            await wait_until(lambda: ready_is(daemon, 503, {"database"}), what="503 for the db")
            _, body = await readyz(daemon)
            assert body["database"] != "ok"
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await wait_until(lambda: ready_is(daemon, 200, set()), timeout=10, what="db back")
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await admin.close()


async def test_readyz_waits_for_the_watchlist_to_be_read(
    engine: AsyncEngine, database_url: URL, simulator: Simulator
) -> None:
    async with running_daemon(make_settings(database_url, simulator.url)) as running:
        daemon = running.daemon
        # An empty watchlist, once read and connected, is ready: nothing to join.
        await wait_until(lambda: ready_is(daemon, 200, set()), what="200 with nothing to join")
        assert daemon.sync.reconciles > 0


async def test_metrics_count_what_the_daemon_did(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator
) -> None:
    await watch(db)
    await watch(db, WALLET2, SOL)
    await db.execute(
        "INSERT INTO watchlist (wallet, token, enabled) VALUES ($1, $2, false)", WALLET2, TOKEN
    )
    async with running_daemon(make_settings(database_url, simulator.url)) as running:
        daemon = running.daemon
        await simulator.wait_for(lambda: simulator.joined_rooms() == {room(), room(WALLET2, SOL)})
        await wait_until(lambda: ready_is(daemon, 200, set()), what="ready")
        for n in range(7):
            await simulator.send_balance(WALLET, TOKEN, f"{n}.5")
        for n in range(3):
            await simulator.send_balance(WALLET2, SOL, f"{n}")
        await simulator.send_raw("not json")
        await simulator.send_raw("[1, 2]")
        await simulator.send_raw("{also not json")
        await wait_until(
            lambda: _count(db, "SELECT count(*) FROM balance_history", 10), what="10 rows"
        )
        await wait_until(
            lambda: _count(db, "SELECT count(*) FROM rejected_messages", 3), what="3 rejects"
        )
        await wait_until(
            lambda: daemon.partitions.default_rows is not None, what="the partitions' upkeep"
        )
        status, text = await get(daemon, "/metrics")
    assert status == 200
    samples = scrape(text)
    assert value(samples, "balancewatch_messages_received_total") == 10
    assert value(samples, "balancewatch_rows_written_total") == 10
    stored = {
        row["reason"]: row["count"]
        for row in await db.fetch("SELECT reason, count(*) FROM rejected_messages GROUP BY 1")
    }
    assert stored == {"not_json": 2, "not_object": 1}
    for reason, count in stored.items():
        assert value(samples, "balancewatch_frames_rejected_total", reason=reason) == count
    assert value(samples, "balancewatch_pairs", state="joined") == 2
    assert value(samples, "balancewatch_pairs", state="joining") == 0
    assert value(samples, "balancewatch_pairs", state="error") == 0
    assert value(samples, "balancewatch_websocket_connected") == 1
    assert value(samples, "balancewatch_websocket_connections_total") == 1
    assert value(samples, "balancewatch_websocket_reconnects_total") == 0
    assert value(samples, "balancewatch_pending_rows", where="memory") == 0
    assert value(samples, "balancewatch_pending_rows", where="spool") == 0
    assert value(samples, "balancewatch_spool_bytes") == 0
    assert value(samples, "balancewatch_reading_paused") == 0
    assert value(samples, "balancewatch_database_up") == 1
    assert value(samples, "balancewatch_default_partition_rows") == 0
    # Every stored row went through a batch that was observed once.
    assert value(samples, "balancewatch_write_batch_rows_sum") == 10
    batches = value(samples, "balancewatch_write_batch_rows_count")
    assert 1 <= batches <= 10
    assert value(samples, "balancewatch_write_seconds_count") >= batches
    assert 0 < value(samples, "balancewatch_write_seconds_sum") < 10
    assert 0 <= value(samples, "balancewatch_newest_row_age_seconds") < 30


async def test_metrics_count_reconnects_and_pairs_in_error(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator
) -> None:
    await watch(db)
    await watch(db, WALLET2, SOL)
    async with running_daemon(make_settings(database_url, simulator.url)) as running:
        daemon = running.daemon
        await wait_until(lambda: ready_is(daemon, 200, set()), what="ready")
        await simulator.drop_connections()
        await simulator.wait_for(lambda: simulator.total_connections == 2)
        await wait_until(lambda: ready_is(daemon, 200, set()), what="ready again")
        # The server answers a room with something else than `joined`: an error state, which
        # is settled (still ready), and counted.
        await simulator.send_raw(f'{{"type":"error","room":"{room(WALLET2, SOL)}"}}')
        await wait_until(
            lambda: daemon.pair_states.counts["pair", "error"] == 1, what="error state"
        )
        await wait_until(lambda: ready_is(daemon, 200, set()), what="ready with an error pair")
        _, text = await get(daemon, "/metrics")
    samples = scrape(text)
    assert value(samples, "balancewatch_websocket_connections_total") == 2
    assert value(samples, "balancewatch_websocket_reconnects_total") == 1
    assert value(samples, "balancewatch_pairs", state="error") == 1
    assert value(samples, "balancewatch_pairs", state="joined") == 1
    assert value(samples, "balancewatch_frames_rejected_total", reason="unknown_type") == 1


async def test_metrics_count_a_whole_wallet_apart_from_the_pair_it_covers(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator
) -> None:
    await watch(db)
    await db.execute("INSERT INTO watchlist (wallet) VALUES ($1)", WALLET)  # all tokens
    async with running_daemon(make_settings(database_url, simulator.url)) as running:
        daemon = running.daemon
        await simulator.wait_for(lambda: simulator.joined_rooms() == {f"wallet:{WALLET}:balance"})
        await wait_until(lambda: ready_is(daemon, 200, set()), what="ready")
        _, text = await get(daemon, "/metrics")
    samples = scrape(text)
    assert value(samples, "balancewatch_wallets", state="joined") == 1
    assert value(samples, "balancewatch_pairs", state="covered") == 1
    assert value(samples, "balancewatch_pairs", state="joined") == 0


async def test_two_daemons_keep_their_metrics_apart(
    engine: AsyncEngine, database_url: URL, simulator: Simulator
) -> None:
    settings = make_settings(database_url, simulator.url)
    other = make_settings(database_url, simulator.url)
    async with Daemon.open(settings) as first, Daemon.open(other) as second:
        first.ingest.messages = 5
        assert first.registry is not second.registry
        assert first.registry.get_sample_value("balancewatch_messages_received_total") == 5
        assert second.registry.get_sample_value("balancewatch_messages_received_total") == 0


async def test_an_address_in_use_stops_the_daemon_before_it_reads(
    engine: AsyncEngine, database_url: URL, simulator: Simulator
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = make_settings(database_url, simulator.url, http_port=port)
        async with Daemon.open(settings) as daemon:
            with pytest.raises(HttpServerError, match=f"cannot listen on 127.0.0.1:{port}"):
                await daemon.run(asyncio.Event())
    assert simulator.total_connections == 0


async def _count(db: Any, sql: str, expected: int) -> bool:
    return bool(await db.fetchval(sql) == expected)


def test_healthcheck_fails_when_nothing_listens() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    assert status.healthcheck(argparse.Namespace(url=f"http://127.0.0.1:{port}")) == 1


@pytest.mark.usefixtures("writers_closed")
async def test_replaying_a_spool_logs_its_progress(engine: AsyncEngine, db: Any) -> None:
    spool = open_test_spool()
    for line in make_rows(500):
        spool.append(line)
    ticks = iter(range(1000))
    writer = make_writer(engine, batch_size=100, spool=spool, clock=lambda: 0.6 * next(ticks))
    with capture_logs() as logs:
        while writer.rows_written < 500:
            assert await writer.flush()
    await writer.close()
    assert await db.fetchval("SELECT count(*) FROM balance_history") == 500
    progress = [line for line in logs if line["event"] == "writer.spool_replay_progress"]
    assert progress
    replayed = [line["rows_replayed"] for line in progress]
    remaining = [line["remaining_bytes"] for line in progress]
    assert replayed == sorted(set(replayed))
    assert replayed[-1] < 500
    assert remaining == sorted(set(remaining), reverse=True)
    assert remaining[0] < spool_bytes_of(500)
    (done,) = [line for line in logs if line["event"] == "writer.spool_replay_done"]
    assert done["rows_replayed"] == 500


def spool_bytes_of(rows: int) -> int:
    return sum(map(len, make_rows(rows)))
