"""The schema: migrations agree with the models, and the database itself guards the watchlist."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch import migrate
from balancewatch.db import asyncpg_dsn
from balancewatch.models import WATCHLIST_CHANNEL, metadata
from tests.helpers import TOKEN, WALLET


async def test_the_migrations_and_the_models_agree(engine: AsyncEngine) -> None:
    def differences(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    async with engine.connect() as connection:
        assert await connection.run_sync(differences) == []


async def test_migrate_is_idempotent_and_reaches_head(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine)
    await asyncio.gather(migrate.upgrade(engine), migrate.upgrade(engine))
    assert await migrate.current_revision(engine) == migrate.head_revision()


@pytest.mark.parametrize(
    ("wallet", "token", "constraint"),
    [
        ("not-base58!", TOKEN, "watchlist_wallet_is_base58_address"),
        (WALLET, "0OIl" * 10, "watchlist_token_is_base58_address"),
        ("abc", TOKEN, "watchlist_wallet_is_base58_address"),
        (WALLET, "a" * 45, "watchlist_token_is_base58_address"),
    ],
)
async def test_the_database_refuses_a_malformed_address(
    db: Any, wallet: str, token: str, constraint: str
) -> None:
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await db.execute("INSERT INTO watchlist (wallet, token) VALUES ($1, $2)", wallet, token)
    assert caught.value.constraint_name == constraint
    assert await db.fetchval("SELECT count(*) FROM watchlist") == 0


async def test_a_pair_is_watched_once(db: Any) -> None:
    await db.execute("INSERT INTO watchlist (wallet, token) VALUES ($1, $2)", WALLET, TOKEN)
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute("INSERT INTO watchlist (wallet, token) VALUES ($1, $2)", WALLET, TOKEN)


async def test_every_kind_of_watchlist_change_notifies_once_per_statement(
    db: Any, database_url: Any
) -> None:
    listener = await asyncpg.connect(asyncpg_dsn(database_url))
    received: list[str] = []
    all_in = asyncio.Event()

    def collect(*args: Any) -> None:
        received.append(args[3])
        if len(received) == 5:
            all_in.set()

    await listener.add_listener(WATCHLIST_CHANNEL, collect)
    try:
        await db.execute("INSERT INTO watchlist (wallet, token) VALUES ($1, $2)", WALLET, TOKEN)
        await db.execute("UPDATE watchlist SET enabled = false")
        await db.execute("DELETE FROM watchlist")
        await db.execute("TRUNCATE watchlist")
        async with db.transaction():
            for i in range(3):
                await db.execute(
                    "INSERT INTO watchlist (wallet, token) "
                    "VALUES ($1, translate(md5($2), '0', 'z'))",
                    WALLET,
                    str(i),
                )
        await asyncio.wait_for(all_in.wait(), timeout=5)
    finally:
        await listener.close()
    # Postgres folds identical notifications of one transaction into one.
    assert received == ["INSERT", "UPDATE", "DELETE", "TRUNCATE", "INSERT"]


async def test_updated_at_moves_on_update_and_created_at_stays(db: Any) -> None:
    await db.execute("INSERT INTO watchlist (wallet, token) VALUES ($1, $2)", WALLET, TOKEN)
    before = await db.fetchrow("SELECT created_at, updated_at FROM watchlist")
    await db.execute("UPDATE watchlist SET label = 'x'")
    after = await db.fetchrow("SELECT created_at, updated_at FROM watchlist")
    assert after["created_at"] == before["created_at"]
    assert after["updated_at"] > before["updated_at"]


async def test_removing_a_pair_keeps_its_history(db: Any) -> None:
    await db.execute("INSERT INTO watchlist (wallet, token) VALUES ($1, $2)", WALLET, TOKEN)
    await db.execute(
        "INSERT INTO balance_history (wallet, token, amount, received_at) "
        "VALUES ($1, $2, 1, now())",
        WALLET,
        TOKEN,
    )
    await db.execute("DELETE FROM watchlist")
    assert await db.fetchval("SELECT count(*) FROM balance_history") == 1


async def test_the_history_of_one_pair_newest_first_is_an_index_scan(db: Any) -> None:
    await db.execute("SET enable_seqscan = off")
    rows = await db.fetch(
        "EXPLAIN SELECT * FROM balance_history WHERE wallet = $1 AND token = $2 "
        "ORDER BY received_at DESC LIMIT 10",
        WALLET,
        TOKEN,
    )
    plan = "\n".join(row[0] for row in rows)
    assert "balance_history_pair_received_at_idx" in plan
    assert "Sort" not in plan
