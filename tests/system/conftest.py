"""The system tier: balancewatch in real subprocesses, real signals, real outages. The Postgres
and simulator fixtures come from tests/fixtures.py."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from sqlalchemy.engine import URL

from balancewatch.devtools.localpg import LocalPostgres
from balancewatch.settings import parse_database_url
from balancewatch.store import migrate
from balancewatch.store.db import create_engine
from tests.helpers import cluster_base_dir
from tests.processes import DaemonProcess, StartDaemon, started


@pytest.fixture
async def start_daemon() -> AsyncIterator[StartDaemon]:
    """Starts `python -m balancewatch ARGS` (`run` by default) with the environment given; any
    still running at teardown is killed."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(env: dict[str, str], *args: str) -> DaemonProcess:
            return await stack.enter_async_context(started(env, *args))

        yield start


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalPostgres]:
    """A Postgres cluster of the module's own, which its tests may stop and start."""
    with LocalPostgres(base_dir=cluster_base_dir()) as pg:
        yield pg


@pytest.fixture
async def stoppable_url(cluster: LocalPostgres) -> AsyncIterator[URL]:
    """A migrated database on the module's own cluster (started again after the test)."""
    if not cluster.is_running():
        cluster.start()
    name = f"own_{os.getpid()}_{time.monotonic_ns()}"
    admin = await asyncpg.connect(cluster.url())
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    database = parse_database_url(cluster.url(name))
    engine = create_engine(database, pool_size=1)
    await migrate.upgrade(engine)
    await engine.dispose()
    yield database
    if not cluster.is_running():
        cluster.start()
