"""What the sections of `balancewatch bench` share: the server they run on (the one configured,
or a throwaway cluster), a scratch database on it, migrated; a checkpoint; the bench's pairs.

Both `bench` (ingest, latency, sync, chain, scale, replicas) and `bench_history` (`--history N`)
import it; it imports neither.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch import logs
from balancewatch.devtools.localpg import LocalPostgres
from balancewatch.settings import parse_database_url
from balancewatch.store import migrate
from balancewatch.store.db import asyncpg_dsn, create_engine

MINT = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"
_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def on_a_server(database_url: str | None, run: Callable[[URL], None]) -> int:
    """`run` on the server of `database_url`, or else of a throwaway cluster."""
    logs.configure(level="error")
    print(f"balancewatch bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores")
    if database_url is not None:
        print("  database: --database-url, as configured there")
        run(parse_database_url(database_url))
    else:
        print("  database: a throwaway cluster, fsync on")
        # Durable, like any database worth deploying next to: without fsync a commit costs
        # next to nothing, and the bench would flatter whatever commits often.
        with LocalPostgres(durable=True) as cluster:
            run(parse_database_url(cluster.url()))
    return 0


@contextlib.asynccontextmanager
async def migrated(server_url: URL) -> AsyncIterator[tuple[URL, AsyncEngine, Any]]:
    """A scratch database on the server, migrated: its URL, an engine and a connection."""
    async with scratch_database(server_url) as url:
        engine = create_engine(url)
        try:
            await migrate.upgrade(engine)
            db = await asyncpg.connect(asyncpg_dsn(url))
            try:
                yield url, engine, db
            finally:
                await db.close()
        finally:
            await engine.dispose()


@contextlib.asynccontextmanager
async def scratch_database(server_url: URL) -> AsyncIterator[URL]:
    name = f"bw_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield server_url.set(database=name)
    finally:
        admin = await asyncpg.connect(asyncpg_dsn(server_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def checkpoint(db: Any) -> None:
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):  # --database-url, no superuser
        await db.execute("CHECKPOINT")


def bench_pairs(count: int, *, start: int = 0) -> list[tuple[str, str]]:
    """`count` distinct (wallet, token) pairs of valid base58 addresses, the same every run."""
    return [(_address(start + index), MINT) for index in range(count)]


def _address(number: int) -> str:
    digits = ""
    while True:
        number, digit = divmod(number, len(_ALPHABET))
        digits = _ALPHABET[digit] + digits
        if number == 0:
            break
    return "Bench" + digits.rjust(39, "1")
