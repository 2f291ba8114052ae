"""Subscription states, rejected frames, listening periods and what was read from the chain:
written beside the balance rows, never in their way.

They have a connection and a retry loop of their own, and each table is written on its own:
a failure here (a role without its grant on `subscription_status`, say) is logged, counted by
table and retried with backoff, while the balance rows' writer goes on committing. Of several
state changes of one pair before a write, the last one wins; rejected frames and refused RPC
answers wait up to a bound, past which the oldest are dropped and counted (they are evidence,
not data). Balances read from the chain wait here too: few (one per pair per snapshot or
drift), and a snapshot lost to a crash is read again when the next process starts listening.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Generic, Literal, TypeVar, get_args

from sqlalchemy.engine import URL

from balancewatch.aio import Backoff, finish_despite_cancel, shared_now, wait_first
from balancewatch.domain import ChainReadKind, ChainReadResult, PairState, Watch
from balancewatch.logs import describe_error, get_logger
from balancewatch.settings import Settings, config_from
from balancewatch.store import chain, writes
from balancewatch.store.chain import ChainRow, RpcFailureRow
from balancewatch.store.db import DB_ERRORS, DedicatedConnection, RawConnection
from balancewatch.store.writes import PeriodEnd, PeriodStart, RejectedRow, StatusChange

log = get_logger(__name__)

Row = TypeVar("Row")

Table = Literal[
    "subscription_status",
    "rejected_messages",
    "coverage",
    "balance_history",
    "rpc_failures",
    "chain_reads",
]
TABLES: Final[tuple[Table, ...]] = get_args(Table)
# Pair states and listening periods are written this many at a time.
_ROWS_PER_WRITE: Final = 5_000


@dataclass(frozen=True, slots=True)
class BookkeepingConfig:
    # A short wait before a write lets a burst (the joins of a large watchlist) go as one.
    gather: float
    drain_timeout: float
    write_timeout: float
    retry_initial: float = 0.2
    retry_max: float = 30.0
    max_rejected_pending: int = 10_000
    max_chain_rows_pending: int = 1_000_000

    @classmethod
    def from_settings(cls, settings: Settings) -> BookkeepingConfig:
        return config_from(settings, cls, gather=settings.flush_interval)


class Bookkeeping:
    def __init__(self, url: URL, config: BookkeepingConfig, *, holder: str) -> None:
        self._config = config
        self._holder = holder
        self._flushing = asyncio.Lock()
        self._connection = DedicatedConnection(
            url, role="bookkeeping", timeout=config.write_timeout
        )
        self._status: dict[Watch, StatusChange] = {}
        self._last_change = StatusChange("left", shared_now(), None)
        self._rejected = _Rows[RejectedRow](config.max_rejected_pending)
        self._starts: list[PeriodStart] = []
        self._ends: list[PeriodEnd] = []
        self._confirmed: datetime | None = None  # the newest confirmation not written yet
        self._silent_since: datetime | None = None  # close others' periods silent since then
        self._chain_rows = _Rows[ChainRow](config.max_chain_rows_pending)
        self._rpc_failures = _Rows[RpcFailureRow](config.max_rejected_pending)
        self._read_counts: Counter[tuple[ChainReadKind, ChainReadResult]] = Counter()
        # Pairs waiting for their snapshot, written with each confirmation (for `status`).
        self.snapshot_queue = 0
        self._work = asyncio.Event()
        self._retry = Backoff(config.retry_initial, config.retry_max)
        self.failures: Counter[Table] = Counter()

    @property
    def rejected_dropped(self) -> int:
        """Rejected frames and refused RPC answers dropped unstored (too many waiting)."""
        return self._rejected.dropped + self._rpc_failures.dropped

    @property
    def pending(self) -> dict[Table, int]:
        return {
            "subscription_status": len(self._status),
            "rejected_messages": len(self._rejected.rows),
            "coverage": len(self._starts) + len(self._ends),
            "balance_history": len(self._chain_rows.rows),
            "rpc_failures": len(self._rpc_failures.rows),
            "chain_reads": len(self._read_counts),
        }

    def set_status(
        self, pairs: Iterable[Watch], state: PairState, error: str | None = None
    ) -> None:
        """Record a state change; of several for one pair before a write, the last one wins."""
        change = self._last_change
        now = shared_now()
        # The acks of a large join come one by one: their changes share one object a moment.
        if not (change.state == state and change.error == error and change.since is now):
            change = self._last_change = StatusChange(state, now, error)
        for pair in pairs:
            self._status[pair] = change
        if self._status:
            self._work.set()

    def add_rejected(self, row: RejectedRow) -> None:
        """Keep a rejected frame for the rejected_messages table."""
        self._rejected.add(row)
        self._work.set()

    def add_chain_row(self, row: ChainRow) -> None:
        """Keep a balance read from the chain (a snapshot, or a check that found drift)."""
        self._chain_rows.add(row)
        self._work.set()

    def add_rpc_failure(self, row: RpcFailureRow) -> None:
        """Keep an RPC answer that was not taken, for the rpc_failures table."""
        self._rpc_failures.add(row)
        self._work.set()

    def count_reads(self, kind: ChainReadKind, result: ChainReadResult, reads: int = 1) -> None:
        self._read_counts[kind, result] += reads
        self._work.set()

    def period_started(self, start: PeriodStart) -> None:
        self._starts.append(start)
        self._work.set()

    def period_ended(self, end: PeriodEnd) -> None:
        self._ends.append(end)
        self._work.set()

    def confirm(self, listening_until: datetime | None, silent_since: datetime) -> None:
        """This process listened up to `listening_until` (None: nothing to confirm); another
        holder silent since `silent_since` has its open periods closed as lost."""
        self._confirmed = _latest(self._confirmed, listening_until)
        self._silent_since = silent_since
        self._work.set()

    async def run(self, drain: asyncio.Event) -> None:
        """Write until `drain` is set, then what is left, within the drain timeout."""
        try:
            while not drain.is_set():
                if not self._has_work():
                    self._work.clear()
                    await wait_first(self._work, drain, timeout=None)
                    continue
                await wait_first(drain, timeout=self._config.gather)
                if await self.flush():
                    self._retry.reset()
                else:
                    await wait_first(drain, timeout=self._retry.next_delay())
        finally:
            await self._drain()
            await self._connection.close()

    async def flush(self) -> bool:
        """Write what waits, each table on its own; False if any write failed (what it held
        waits for the next one, before anything newer)."""
        flushes = (
            self._flush_rejected,
            self._flush_status,
            self._flush_coverage,
            self._flush_chain_rows,
            self._flush_rpc_failures,
            self._flush_read_counts,
        )
        # One flush at a time: the run loop's and a caller's (a test, a handover) would share
        # one connection, and two connects at once would leave one of them open for good.
        async with self._flushing:
            results = [await flush() for flush in flushes]
        return all(results)

    async def close(self) -> None:
        await self._connection.close()

    def _has_work(self) -> bool:
        return bool(
            self._status
            or self._rejected.rows
            or self._starts
            or self._ends
            or self._confirmed
            or self._silent_since
            or self._chain_rows.rows
            or self._rpc_failures.rows
            or self._read_counts
        )

    async def _flush_rejected(self) -> bool:
        return await self._flush_rows("rejected_messages", self._rejected, writes.copy_rejected)

    async def _flush_status(self) -> bool:
        changes, self._status = self._status, {}
        pairs = list(changes)
        # In pieces: the statement's arrays of a whole large join (100,000 pairs at once)
        # were the daemon's largest allocation, 30 MB for a moment.
        rest = 0  # from there on, not written: put back on the way out
        try:
            for start in range(0, len(pairs), _ROWS_PER_WRITE):
                rest = start + _ROWS_PER_WRITE  # a piece that fails is put back by its write
                piece = {pair: changes[pair] for pair in pairs[start:rest]}
                if not await self._write_status(piece):
                    return False
            return True
        finally:
            for pair in pairs[rest:]:
                self._status.setdefault(pair, changes[pair])  # one made meanwhile is newer

    async def _write_status(self, changes: dict[Watch, StatusChange]) -> bool:
        def restore() -> None:
            changes.update(self._status)  # a change made meanwhile is newer: it wins
            self._status = changes

        timeout = self._config.write_timeout
        return await self._write(
            "subscription_status", lambda raw: writes.upsert_status(raw, changes, timeout), restore
        )

    async def _flush_coverage(self) -> bool:
        starts, ends, self._starts, self._ends = self._starts, self._ends, [], []
        confirmed, self._confirmed = self._confirmed, None
        silent_since, self._silent_since = self._silent_since, None
        if not (starts or ends or confirmed or silent_since):
            return True
        # In pieces, every start before any end (a period may start and end in one flush).
        n = _ROWS_PER_WRITE
        pieces: list[tuple[list[PeriodStart], list[PeriodEnd]]] = [
            *((starts[i : i + n], []) for i in range(0, len(starts), n)),
            *(([], ends[i : i + n]) for i in range(0, len(ends), n)),
        ] or [([], [])]
        rest = 0  # from there on, not written: put back on the way out
        try:
            for index, (starts_piece, ends_piece) in enumerate(pieces):
                rest = index + 1  # a piece that fails is put back by its write
                last = rest == len(pieces)
                written = await self._write_periods(
                    starts_piece, ends_piece, confirmed, silent_since if last else None
                )
                if not written:
                    return False
            return True
        finally:
            if rest < len(pieces):
                # Behind the piece that failed, which its write put back in front.
                failed_starts, failed_ends = pieces[rest - 1]
                at = len(failed_starts), len(failed_ends)
                self._starts[at[0] : at[0]] = [s for p in pieces[rest:] for s in p[0]]
                self._ends[at[1] : at[1]] = [e for p in pieces[rest:] for e in p[1]]
                self._silent_since = self._silent_since or silent_since

    async def _write_periods(
        self,
        starts: list[PeriodStart],
        ends: list[PeriodEnd],
        confirmed: datetime | None,
        silent_since: datetime | None,
    ) -> bool:
        # Every period written was being listened to at its last event: the holder is
        # confirmed up to there at least.
        newest = max([s.at for s in starts] + [e.at for e in ends], default=None)
        confirmed = _latest(confirmed, newest)

        def restore() -> None:
            self._starts[:0] = starts
            self._ends[:0] = ends
            self._confirmed = _latest(self._confirmed, confirmed)
            self._silent_since = self._silent_since or silent_since

        async def write(raw: RawConnection) -> None:
            timeout = self._config.write_timeout
            if confirmed is not None:
                periods = (starts, ends)
                holder = (self._holder, self.snapshot_queue)
                await writes.write_periods(raw, holder, confirmed, periods, timeout)
            if silent_since is not None:
                closed = await writes.close_lost_periods(raw, self._holder, silent_since, timeout)
                if closed:
                    log.warning("coverage.lost_periods_closed", periods=closed)

        return await self._write("coverage", write, restore)

    async def _flush_chain_rows(self) -> bool:
        return await self._flush_rows("balance_history", self._chain_rows, chain.copy_chain_rows)

    async def _flush_rpc_failures(self) -> bool:
        return await self._flush_rows("rpc_failures", self._rpc_failures, chain.copy_rpc_failures)

    async def _flush_rows(
        self,
        table: Table,
        pending: _Rows[Row],
        copy: Callable[[RawConnection, Sequence[Row], float], Awaitable[None]],
    ) -> bool:
        rows = pending.take()
        if not rows:
            return True
        timeout = self._config.write_timeout
        return await self._write(
            table, lambda raw: copy(raw, rows, timeout), lambda: pending.restore(rows)
        )

    async def _flush_read_counts(self) -> bool:
        counts, self._read_counts = self._read_counts, Counter()
        if not counts:
            return True

        def restore() -> None:
            self._read_counts.update(counts)

        timeout = self._config.write_timeout
        return await self._write(
            "chain_reads", lambda raw: chain.add_read_counts(raw, counts, timeout), restore
        )

    async def _write(
        self,
        table: Table,
        statement: Callable[[RawConnection], Awaitable[None]],
        restore: Callable[[], None],
    ) -> bool:
        """Run one table's statement; on failure `restore` puts what it held back."""

        async def write() -> None:
            raw = await self._connection.get()
            try:
                await statement(raw)
            except BaseException:
                self._connection.discard()
                raise

        def settle(done: asyncio.Future[None]) -> bool:
            return self._settle(done, table, restore)

        return await finish_despite_cancel(write(), self._config.drain_timeout, settle)

    def _settle(
        self, done: asyncio.Future[None], table: Table, restore: Callable[[], None]
    ) -> bool:
        error = None if done.cancelled() else done.exception()
        if not done.cancelled() and error is None:
            return True
        restore()
        if error is not None and not isinstance(error, DB_ERRORS):
            raise error
        self.failures[table] += 1
        log.warning(
            "bookkeeping.write_failed",
            table=table,
            error="cancelled" if error is None else describe_error(error),
            pending=self.pending[table],
            failures=self.failures[table],
        )
        return False

    async def _drain(self) -> None:
        deadline = time.monotonic() + self._config.drain_timeout
        while self._has_work() and time.monotonic() < deadline:
            if not await self.flush():
                await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        if self._has_work():
            log.warning(
                "bookkeeping.not_stored_on_exit",
                status_changes=len(self._status),
                rejected_frames=len(self._rejected.rows),
                chain_rows=len(self._chain_rows.rows),
            )


class _Rows(Generic[Row]):
    """Rows waiting for a table, oldest first; past `bound`, the oldest are dropped."""

    def __init__(self, bound: int) -> None:
        self.rows: list[Row] = []
        self.dropped = 0
        self._bound = bound

    def add(self, row: Row) -> None:
        if len(self.rows) >= self._bound:
            del self.rows[0]
            self.dropped += 1
        self.rows.append(row)

    def take(self) -> list[Row]:
        rows, self.rows = self.rows, []
        return rows

    def restore(self, rows: list[Row]) -> None:
        """A failed write's rows, back in front of anything newer."""
        self.rows[:0] = rows


def _latest(first: datetime | None, second: datetime | None) -> datetime | None:
    if first is None or second is None:
        return first or second
    return max(first, second)
