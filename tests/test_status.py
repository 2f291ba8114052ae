"""`balancewatch status` and `balancewatch healthcheck` against real Postgres and a real daemon."""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.devtools.simulator import Simulator
from balancewatch.ops import status
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
from tests.processes import balancewatch, environment

WALLET3 = "9WzDXwBbmkg8ZTbNMqUxvQRAyrZzDsGYdLVL9zYtAWWM"


async def history_rows(db: Any, ages: list[timedelta]) -> None:
    """Rows received `ages` ago, stored oldest first, as the daemon stores them."""
    now = await db.fetchval("SELECT now()")
    rows = [
        (WALLET, TOKEN, Decimal(n), now - age) for n, age in enumerate(sorted(ages, reverse=True))
    ]
    await db.copy_records_to_table(
        "balance_history", records=rows, columns=["wallet", "token", "amount", "received_at"]
    )


async def seed(db: Any) -> None:
    for wallet, token, enabled in [
        (WALLET, TOKEN, True),
        (WALLET2, SOL, True),
        (WALLET3, SOL, True),
        (WALLET3, TOKEN, True),
        (WALLET2, TOKEN, False),
    ]:
        await db.execute(
            "INSERT INTO watchlist (wallet, token, enabled) VALUES ($1, $2, $3)",
            wallet,
            token,
            enabled,
        )
    for wallet, token, state, error in [
        (WALLET, TOKEN, "joined", None),
        (WALLET2, SOL, "error", "server said: no such room"),
        (WALLET3, SOL, "joining", "no ack after 30 s (attempt 3)"),
    ]:
        await db.execute(
            "INSERT INTO subscription_status (wallet, token, state, since, last_error, updated_at)"
            " VALUES ($1, $2, $3, now(), $4, now())",
            wallet,
            token,
            state,
            error,
        )
    await history_rows(
        db,
        [timedelta(seconds=s) for s in (5, 20, 50)]
        + [timedelta(minutes=m) for m in (5, 30, 59)]
        + [timedelta(hours=h) for h in (2, 30)],
    )
    await db.execute(
        "INSERT INTO rejected_messages (received_at, reason, detail, frame, frame_size) VALUES"
        " (now(), 'not_json', 'x', 'x', 1), (now(), 'not_json', 'x', 'x', 1),"
        " (now() - interval '1 hour', 'room_not_joined', 'x', 'x', 1),"
        " (now() - interval '3 days', 'binary_frame', 'x', 'x', 1)"
    )


async def test_status_answers_is_it_working_from_the_database(
    engine: AsyncEngine, db: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    await seed(db)
    assert await status.show(engine, "none") == 0
    out = capsys.readouterr().out
    print(out)
    assert "daemon" not in out
    assert "pairs    4 enabled: 1 error, 1 joined, 1 joining, 1 not seen; 1 disabled" in out
    assert "rows     3 in the last minute, 6 in the last hour; newest " in out
    assert re.search(r"newest [0-9.]+ s ago", out)
    problems = out.split("pairs with problems")[1].split("rejected frames")[0]
    assert f"error    {WALLET2} {SOL}" in problems
    assert "server said: no such room" in problems
    assert f"joining  {WALLET3} {SOL}" in problems
    assert "no ack after 30 s (attempt 3)" in problems
    assert WALLET + " " + TOKEN not in problems
    rejected = out.split("rejected frames, last 24 h")[1]
    assert re.search(r"not_json +2", rejected)
    assert re.search(r"room_not_joined +1", rejected)
    assert "binary_frame" not in rejected  # older than a day


async def test_status_of_an_empty_database(
    engine: AsyncEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await status.show(engine, "none") == 0
    out = capsys.readouterr().out
    assert "pairs    0 enabled; 0 disabled" in out
    assert "rows     0 in the last minute, 0 in the last hour; no rows yet" in out
    assert "rejected frames, last 24 h: none" in out


async def test_rows_since_counts_like_a_full_scan_despite_gaps_in_ids(
    engine: AsyncEngine, db: Any
) -> None:
    ages = [timedelta(seconds=7 * n) for n in range(1500)]
    await history_rows(db, ages)
    await db.execute("DELETE FROM balance_history WHERE id % 7 = 3 OR id BETWEEN 200 AND 400")
    now = await db.fetchval("SELECT now()")
    async with engine.connect() as connection:
        for back in (timedelta(0), timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)):
            cutoff = now - back
            expected = await db.fetchval(
                "SELECT count(*) FROM balance_history WHERE received_at > $1", cutoff
            )
            assert await status.rows_since(connection, cutoff) == expected


async def test_status_shows_the_running_daemon_and_healthcheck_follows_readyz(
    engine: AsyncEngine,
    database_url: URL,
    db: Any,
    simulator: Simulator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await db.execute("INSERT INTO watchlist (wallet, token) VALUES ($1, $2)", WALLET, TOKEN)
    async with running_daemon(engine, make_settings(database_url, simulator.url)) as running:
        daemon = running.daemon
        await simulator.wait_for(lambda: room() in simulator.joined_rooms())
        await wait_until(lambda: daemon.http.port != 0, what="the HTTP server")
        url = f"http://127.0.0.1:{daemon.http.port}"
        for n in range(4):
            await simulator.send_balance(WALLET, TOKEN, f"{n}")
        await wait_until(lambda: daemon.writer.rows_written == 4, what="4 rows")
        await wait_until(lambda: _healthy(url), what="healthcheck to pass")
        assert await status.show(engine, url) == 0
        out = capsys.readouterr().out
        print(out)
        assert f"daemon   {url}: ready" in out
        assert "websocket connected, 0 reconnects; 4 messages received, 4 rows written" in out
        assert "0 rows in memory, 0 in the spool (0 bytes)" in out
        assert "pairs    1 enabled: 1 joined; 0 disabled" in out
        assert "rows     4 in the last minute" in out

        await simulator.drop_connections()
        simulator.refuse_status = 503
        await wait_until(lambda: not daemon.client.connected, what="disconnected")
        assert not await _healthy(url)
        assert await status.show(engine, url) == 0
        assert "NOT READY: websocket: not connected" in capsys.readouterr().out
    assert not await _healthy(url)
    assert await status.show(engine, url) == 0
    assert f"daemon   {url}: not reachable" in capsys.readouterr().out


async def _healthy(url: str) -> bool:
    code = await asyncio.to_thread(status.healthcheck, argparse.Namespace(url=url))
    return code == 0


async def test_status_runs_as_a_command(database_url: URL, db: Any) -> None:
    await seed(db)
    env = environment(database_url, http_port="1")  # nothing listens there
    finished = await balancewatch("status", env=env)
    assert finished.code == 0, finished.stderr
    text = finished.stdout
    assert "daemon   http://127.0.0.1:1: not reachable" in text
    assert "pairs    4 enabled" in text
    assert "rows     3 in the last minute, 6 in the last hour" in text
    assert re.fullmatch(r"balancewatch status at \S+ \S+ UTC", text.splitlines()[0])


async def test_the_commands_a_container_runs(database_url: URL, simulator: Simulator) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        # `run` on a port in use: one line that says so, exit 1, nothing read.
        env = environment(
            database_url, api_key=API_KEY, datastream_url=simulator.url, http_port=port
        )
        finished = await balancewatch("run", env=env)
        assert finished.code == 1
        (line,) = [line for line in finished.stdout.splitlines() if "http.cannot_listen" in line]
        assert f"cannot listen on 127.0.0.1:{port}" in line
        assert simulator.total_connections == 0
    # `healthcheck` with nothing listening: exit 1 (port from the environment, as in compose).
    finished = await balancewatch("healthcheck", env=environment(None, http_port=port))
    assert finished.code == 1
    assert f"http://127.0.0.1:{port}/readyz" in finished.stderr
