"""Connections to Postgres: the SQLAlchemy engine for queries, raw asyncpg for LISTEN and COPY."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TypeAlias

import asyncpg
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

APPLICATION_NAME = "balancewatch"

RawConnection: TypeAlias = "asyncpg.Connection[asyncpg.Record]"

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


async def connect_raw(url: URL, *, role: str, timeout: float = 10.0) -> RawConnection:
    """A plain asyncpg connection outside the pool, kept by one task for its `role`: LISTEN
    (it must stay the same one) or the writer (no pool checkout per batch)."""
    return await asyncpg.connect(
        asyncpg_dsn(url),
        timeout=timeout,
        server_settings={"application_name": f"{APPLICATION_NAME}-{role}"},
    )


class DedicatedConnection:
    """One task's own connection, kept from use to use and opened again after any failure: a
    pool checkout, with its pre-ping, took a tenth of each batch's time."""

    def __init__(self, url: URL, *, role: str, timeout: float) -> None:
        self._url = url
        self._role = role
        self._timeout = timeout
        self._connection: RawConnection | None = None
        self._connecting = asyncio.Lock()

    async def get(self) -> RawConnection:
        if self._connection is None or self._connection.is_closed():
            # Two callers at once must not both connect: the first connection would be
            # overwritten and never closed.
            async with self._connecting:
                if self._connection is None or self._connection.is_closed():
                    self._connection = await connect_raw(
                        self._url, role=self._role, timeout=self._timeout
                    )
        return self._connection

    def discard(self) -> None:
        """Broken, or cancelled in the middle of a statement: never reused."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.terminate()

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(*DB_ERRORS):
                await connection.close(timeout=self._timeout)


def describe(url: URL) -> str:
    """The URL for logs and errors: the password is masked."""
    return url.render_as_string(hide_password=True)
