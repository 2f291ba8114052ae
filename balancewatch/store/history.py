"""One pair's balances, or every token's of a wallet, newest first, as Postgres' own text of
each amount (`amount::text`): no float ever touches an amount read here; and the gaps in the
daemon's listening to them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Text, TextClause, case, cast, func, literal, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.expression import FromClause

from balancewatch.domain import ROW_SOURCE_CODES
from balancewatch.store.models import balance_rows, pairs

_FOREVER = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Row:
    token: str
    received_at: datetime
    amount: str  # Postgres' text of the numeric, exactly as stored
    source: str = "stream"
    slot: int | None = None


@dataclass(frozen=True, slots=True)
class Gap:
    """A stretch when no daemon was listening: from the end of a listening period to the start
    of the next one (None: not listening again yet)."""

    start: datetime
    end: datetime | None
    reason: str


async def fetch(
    engine: AsyncEngine,
    wallet: str,
    token: str | None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None,
) -> list[Row]:
    """The pair's rows (every token's of the wallet if `token` is None) in [since, until],
    newest first, at most `limit` (None: all)."""
    pair = pairs.c
    of_wallet = select(pair.pair_id).where(pair.wallet == wallet)
    rows: FromClause
    if token is None:  # a wallet's pairs: their rows merged and sorted, each with its token
        rows = balance_rows.alias("r")
        query = select(pair.token).join_from(rows, pairs, rows.c.pair_id == pair.pair_id)
        query = query.where(rows.c.pair_id.in_(of_wallet))
    else:
        # One pair: through pair_rows_at, which reads only the partitions of the days its
        # newest rows are on (migration 0017), newest first. The token is the one asked for:
        # no join (planned as a hash of every pair, for 50 rows).
        one = of_wallet.where(pair.token == token).scalar_subquery()
        newest = func.pair_rows_at(one, until or _FOREVER, limit)
        rows = newest.table_valued(*(c.name for c in balance_rows.c)).render_derived("r")
        query = select(literal(token, Text).label("token")).select_from(rows)
    # As text: asyncpg would take a "char" parameter as bytes.
    codes = {code: name for name, code in ROW_SOURCE_CODES.items()}
    source = case(codes, value=cast(rows.c.source, Text))
    query = (
        query.add_columns(
            rows.c.received_at,
            cast(rows.c.amount, Text).label("amount"),
            source.label("source"),
            rows.c.slot,
        )
        .order_by(rows.c.received_at.desc(), rows.c.id.desc())
        .limit(limit)
    )
    if since is not None:
        query = query.where(rows.c.received_at >= since)
    if until is not None:
        query = query.where(rows.c.received_at <= until)
    async with engine.connect() as connection:
        result = await connection.execute(query)
        return [Row(*row) for row in result]


# The stretches not listened to, from `periods (watch, started_at, ended_at, end_reason)` (an
# open period ends at 'infinity'), for each watch apart. Periods overlap (a token's room and
# its wallet's room, two replicas around a handover), so a gap does not begin at the end of
# each period: it begins where the furthest end reached so far is before the next start, and
# has the reason of the period that reached it (the first of its `reach`, in start order).
_GAPS_OF_PERIODS = """
reached AS (
    SELECT watch, started_at, ended_at, end_reason,
           max(ended_at) OVER running AS reach,
           lead(started_at) OVER running AS next_start
    FROM periods
    WINDOW running AS (
        PARTITION BY watch ORDER BY started_at, ended_at ROWS UNBOUNDED PRECEDING
    )
),
gaps AS (
    SELECT watch, reach AS gap_start, next_start AS gap_end, reason FROM (
        SELECT watch, reach, next_start, first_value(end_reason) OVER (
            PARTITION BY watch, reach ORDER BY started_at, ended_at
        ) AS reason
        FROM reached
    ) ends
    WHERE reach < coalesce(next_start, 'infinity')
)
"""


def gaps_query(periods: str, select: str) -> TextClause:
    """`select` over `gaps (watch, gap_start, gap_end, reason)`, the gaps of the listening
    periods that the query `periods` gives (see _GAPS_OF_PERIODS)."""
    sql = f"WITH periods AS ({periods}),\n{_GAPS_OF_PERIODS}\n{select}"
    return text(sql)  # our own constants only; every value is a bound parameter


# A pair is listened to through its own room or its wallet's; with no token, a wallet is
# listened to while any room of it is (see `fetch_gaps`).
_GAPS = gaps_query(
    """
    SELECT 0 AS watch, started_at, coalesce(ended_at, 'infinity') AS ended_at, end_reason
    FROM coverage
    WHERE wallet = :wallet AND (token = :token OR token IS NULL OR CAST(:token AS text) IS NULL)
    """,
    """
    SELECT gap_start, gap_end, reason FROM gaps
    WHERE gap_start < :until AND (gap_end IS NULL OR gap_end > :since)
    ORDER BY gap_start
    """,
)


async def fetch_gaps(
    engine: AsyncEngine, wallet: str, token: str | None, *, since: datetime, until: datetime
) -> list[Gap]:
    """The gaps that overlap [since, until], oldest first: when neither the pair's room nor its
    wallet's was listened to; or, with no token, when no room of the wallet was (neither its
    own nor any of its tokens': one token's gaps are that pair's). Before the first listening
    period there is no gap: it was not watched, or watched by a version that kept no periods."""
    params = {"wallet": wallet, "token": token, "since": since, "until": until}
    async with engine.connect() as connection:
        result = await connection.execute(_GAPS, params)
        return [Gap(row.gap_start, row.gap_end, row.reason) for row in result]
