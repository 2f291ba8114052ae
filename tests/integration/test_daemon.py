"""The daemon end to end, in-process: a real Postgres, a real websocket on loopback."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.devtools.simulator import Simulator
from tests.helpers import (
    SOL,
    TOKEN,
    WALLET,
    WALLET2,
    make_settings,
    room,
    running_daemon,
    wait_until,
    watch,
)


async def history(db: Any) -> list[tuple[str, str, Decimal]]:
    rows = await db.fetch("SELECT wallet, token, amount FROM balance_history ORDER BY id")
    return [(row["wallet"], row["token"], row["amount"]) for row in rows]


async def status_of(db: Any, wallet: str = WALLET, token: str = TOKEN) -> str | None:
    state: str | None = await db.fetchval(
        "SELECT state FROM subscription_status WHERE wallet = $1 AND token = $2", wallet, token
    )
    return state


def kinds(sim: Simulator, kind: str, room_name: str) -> int:
    return sum(1 for event in sim.events if event.kind == kind and event.room == room_name)


async def test_enabled_watchlist_rows_are_joined_at_start_and_acknowledged(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator
) -> None:
    await watch(db)
    await watch(db, WALLET2, SOL)
    await db.execute(
        "INSERT INTO watchlist (wallet, token, enabled) VALUES ($1, $2, false)", WALLET2, TOKEN
    )
    async with running_daemon(make_settings(database_url, simulator.url)):
        await simulator.wait_for(lambda: simulator.joined_rooms() == {room(), room(WALLET2, SOL)})
        await wait_until(lambda: status_of(db), what="status row")
        await wait_until(lambda: _all_joined(db, 2), what="both pairs to reach the joined state")
    assert kinds(simulator, "join", room(WALLET2, TOKEN)) == 0


async def _all_joined(db: Any, count: int) -> bool:
    joined = await db.fetchval("SELECT count(*) FROM subscription_status WHERE state = 'joined'")
    return bool(joined == count)


async def test_every_balance_message_becomes_one_row_with_the_amount_exactly_as_sent(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator
) -> None:
    await watch(db)
    amounts = [
        "76989.158861",
        "1e-7",
        "2e+21",
        "1.50",
        "0",
        "1.50",
        "123456789012345678901.123456789",
    ]
    async with running_daemon(make_settings(database_url, simulator.url)):
        await simulator.wait_for(lambda: room() in simulator.joined_rooms())
        for amount in amounts:
            assert await simulator.send_balance(WALLET, TOKEN, amount) == 1
        await wait_until(lambda: _count(db, len(amounts)), what="all rows")
    stored = await history(db)
    assert [row[2] for row in stored] == [Decimal(amount) for amount in amounts]
    texts = await db.fetch("SELECT amount::text AS t FROM balance_history ORDER BY id")
    assert texts[0]["t"] == "76989.158861"
    assert texts[1]["t"] == "0.0000001"
    assert texts[2]["t"] == "2000000000000000000000"
    assert texts[3]["t"] == "1.50"


async def _count(db: Any, expected: int) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM balance_history") == expected)


async def test_received_at_is_the_utc_time_the_frame_arrived(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator
) -> None:
    await watch(db)
    async with running_daemon(make_settings(database_url, simulator.url)):
        await simulator.wait_for(lambda: room() in simulator.joined_rooms())
        before = await db.fetchval("SELECT now()")
        await simulator.send_balance(WALLET, TOKEN, "5")
        await wait_until(lambda: _count(db, 1), what="the row")
        after = await db.fetchval("SELECT clock_timestamp()")
    received_at = await db.fetchval("SELECT received_at FROM balance_history")
    assert before <= received_at <= after


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[1, 2]",
        '{"type": "message"}',
        '{"type": "message", "room": "R", "data": null}',
        '{"type":"message","room":"R","data":{"wallet":"W","token":"T","amount":"5"}}',
        '{"type":"message","room":"R","data":{"wallet":"W","token":"T","amount":NaN}}',
        '{"type":"message","room":"R","data":{"wallet":"W","token":"T","amount":Infinity}}',
        '{"type":"message","room":"R","data":{"wallet":"W","token":"T","amount":-3}}',
        '{"type":"message","room":"R","data":{"wallet":"W","token":"T"}}',
        '{"type":"message","room":"R","data":{"wallet":"W","token":"T","amount":1,"x":2}}',
        '{"type":"message","room":"wallet:W:T:balance","data":{"wallet":"W","token":"S","amount":1}}',
        '{"type":"message","room":"wallet:W:S:balance","data":{"wallet":"W","token":"S","amount":1}}',
        '{"type":"surprise"}',
    ],
)
async def test_an_invalid_frame_is_counted_and_never_stored_and_the_stream_goes_on(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator, frame: str
) -> None:
    await watch(db)
    frame = frame.replace('"R"', f'"{room()}"').replace('"W"', f'"{WALLET}"')
    frame = frame.replace('"T"', f'"{TOKEN}"').replace('"S"', f'"{SOL}"')
    frame = frame.replace("wallet:W:T:balance", room()).replace(
        "wallet:W:S:balance", room(WALLET, SOL)
    )
    async with running_daemon(make_settings(database_url, simulator.url)) as running:
        await simulator.wait_for(lambda: room() in simulator.joined_rooms())
        await simulator.send_raw(frame)
        await simulator.send_balance(WALLET, TOKEN, "42")
        await wait_until(lambda: _count(db, 1), what="the valid row after the bad frame")
        assert sum(running.daemon.ingest.rejected.values()) == 1
    assert await history(db) == [(WALLET, TOKEN, Decimal(42))]


async def test_a_binary_frame_is_rejected(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator
) -> None:
    await watch(db)
    async with running_daemon(make_settings(database_url, simulator.url)) as running:
        await simulator.wait_for(lambda: room() in simulator.joined_rooms())
        await simulator.send_raw(b'{"type":"ping"}')
        await wait_until(lambda: running.daemon.ingest.rejected["binary_frame"] == 1)
    assert await history(db) == []


async def test_a_server_ping_is_answered_with_a_pong(
    engine: AsyncEngine, database_url: URL, simulator: Simulator
) -> None:
    async with running_daemon(make_settings(database_url, simulator.url)):
        await simulator.wait_for(lambda: simulator.live_connections == 1)
        await simulator.ping()
        await simulator.wait_for(lambda: any(e.kind == "pong" for e in simulator.events))


async def test_watchlist_edits_reach_the_socket_within_a_second(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator
) -> None:
    settings = make_settings(database_url, simulator.url, reconcile_interval=60.0)
    async with running_daemon(settings):
        await simulator.wait_for(lambda: simulator.live_connections == 1)
        await wait_until(_sync_listening(db), what="the LISTEN connection")

        started = time.monotonic()
        await watch(db)
        await simulator.wait_for(lambda: room() in simulator.joined_rooms(), timeout=1.0)
        insert_to_join = time.monotonic() - started

        await db.execute("UPDATE watchlist SET enabled = false")
        await simulator.wait_for(lambda: room() not in simulator.joined_rooms(), timeout=1.0)
        assert kinds(simulator, "leave", room()) == 1

        await db.execute("UPDATE watchlist SET enabled = true")
        await simulator.wait_for(lambda: room() in simulator.joined_rooms(), timeout=1.0)
        assert kinds(simulator, "join", room()) == 2

        await db.execute("DELETE FROM watchlist")
        await simulator.wait_for(lambda: room() not in simulator.joined_rooms(), timeout=1.0)
        assert kinds(simulator, "leave", room()) == 2
        await wait_until(lambda: _state_is(db, "left"), what="the left state")
    assert insert_to_join < 1.0


async def test_a_few_rows_changed_are_read_again_alone_and_their_rooms_follow_the_table(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator
) -> None:
    settings = make_settings(database_url, simulator.url, reconcile_interval=60.0)
    async with running_daemon(settings) as running:
        await simulator.wait_for(lambda: simulator.live_connections == 1)
        await wait_until(_sync_listening(db), what="the LISTEN connection")
        await watch(db)
        await simulator.wait_for(lambda: room() in simulator.joined_rooms(), timeout=2.0)
        sync = running.daemon.sync
        full_reads, rechecks = sync.reconciles, sync.rechecks

        # A new token for the row: the old room is left, the new one joined.
        await db.execute("UPDATE watchlist SET token = $1", SOL)
        await simulator.wait_for(lambda: simulator.joined_rooms() == {room(WALLET, SOL)})
        # Deleted and inserted again in one transaction: the notifications name the same
        # pair twice (Postgres may fold them); what counts is the row at the end: joined.
        async with db.transaction():
            await db.execute("DELETE FROM watchlist")
            await watch(db, WALLET2, TOKEN)
            await db.execute("DELETE FROM watchlist")
            await watch(db, WALLET2, TOKEN)
        await simulator.wait_for(lambda: simulator.joined_rooms() == {room(WALLET2, TOKEN)})
        await wait_until(lambda: sync.rechecks >= rechecks + 2, what="two re-reads")
        await asyncio.sleep(0.3)  # the transaction's notifications may take a second re-read
        # A label changed: read again, nothing to send.
        frames, rechecks = len(simulator.events), sync.rechecks
        await db.execute("UPDATE watchlist SET label = 'renamed'")
        await wait_until(lambda: sync.rechecks > rechecks, what="the label's re-read")
        assert len(simulator.events) == frames
        assert sync.reconciles == full_reads  # never the whole table
    assert kinds(simulator, "leave", room()) == 1
    assert kinds(simulator, "join", room(WALLET2, TOKEN)) == 1


def _sync_listening(db: Any) -> Any:
    async def check() -> bool:
        return bool(
            await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = 'balancewatch-listen' AND datname = current_database()"
            )
        )

    return check


async def _state_is(db: Any, state: str) -> bool:
    return await status_of(db) == state


async def test_a_large_insert_in_one_transaction_is_joined_as_one_diff(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator
) -> None:
    async with running_daemon(make_settings(database_url, simulator.url)):
        await simulator.wait_for(lambda: simulator.live_connections == 1)
        # md5 hex with '0' swapped for 'z' is a valid 32-character base58 string.
        await db.execute(
            "INSERT INTO watchlist (wallet, token) "
            "SELECT $1, translate(md5(i::text), '0', 'z') FROM generate_series(1, 500) AS i",
            WALLET,
        )
        await simulator.wait_for(lambda: len(simulator.joined_rooms()) == 500, timeout=5.0)
    joins = [event.room for event in simulator.events if event.kind == "join"]
    assert len(joins) == len(set(joins)) == 500


async def test_a_dropped_connection_reconnects_and_rejoins_every_pair_once(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator
) -> None:
    await watch(db)
    await watch(db, WALLET2, SOL)
    async with running_daemon(make_settings(database_url, simulator.url)):
        await simulator.wait_for(lambda: len(simulator.joined_rooms()) == 2)
        for _ in range(3):
            await simulator.drop_connections()
            await simulator.wait_for(lambda: simulator.live_connections == 0)
            await simulator.wait_for(lambda: len(simulator.joined_rooms()) == 2)
            assert simulator.room_subscribers(room()) == 1
        await simulator.send_balance(WALLET, TOKEN, "7")
        await wait_until(lambda: _count(db, 1), what="a row after the reconnects")
    assert simulator.total_connections == 4
    assert kinds(simulator, "join", room()) == 4


async def test_a_reconnect_rejoins_the_rooms_known_without_reading_the_watchlist_again(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator
) -> None:
    """The LISTEN connection, not the websocket, is what can miss a change to the table."""
    await watch(db)
    settings = make_settings(database_url, simulator.url, reconcile_interval=60.0)
    async with running_daemon(settings) as running:
        await simulator.wait_for(lambda: simulator.joined_rooms() == {room()})
        await simulator.drop_connections()
        await simulator.wait_for(lambda: simulator.joined_rooms() == {room()})
        # The sync takes what it was asked in order: a row added now is read alone unless the
        # reconnect had asked for the whole table.
        await watch(db, WALLET2, SOL)
        await simulator.wait_for(lambda: simulator.joined_rooms() == {room(), room(WALLET2, SOL)})
        assert (running.daemon.sync.reconciles, running.daemon.sync.rechecks) == (1, 1)
    assert simulator.total_connections == 2
    assert kinds(simulator, "join", room()) == 2


async def test_a_message_for_a_room_never_joined_is_rejected(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator
) -> None:
    await watch(db)
    async with running_daemon(make_settings(database_url, simulator.url)) as running:
        await simulator.wait_for(lambda: room() in simulator.joined_rooms())
        frame = (
            f'{{"type":"message","room":"{room(WALLET2, SOL)}",'
            f'"data":{{"wallet":"{WALLET2}","token":"{SOL}","amount":1}}}}'
        )
        await simulator.send_raw(frame)
        await wait_until(lambda: running.daemon.ingest.rejected["room_not_joined"] == 1)
    assert await history(db) == []


async def test_an_error_frame_about_a_room_is_recorded_against_its_pair(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator
) -> None:
    await watch(db)
    async with running_daemon(make_settings(database_url, simulator.url)):
        await simulator.wait_for(lambda: room() in simulator.joined_rooms())
        await simulator.send_raw(f'{{"type":"error","room":"{room()}","message":"no such room"}}')
        await wait_until(lambda: _state_is(db, "error"), what="the error state")
    last_error = await db.fetchval("SELECT last_error FROM subscription_status")
    assert "no such room" in last_error


async def test_a_row_that_slipped_past_the_check_is_never_joined_and_is_marked_invalid(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator
) -> None:
    await db.execute("ALTER TABLE watchlist DROP CONSTRAINT watchlist_wallet_is_base58_address")
    # Amid 12,000 good rows: the full re-read turns rows into rooms a few thousand at a time.
    many = (
        "INSERT INTO watchlist (wallet, token) "
        "SELECT $1, translate(md5(i::text), '0', 'z') FROM generate_series($2::int, $3) AS i"
    )
    await db.execute(many, WALLET2, 1, 6_000)
    await watch(db, "not-a-wallet-0OIl", TOKEN)
    await db.execute(many, WALLET2, 6_001, 11_999)
    await watch(db)
    async with running_daemon(make_settings(database_url, simulator.url)):
        await simulator.wait_for(lambda: len(simulator.joined_rooms()) == 12_000, timeout=10)
        await wait_until(lambda: _state_is_for(db, "not-a-wallet-0OIl", "invalid"))
    joins = [event.room for event in simulator.events if event.kind == "join"]
    assert len(joins) == len(set(joins)) == 12_000
    assert room() in joins
    assert not any("not-a-wallet" in name for name in joins if name)


async def _state_is_for(db: Any, wallet: str, state: str) -> bool:
    return await status_of(db, wallet, TOKEN) == state


async def test_stopping_flushes_every_message_already_received(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator
) -> None:
    await watch(db)
    # A flush age and batch size that would never flush on their own: only the drain can.
    settings = make_settings(database_url, simulator.url, flush_interval=60.0, batch_size=100_000)
    async with running_daemon(settings) as running:
        await simulator.wait_for(lambda: room() in simulator.joined_rooms())
        for i in range(300):
            await simulator.send_balance(WALLET, TOKEN, str(i))
        await wait_until(lambda: running.daemon.ingest.messages == 300, what="all frames read")
        assert await history(db) == []
        await running.stop()
    assert [row[2] for row in await history(db)] == [Decimal(i) for i in range(300)]


async def test_a_killed_listen_connection_comes_back_and_catches_up_on_changes(
    engine: AsyncEngine, database_url: URL, db: Any, simulator: Simulator
) -> None:
    settings = make_settings(database_url, simulator.url, reconcile_interval=60.0)
    async with running_daemon(settings) as running:
        await wait_until(_sync_listening(db), what="the LISTEN connection")
        reconciles = running.daemon.sync.reconciles
        # Kill it and change the table at once: the NOTIFY may well be lost, the re-read is not.
        async with db.transaction():
            await db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'balancewatch-listen' AND datname = current_database()"
            )
            await watch(db)
        await simulator.wait_for(lambda: room() in simulator.joined_rooms(), timeout=5.0)
        await wait_until(_sync_listening(db), what="a new LISTEN connection")
        assert running.daemon.sync.reconciles > reconciles
