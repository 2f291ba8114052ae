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

from balancewatch.daemon.sync import touched_watches
from balancewatch.domain import Watch
from balancewatch.store import migrate
from balancewatch.store.db import asyncpg_dsn
from balancewatch.store.models import WATCHLIST_CHANNEL, include_object, metadata
from tests.helpers import SOL, TOKEN, WALLET, WALLET2, downgrade


async def test_the_migrations_and_the_models_agree(engine: AsyncEngine) -> None:
    def differences(connection: Connection) -> list[Any]:
        opts = {"compare_type": True, "include_object": include_object}
        context = MigrationContext.configure(connection, opts=opts)
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


async def test_a_wallet_has_at_most_one_all_tokens_row(db: Any) -> None:
    insert = "INSERT INTO watchlist (wallet, token) VALUES ($1, $2)"
    await db.execute(insert, WALLET, None)
    await db.execute(insert, WALLET, TOKEN)  # a token row beside it is allowed
    await db.execute(insert, WALLET2, None)  # and another wallet's
    with pytest.raises(asyncpg.UniqueViolationError) as caught:
        await db.execute(insert, WALLET, None)
    assert caught.value.constraint_name == "watchlist_wallet_all_tokens_key"
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(insert, "not-base58!", None)  # the wallet is still checked
    assert await db.fetchval("SELECT count(*) FROM watchlist") == 3


async def test_a_pair_is_watched_once(db: Any) -> None:
    await db.execute("INSERT INTO watchlist (wallet, token) VALUES ($1, $2)", WALLET, TOKEN)
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute("INSERT INTO watchlist (wallet, token) VALUES ($1, $2)", WALLET, TOKEN)


async def test_each_watchlist_change_notifies_the_pairs_it_touched_or_to_read_all(
    db: Any, database_url: Any
) -> None:
    listener = await asyncpg.connect(asyncpg_dsn(database_url))
    received: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(WATCHLIST_CHANNEL, lambda *args: received.put_nowait(args[3]))

    async def notified(sql: str, *args: object) -> set[Watch] | None:
        await db.execute(sql, *args)
        payload: str = await asyncio.wait_for(received.get(), timeout=5)
        return touched_watches(payload)

    insert = "INSERT INTO watchlist (wallet, token) VALUES ($1, $2)"
    try:
        assert await notified(insert, WALLET, TOKEN) == {(WALLET, TOKEN)}
        # An upsert that conflicts: its INSERT touched no row and says nothing; the UPDATE does.
        upsert = f"{insert} ON CONFLICT (wallet, token) DO UPDATE SET label = 'x'"
        assert await notified(upsert, WALLET, TOKEN) == {(WALLET, TOKEN)}
        # A changed key names the old pair and the new one.
        moved = await notified("UPDATE watchlist SET token = $1", SOL)
        assert moved == {(WALLET, TOKEN), (WALLET, SOL)}
        await db.execute("UPDATE watchlist SET enabled = false WHERE false")  # no row: silent
        # An all-tokens row is named by its wallet and a null.
        all_tokens = "INSERT INTO watchlist (wallet) VALUES ($1)"
        assert await notified(all_tokens, WALLET) == {(WALLET, None)}
        assert await notified("DELETE FROM watchlist") == {(WALLET, SOL), (WALLET, None)}
        many = (
            "INSERT INTO watchlist (wallet, token) "
            "SELECT $1, translate(md5(i::text), '0', 'z') FROM generate_series(1, 40) AS i"
        )
        assert await notified(many, WALLET2) is None  # 40 rows: read them all
        assert await notified("TRUNCATE watchlist") is None
        assert received.empty()
    finally:
        await listener.close()


async def test_downgrading_0004_brings_back_one_plain_notification_per_statement(
    engine: AsyncEngine, db: Any, database_url: Any
) -> None:
    await downgrade(engine, "0003")
    listener = await asyncpg.connect(asyncpg_dsn(database_url))
    received: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(WATCHLIST_CHANNEL, lambda *args: received.put_nowait(args[3]))
    try:
        await db.execute("INSERT INTO watchlist (wallet, token) VALUES ($1, $2)", WALLET, TOKEN)
        payload = await asyncio.wait_for(received.get(), timeout=5)
    finally:
        await listener.close()
    assert payload == "INSERT"
    assert touched_watches(payload) is None  # which a daemon of today reads as "read all"
    await migrate.upgrade(engine)
    assert await migrate.current_revision(engine) == migrate.head_revision()


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


async def test_the_history_of_one_pair_by_its_id_newest_first_is_an_index_scan(db: Any) -> None:
    await db.execute("SET enable_seqscan = off")
    rows = await db.fetch(
        "EXPLAIN SELECT * FROM balance_rows "
        "WHERE pair_id = (SELECT pair_id FROM pairs WHERE wallet = $1 AND token = $2) "
        "ORDER BY received_at DESC, id DESC LIMIT 10",
        WALLET,
        TOKEN,
    )
    plan = "\n".join(row[0] for row in rows)
    assert "_pair_idx" in plan
    assert "->  Sort" not in plan


async def test_0005_keeps_the_history_marks_old_rows_as_stream_and_downgrades_cleanly(
    engine: AsyncEngine, db: Any
) -> None:
    await downgrade(engine, "0004")
    assert await db.fetchval("SELECT to_regclass('coverage')") is None
    await db.execute(
        "INSERT INTO balance_history (wallet, token, amount, received_at) "
        "VALUES ($1, $2, 1.5, now())",
        WALLET,
        TOKEN,
    )
    await migrate.upgrade(engine)
    row = await db.fetchrow("SELECT amount::text AS amount, source, slot FROM balance_history")
    assert (row["amount"], row["source"], row["slot"]) == ("1.5", "stream", None)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(
            "INSERT INTO balance_history (wallet, token, amount, received_at, source) "
            "VALUES ($1, $2, 1, now(), 'guess')",
            WALLET,
            TOKEN,
        )
