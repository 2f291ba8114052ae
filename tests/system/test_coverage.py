"""Listening periods across a killed process: a daemon that dies without closing its periods
has them closed, by the next one, at the last time it confirmed it was listening."""

from __future__ import annotations

import signal
from typing import Any

from sqlalchemy.engine import URL

from balancewatch.daemon.coverage import CONFIRM_INTERVAL, SILENT_AFTER
from balancewatch.devtools.simulator import Simulator
from tests.helpers import API_KEY, TOKEN, WALLET, room, wait_until, watch
from tests.processes import StartDaemon, environment

PERIODS = """
SELECT c.started_at, c.ended_at, c.end_reason, c.holder, k.confirmed_at
FROM coverage c JOIN coverage_holders k USING (holder)
WHERE c.wallet = $1 AND c.token = $2 ORDER BY c.started_at
"""


async def test_after_a_sigkill_the_next_daemon_closes_the_periods_at_the_last_confirmation(
    database_url: URL, db: Any, simulator: Simulator, start_daemon: StartDaemon
) -> None:
    await watch(db)
    # A quiet connection: its pongs to the keepalive are its signs of life.
    env = environment(
        database_url, datastream_url=simulator.url, api_key=API_KEY, keepalive_interval="1"
    )

    async def confirmed_after_start() -> bool:
        found = await db.fetch(PERIODS, WALLET, TOKEN)
        return len(found) == 1 and found[0]["confirmed_at"] > found[0]["started_at"]

    killed = await start_daemon(env)
    await simulator.wait_for(lambda: room() in simulator.joined_rooms(), timeout=15)
    await wait_until(confirmed_after_start, timeout=3 * CONFIRM_INTERVAL, what="a confirmation")
    assert await killed.stop(signal.SIGKILL) == -signal.SIGKILL
    [before] = await db.fetch(PERIODS, WALLET, TOKEN)
    assert before["ended_at"] is None  # nobody closed it: the process had no chance to

    await start_daemon(env)

    async def closed_as_lost() -> bool:
        found = await db.fetch(PERIODS, WALLET, TOKEN)
        return any(row["end_reason"] == "lost" for row in found)

    silence = SILENT_AFTER.total_seconds()
    await wait_until(closed_as_lost, timeout=silence + 3 * CONFIRM_INTERVAL, what="'lost'")
    lost, current = await db.fetch(PERIODS, WALLET, TOKEN)
    assert lost["holder"] == before["holder"]
    assert lost["ended_at"] == before["confirmed_at"]  # its last confirmation, not the restart
    assert current["holder"] != lost["holder"]
    assert current["ended_at"] is None
    assert current["started_at"] >= lost["ended_at"]
