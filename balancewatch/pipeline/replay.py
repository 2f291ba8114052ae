"""Spool replay: the spooled rows written to the database in order, each batch in one
transaction with the spool checkpoint that says where the next one starts. A replay after a
crash so starts exactly after the last stored row: no row is lost or stored twice."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from balancewatch.logs import get_logger
from balancewatch.pipeline.fencing import Fenced, fence
from balancewatch.pipeline.pair_ids import PairIds
from balancewatch.pipeline.records import BalanceLine, Rows, received_at
from balancewatch.pipeline.spool import Position, Spool
from balancewatch.progress import Progress
from balancewatch.store import writes
from balancewatch.store.db import RawConnection

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Written:
    rows: int
    spool_end: Position | None = None  # for a spool batch: just after its last row
    newest: datetime | None = None  # received_at of the last row written
    refused: int = 0  # rows the fencing check refused (received after their lease was lost)


def written(fenced: Fenced, spool_end: Position | None = None) -> Written:
    lines = fenced.kept  # lines, or the tails of rows from memory: received_at reads either
    newest = received_at(lines[-1]) if lines else None
    return Written(len(lines), spool_end, newest, fenced.refused)


async def store_lines(
    raw: RawConnection,
    lines: list[BalanceLine],
    pairs: PairIds,
    timeout: float,
    *,
    split: bool = False,
) -> Fenced:
    """Every row in one COPY (the fencing trigger checks them: BatchFenced if it refuses); or,
    with `split`, after such a refusal, only the rows that pass. Inside the caller's
    transaction when `split`, or when a checkpoint goes with them. UnknownPairs, before
    anything is written, if an id is missing (see PairIds.known_for)."""
    fenced = await fence(raw, lines, timeout) if split else Fenced(lines, 0)
    if fenced.kept:
        await writes.copy_balance_rows(raw, pairs.rows(fenced.kept), timeout)
    return fenced


async def store_rows(raw: RawConnection, rows: Rows, pairs: PairIds, timeout: float) -> Fenced:
    """`store_lines(raw, rows.lines(), pairs, timeout)` without making the lines (the rows of
    a memory batch); what it keeps are the rows' tails."""
    if rows:
        await writes.copy_balance_rows(raw, pairs.copy_rows(rows), timeout)
    return Fenced(rows.tails, 0)


class SpoolReplay:
    def __init__(
        self,
        spool: Spool,
        pairs: PairIds,
        *,
        batch_size: int,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._spool = spool
        self._pairs = pairs
        self._batch_size = batch_size
        self._timeout = timeout
        self._progress = Progress("writer.spool_replay_progress", clock=clock)
        self._replayed = 0

    async def write_next(self, raw: RawConnection) -> Written:
        """The next rows after the committed checkpoint, and the checkpoint moved past them
        (the rows that pass the fencing check, if it refused some)."""
        return await self._pairs.known_for(raw, lambda: self._write_fenced(raw), self._timeout)

    async def _write_fenced(self, raw: RawConnection) -> Written:
        try:
            return await self._write_next(raw, split=False)
        except writes.BatchFenced:
            return await self._write_next(raw, split=True)

    async def _write_next(self, raw: RawConnection, *, split: bool) -> Written:
        spool = self._spool
        async with raw.transaction():
            found = await writes.read_checkpoint(raw, spool.spool_id, self._timeout)
            start = Position(*found) if found else spool.start()
            if start > spool.end():
                log.warning("writer.spool_reset", checkpoint=str(start), end=str(spool.end()))
                start = spool.start()
            rows, end = spool.read(start, self._batch_size)
            fenced = await store_lines(raw, rows, self._pairs, self._timeout, split=split)
            await writes.write_checkpoint(
                raw, spool.spool_id, end.segment, end.offset, self._timeout
            )
        return written(fenced, end)

    def stored(self, batch: Written, *, free_all: bool) -> bool:
        """A batch was committed: give its space back; True once the spool is caught up.
        `free_all`: even a small caught-up segment goes (reading waits for space)."""
        assert batch.spool_end is not None
        caught_up = batch.spool_end >= self._spool.end()
        self._spool.release(batch.spool_end, force_rotate=free_all)
        self._report(batch, caught_up)
        return caught_up

    def _report(self, batch: Written, caught_up: bool) -> None:
        if not self._progress.active:
            self._progress.start()
            self._replayed = 0
        self._replayed += batch.rows
        if caught_up:
            self._progress.finish("writer.spool_replay_done", rows_replayed=self._replayed)
            log.info("writer.spool_replayed", rows_replayed=self._replayed)
            return
        # Older segments are gone by now: what is left is the rest of this one and the newer.
        offset = batch.spool_end.offset if batch.spool_end is not None else 0
        remaining = max(0, self._spool.total_bytes - offset)
        self._progress.update(rows_replayed=self._replayed, remaining_bytes=remaining)
