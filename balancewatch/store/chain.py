"""What the balances read from the chain write and read: their `snapshot` and `check` rows, the
hourly counts of reads by result, the RPC answers refused, and the newest stored amount of the
pairs being checked."""

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
    async with engine.connect() as conn:
        result = await conn.execute(
            text(_NEWEST_AMOUNTS),
            {"wallets": [wallet for wallet, _ in pairs], "tokens": [token for _, token in pairs]},
        )
        return {(row.wallet, row.token): row.amount for row in result}
