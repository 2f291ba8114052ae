"""SolanaRpc over real HTTP against the simulated chain: exact balances, batching, the rate limit,
retries, a provider that refuses batches, bad answers, and a URL that stays secret."""

from __future__ import annotations

import hashlib
import logging
import socket
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from balancewatch.chain.answers import (
    WRAPPED_SOL_MINT,
    ChainBalance,
    ChainRead,
    ReadFailure,
    WalletBalances,
    WalletRead,
)
from balancewatch.chain.rpc import RequestOutcome, RpcConfig, SolanaRpc
from balancewatch.devtools.chainsim import ANSWER_FAULTS, FaultKind, base58
from balancewatch.devtools.simulator import Simulator
from balancewatch.domain import Pair
from tests.helpers import TOKEN, WALLET, WALLET2

MINT_2022 = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"
SECRET_PATH = "SECRET-PATH-TOKEN"
SECRET_QUERY = "SECRET-QUERY"
# Quick retries, so a test of five attempts takes a fraction of a second.
FAST: dict[str, Any] = {"retry_initial": 0.01, "retry_max": 0.05, "timeout": 2.0, "max_rps": 200.0}


def wallets(count: int) -> list[str]:
    return [base58(hashlib.sha256(f"owner {index}".encode()).digest()) for index in range(count)]


def config(sim: Simulator, **overrides: Any) -> RpcConfig:
    return RpcConfig(sim.rpc_url, **{**FAST, **overrides})


def balances(reads: Sequence[ChainRead]) -> dict[Pair, Decimal]:
    found = {}
    for read in reads:
        assert isinstance(read, ChainBalance), read
        found[read.pair] = read.amount
    return found


@pytest.fixture
def sim(simulator: Simulator) -> Simulator:
    simulator.chain.set_balance(WALLET, TOKEN, "76989.158861")
    simulator.chain.set_balance(WALLET, WRAPPED_SOL_MINT, "1.500000001")
    simulator.chain.set_balance(WALLET2, TOKEN, "0.000001")
    return simulator


class Outcomes(list[RequestOutcome]):
    def __call__(self, outcome: RequestOutcome) -> None:
        self.append(outcome)


# -- exact balances ----------------------------------------------------------------------------


async def test_every_layout_reads_as_the_exact_chain_balance(sim: Simulator) -> None:
    chain = sim.chain
    chain.set_layout(WALLET, TOKEN, accounts=3, decimals=6)
    chain.set_layout(WALLET2, MINT_2022, accounts=2, program="spl-token-2022", decimals=9)
    chain.set_balance(WALLET2, MINT_2022, "18446744073.709551615")  # u64 max over 2 accounts
    chain.set_balance(WALLET2, WRAPPED_SOL_MINT, "0.000000001")
    pairs = [
        (WALLET, TOKEN),
        (WALLET2, MINT_2022),
        (WALLET, WRAPPED_SOL_MINT),
        (WALLET2, WRAPPED_SOL_MINT),
        (WALLET, MINT_2022),  # never given a balance: no account at all
    ]
    async with SolanaRpc(config(sim)) as rpc:
        reads = await rpc.read(pairs)

    assert [read.pair for read in reads] == pairs
    assert balances(reads) == {pair: chain.balance(*pair) for pair in pairs}
    assert balances(reads)[(WALLET, MINT_2022)] == 0
    assert len(chain.token_accounts(WALLET, TOKEN)) == 3
    assert chain.program(MINT_2022) == "spl-token-2022"
    # One batch, so one slot: the simulated chain's at the time of the request.
    assert {read.slot for read in reads if isinstance(read, ChainBalance)} == {chain.slot}


async def test_the_default_layouts_vary_and_still_read_exactly(sim: Simulator) -> None:
    owners = wallets(40)
    pairs = [(owner, TOKEN) for owner in owners] + [(owner, MINT_2022) for owner in owners]
    for index, (owner, mint) in enumerate(pairs):
        sim.chain.set_balance(owner, mint, f"{index}.{index:06d}")
    assert {sim.chain.accounts(*pair) for pair in pairs} == {1, 2, 3}
    async with SolanaRpc(config(sim)) as rpc:
        reads = await rpc.read(pairs)
    assert balances(reads) == {pair: sim.chain.balance(*pair) for pair in pairs}


# -- batching ----------------------------------------------------------------------------------


async def test_250_pairs_go_as_three_batches(sim: Simulator) -> None:
    pairs = [(owner, TOKEN) for owner in wallets(250)]
    outcomes = Outcomes()
    async with SolanaRpc(config(sim), on_request=outcomes) as rpc:
        reads = await rpc.read(pairs)

    assert [read.pair for read in reads] == pairs
    assert set(balances(reads).values()) == {Decimal(0)}
    assert sorted((r.calls, r.batch) for r in sim.chain.requests) == [
        (50, True),
        (100, True),
        (100, True),
    ]
    assert outcomes == ["ok"] * 3


async def test_a_provider_that_refuses_batches_gets_single_calls_from_then_on(
    sim: Simulator,
) -> None:
    sim.chain.refuse_batches = True
    pairs = [(WALLET, TOKEN), (WALLET, WRAPPED_SOL_MINT), (WALLET2, TOKEN)]
    outcomes = Outcomes()
    async with SolanaRpc(config(sim), on_request=outcomes) as rpc:
        assert not rpc.batches_refused
        with capture_logs() as logged:
            first = await rpc.read(pairs)
        assert rpc.batches_refused
        second = await rpc.read(pairs)

    expected = {pair: sim.chain.balance(*pair) for pair in pairs}
    assert balances(first) == balances(second) == expected
    assert [(r.batch, r.status) for r in sim.chain.requests] == [(True, 400)] + [(False, 200)] * 6
    assert outcomes == ["batch_refused"] + ["ok"] * 6
    assert [e["event"] for e in logged].count("chain.batches_refused") == 1


# -- the rate limit and retries ----------------------------------------------------------------


async def test_requests_stay_within_max_rps(sim: Simulator) -> None:
    sim.chain.refuse_batches = True  # 20 pairs, 20 requests after the refused batch
    pairs = [(owner, TOKEN) for owner in wallets(20)]
    async with SolanaRpc(config(sim, max_rps=20.0)) as rpc:
        await rpc.read(pairs)

    times = [r.at for r in sim.chain.requests]
    assert len(times) == 21
    # 21 requests at 20 a second: 20 gaps of 1/20 s at least (a little slack for the network).
    assert times[-1] - times[0] >= 0.9
    for start in times:
        assert sum(start <= t < start + 1.0 for t in times) <= 21


async def test_a_429_holds_every_request_for_its_retry_after(sim: Simulator) -> None:
    sim.chain.fail_next("429", retry_after=0.6)
    pairs = [(WALLET, TOKEN), (WALLET, WRAPPED_SOL_MINT), (WALLET2, TOKEN), (WALLET2, MINT_2022)]
    outcomes = Outcomes()
    # One call per request, 10 a second: the next would come 0.1 s later if not held.
    async with SolanaRpc(config(sim, batch_size=1, max_rps=10.0), on_request=outcomes) as rpc:
        reads = await rpc.read(pairs)

    assert balances(reads) == {pair: sim.chain.balance(*pair) for pair in pairs}
    limited = next(r for r in sim.chain.requests if r.status == 429)
    later = [r for r in sim.chain.requests if r.at > limited.at]
    assert len(later) == len(pairs)  # the other three, and the retry
    assert all(r.at >= limited.at + 0.6 for r in later)
    assert sorted(outcomes) == ["ok"] * 4 + ["rate_limited"]


@pytest.mark.parametrize("retry_after", ["", "soon", "-1", "nan"])
async def test_a_429_without_a_usable_retry_after_backs_off(
    sim: Simulator, retry_after: str
) -> None:
    sim.chain.fail_next("429", retry_after=retry_after)
    async with SolanaRpc(config(sim)) as rpc:
        reads = await rpc.read([(WALLET, TOKEN), (WALLET2, TOKEN)])
    assert len(balances(reads)) == 2
    assert [r.status for r in sim.chain.requests] == [429, 200]


@pytest.mark.parametrize("kinds", [["500"], ["503"], ["500", "503", "500"], ["timeout"]])
async def test_server_errors_and_timeouts_are_retried(
    sim: Simulator, kinds: list[FaultKind]
) -> None:
    for kind in kinds:
        sim.chain.fail_next(kind)
    outcomes = Outcomes()
    pairs = [(WALLET, TOKEN), (WALLET, WRAPPED_SOL_MINT)]
    async with SolanaRpc(config(sim, timeout=0.3), on_request=outcomes) as rpc:
        reads = await rpc.read(pairs)

    assert balances(reads) == {pair: sim.chain.balance(*pair) for pair in pairs}
    expected_status = {"500": 500, "503": 503, "timeout": None}
    assert [r.status for r in sim.chain.requests] == [
        *(expected_status[kind] for kind in kinds),
        200,
    ]
    expected_outcome = {"500": "server_error", "503": "server_error", "timeout": "timeout"}
    assert outcomes == [*(expected_outcome[kind] for kind in kinds), "ok"]


async def test_after_max_attempts_the_pairs_are_unavailable(sim: Simulator) -> None:
    sim.chain.fail_next("503", times=3)
    pairs = [(WALLET, TOKEN), (WALLET, WRAPPED_SOL_MINT)]
    with capture_logs() as logged:
        async with SolanaRpc(config(sim, max_attempts=3)) as rpc:
            reads = await rpc.read(pairs)

    assert all(isinstance(read, ReadFailure) for read in reads)
    assert [(read.pair, read.reason) for read in reads if isinstance(read, ReadFailure)] == [
        (pair, "unavailable") for pair in pairs
    ]
    assert "HTTP 503" in reads[0].detail  # type: ignore[union-attr]
    assert len(sim.chain.requests) == 3
    assert [e["event"] for e in logged] == ["chain.request_retried"] * 2 + ["chain.request_failed"]


@pytest.mark.parametrize("count", [1, 3], ids=["single", "batch"])
async def test_a_refused_key_is_unavailable_not_a_refused_batch_and_not_retried(
    sim: Simulator, count: int
) -> None:
    sim.chain.fail_next("401")
    pairs = [(wallet, TOKEN) for wallet in wallets(count)]
    async with SolanaRpc(config(sim), on_request=(outcomes := Outcomes())) as rpc:
        reads = await rpc.read(pairs)
        assert not rpc.batches_refused  # the next request is a batch again
    assert [(read.pair, read.reason) for read in reads if isinstance(read, ReadFailure)] == [
        (pair, "unavailable") for pair in pairs
    ]
    assert "check its key" in reads[0].detail  # type: ignore[union-attr]
    assert [request.status for request in sim.chain.requests] == [401]
    assert outcomes == ["client_error"]


# -- bad answers -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(ANSWER_FAULTS))
@pytest.mark.parametrize("batch", [True, False], ids=["batch", "single"])
async def test_a_bad_answer_is_a_failure_never_a_balance(
    sim: Simulator, kind: FaultKind, batch: bool
) -> None:
    pairs = [(WALLET, TOKEN), (WALLET2, TOKEN)] if batch else [(WALLET2, MINT_2022)]
    sim.chain.fail_next(kind)
    outcomes = Outcomes()
    async with SolanaRpc(config(sim), on_request=outcomes) as rpc:
        reads = await rpc.read(pairs)

    assert [read.pair for read in reads] == pairs
    for read in reads:
        assert isinstance(read, ReadFailure)
        assert read.reason == kind
        assert read.answer is not None
    assert outcomes == ["malformed" if kind == "not_json" else "ok"]
    assert len(sim.chain.requests) == 1  # a bad answer is not retried


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("not_json", "not_json"), ("bad_shape", "bad_shape"), ("bad_amount", "bad_amount")],
)
async def test_a_bad_native_sol_answer_is_a_failure(
    sim: Simulator, kind: FaultKind, reason: str
) -> None:
    sim.chain.fail_next(kind)
    async with SolanaRpc(config(sim)) as rpc:
        [read] = await rpc.read([(WALLET, WRAPPED_SOL_MINT)])
    assert isinstance(read, ReadFailure)
    assert read.reason == reason


# -- whole wallets ----------------------------------------------------------------------------

SPL_MINT = "2b1kV6DkPAnxd5ixfnxCpjxmKwqjjaYmCZfHsFu24GXo"


def held(read: WalletRead) -> dict[str, Decimal]:
    assert isinstance(read, WalletBalances), read
    return {token: balance.amount for token, balance in read.held.items()}


@pytest.fixture
def wallet_sim(sim: Simulator) -> Simulator:
    """WALLET holds an SPL mint in three accounts, a Token-2022 mint, an empty account and
    native SOL; WALLET2 one SPL account and no lamports."""
    chain = sim.chain
    chain.set_layout(WALLET, TOKEN, accounts=3, decimals=6)
    chain.set_layout(WALLET2, TOKEN, decimals=6)
    chain.set_layout(WALLET, MINT_2022, accounts=2, program="spl-token-2022", decimals=9)
    chain.set_layout(WALLET, SPL_MINT, program="spl-token")
    chain.set_balance(WALLET, MINT_2022, "18446744073.709551615")  # u64 max over 2 accounts
    chain.set_balance(WALLET, SPL_MINT, "0")
    return sim


async def test_a_wallet_is_read_whole_in_one_batch_of_three_calls_each(
    wallet_sim: Simulator,
) -> None:
    async with SolanaRpc(config(wallet_sim)) as rpc:
        first, second = await rpc.read_wallets([WALLET, WALLET2])

    assert held(first) == {
        TOKEN: Decimal("76989.158861"),
        MINT_2022: Decimal("18446744073.709551615"),
        SPL_MINT: Decimal(0),
        WRAPPED_SOL_MINT: Decimal("1.500000001"),
    }
    assert held(second) == {TOKEN: Decimal("0.000001")}
    assert [(r.calls, r.batch) for r in wallet_sim.chain.requests] == [(6, True)]


async def test_a_wallet_read_over_single_calls_reads_the_same(wallet_sim: Simulator) -> None:
    async with SolanaRpc(config(wallet_sim)) as rpc:
        [batched] = await rpc.read_wallets([WALLET])
        wallet_sim.chain.refuse_batches = True
        [single] = await rpc.read_wallets([WALLET])

    assert held(single) == held(batched)
    assert [(r.calls, r.batch) for r in wallet_sim.chain.requests[1:]] == [(3, True)] + [
        (1, False)
    ] * 3


# A program-filtered call asks no mint: the simulator's wrong_mint leaves its answer alone.
WALLET_FAULTS: list[FaultKind] = sorted(ANSWER_FAULTS - {"wrong_mint"})


@pytest.mark.parametrize("kind", WALLET_FAULTS)
async def test_a_bad_answer_to_a_wallets_token_accounts_fails_the_whole_wallet(
    wallet_sim: Simulator, kind: FaultKind
) -> None:
    wallet_sim.chain.fail_next(kind)  # the one batch: every call of it, getBalance's as it can
    async with SolanaRpc(config(wallet_sim)) as rpc:
        [read] = await rpc.read_wallets([WALLET])
    assert isinstance(read, ReadFailure)
    assert (read.pair, read.reason) == ((WALLET, None), kind)
    assert read.answer is not None


async def test_one_failed_call_of_a_wallets_three_fails_the_whole_wallet(
    wallet_sim: Simulator,
) -> None:
    wallet_sim.chain.refuse_batches = True
    async with SolanaRpc(config(wallet_sim)) as rpc:
        await rpc.read_wallets([WALLET2])  # the batch refused: single calls from now on
        wallet_sim.chain.fail_next("rpc_error")
        [read] = await rpc.read_wallets([WALLET])
    assert isinstance(read, ReadFailure)
    assert (read.pair, read.reason) == ((WALLET, None), "rpc_error")
    assert [r.fault for r in wallet_sim.chain.requests[-3:]].count("rpc_error") == 1


# -- the URL is a secret -----------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_the_url_is_in_no_log_error_or_repr(
    sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_url = f"{sim.rpc_url}/{SECRET_PATH}?api-key={SECRET_QUERY}"
    refused_url = f"http://127.0.0.1:{closed_port()}/rpc/{SECRET_PATH}?api-key={SECRET_QUERY}"
    seen: list[str] = []
    with capture_logs() as logged:
        cfg = RpcConfig(secret_url, **{**FAST, "timeout": 0.3, "max_attempts": 2})
        async with SolanaRpc(cfg) as rpc:
            seen += [repr(cfg), str(cfg), repr(rpc)]
            kinds: list[FaultKind] = ["429", "500", "timeout", "not_json", "rpc_error", "bad_shape"]
            for kind in kinds:
                sim.chain.fail_next(kind, retry_after=0.05)
                seen += [repr(read) for read in await rpc.read([(WALLET, TOKEN), (WALLET2, TOKEN)])]
            sim.chain.fail_next("503", times=2)
            seen += [repr(read) for read in await rpc.read([(WALLET, TOKEN), (WALLET2, TOKEN)])]
            sim.chain.refuse_batches = True
            seen += [repr(read) for read in await rpc.read([(WALLET, TOKEN), (WALLET2, TOKEN)])]
            seen.append(repr(rpc))
        refused_cfg = RpcConfig(refused_url, **{**FAST, "max_attempts": 2})
        async with SolanaRpc(refused_cfg) as refused:
            unreachable = await refused.read([(WALLET, TOKEN)])
            seen += [repr(read) for read in unreachable]
        with pytest.raises(ValueError, match="http:// or https://") as bad_scheme:
            RpcConfig(f"ftp://example.com/{SECRET_PATH}?api-key={SECRET_QUERY}")
        seen.append(str(bad_scheme.value))

    assert isinstance(unreachable[0], ReadFailure)
    assert unreachable[0].reason == "unavailable"
    assert "ClientConnectorError" in unreachable[0].detail
    assert any(e["event"] == "chain.request_retried" for e in logged)
    # The simulator's own access log is the provider's side: it knows its own URL.
    client_side = [r for r in caplog.records if r.name != "aiohttp.access"]
    everything = "\n".join(
        [*seen, *map(repr, logged), *(record.getMessage() for record in client_side)]
    )
    for secret in (SECRET_PATH, SECRET_QUERY):
        assert secret not in everything


async def test_batch_answers_are_matched_by_id_in_any_order_and_a_missing_one_is_named() -> None:
    """A provider that answers a batch backwards, drops one call and adds a stranger."""

    async def backwards(request: web.Request) -> web.Response:
        calls = await request.json()
        answers = [
            {"jsonrpc": "2.0", "id": call["id"], "result": {"context": {"slot": 9}, "value": []}}
            for call in calls[1:]
        ]
        answers.append({"jsonrpc": "2.0", "id": 10**9, "result": None})
        return web.json_response(answers[::-1])

    app = web.Application()
    app.router.add_post("/rpc", backwards)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        pairs = [(WALLET, TOKEN), (WALLET2, TOKEN), (WALLET, MINT_2022)]
        async with SolanaRpc(RpcConfig(f"http://127.0.0.1:{port}/rpc", **FAST)) as rpc:
            reads = await rpc.read(pairs)
    finally:
        await runner.cleanup()

    assert [read.pair for read in reads] == pairs
    assert isinstance(reads[0], ReadFailure)
    assert reads[0].reason == "missing_answer"
    assert reads[1:] == [ChainBalance(pair, Decimal(0), 9) for pair in pairs[1:]]
