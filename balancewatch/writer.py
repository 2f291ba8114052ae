"""The write path: a buffer that flushes balance rows (COPY) and status changes in batches.

`add` never waits for the database, so the websocket read loop never stalls behind it. The
flush loop writes a batch when it is full or when its oldest row reaches the flush age,
whichever comes first, in one transaction; a failed batch goes back to the front of the
buffer and is retried, so order is kept and nothing is dropped while the process runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.aio import wait_first
from balancewatch.backoff import Backoff
from balancewatch.db import driver_connection
from balancewatch.logs import describe_error, get_logger
from balancewatch.rooms import Pair

log = get_logger(__name__)

BalanceRow = tuple[str, str, Decimal, datetime]  # wallet, token, amount, received_at
_COLUMNS = ("wallet", "token", "amount", "received_at")
# received_at, reason, detail, room, frame, frame_size
RejectedRow = tuple[datetime, str, str, str | None, str, int]
_REJECTED_COLUMNS = ("received_at", "reason", "detail", "room", "frame", "frame_size")

_UPSERT_STATUS = """
INSERT INTO subscription_status AS s (wallet, token, state, since, last_error, updated_at)
SELECT u.wallet, u.token, u.state, u.since, u.last_error, now()
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[])
    AS u(wallet, token, state, since, last_error)
ON CONFLICT (wallet, token) DO UPDATE SET
    state = excluded.state,
    since = CASE WHEN s.state = excluded.state THEN s.since ELSE excluded.since END,
    last_error = COALESCE(excluded.last_error, s.last_error),
    updated_at = excluded.updated_at
"""

WRITE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, SQLAlchemyError)


@dataclass(frozen=True, slots=True)
class StatusChange:
    state: str
    since: datetime
    error: str | None


@dataclass(frozen=True, slots=True)
class WriterConfig:
    batch_size: int
    flush_interval: float
    drain_timeout: float = 5.0
    retry_initial: float = 0.5
    retry_max: float = 10.0
    # Rejected frames wait in memory for the database too; past this many, the oldest are
    # dropped (and counted): they are evidence, not data, and must not grow memory unbounded.
    max_rejected_pending: int = 10_000


class Writer:
    def __init__(self, engine: AsyncEngine, config: WriterConfig) -> None:
        self._engine = engine
        self._config = config
        self._rows: list[BalanceRow] = []
        self._oldest: float | None = None  # monotonic time the oldest buffered row arrived
        self._status: dict[Pair, StatusChange] = {}
        self._rejected: list[RejectedRow] = []
        self.rejected_dropped = 0
        self._work = asyncio.Event()
        self._full = asyncio.Event()
        self._retry = Backoff(config.retry_initial, config.retry_max)
        self.rows_written = 0

    @property
    def pending_rows(self) -> int:
        return len(self._rows)

    def add(self, wallet: str, token: str, amount: Decimal, received_at: datetime) -> None:
        if not self._rows:
            self._oldest = time.monotonic()
        self._rows.append((wallet, token, amount, received_at))
        self._work.set()
        if len(self._rows) >= self._config.batch_size:
            self._full.set()

    def add_rejected(self, row: RejectedRow) -> None:
        """Keep a rejected frame for the rejected_messages table (written with the next batch)."""
        if len(self._rejected) >= self._config.max_rejected_pending:
            del self._rejected[0]
            self.rejected_dropped += 1
        self._rejected.append(row)
        self._work.set()

    def set_status(self, pairs: Iterable[Pair], state: str, error: str | None = None) -> None:
        """Record a state change; of several for one pair before a flush, the last one wins."""
        since = datetime.now(UTC)
        change = StatusChange(state, since, error)
        for pair in pairs:
            self._status[pair] = change
        if self._status:
            self._work.set()

    async def run(self, drain: asyncio.Event) -> None:
        """Flush until `drain` is set, then write what is left. Cancelling also drains first."""
        try:
            while not drain.is_set():
                if await self._wait_for_batch(drain):
                    await self._flush_with_retry(drain)
        finally:
            # The cancellation has been delivered: these awaits run unless cancelled again.
            await self._drain()

    async def _wait_for_batch(self, drain: asyncio.Event) -> bool:
        """True when a batch is due: full, old enough, or status changes waiting."""
        if not self._rows and not self._status and not self._rejected:
            self._work.clear()
            await wait_first(self._work, drain, timeout=None)
        if self._status or self._rejected or not self._rows:
            return bool(self._status or self._rejected or self._rows)
        assert self._oldest is not None
        age = time.monotonic() - self._oldest
        remaining = self._config.flush_interval - age
        if remaining > 0 and len(self._rows) < self._config.batch_size:
            self._full.clear()
            await wait_first(self._full, drain, timeout=remaining)
        return True

    async def _flush_with_retry(self, drain: asyncio.Event) -> None:
        if await self.flush():
            self._retry.reset()
            return
        await wait_first(drain, timeout=self._retry.next_delay())

    async def flush(self) -> bool:
        """Write one batch; on failure put it back in front and return False.

        A cancellation lets the write under way finish (within drain_timeout) before it is
        re-raised, so a batch is never taken out of the buffer and then forgotten.
        """
        oldest = self._oldest
        rows = self._take_rows()
        status, self._status = self._status, {}
        rejected, self._rejected = self._rejected, []
        write = asyncio.ensure_future(self._write(rows, status, rejected))
        try:
            await asyncio.wait([write])  # unlike awaiting it, a cancellation leaves it running
        except asyncio.CancelledError:
            await asyncio.wait([write], timeout=self._config.drain_timeout)
            if not write.done():
                write.cancel()
                await asyncio.wait([write])
            self._settle(write, rows, status, oldest, rejected)
            raise
        return self._settle(write, rows, status, oldest, rejected)

    def _settle(
        self,
        write: asyncio.Future[None],
        rows: list[BalanceRow],
        status: dict[Pair, StatusChange],
        oldest: float | None,
        rejected: list[RejectedRow],
    ) -> bool:
        error = None if write.cancelled() else write.exception()
        if not write.cancelled() and error is None:
            self.rows_written += len(rows)
            return True
        self._rows[:0] = rows
        if rows:
            self._oldest = oldest
        status.update(self._status)
        self._status = status
        self._rejected[:0] = rejected
        if error is not None and not isinstance(error, WRITE_ERRORS):
            raise error
        log.warning(
            "writer.flush_failed",
            error="cancelled" if error is None else describe_error(error),
            rows=len(rows),
            pending=len(self._rows),
        )
        return False

    def _take_rows(self) -> list[BalanceRow]:
        size = self._config.batch_size
        if len(self._rows) <= size:
            rows, self._rows = self._rows, []
            self._oldest = None
        else:
            # What is left keeps the batch's age: it has waited at least that long.
            rows = self._rows[:size]
            del self._rows[:size]
        return rows

    async def _write(
        self,
        rows: list[BalanceRow],
        status: dict[Pair, StatusChange],
        rejected: list[RejectedRow],
    ) -> None:
        async with self._engine.connect() as connection:
            raw = await driver_connection(connection)
            async with raw.transaction():
                if rows:
                    await raw.copy_records_to_table(
                        "balance_history", records=rows, columns=_COLUMNS
                    )
                if rejected:
                    await raw.copy_records_to_table(
                        "rejected_messages", records=rejected, columns=_REJECTED_COLUMNS
                    )
                if status:
                    await raw.execute(_UPSERT_STATUS, *_status_columns(status))

    async def _drain(self) -> None:
        deadline = time.monotonic() + self._config.drain_timeout
        while (self._rows or self._status or self._rejected) and time.monotonic() < deadline:
            if not await self.flush():
                await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        if self._rows or self._status:
            log.error("writer.rows_lost", rows=len(self._rows), status_changes=len(self._status))
        else:
            log.info("writer.drained", rows_written=self.rows_written)


def _status_columns(
    status: dict[Pair, StatusChange],
) -> tuple[list[str], list[str], list[str], list[datetime], list[str | None]]:
    pairs = list(status)
    changes = [status[pair] for pair in pairs]
    return (
        [wallet for wallet, _ in pairs],
        [token for _, token in pairs],
        [change.state for change in changes],
        [change.since for change in changes],
        [change.error for change in changes],
    )
