"""`balancewatch status`, `run` and `healthcheck` as commands, as a container runs them."""

from __future__ import annotations

import re
import socket
from typing import Any

from sqlalchemy.engine import URL

from balancewatch.devtools.simulator import Simulator
from tests.data import insert_periods, seed
from tests.helpers import API_KEY, WALLET
from tests.processes import balancewatch, environment


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


async def test_status_counts_a_whole_wallet_apart_from_pairs(database_url: URL, db: Any) -> None:
    await seed(db)
    env = environment(database_url)
    assert (await balancewatch("watch", "add", WALLET, env=env)).code == 0
    await insert_periods(db, (WALLET, None), (await db.fetchval("SELECT now()"), None, None))
    finished = await balancewatch("status", "--http", "none", env=env)
    assert finished.code == 0, finished.stderr
    assert "pairs    4 enabled" in finished.stdout
    assert "wallets  1 enabled: 1 not seen; 0 disabled" in finished.stdout
    assert "coverage 1 pairs, 1 whole wallet being listened to" in finished.stdout


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
