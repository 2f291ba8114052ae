"""Listening periods kept by a running daemon: opened at the join's ack, closed at a drop, at
the last frame of a connection that died silently, and at shutdown."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.engine import URL

from balancewatch.devtools.simulator import Simulator
from tests.helpers import TOKEN, WALLET, make_settings, room, running_daemon, wait_until, watch


async def periods(db: Any) -> list[Any]:
    return list(
        await db.fetch(
            "SELECT started_at, ended_at, end_reason, holder FROM coverage "
            "WHERE wallet = $1 AND token = $2 ORDER BY started_at",
            WALLET,
            TOKEN,
        )
    )


def counted(db: Any, total: int, still_open: int) -> Any:
    async def check() -> bool:
        found = await periods(db)
        return len(found) == total and sum(p["ended_at"] is None for p in found) == still_open

    return check


async def test_a_dropped_connection_closes_its_period_and_the_rejoin_opens_another(
    database_url: URL, db: Any, simulator: Simulator
) -> None:
    await watch(db)
    async with running_daemon(make_settings(database_url, simulator.url)):
        await simulator.wait_for(lambda: room() in simulator.joined_rooms())
        await wait_until(counted(db, 1, 1), what="an open period")
        await simulator.drop_connections()
        await simulator.wait_for(lambda: room() in simulator.joined_rooms(), timeout=10)
        await wait_until(counted(db, 2, 1), what="the first period closed, a second open")
    await wait_until(counted(db, 2, 0), what="both closed")
    first, second = await periods(db)
    assert first["end_reason"] == "disconnected"
    assert first["ended_at"] <= second["started_at"]
    assert second["end_reason"] == "shutdown"
    assert first["holder"] == second["holder"]


async def test_a_silent_dead_connection_ends_its_period_at_its_last_frame(
    database_url: URL, db: Any, simulator: Simulator
) -> None:
    await watch(db)
    idle = 0.8
    settings = make_settings(
        database_url, simulator.url, keepalive_interval=30.0, idle_timeout=idle
    )
    async with running_daemon(settings):
        await simulator.wait_for(lambda: room() in simulator.joined_rooms())
        await wait_until(counted(db, 1, 1), what="an open period")
        await simulator.send_balance(WALLET, TOKEN, "42")
        await wait_until(
            lambda: db.fetchval("SELECT count(*) FROM balance_history"), what="the row"
        )
        simulator.stall_connections()  # TCP stays open; no frame arrives from now on
        await wait_until(counted(db, 2, 1), timeout=10, what="a closed period and a new one")
    last_frame = await db.fetchval("SELECT received_at FROM balance_history")
    first = (await periods(db))[0]
    assert first["end_reason"] == "disconnected"
    # At the last frame read (its row is stamped a moment after the read), not when the
    # silence was noticed, an idle timeout later.
    read_slack = timedelta(milliseconds=50)
    assert last_frame - read_slack <= first["ended_at"] < last_frame + timedelta(seconds=idle / 2)
