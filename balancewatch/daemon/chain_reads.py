"""Balances read from the chain: a snapshot whenever a listening period starts, and checks of
the stored balances against the chain on a schedule.

A period is of a pair, or of a whole wallet (its wallet room, every token of it). A wallet is
read whole, every token account it owns and its native SOL; its snapshot writes a row for each
token it holds, and a `0` row for each token the history says it holds (its newest amount is
not 0) that the chain no longer shows; its check compares every token the chain shows or the
history has. A wallet read with any call failed writes nothing: a token missing from a failed
call is unknown, not 0.

A snapshot row is stamped with the time the chain was asked, not the time the answer came: a
message received meanwhile is then ordered after it, and that is right whichever came first on
the chain (if the message's change is older, the snapshot already holds it; if newer, the
message is the newer balance). A check that finds the stored balance different from the
chain's reads it again a little later, to let a message that was in flight land; only a
difference that persists, with no message for the pair meanwhile (for a wallet's token: none
on the wallet's room, for any of its tokens), is drift: a `check` row with the chain's
balance, counted and logged with both amounts. None of this runs in the read loop or the
writer: it waits on the RPC and the bookkeeping, never the other way round.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal, Protocol

from balancewatch.aio import wait_first
from balancewatch.chain.answers import (
    ChainBalance,
    ChainRead,
    FailureReason,
    ReadFailure,
    WalletBalances,
    WalletRead,
)
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

    async def read_wallets(self, wallets: Sequence[str]) -> list[WalletRead]: ...


class ChainSink(Protocol):
    snapshot_queue: int

    def add_chain_row(self, row: ChainRow) -> None: ...

    def add_rpc_failure(self, row: RpcFailureRow) -> None: ...

    def count_reads(self, kind: ChainReadKind, result: ChainReadResult, reads: int = 1) -> None: ...


NewestAmounts = Callable[[Sequence[Pair]], Awaitable[dict[Pair, Decimal]]]
# The newest stored amount of every token the history has of each wallet.
NewestAmountsOf = Callable[[Sequence[str]], Awaitable[dict[Pair, Decimal]]]


def same_balance(stored: Decimal, chain: Decimal) -> bool:
    """The stream sends amounts as JSON numbers made from IEEE doubles: a chain balance with more
    significant digits than a double holds arrives rounded. Same double, same balance."""
    return float(stored) == float(chain)


Work = tuple[Literal["snapshot", "check"], list[Watch]]
# A watch read from the chain, and what the chain showed of it (a pair's read shows its token).
Read = tuple[Watch, WalletBalances]
# A token compared: the watch it was read through, the chain's balance, its newest stored amount.
Compared = tuple[Watch, ChainBalance, Decimal | None]


class ChainReads:
    def __init__(
        self,
        reader: BalanceReader,
        newest: NewestAmounts,
        newest_of: NewestAmountsOf,
        sink: ChainSink,
        config: ChainReadsConfig,
        *,
        listening: Callable[[], Collection[Watch]],
        watch: MessageWatch,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reader = reader
        self._newest = newest
        self._newest_of = newest_of
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
        self._queue.add(watch)
        self._queue_changed()
        self._wake.set()

    def pair_ended(self, watch: Watch) -> None:
        self._queue.discard(watch)
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
            kind, watches = work
            await (self._snapshot(watches) if kind == "snapshot" else self._check(watches))

    def _next_work(self) -> Work | None:
        now = self._clock()
        batch = self._config.rpc_batch_size
        snapshots = self._queue.take(batch, now)
        if snapshots:
            self._queue_changed()
            return "snapshot", snapshots
        while self._rounds is not None and (due := self._rounds.take(batch, now)):
            listening = self._listening()
            checks = [watch for watch in due if watch in listening]
            if checks:
                return "check", checks
        return None

    def _idle_for(self) -> float | None:
        due = [self._queue.next_retry()]
        if self._rounds is not None:
            due.append(self._rounds.next_due())
        known = [at for at in due if at is not None]
        return max(0.0, min(known) - self._clock()) if known else None

    async def _snapshot(self, watches: list[Watch]) -> None:
        asked_at = datetime.now(UTC)
        reads, failed = await self._read("snapshot", watches)
        try:
            gone = await self._gone(reads)
        except DB_ERRORS as exc:
            # Which tokens its wallets no longer hold is unknown: their snapshots wait.
            log.warning("chain.snapshot_postponed", error=describe_error(exc))
            failed += [watch for watch, _ in reads if watch[1] is None]
            reads, gone = [read for read in reads if read[0][1] is not None], []
        for balance in [*(b for _, balances in reads for b in balances.held.values()), *gone]:
            self._store(balance, asked_at)
        self._retry(failed)
        self._queue_changed()

    async def _gone(self, reads: list[Read]) -> list[ChainBalance]:
        """A 0 for each token a wallet read no longer shows and whose newest stored amount is
        not 0 (a token whose account was closed, while no one was listening)."""
        wallets = {watch[0]: balances for watch, balances in reads if watch[1] is None}
        stored = await self._newest_of(list(wallets)) if wallets else {}
        return [
            wallets[wallet].balance(token)
            for (wallet, token), amount in stored.items()
            if amount != 0 and token not in wallets[wallet].held
        ]

    def _retry(self, watches: list[Watch]) -> None:
        """Failed snapshots are read again later, if still listened to."""
        listening = self._listening()
        at = self._clock() + self._config.retry_delay
        for watch in watches:
            if watch in listening:
                self._queue.retry(watch, at)

    async def _check(self, watches: list[Watch]) -> None:
        rooms = [room_for(*watch) for watch in watches]
        self._watch.start(rooms)
        try:
            suspects = await self._first_look(watches)
            if suspects:
                await asyncio.sleep(self._config.reread_delay)
                await self._second_look(suspects)
        except DB_ERRORS as exc:
            # The stored balances could not be read: these watches wait for the next round.
            log.warning("chain.check_skipped", pairs=len(watches), error=describe_error(exc))
        finally:
            self._watch.end(rooms)

    async def _first_look(self, watches: list[Watch]) -> dict[Pair, Watch]:
        """Read the chain and the store; the pairs whose balances differ, each with the watch
        it was read through."""
        asked_at = datetime.now(UTC)
        suspects: dict[Pair, Watch] = {}
        for watch, read, stored in await self._look(watches):
            if stored is None:  # listened to, but no row yet: its snapshot never came
                self._store(read, asked_at)
            elif same_balance(stored, read.amount):
                self._count("check", "match")
            else:
                suspects[read.pair] = watch
        return suspects

    async def _second_look(self, suspects: dict[Pair, Watch]) -> None:
        asked_at = datetime.now(UTC)
        for watch, read, stored in await self._look(list(dict.fromkeys(suspects.values()))):
            if read.pair not in suspects:
                continue  # another token of a wallet: compared at the first look
            if self._watch.seen(room_for(*watch)):
                self._count("check", "in_flight")  # the stream spoke meanwhile: it is newer
            elif stored is not None and same_balance(stored, read.amount):
                self._count("check", "match")
            else:
                self._drift(read, stored, asked_at)

    async def _look(self, watches: list[Watch]) -> list[Compared]:
        """Read the chain, then the store: every token to compare (a pair's own; a wallet's
        every token the chain shows or the history has), by the watch it was read through."""
        reads, _ = await self._read("check", watches)
        stored = await self._stored([watch for watch, _ in reads])
        history: defaultdict[str, set[str]] = defaultdict(set)
        for wallet, token in stored:
            history[wallet].add(token)
        return [
            (watch, balances.balance(token), stored.get((balances.wallet, token)))
            for watch, balances in reads
            for token in _tokens(watch, balances, history)
        ]

    async def _read(
        self, kind: ChainReadKind, watches: list[Watch]
    ) -> tuple[list[Read], list[Watch]]:
        """The watches read from the chain, and those whose read failed (counted and kept)."""
        pairs, wallets = _split(watches)
        pair_reads, wallet_reads = await asyncio.gather(
            self._reader.read(pairs), self._reader.read_wallets(wallets)
        )
        reads: list[Read] = []
        failures: list[ReadFailure] = []
        for read in [*pair_reads, *wallet_reads]:
            if isinstance(read, ReadFailure):
                failures.append(read)
            elif isinstance(read, ChainBalance):
                reads.append(
                    (read.pair, WalletBalances(read.pair[0], {read.pair[1]: read}, read.slot))
                )
            else:
                reads.append(((read.wallet, None), read))
        self._failed(kind, failures)
        return reads, [failure.pair for failure in failures]

    async def _stored(self, watches: list[Watch]) -> dict[Pair, Decimal]:
        """The newest stored amount of each pair watched, and of every token of each wallet."""
        pairs, wallets = _split(watches)
        stored = await self._newest(pairs) if pairs else {}
        return stored | await self._newest_of(wallets) if wallets else stored

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
        """Counted by reason, kept for the rpc_failures table (a wallet's with no token), and
        logged once per batch. A provider that is away ("unavailable") is counted, not stored:
        it would be one row per watch per attempt, and the RPC request metrics say it already."""
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


def _split(watches: list[Watch]) -> tuple[list[Pair], list[str]]:
    """The pairs watched, and the wallets watched whole."""
    pairs = [(wallet, token) for wallet, token in watches if token is not None]
    return pairs, [wallet for wallet, token in watches if token is None]


def _tokens(watch: Watch, read: WalletBalances, history: Mapping[str, set[str]]) -> list[str]:
    """The tokens a check compares: a pair's own; a wallet's shown by the chain or the history."""
    wallet, token = watch
    return [token] if token is not None else sorted(read.held.keys() | history.get(wallet, set()))
