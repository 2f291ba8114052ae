"""Connections to Postgres: the SQLAlchemy engine for queries, raw asyncpg for LISTEN and COPY."""

from __future__ import annotations

from typing import Any

import asyncpg
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

APPLICATION_NAME = "balancewatch"

# What a database that is away, restarting or killing our connections raises: retried, never
# fatal. asyncpg's InternalClientError belongs here: a connection terminated by the server
# while idle is not known to be closed yet, and the next operation on it fails with "cannot
# switch to state ...; another operation is in progress".
DB_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    SQLAlchemyError,
)


def create_engine(url: URL, *, pool_size: int = 4) -> AsyncEngine:
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=2,
        pool_pre_ping=True,
        connect_args={"server_settings": {"application_name": APPLICATION_NAME}},
    )


def asyncpg_dsn(url: URL) -> str:
    """The libpq-style DSN asyncpg takes, with the password: pass it, never print it."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def connect_raw(url: URL, *, role: str, timeout: float = 10.0) -> Any:
    """A plain asyncpg connection outside the pool, kept by one task for its `role`: LISTEN
    (it must stay the same one) or the writer (no pool checkout per batch)."""
    return await asyncpg.connect(
        asyncpg_dsn(url),
        timeout=timeout,
        server_settings={"application_name": f"{APPLICATION_NAME}-{role}"},
    )


def describe(url: URL) -> str:
    """The URL for logs and errors: the password is masked."""
    return url.render_as_string(hide_password=True)
