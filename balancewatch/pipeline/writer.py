"""The write path: batches of balance rows (COPY), rejected frames and status changes.

`add` never waits for the database, so the websocket read loop never stalls behind it: rows
wait in the buffer (memory, then the spool). The flush loop writes a batch when it is full or
when its oldest row reaches the flush age, whichever comes first, in one transaction (a batch
of rows alone is one COPY, atomic by itself), on a connection of its own. A failed batch stays
where it was and is retried with backoff, so order is kept and nothing is dropped. Rows from
the spool are written together with the spool checkpoint, in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.aio import wait_first
from balancewatch.backoff import Backoff
from balancewatch.domain import Pair, PairState
from balancewatch.logs import describe_error, get_logger
from balancewatch.pipeline.buffer import Buffer
from balancewatch.pipeline.records import (
    BALANCE_COLUMNS,
    REJECTED_COLUMNS,
    BalanceLine,
    RejectedRow,
    received_at,
)
from balancewatch.pipeline.spool import Position, Spool
from balancewatch.progress import Progress
from balancewatch.store.db import DB_ERRORS, connect_raw

log = get_logger(__name__)

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
_READ_CHECKPOINT = "SELECT segment, position FROM spool_checkpoint WHERE spool_id = $1 FOR UPDATE"
_WRITE_CHECKPOINT = """
INSERT INTO spool_checkpoint (spool_id, segment, position, updated_at) VALUES ($1, $2, $3, now())
ON CONFLICT (spool_id) DO UPDATE
SET segment = excluded.segment, position = excluded.position, updated_at = now()
"""


@dataclass(frozen=True, slots=True)
class StatusChange:
    state: PairState
    since: datetime
    error: str | None


@dataclass(frozen=True, slots=True)
class WriterConfig:
    batch_size: int
    flush_interval: float
    drain_timeout: float = 5.0
    retry_initial: float = 0.2
    retry_max: float = 5.0
    write_timeout: float = 30.0
    max_memory_rows: int = 100_000
    durable: bool = False
    spool_max_bytes: int = 1024**3
    spool_fsync_interval: float = 1.0
    # Rejected frames wait in memory for the database too; past this many, the oldest are
    # dropped (and counted): they are evidence, not data, and must not grow memory unbounded.
    max_rejected_pending: int = 10_000


@dataclass(slots=True)
class Batch:
    rows: list[BalanceLine] = field(default_factory=list)
    from_spool: bool = False
    oldest: float | None = None
    status: dict[Pair, StatusChange] = field(default_factory=dict)
    rejected: list[RejectedRow] = field(default_factory=list)


@dataclass(slots=True)
class Written:
    rows: int
    spool_end: Position | None = None
    newest: datetime | None = None  # received_at of the last row written


# Told of every committed write: rows, seconds, the newest received_at (for the metrics).
WriteObserver = Callable[[int, float, datetime | None], None]


class Writer:
    def __init__(
        self,
        engine: AsyncEngine,
        spool: Spool,
        config: WriterConfig,
        observe: WriteObserver | None = None,
    ) -> None:
        self._engine = engine
        self._observe = observe
        self._replay = Progress("writer.spool_replay_progress")
        self._replayed = 0
        self._spool = spool
        self._config = config
        self._buffer = Buffer(spool, max_memory_rows=config.max_memory_rows, durable=config.durable)
        self._status: dict[Pair, StatusChange] = {}
        self._rejected: list[RejectedRow] = []
        self._work = asyncio.Event()
        self._full = asyncio.Event()
        self._retry = Backoff(config.retry_initial, config.retry_max)
        # Set while the reader may go on; cleared when the spool is full (backpressure).
        self.room = asyncio.Event()
        self.room.set()
        self._connection: Any = None  # asyncpg's, opened on the first write
        self.rows_written = 0
        self.rejected_dropped = 0

    @property
    def pending_rows(self) -> int:
        return len(self._buffer)

    @property
    def pending_in_memory(self) -> int:
        return len(self._buffer.memory)

    def add(self, line: BalanceLine) -> None:
        self._buffer.add(line)
        self._work.set()
        if len(self._buffer) >= self._config.batch_size:
            self._full.set()
        if self._buffer.spilled and self._spool.total_bytes >= self._config.spool_max_bytes:
            self._spool_full()

    def add_rejected(self, row: RejectedRow) -> None:
        """Keep a rejected frame for the rejected_messages table (written with the next batch)."""
        if len(self._rejected) >= self._config.max_rejected_pending:
            del self._rejected[0]
            self.rejected_dropped += 1
        self._rejected.append(row)
        self._work.set()

    def set_status(self, pairs: Iterable[Pair], state: PairState, error: str | None = None) -> None:
        """Record a state change; of several for one pair before a flush, the last one wins."""
        change = StatusChange(state, datetime.now(UTC), error)
        for pair in pairs:
            self._status[pair] = change
        if self._status:
            self._work.set()

    async def run(self, drain: asyncio.Event) -> None:
        """Flush until `drain` is set, then store (or spool) what is left. A cancellation
        also drains first."""
        fsync = asyncio.create_task(self._fsync_spool(drain))
        try:
            # Connected before the first rows arrive, not in the middle of their burst. If
            # the database is away, the first flush finds out and retries, losing nothing.
            with contextlib.suppress(*DB_ERRORS):
                await asyncio.wait_for(self._connect(), timeout=self._config.drain_timeout)
            while not drain.is_set():
                if await self._wait_for_batch(drain):
                    await self._flush_with_retry(drain)
        finally:
            # The cancellation has been delivered: these awaits run unless cancelled again.
            await self._drain()
            fsync.cancel()
            await self.close()
            await asyncio.to_thread(self._spool.sync)

    async def flush(self) -> bool:
        """Write one batch; on failure keep it where it was and return False.

        A cancellation lets the write under way finish (within drain_timeout) before it is
        re-raised, so a batch is never taken out of the buffer and then forgotten.
        """
        batch = self._take_batch()
        write = asyncio.ensure_future(self._write(batch))
        try:
            await asyncio.wait([write])  # unlike awaiting it, a cancellation leaves it running
        except asyncio.CancelledError:
            await asyncio.wait([write], timeout=self._config.drain_timeout)
            if not write.done():
                write.cancel()
                await asyncio.wait([write])
            self._settle(write, batch)
            raise
        return self._settle(write, batch)

    async def close(self) -> None:
        """Close the writer's connection (`run` does, once drained)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(*DB_ERRORS):
                await connection.close(timeout=self._config.drain_timeout)

    def _has_work(self) -> bool:
        return self._buffer.has_rows() or bool(self._status) or bool(self._rejected)

    async def _wait_for_batch(self, drain: asyncio.Event) -> bool:
        """True when a batch is due: full, old enough, or status or rejects waiting."""
        if not self._has_work():
            self._work.clear()
            await wait_first(self._work, drain, timeout=None)
        if not self._buffer.has_rows():
            return self._has_work()
        oldest = self._buffer.oldest
        age = time.monotonic() - oldest if oldest is not None else 0.0
        remaining = self._config.flush_interval - age
        if remaining > 0 and len(self._buffer) < self._config.batch_size:
            self._full.clear()
            await wait_first(self._full, drain, timeout=remaining)
        return True

    async def _flush_with_retry(self, drain: asyncio.Event) -> None:
        if await self.flush():
            self._retry.reset()
            return
        await wait_first(drain, timeout=self._retry.next_delay())

    def _take_batch(self) -> Batch:
        batch = Batch(oldest=self._buffer.oldest)
        if self._buffer.memory:
            batch.rows = self._buffer.take_memory(self._config.batch_size)
        else:
            batch.from_spool = self._buffer.spilled
        batch.status, self._status = self._status, {}
        batch.rejected, self._rejected = self._rejected, []
        return batch

    def _settle(self, write: asyncio.Future[Written], batch: Batch) -> bool:
        error = None if write.cancelled() else write.exception()
        if not write.cancelled() and error is None:
            self._stored(write.result())
            return True
        self._buffer.restore_memory(batch.rows, batch.oldest)
        batch.status.update(self._status)
        self._status = batch.status
        self._rejected[:0] = batch.rejected
        if error is not None and not isinstance(error, DB_ERRORS):
            raise error
        log.warning(
            "writer.flush_failed",
            error="cancelled" if error is None else describe_error(error),
            pending=len(self._buffer),
            spooled_bytes=self._spool.total_bytes,
        )
        return False

    def _stored(self, written: Written) -> None:
        self.rows_written += written.rows
        if written.spool_end is None:
            return
        caught_up = written.spool_end >= self._spool.end()
        self._buffer.spool_stored(written.rows, caught_up)
        # When reading is paused for space, a caught-up spool gives all of its space back.
        self._spool.release(written.spool_end, force_rotate=not self.room.is_set())
        self._replay_progress(written, caught_up)
        if caught_up:
            log.info("writer.spool_replayed", rows_written=self.rows_written)
        if not self.room.is_set() and self._spool.total_bytes < self._config.spool_max_bytes * 0.9:
            log.info("writer.spool_has_room", spooled_bytes=self._spool.total_bytes)
            self.room.set()

    def _replay_progress(self, written: Written, caught_up: bool) -> None:
        if not self._replay.active:
            self._replay.start()
            self._replayed = 0
        self._replayed += written.rows
        if caught_up:
            self._replay.finish("writer.spool_replay_done", rows_replayed=self._replayed)
            return
        # Older segments are gone by now: what is left is the rest of this one and the newer.
        offset = written.spool_end.offset if written.spool_end is not None else 0
        remaining = max(0, self._spool.total_bytes - offset)
        self._replay.update(rows_replayed=self._replayed, remaining_bytes=remaining)

    def _spool_full(self) -> None:
        if self.room.is_set():
            log.error(
                "writer.spool_full",
                spooled_bytes=self._spool.total_bytes,
                message="reading paused until the database takes rows again",
            )
            self.room.clear()

    async def _write(self, batch: Batch) -> Written:
        started = time.monotonic()
        raw = await self._connect()
        try:
            written = await self._write_on(raw, batch)
        except BaseException:
            # Broken, or cancelled in the middle of a COPY: this connection is never reused.
            self._connection = None
            raw.terminate()
            raise
        if self._observe is not None:  # committed: once per batch, never per row
            self._observe(written.rows, time.monotonic() - started, written.newest)
        return written

    async def _connect(self) -> Any:
        """The writer's own connection, kept from batch to batch and opened again after any
        failure: a pool checkout, with its pre-ping, took a tenth of each batch's time."""
        if self._connection is None or self._connection.is_closed():
            self._connection = await connect_raw(
                self._engine.url, role="writer", timeout=self._config.write_timeout
            )
        return self._connection

    async def _write_on(self, raw: Any, batch: Batch) -> Written:
        timeout = self._config.write_timeout
        written = Written(len(batch.rows), newest=_newest(batch.rows))
        if batch.rows and not (batch.rejected or batch.status):
            # One COPY is atomic by itself: no BEGIN and COMMIT round trips.
            await _copy_lines(raw, batch.rows, timeout)
            return written
        async with raw.transaction():
            if batch.from_spool:
                written = await self._copy_from_spool(raw)
            elif batch.rows:
                await _copy_lines(raw, batch.rows, timeout)
            if batch.rejected:
                await raw.copy_records_to_table(
                    "rejected_messages",
                    records=batch.rejected,
                    columns=REJECTED_COLUMNS,
                    timeout=timeout,
                )
            if batch.status:
                await raw.execute(_UPSERT_STATUS, *_status_columns(batch.status), timeout=timeout)
        return written

    async def _copy_from_spool(self, raw: Any) -> Written:
        """The next rows after the committed checkpoint, and the checkpoint moved past them."""
        spool = self._spool
        timeout = self._config.write_timeout
        found = await raw.fetchrow(_READ_CHECKPOINT, spool.spool_id, timeout=timeout)
        start = Position(found["segment"], found["position"]) if found else spool.start()
        if start > spool.end():
            log.warning("writer.spool_reset", checkpoint=str(start), end=str(spool.end()))
            start = spool.start()
        rows, end = spool.read(start, self._config.batch_size)
        if rows:
            await _copy_lines(raw, rows, timeout)
        await raw.execute(
            _WRITE_CHECKPOINT, spool.spool_id, end.segment, end.offset, timeout=timeout
        )
        return Written(len(rows), spool_end=end, newest=_newest(rows))

    async def _fsync_spool(self, drain: asyncio.Event) -> None:
        while not drain.is_set():
            await wait_first(drain, timeout=self._config.spool_fsync_interval)
            await asyncio.to_thread(self._spool.sync)

    async def _drain(self) -> None:
        """Store what is in memory before the deadline; spool whatever the database would not
        take in time. Rows already in the spool stay there for the next start."""
        deadline = time.monotonic() + self._config.drain_timeout
        while self._buffer.memory or self._status or self._rejected:
            if time.monotonic() >= deadline:
                break
            if await self.flush():
                continue
            await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        unstored = self._buffer.spool_memory()
        if unstored:
            log.warning("writer.spooled_on_exit", rows=len(unstored))
        if self._status or self._rejected:
            log.warning(
                "writer.not_stored_on_exit",
                status_changes=len(self._status),
                rejected_frames=len(self._rejected),
            )
        log.info(
            "writer.drained",
            rows_written=self.rows_written,
            spooled_bytes=self._spool.total_bytes,
        )


async def _copy_lines(raw: Any, lines: list[BalanceLine], timeout: float) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"".join(lines)

    await raw.copy_to_table(
        "balance_history", source=chunks(), columns=BALANCE_COLUMNS, timeout=timeout
    )


def _newest(lines: list[BalanceLine]) -> datetime | None:
    return received_at(lines[-1]) if lines else None


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
