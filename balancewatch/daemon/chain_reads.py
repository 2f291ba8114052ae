"""Balances read from the chain: a snapshot whenever a listening period starts, and checks of
the stored balances against the chain on a schedule.

A snapshot row is stamped with the time the chain was asked, not the time the answer came: a
message received meanwhile is then ordered after it, and that is right whichever came first on
the chain (if the message's change is older, the snapshot already holds it; if newer, the
message is the newer balance). A check that finds the stored balance different from the
chain's reads it again a little later, to let a message that was in flight land; only a
difference that persists, with no message for the pair meanwhile, is drift: a `check` row with
the chain's balance, counted and logged with both amounts. None of this runs in the read loop
or the writer: it waits on the RPC and the bookkeeping, never the other way round.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal, Protocol

from balancewatch.aio import wait_first
from balancewatch.chain.answers import ChainBalance, ChainRead, FailureReason, ReadFailure
from balancewatch.daemon.chain_schedule import CheckRounds, SnapshotQueue
from balancewatch.daemon.ingest import MessageWatch
from balancewatch.domain import ChainReadKind, ChainReadResult, Pair, Watch, room_for
from balancewatch.logs import describe_error, get_logger
from balancewatch.settings import Settings, config_from
from balancewatch.store.chain import ChainRow, RpcFailureRow
from balancewatch.store.db import DB_ERRORS

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ChainReadsConfig:
    balance_check_interval: float  # 0: no checks
    rpc_batch_size: int
    reread_delay: float = 2.0  # before a difference is read again
    retry_delay: float = 30.0  # before a failed snapshot is tried again
    workers: int = 4  # reads under way at once (the RPC client keeps them within its rate)

    @classmethod
    def from_settings(cls, settings: Settings) -> ChainReadsConfig:
        return config_from(settings, cls)


class BalanceReader(Protocol):
    async def read(self, pairs: Sequence[Pair]) -> list[ChainRead]: ...


class ChainSink(Protocol):
    snapshot_queue: int

    def add_chain_row(self, row: ChainRow) -> None: ...

    def add_rpc_failure(self, row: RpcFailureRow) -> None: ...

    def count_reads(self, kind: ChainReadKind, result: ChainReadResult, reads: int = 1) -> None: ...


NewestAmounts = Callable[[Sequence[Pair]], Awaitable[dict[Pair, Decimal]]]


def same_balance(stored: Decimal, chain: Decimal) -> bool:
    """The stream sends amounts as JSON numbers made from IEEE doubles: a chain balance with more
    significant digits than a double holds arrives rounded. Same double, same balance."""
    return float(stored) == float(chain)


Work = tuple[Literal["snapshot", "check"], list[Pair]]


class ChainReads:
    def __init__(
        self,
        reader: BalanceReader,
        newest: NewestAmounts,
        sink: ChainSink,
        config: ChainReadsConfig,
        *,
        listening: Callable[[], Collection[Watch]],
        watch: MessageWatch,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reader = reader
        self._newest = newest
        self._sink = sink
        self._config = config
        self._listening = listening
        self._watch = watch
        self._clock = clock
        self._queue = SnapshotQueue()
        interval = config.balance_check_interval
        self._rounds = CheckRounds(interval, listening) if interval > 0 else None
        self._wake = asyncio.Event()
        self.results: Counter[tuple[ChainReadKind, ChainReadResult]] = Counter()
        self.refused: Counter[FailureReason] = Counter()

    @property
    def snapshot_queue(self) -> int:
        return len(self._queue)

    def pair_started(self, watch: Watch) -> None:
        """A listening period started: its snapshot is queued."""
        wallet, token = watch
        if token is None:
            return  # issue 12, in progress: a wallet's snapshot
        pair = (wallet, token)
        self._queue.add(pair)
        self._queue_changed()
        self._wake.set()

    def pair_ended(self, watch: Watch) -> None:
        wallet, token = watch
        if token is None:
            return
        self._queue.discard((wallet, token))
        self._queue_changed()

    async def run(self, stop: asyncio.Event) -> None:
        """Read until `stop` is set; reads under way then are cancelled (a snapshot not taken
        is taken by the next process, whose periods start anew)."""
        async with asyncio.TaskGroup() as group:
            workers = [group.create_task(self._work()) for _ in range(self._config.workers)]
            await stop.wait()
            for worker in workers:
                worker.cancel()

    async def _work(self) -> None:
        while True:
            work = self._next_work()
            if work is None:
                self._wake.clear()
                await wait_first(self._wake, timeout=self._idle_for())
                continue
            kind, pairs = work
            await (self._snapshot(pairs) if kind == "snapshot" else self._check(pairs))

    def _next_work(self) -> Work | None:
        now = self._clock()
        batch = self._config.rpc_batch_size
        snapshots = self._queue.take(batch, now)
        if snapshots:
            self._queue_changed()
            return "snapshot", snapshots
        while self._rounds is not None and (due := self._rounds.take(batch, now)):
            listening = self._listening()
            checks = [
                (wallet, token)
                for wallet, token in due
                if token is not None and (wallet, token) in listening
            ]
            if checks:
                return "check", checks
        return None

    def _idle_for(self) -> float | None:
        due = [self._queue.next_retry()]
        if self._rounds is not None:
            due.append(self._rounds.next_due())
        known = [at for at in due if at is not None]
        return max(0.0, min(known) - self._clock()) if known else None

    async def _snapshot(self, pairs: list[Pair]) -> None:
        asked_at = datetime.now(UTC)
        failures: list[ReadFailure] = []
        for pair, read in zip(pairs, await self._reader.read(pairs), strict=True):
            if isinstance(read, ChainBalance):
                self._store(read, asked_at)
                continue
            failures.append(read)
            if pair in self._listening():
                self._queue.retry(pair, self._clock() + self._config.retry_delay)
        self._failed("snapshot", failures)
        self._queue_changed()

    async def _check(self, pairs: list[Pair]) -> None:
        rooms = [room_for(*pair) for pair in pairs]
        self._watch.start(rooms)
        try:
            suspects = await self._first_look(pairs)
            if suspects:
                await asyncio.sleep(self._config.reread_delay)
                await self._second_look(suspects)
        except DB_ERRORS as exc:
            # The stored balances could not be read: these pairs wait for the next round.
            log.warning("chain.check_skipped", pairs=len(pairs), error=describe_error(exc))
        finally:
            self._watch.end(rooms)

    async def _first_look(self, pairs: list[Pair]) -> list[Pair]:
        """Read the chain and the store; the pairs whose balances differ."""
        asked_at = datetime.now(UTC)
        reads = await self._reader.read(pairs)
        stored = await self._newest(pairs)
        suspects: list[Pair] = []
        failures: list[ReadFailure] = []
        for read in reads:
            if isinstance(read, ReadFailure):
                failures.append(read)
            elif read.pair not in stored:  # listened to, but its snapshot never came
                self._store(read, asked_at)
            elif same_balance(stored[read.pair], read.amount):
                self._count("check", "match")
            else:
                suspects.append(read.pair)
        self._failed("check", failures)
        return suspects

    async def _second_look(self, pairs: list[Pair]) -> None:
        asked_at = datetime.now(UTC)
        reads = await self._reader.read(pairs)
        stored = await self._newest(pairs)
        failures: list[ReadFailure] = []
        for read in reads:
            if self._watch.seen(room_for(*read.pair)):
                self._count("check", "in_flight")  # the stream spoke meanwhile: it is newer
            elif isinstance(read, ReadFailure):
                failures.append(read)
            elif read.pair in stored and same_balance(stored[read.pair], read.amount):
                self._count("check", "match")
            else:
                self._drift(read, stored.get(read.pair), asked_at)
        self._failed("check", failures)

    def _drift(self, read: ChainBalance, stored: Decimal | None, asked_at: datetime) -> None:
        wallet, token = read.pair
        log.warning(
            "chain.drift",
            wallet=wallet,
            token=token,
            stored=None if stored is None else str(stored),
            chain=str(read.amount),
            slot=read.slot,
        )
        self._sink.add_chain_row((wallet, token, read.amount, asked_at, "check", read.slot))
        self._count("check", "drift")

    def _store(self, read: ChainBalance, asked_at: datetime) -> None:
        wallet, token = read.pair
        self._sink.add_chain_row((wallet, token, read.amount, asked_at, "snapshot", read.slot))
        self._count("snapshot", "stored")

    def _failed(self, kind: ChainReadKind, failures: list[ReadFailure]) -> None:
        """Counted by reason, kept for the rpc_failures table, and logged once per batch. A
        provider that is away ("unavailable") is counted, not stored: it would be one row per
        pair per attempt, and the RPC request metrics say it already."""
        if not failures:
            return
        received_at = datetime.now(UTC)
        for failure in failures:
            self.refused[failure.reason] += 1
            self._count(kind, "failed")
            if failure.reason != "unavailable":
                wallet, token = failure.pair
                row = (received_at, wallet, token, failure.reason, failure.detail, failure.answer)
                self._sink.add_rpc_failure(row)
        first = failures[0]
        log.warning(
            "chain.read_failed",
            kind=kind,
            pairs=len(failures),
            reason=first.reason,
            detail=first.detail,
            wallet=first.pair[0],
            token=first.pair[1],
        )

    def _count(self, kind: ChainReadKind, result: ChainReadResult) -> None:
        self.results[kind, result] += 1
        self._sink.count_reads(kind, result)

    def _queue_changed(self) -> None:
        self._sink.snapshot_queue = len(self._queue)
