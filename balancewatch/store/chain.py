"""What the balances read from the chain write and read: their `snapshot` and `check` rows, the
hourly counts of reads by result, the RPC answers refused, and the newest stored amount of the
pairs being checked, or of every token of the wallets being read whole."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.domain import ChainReadKind, ChainReadResult, Pair, RowSource
from balancewatch.store.db import RawConnection

# A balance read from the chain: wallet, token, amount, received_at, source, slot.
ChainRow = tuple[str, str, Decimal, datetime, RowSource, int]
CHAIN_ROW_COLUMNS: Final = ("wallet", "token", "amount", "received_at", "source", "slot")
# An RPC answer not taken: received_at, wallet, token (None for a whole wallet's read), reason,
# detail, answer.
RpcFailureRow = tuple[datetime, str, str | None, str, str, str | None]
RPC_FAILURE_COLUMNS: Final = ("received_at", "wallet", "token", "reason", "detail", "answer")
ReadCounts = Mapping[tuple[ChainReadKind, ChainReadResult], int]

_ADD_READ_COUNTS: Final = """
INSERT INTO chain_reads AS r (hour, kind, result, reads)
SELECT date_trunc('hour', now()), c.kind, c.result, c.reads
FROM unnest($1::text[], $2::text[], $3::bigint[]) AS c(kind, result, reads)
ON CONFLICT (hour, kind, result) DO UPDATE SET reads = r.reads + excluded.reads
"""
# The newest row of each pair, one index probe each, through a function the daemon's role may
# run without reading the history (migration 0006).
_NEWEST_AMOUNTS: Final = """
SELECT wallet, token, amount
FROM newest_amounts(CAST(:wallets AS text[]), CAST(:tokens AS text[]))
"""
# The same for every token the history has of each wallet (migration 0008).
_NEWEST_AMOUNTS_OF: Final = """
SELECT w.wallet, n.token, n.amount
FROM unnest(CAST(:wallets AS text[])) AS w(wallet)
CROSS JOIN LATERAL newest_amounts_of(w.wallet) AS n
"""


async def copy_chain_rows(raw: RawConnection, rows: Sequence[ChainRow], timeout: float) -> None:
    await raw.copy_records_to_table(
        "balance_history", records=rows, columns=CHAIN_ROW_COLUMNS, timeout=timeout
    )


async def copy_rpc_failures(
    raw: RawConnection, rows: Sequence[RpcFailureRow], timeout: float
) -> None:
    await raw.copy_records_to_table(
        "rpc_failures", records=rows, columns=RPC_FAILURE_COLUMNS, timeout=timeout
    )


async def add_read_counts(raw: RawConnection, counts: ReadCounts, timeout: float) -> None:
    """Add to this hour's counts of chain reads by kind and result."""
    keys = list(counts)
    await raw.execute(
        _ADD_READ_COUNTS,
        [kind for kind, _ in keys],
        [result for _, result in keys],
        [counts[key] for key in keys],
        timeout=timeout,
    )


async def newest_amounts(engine: AsyncEngine, pairs: Sequence[Pair]) -> dict[Pair, Decimal]:
    """The newest stored amount of each pair that has a row at all."""
    wallets, tokens = [wallet for wallet, _ in pairs], [token for _, token in pairs]
    return await _amounts(engine, _NEWEST_AMOUNTS, {"wallets": wallets, "tokens": tokens})


async def newest_amounts_of(engine: AsyncEngine, wallets: Sequence[str]) -> dict[Pair, Decimal]:
    """The newest stored amount of every token the history has of each wallet."""
    return await _amounts(engine, _NEWEST_AMOUNTS_OF, {"wallets": list(wallets)})


async def _amounts(
    engine: AsyncEngine, query: str, params: dict[str, object]
) -> dict[Pair, Decimal]:
    async with engine.connect() as conn:
        result = await conn.execute(text(query), params)
        return {(row.wallet, row.token): row.amount for row in result}
