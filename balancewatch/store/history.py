"""One pair's balances, newest first, as Postgres' own text of each amount (`amount::text`):
no float ever touches an amount read here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Text, cast, select
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.store.models import balance_history


@dataclass(frozen=True, slots=True)
class Row:
    received_at: datetime
    amount: str  # Postgres' text of the numeric, exactly as stored


async def fetch(
    engine: AsyncEngine,
    wallet: str,
    token: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None,
) -> list[Row]:
    """The pair's rows in [since, until], newest first, at most `limit` (None: all)."""
    history = balance_history.c
    query = (
        select(history.received_at, cast(history.amount, Text).label("amount"))
        .where(history.wallet == wallet, history.token == token)
        .order_by(history.received_at.desc(), history.id.desc())
        .limit(limit)
    )
    if since is not None:
        query = query.where(history.received_at >= since)
    if until is not None:
        query = query.where(history.received_at <= until)
    async with engine.connect() as connection:
        result = await connection.execute(query)
        return [Row(row.received_at, row.amount) for row in result]
