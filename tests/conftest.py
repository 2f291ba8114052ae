"""Fixtures: a real Postgres (a throwaway cluster, or BALANCEWATCH_TEST_DATABASE_URL), migrated
once into a template database and cloned per test; a simulated Datastream on loopback; and a
daemon running in-process against both."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.devtools.localpg import LocalPostgres
from balancewatch.devtools.simulator import Simulator
from balancewatch.settings import parse_database_url
from balancewatch.store import migrate
from balancewatch.store.db import asyncpg_dsn, create_engine
from tests.helpers import API_KEY, SCRATCH_ROOT


@pytest.fixture(scope="session", autouse=True)
def scratch_root() -> Iterator[None]:
    yield
    shutil.rmtree(SCRATCH_ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def server_url() -> Iterator[URL]:
    """A URL of the test server's maintenance database, where test databases are created."""
    given = os.environ.get("BALANCEWATCH_TEST_DATABASE_URL")
    if given:
        yield parse_database_url(given)
        return
    with LocalPostgres() as cluster:
        yield parse_database_url(cluster.url())


@pytest.fixture(scope="session")
async def template_database(server_url: URL) -> AsyncIterator[str]:
    name = f"bw_template_{uuid.uuid4().hex[:12]}"
    await _admin(server_url, f'CREATE DATABASE "{name}"')
    engine = create_engine(server_url.set(database=name), pool_size=1)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    yield name
    await _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def database_url(server_url: URL, template_database: str) -> AsyncIterator[URL]:
    """A fresh, migrated database for one test."""
    async with _scratch_database(server_url, template=template_database) as url:
        yield url


@pytest.fixture
async def empty_database_url(server_url: URL) -> AsyncIterator[URL]:
    """A fresh database with no schema at all."""
    async with _scratch_database(server_url, template=None) as url:
        yield url


@contextlib.asynccontextmanager
async def _scratch_database(server_url: URL, template: str | None) -> AsyncIterator[URL]:
    name = f"bw_test_{uuid.uuid4().hex[:12]}"
    clone = f' TEMPLATE "{template}"' if template else ""
    await _admin(server_url, f'CREATE DATABASE "{name}"{clone}')
    yield server_url.set(database=name)
    await _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def engine(database_url: URL) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def db(database_url: URL) -> AsyncIterator[Any]:
    """A plain asyncpg connection for the test's own SQL, as a user's psql session would be."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    yield connection
    await connection.close()


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    async with Simulator(api_key=API_KEY, ping_interval=None) as sim:
        yield sim


async def _admin(server_url: URL, sql: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await connection.execute(sql)
    finally:
        await connection.close()
