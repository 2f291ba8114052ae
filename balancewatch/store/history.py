"""One pair's balances, newest first, as Postgres' own text of each amount (`amount::text`):
no float ever touches an amount read here; and the gaps in the daemon's listening to it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Text, cast, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.store.models import balance_history


@dataclass(frozen=True, slots=True)
class Row:
    received_at: datetime
    amount: str  # Postgres' text of the numeric, exactly as stored
    source: str = "stream"
    slot: int | None = None


@dataclass(frozen=True, slots=True)
class Gap:
    """A stretch when no daemon was listening to the pair: from the end of a listening period
    to the start of the next one (None: not listening again yet)."""

    start: datetime
    end: datetime | None
    reason: str


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
        select(
            history.received_at,
            cast(history.amount, Text).label("amount"),
            history.source,
            history.slot,
        )
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
        return [Row(row.received_at, row.amount, row.source, row.slot) for row in result]


_GAPS = text(
    """
    SELECT ended_at, next_start, end_reason FROM (
        SELECT ended_at, end_reason, lead(started_at) OVER (ORDER BY started_at) AS next_start
        FROM coverage WHERE wallet = :wallet AND token = :token
    ) periods
    WHERE ended_at IS NOT NULL AND (next_start IS NULL OR next_start > ended_at)
      AND ended_at < :until AND (next_start IS NULL OR next_start > :since)
    ORDER BY ended_at
    """
)


async def fetch_gaps(
    engine: AsyncEngine, wallet: str, token: str, *, since: datetime, until: datetime
) -> list[Gap]:
    """The pair's gaps that overlap [since, until], oldest first. Before its first listening
    period there is no gap: it was not watched, or watched by a version that kept no periods."""
    params = {"wallet": wallet, "token": token, "since": since, "until": until}
    async with engine.connect() as connection:
        result = await connection.execute(_GAPS, params)
        return [Gap(row.ended_at, row.next_start, row.end_reason) for row in result]
