"""The balance rows' write loop: what to write next, when, and in which order.

`add` never waits for the database, so the websocket read loop never stalls behind it: rows
wait in the buffer (memory, then the spool). A batch is written when it is full or when its
oldest row reaches the flush age, whichever comes first, as one COPY on a connection of its
own (rows from the spool go with their checkpoint, see replay.py). A failed batch stays where
it was and is retried with backoff, so order is kept and nothing is dropped. When the spool
reaches its bound, `may_read` is cleared and the websocket stops reading until it drains.
Subscription states and rejected frames are not written here (bookkeeping.py): nothing about
them can hold balance rows up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.engine import URL

from balancewatch.aio import Backoff, finish_despite_cancel, wait_first
from balancewatch.logs import describe_error, get_logger
from balancewatch.pipeline.buffer import Buffer
from balancewatch.pipeline.fencing import Fenced
from balancewatch.pipeline.pair_ids import PairIds
from balancewatch.pipeline.records import PairKey, Rows, Tail
from balancewatch.pipeline.replay import SpoolReplay, Written, store_lines, store_rows, written
from balancewatch.pipeline.spool import Spool
from balancewatch.settings import Settings, config_from
from balancewatch.store.db import DB_ERRORS, DedicatedConnection, RawConnection
from balancewatch.store.writes import BatchFenced

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class WriterConfig:
    batch_size: int
    flush_interval: float
    drain_timeout: float
    write_timeout: float
    max_buffered_rows: int
    durable: bool
    spool_max_bytes: int
    spool_fsync_interval: float
    retry_initial: float = 0.2
    retry_max: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> WriterConfig:
        return config_from(settings, cls, durable=settings.spool_mode == "durable")


@dataclass(slots=True)
class Batch:
    rows: Rows = field(default_factory=Rows)
    from_spool: bool = False
    oldest: float | None = None


# Told of every committed write: rows, seconds, the newest received_at (for the metrics).
WriteObserver = Callable[[int, float, datetime | None], None]


class Writer:
    def __init__(
        self,
        url: URL,
        spool: Spool,
        config: WriterConfig,
        observe: WriteObserver | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._observe = observe
        self._spool = spool
        self._config = config
        self._batch_size = config.batch_size
        self._buffer = Buffer(
            spool, max_memory_rows=config.max_buffered_rows, durable=config.durable
        )
        # Each pair's id, kept for the life of the process (10,000 pairs: about 2 MB).
        self._pairs = PairIds()
        self._replay = SpoolReplay(
            spool,
            self._pairs,
            batch_size=config.batch_size,
            timeout=config.write_timeout,
            clock=clock,
        )
        self._connection = DedicatedConnection(url, role="writer", timeout=config.write_timeout)
        self._work = asyncio.Event()
        # True while the loop waits on `_work` for a first row: only then does `add` set it
        # (a method call a row saved; it is cleared nowhere else).
        self._idle = True
        self._full = asyncio.Event()
        self._batch_stored = asyncio.Event()
        self._retry = Backoff(config.retry_initial, config.retry_max)
        # Set while the websocket may read on; cleared when the spool is full (backpressure).
        self.may_read = asyncio.Event()
        self.may_read.set()
        self.rows_written = 0
        self.rows_fenced = 0

    @property
    def pending_rows(self) -> int:
        return len(self._buffer)

    @property
    def pending_in_memory(self) -> int:
        return len(self._buffer.memory)

    def add(self, pair: PairKey, tail: Tail) -> None:
        """A row, as its pair's key and its line's tail (records.py)."""
        buffer = self._buffer
        buffer.add(pair, tail)
        if self._idle:
            self._idle = False
            self._work.set()
        if buffer.spilled:
            if len(buffer) >= self._batch_size:
                self._full.set()
            if self._spool.total_bytes >= self._config.spool_max_bytes:
                self._spool_full()
        elif len(buffer.memory.tails) >= self._batch_size:  # len(buffer), not the spool's part
            self._full.set()

    async def run(self, drain: asyncio.Event) -> None:
        """Flush until `drain` is set, then store (or spool) what is left. A cancellation
        also drains first."""
        fsync = asyncio.create_task(self._fsync_spool(drain))
        try:
            # Connected before the first rows arrive, not in the middle of their burst. If
            # the database is away, the first flush finds out and retries, losing nothing.
            with contextlib.suppress(*DB_ERRORS):
                await asyncio.wait_for(self._connection.get(), timeout=self._config.drain_timeout)
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
        return await finish_despite_cancel(
            self._write(batch), self._config.drain_timeout, lambda done: self._settle(done, batch)
        )

    async def caught_up(self, timeout: float) -> None:
        """Until every row waiting now is stored, or `timeout` passes: a handover waits so that
        the rows of the shards it gives up are in the database when the new owner starts."""
        self._full.set()
        deadline = time.monotonic() + timeout
        while self._buffer.has_rows() and time.monotonic() < deadline:
            self._batch_stored.clear()
            await wait_first(self._batch_stored, timeout=deadline - time.monotonic())

    async def close(self) -> None:
        """Close the writer's connection (`run` does, once drained)."""
        await self._connection.close()

    async def _wait_for_batch(self, drain: asyncio.Event) -> bool:
        """True when a batch is due: full, or its oldest row old enough."""
        if not self._buffer.has_rows():
            self._work.clear()
            self._idle = True
            await wait_first(self._work, drain, timeout=None)
            if not self._buffer.has_rows():
                return False
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
        return batch

    def _settle(self, write: asyncio.Future[Written], batch: Batch) -> bool:
        error = None if write.cancelled() else write.exception()
        if not write.cancelled() and error is None:
            self._stored(write.result())
            return True
        self._buffer.restore_memory(batch.rows, batch.oldest)
        if error is not None and not isinstance(error, DB_ERRORS):
            raise error
        log.warning(
            "writer.flush_failed",
            error="cancelled" if error is None else describe_error(error),
            pending=len(self._buffer),
            spooled_bytes=self._spool.total_bytes,
        )
        return False

    def _stored(self, batch: Written) -> None:
        self._batch_stored.set()
        self.rows_written += batch.rows
        if batch.refused:
            self.rows_fenced += batch.refused
            log.warning(
                "writer.rows_fenced",
                rows=batch.refused,
                message="received after this replica's lease on their shard had ended: "
                "another replica holds it, and stores them",
            )
        if batch.spool_end is None:
            return
        paused = not self.may_read.is_set()
        caught_up = self._replay.stored(batch, free_all=paused)
        self._buffer.spool_stored(batch.rows, caught_up)
        if paused and self._spool.total_bytes < self._config.spool_max_bytes * 0.9:
            log.info("writer.spool_has_room", spooled_bytes=self._spool.total_bytes)
            self.may_read.set()

    def _spool_full(self) -> None:
        if self.may_read.is_set():
            log.error(
                "writer.spool_full",
                spooled_bytes=self._spool.total_bytes,
                message="reading paused until the database takes rows again",
            )
            self.may_read.clear()

    async def _write(self, batch: Batch) -> Written:
        started = time.monotonic()
        raw = await self._connection.get()
        try:
            if batch.from_spool:
                result = await self._replay.write_next(raw)
            else:
                result = written(await self._store_memory_batch(raw, batch.rows))
        except BaseException:
            # Broken, or cancelled in the middle of a COPY: this connection is never reused.
            self._connection.discard()
            raise
        if self._observe is not None:  # committed: once per batch, never per row
            self._observe(result.rows, time.monotonic() - started, result.newest)
        return result

    async def _store_memory_batch(self, raw: RawConnection, rows: Rows) -> Fenced:
        timeout = self._config.write_timeout
        return await self._pairs.known_for(raw, lambda: self._store_fenced(raw, rows), timeout)

    async def _store_fenced(self, raw: RawConnection, rows: Rows) -> Fenced:
        timeout = self._config.write_timeout
        try:
            return await store_rows(raw, rows, self._pairs, timeout)  # one COPY, its trigger
        except BatchFenced:
            async with raw.transaction():
                return await store_lines(raw, rows.lines(), self._pairs, timeout, split=True)

    async def _fsync_spool(self, drain: asyncio.Event) -> None:
        while not drain.is_set():
            await wait_first(drain, timeout=self._config.spool_fsync_interval)
            try:
                await asyncio.to_thread(self._spool.sync)
            except OSError as exc:  # a disk error: said, and tried again at the next turn
                log.error("writer.spool_fsync_failed", error=describe_error(exc))

    async def _drain(self) -> None:
        """Store what is in memory before the deadline; spool whatever the database would not
        take in time. Rows already in the spool stay there for the next start."""
        deadline = time.monotonic() + self._config.drain_timeout
        while self._buffer.memory and time.monotonic() < deadline:
            if not await self.flush():
                await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        # In front of any newer rows this process spilled: ids stay in arrival order.
        unstored = self._buffer.spool_memory()
        if unstored:
            log.warning("writer.spooled_on_exit", rows=len(unstored))
        log.info(
            "writer.drained", rows_written=self.rows_written, spooled_bytes=self._spool.total_bytes
        )
