"""Snapshots and checks of the chain, with the RPC and the store replaced by fakes: what is
stored, counted and refused for each kind of answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from decimal import Decimal

import pytest

from balancewatch.chain.answers import (
    ChainBalance,
    ChainRead,
    ReadFailure,
    WalletBalances,
    WalletRead,
)
from balancewatch.daemon.chain_reads import ChainReads, ChainReadsConfig, same_balance
from balancewatch.daemon.ingest import MessageWatch
from balancewatch.domain import ChainReadKind, ChainReadResult, Pair, Watch, room_for
from balancewatch.store.chain import ChainRow, RpcFailureRow
from tests.helpers import wait_until

A: Pair = ("WalletA", "TokenA")
B: Pair = ("WalletB", "TokenB")
W = "WalletW"  # watched whole
WHOLE: Watch = (W, None)


class FakeChain:
    """The chain's balances (a wallet holds the tokens it has one of); a watch in `failing`
    answers with that failure instead."""

    def __init__(self) -> None:
        self.balances: dict[Pair, Decimal] = {}
        self.failing: dict[Watch, str] = {}
        self.reads: list[list[Pair]] = []
        self.wallet_reads: list[list[str]] = []
        self.on_read: Callable[[], None] = lambda: None

    async def read(self, pairs: Sequence[Pair]) -> list[ChainRead]:
        self.reads.append(list(pairs))
        self.on_read()
        return [self._failure(pair) or self._balance(pair) for pair in pairs]

    async def read_wallets(self, wallets: Sequence[str]) -> list[WalletRead]:
        self.wallet_reads.append(list(wallets))
        self.on_read()
        return [self._failure((wallet, None)) or self._holdings(wallet) for wallet in wallets]

    def _failure(self, watch: Watch) -> ReadFailure | None:
        reason = self.failing.get(watch)
        if reason is None:
            return None
        return ReadFailure(watch, reason, "it said so", '{"bad": 1}')  # type: ignore[arg-type]

    def _balance(self, pair: Pair) -> ChainBalance:
        return ChainBalance(pair, self.balances.get(pair, Decimal(0)), slot=len(self.reads))

    def _holdings(self, wallet: str) -> WalletBalances:
        held = {token: self._balance((owner, token)) for owner, token in self.balances}
        return WalletBalances(wallet, {t: b for t, b in held.items() if b.pair[0] == wallet}, 1)


class FakeStore:
    def __init__(self) -> None:
        self.newest: dict[Pair, Decimal] = {}
        self.rows: list[ChainRow] = []
        self.failures: list[RpcFailureRow] = []
        self.counts: Counter[tuple[ChainReadKind, ChainReadResult]] = Counter()
        self.snapshot_queue = 0
        self.down = False

    async def newest_amounts(self, pairs: Sequence[Pair]) -> dict[Pair, Decimal]:
        return {pair: self.newest[pair] for pair in pairs if pair in self.newest}

    async def newest_amounts_of(self, wallets: Sequence[str]) -> dict[Pair, Decimal]:
        if self.down:
            raise ConnectionRefusedError("the database is away")
        return {pair: amount for pair, amount in self.newest.items() if pair[0] in wallets}

    def add_chain_row(self, row: ChainRow) -> None:
        self.rows.append(row)
        self.newest[row[0], row[1]] = row[2]

    def add_rpc_failure(self, row: RpcFailureRow) -> None:
        self.failures.append(row)

    def count_reads(self, kind: ChainReadKind, result: ChainReadResult, reads: int = 1) -> None:
        self.counts[kind, result] += reads


@contextlib.asynccontextmanager
async def running(
    chain: FakeChain, store: FakeStore, listening: Collection[Watch], check_interval: float = 0
) -> AsyncIterator[tuple[ChainReads, MessageWatch]]:
    watch = MessageWatch()
    config = ChainReadsConfig(
        check_interval, rpc_batch_size=10, reread_delay=0.05, retry_delay=0.05, workers=2
    )
    reads = ChainReads(
        chain,
        store.newest_amounts,
        store.newest_amounts_of,
        store,
        config,
        listening=lambda: listening,
        watch=watch,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(reads.run(stop))
    try:
        yield reads, watch
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_a_started_period_gets_a_snapshot_row_with_the_chain_balance_and_slot() -> None:
    chain, store = FakeChain(), FakeStore()
    chain.balances[A] = Decimal("12.000000001")
    async with running(chain, store, {A, B}) as (reads, _):
        reads.pair_started(A)
        reads.pair_started(B)
        await wait_until(lambda: len(store.rows) == 2, what="two snapshot rows")
    assert [(row[:3], row[4]) for row in store.rows] == [
        ((*A, Decimal("12.000000001")), "snapshot"),
        ((*B, Decimal(0)), "snapshot"),
    ]
    assert all(row[5] >= 1 for row in store.rows)
    assert chain.reads == [[A, B]]  # one batch
    assert store.counts == {("snapshot", "stored"): 2}
    assert store.snapshot_queue == 0


async def test_a_refused_answer_is_kept_counted_and_its_snapshot_tried_again() -> None:
    chain, store = FakeChain(), FakeStore()
    chain.failing[A] = "bad_amount"
    async with running(chain, store, {A}) as (reads, _):
        reads.pair_started(A)
        await wait_until(lambda: len(chain.reads) >= 2, what="a second read")
        del chain.failing[A]
        await wait_until(lambda: store.rows, what="the snapshot, at last")
    assert store.failures[0][1:5] == (*A, "bad_amount", "it said so")
    assert store.counts["snapshot", "failed"] >= 2
    assert reads.refused["bad_amount"] >= 2
    assert [row[4] for row in store.rows] == ["snapshot"]


async def test_an_unreachable_rpc_is_counted_but_not_stored_row_by_row() -> None:
    chain, store = FakeChain(), FakeStore()
    chain.failing[A] = "unavailable"
    async with running(chain, store, {A}) as (reads, _):
        reads.pair_started(A)
        await wait_until(lambda: store.counts["snapshot", "failed"] >= 1, what="a failure")
    assert store.failures == []
    assert store.rows == []


async def test_a_pair_that_stops_being_listened_to_is_not_read() -> None:
    chain, store = FakeChain(), FakeStore()
    listening = {A}
    async with running(chain, store, listening) as (reads, _):
        reads.pair_started(B)
        reads.pair_ended(B)
        reads.pair_started(A)
        await wait_until(lambda: store.rows, what="A's snapshot")
    assert chain.reads == [[A]]


async def test_a_check_that_agrees_with_the_store_writes_nothing() -> None:
    chain, store = FakeChain(), FakeStore()
    chain.balances[A] = store.newest[A] = Decimal(5)
    async with running(chain, store, {A}, check_interval=0.2):
        await wait_until(lambda: store.counts["check", "match"] >= 2, what="two checks")
    assert store.rows == []


async def test_a_balance_changed_without_a_message_is_drift_a_check_row() -> None:
    chain, store = FakeChain(), FakeStore()
    store.newest[A] = Decimal(5)
    chain.balances[A] = Decimal(7)
    async with running(chain, store, {A}, check_interval=0.5):
        await wait_until(lambda: store.rows, timeout=5, what="a check row")
    assert [(row[:3], row[4]) for row in store.rows] == [((*A, Decimal(7)), "check")]
    assert store.counts["check", "drift"] == 1
    assert chain.reads[:2] == [[A], [A]]  # read again before it counts


async def test_a_message_in_flight_is_not_drift() -> None:
    chain, store = FakeChain(), FakeStore()
    store.newest[A] = Decimal(5)
    chain.balances[A] = Decimal(7)
    watch_box: list[MessageWatch] = []

    def message_arrives() -> None:  # the stream brings the change between the two reads
        if len(chain.reads) == 1:
            watch_box[0].rooms[room_for(*A)] = True

    chain.on_read = message_arrives
    async with running(chain, store, {A}, check_interval=0.5) as (_, watch):
        watch_box.append(watch)
        await wait_until(lambda: store.counts["check", "in_flight"], what="in flight")
    assert store.rows == []
    assert watch.rooms == {}  # nothing left watched


async def test_a_difference_gone_at_the_second_look_is_a_match() -> None:
    chain, store = FakeChain(), FakeStore()
    store.newest[A] = Decimal(5)
    chain.balances[A] = Decimal(7)

    def stored_meanwhile() -> None:
        store.newest[A] = Decimal(7)

    chain.on_read = stored_meanwhile
    async with running(chain, store, {A}, check_interval=0.5):
        await wait_until(lambda: store.counts["check", "match"], what="a match")
    assert store.rows == []


# -- whole wallets -----------------------------------------------------------------------------


def wallet_rows(store: FakeStore) -> dict[str, tuple[Decimal, str]]:
    return {row[1]: (row[2], row[4]) for row in store.rows if row[0] == W}


async def test_a_wallet_snapshot_writes_each_token_held_and_a_zero_for_each_one_gone() -> None:
    chain, store = FakeChain(), FakeStore()
    chain.balances |= {(W, "Held"): Decimal(3), (W, "Empty"): Decimal(0)}
    store.newest |= {(W, "Held"): Decimal(1), (W, "Gone"): Decimal(2), (W, "Spent"): Decimal(0)}
    async with running(chain, store, {WHOLE}) as (reads, _):
        reads.pair_started(WHOLE)
        await wait_until(lambda: len(store.rows) == 3, what="three snapshot rows")
    assert wallet_rows(store) == {
        "Held": (Decimal(3), "snapshot"),
        "Empty": (Decimal(0), "snapshot"),  # an account at 0 is seen, not guessed
        "Gone": (Decimal(0), "snapshot"),
    }
    assert len({row[3] for row in store.rows}) == 1  # one time: when the chain was asked
    assert store.counts == {("snapshot", "stored"): 3}
    assert chain.wallet_reads == [[W]]


async def test_a_failed_wallet_read_writes_nothing_keeps_one_tokenless_failure_and_retries() -> (
    None
):
    chain, store = FakeChain(), FakeStore()
    chain.balances[W, "Held"] = Decimal(3)
    store.newest[W, "Gone"] = Decimal(2)
    chain.failing[WHOLE] = "wrong_program"
    async with running(chain, store, {WHOLE}) as (reads, _):
        reads.pair_started(WHOLE)
        await wait_until(lambda: len(chain.wallet_reads) >= 2, what="a second read")
        assert store.rows == []
        del chain.failing[WHOLE]
        await wait_until(lambda: len(store.rows) == 2, what="the snapshot, at last")
    assert store.failures[0][1:5] == (W, None, "wrong_program", "it said so")
    assert reads.refused["wrong_program"] >= 2
    assert wallet_rows(store) == {
        "Held": (Decimal(3), "snapshot"),
        "Gone": (Decimal(0), "snapshot"),
    }


async def test_a_wallet_snapshot_waits_for_a_history_it_cannot_read_and_a_pairs_does_not() -> None:
    chain, store = FakeChain(), FakeStore()
    chain.balances |= {(W, "Held"): Decimal(3), A: Decimal(1)}
    store.newest[W, "Gone"] = Decimal(2)
    store.down = True
    async with running(chain, store, {WHOLE, A}) as (reads, _):
        reads.pair_started(WHOLE)
        reads.pair_started(A)
        await wait_until(lambda: store.rows, what="A's snapshot")
        assert [row[:2] for row in store.rows] == [A]
        await wait_until(lambda: len(chain.wallet_reads) >= 2, what="the wallet read again")
        store.down = False
        await wait_until(lambda: len(store.rows) == 3, what="the wallet's snapshot, at last")
    assert wallet_rows(store) == {
        "Held": (Decimal(3), "snapshot"),
        "Gone": (Decimal(0), "snapshot"),
    }
    assert store.failures == []  # not the RPC's fault


async def test_a_wallet_check_compares_every_token_and_finds_drift_in_one() -> None:
    chain, store = FakeChain(), FakeStore()
    chain.balances |= {(W, "Same"): Decimal(5), (W, "Moved"): Decimal(7)}
    store.newest |= {(W, "Same"): Decimal(5), (W, "Moved"): Decimal(6), (W, "Gone"): Decimal(0)}
    async with running(chain, store, {WHOLE}, check_interval=0.5):
        await wait_until(lambda: store.rows, timeout=5, what="a check row")
    assert wallet_rows(store) == {"Moved": (Decimal(7), "check")}
    assert store.counts["check", "drift"] == 1
    assert store.counts["check", "match"] >= 2  # Same, and Gone: 0 on both sides
    assert chain.wallet_reads[:2] == [[W], [W]]  # read again before it counts


async def test_a_message_on_the_wallet_room_between_the_looks_is_not_drift() -> None:
    chain, store = FakeChain(), FakeStore()
    store.newest[W, "Moved"] = Decimal(6)
    chain.balances[W, "Moved"] = Decimal(7)
    watch_box: list[MessageWatch] = []

    def message_arrives() -> None:
        if len(chain.wallet_reads) == 1:
            watch_box[0].rooms[room_for(W, None)] = True

    chain.on_read = message_arrives
    async with running(chain, store, {WHOLE}, check_interval=0.5) as (_, watch):
        watch_box.append(watch)
        await wait_until(lambda: store.counts["check", "in_flight"], what="in flight")
    assert store.rows == []


@pytest.mark.parametrize(
    ("stored", "chain", "same"),
    [
        ("123456789.12345679", "123456789.123456789", True),  # the stream's double
        ("0.1", "0.1000000000000000055511151231257827", True),
        ("5", "5.000000001", False),
        ("0", "0.000000001", False),
    ],
)
def test_two_amounts_are_the_same_balance_when_they_are_the_same_double(
    stored: str, chain: str, same: bool
) -> None:
    assert same_balance(Decimal(stored), Decimal(chain)) is same
