"""Alembic environment. `balancewatch migrate` hands it an open connection; the `alembic`
command line (for developers) connects with BALANCEWATCH_DATABASE_URL instead."""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from balancewatch.settings import parse_database_url
from balancewatch.store.models import include_object, metadata


def run_with(connection: Connection) -> None:
    """One transaction per migration: a migration that commits part way (0009's chunked copy)
    would commit the ones before it anyway, and each then records its revision as it commits."""
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        include_object=include_object,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_from_environment() -> None:
    url = parse_database_url(os.environ["BALANCEWATCH_DATABASE_URL"])
    engine = create_async_engine(url)
    async with engine.connect() as connection:
        await connection.run_sync(run_with)
    await engine.dispose()


given = context.config.attributes.get("connection")
if given is not None:
    run_with(given)
else:
    asyncio.run(run_from_environment())
