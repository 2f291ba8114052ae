"""Queries over the watchlist table: what the daemon reads, and what the CLI edits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.models import subscription_status, watchlist
from balancewatch.rooms import Pair


async def enabled_pairs(engine: AsyncEngine) -> list[Pair]:
    """Every enabled (wallet, token): the input of `rooms.wanted_rooms`.

    A later shard filter narrows this query, nothing else.
    """
    query = select(watchlist.c.wallet, watchlist.c.token).where(watchlist.c.enabled)
    async with engine.connect() as connection:
        result = await connection.execute(query)
        return [(row.wallet, row.token) for row in result]


async def add(engine: AsyncEngine, wallet: str, token: str, label: str | None) -> bool:
    """Add or re-enable a pair; True if it was new."""
    insert_row = insert(watchlist).values(wallet=wallet, token=token, label=label)
    statement = insert_row.on_conflict_do_update(
        constraint="watchlist_wallet_token_key",
        set_={"enabled": True, "label": insert_row.excluded.label if label else watchlist.c.label},
    ).returning(watchlist.c.created_at == watchlist.c.updated_at)
    async with engine.begin() as connection:
        created = (await connection.execute(statement)).scalar_one()
    return bool(created)


async def remove(engine: AsyncEngine, wallet: str, token: str) -> bool:
    """Delete a pair; its balance history stays. False if it was not there."""
    statement = delete(watchlist).where(watchlist.c.wallet == wallet, watchlist.c.token == token)
    async with engine.begin() as connection:
        result = await connection.execute(statement)
    return bool(result.rowcount)


@dataclass(frozen=True, slots=True)
class WatchEntry:
    wallet: str
    token: str
    enabled: bool
    label: str | None
    state: str | None
    since: datetime | None
    last_error: str | None


async def entries(engine: AsyncEngine) -> list[WatchEntry]:
    """Every row of the watchlist with what the daemon last said of it."""
    status = subscription_status
    query = (
        select(
            watchlist.c.wallet,
            watchlist.c.token,
            watchlist.c.enabled,
            watchlist.c.label,
            status.c.state,
            status.c.since,
            status.c.last_error,
        )
        .select_from(
            watchlist.outerjoin(
                status,
                (status.c.wallet == watchlist.c.wallet) & (status.c.token == watchlist.c.token),
            )
        )
        .order_by(watchlist.c.id)
    )
    async with engine.connect() as connection:
        result = await connection.execute(query)
        return [WatchEntry(*row) for row in result]
