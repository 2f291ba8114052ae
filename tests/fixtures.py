"""The services of the integration and system tiers, as fixtures: a real Postgres (a throwaway
cluster, or BALANCEWATCH_TEST_DATABASE_URL), migrated once into a template database and cloned
per test, and a simulated Datastream on loopback.

Loaded for the whole suite by tests/conftest.py (`pytest_plugins`), so the one cluster serves
both tiers; tests/unit/conftest.py overrides every fixture in SERVICE_FIXTURES with one that
fails, so a unit test cannot start any of them."""

from __future__ import annotations

import contextlib
import os
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
from tests.helpers import API_KEY, cluster_base_dir

# The test cluster trusts loopback connections and ignores a password, so one can be put in
# the URL only to be looked for in the output.
DB_PASSWORD = "db-pass-7c2e90f4b1a6"

# Every fixture below: what a unit test must not ask for.
SERVICE_FIXTURES = (
    "server_url",
    "template_database",
    "database_url",
    "empty_database_url",
    "secret_url",
    "engine",
    "db",
    "simulator",
)


@pytest.fixture(scope="session")
def server_url() -> Iterator[URL]:
    """A URL of the test server's maintenance database, where test databases are created."""
    given = os.environ.get("BALANCEWATCH_TEST_DATABASE_URL")
    if given:
        yield parse_database_url(given)
        return
    with LocalPostgres(base_dir=cluster_base_dir()) as cluster:
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
def secret_url(database_url: URL) -> URL:
    """The test database's URL with a password in it."""
    return database_url if database_url.password else database_url.set(password=DB_PASSWORD)


def secrets_in(url: URL) -> list[str]:
    return [API_KEY, str(url.password)]


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
