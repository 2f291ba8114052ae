"""Balances read from the chain by a running daemon, against the simulator's JSON-RPC over real
HTTP: a snapshot when each listening period starts, checks that find drift, and RPC answers
that must never become a balance."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.engine import URL
from structlog.testing import capture_logs

from balancewatch.devtools.chainsim import ANSWER_FAULTS, FaultKind
from balancewatch.devtools.simulator import Simulator
from balancewatch.domain import Pair
from tests.data import WALLET3, insert
from tests.helpers import (
    SOL,
    TOKEN,
    WALLET,
    WALLET2,
    make_settings,
    room,
    running_daemon,
    wait_until,
    watch,
)

TOKEN2022 = "2b1kV6DkPAnxd5ixfnxCpjxmKwqjjaYmCZfHsFu24GXo"
MULTI: Pair = (WALLET, TOKEN)  # three accounts of one mint
T2022: Pair = (WALLET2, TOKEN2022)  # a Token-2022 account
EMPTY: Pair = (WALLET3, TOKEN)  # no account at all
NATIVE: Pair = (WALLET2, SOL)  # native SOL


async def rows(db: Any, source: str) -> list[Any]:
    return list(
        await db.fetch(
            "SELECT wallet, token, amount, slot, received_at FROM balance_history "
            "WHERE source = $1 ORDER BY id",
            source,
        )
    )


def has_rows(db: Any, source: str, count: int) -> Any:
    async def check() -> bool:
        return len(await rows(db, source)) >= count

    return check


def chain_settings(database_url: URL, simulator: Simulator, **overrides: Any) -> Any:
    values: dict[str, Any] = {"rpc_url": simulator.rpc_url, "balance_check_interval": 0}
    return make_settings(database_url, simulator.url, **(values | overrides))


async def test_each_pair_gets_a_snapshot_row_with_the_exact_balance_on_the_chain(
    database_url: URL, db: Any, simulator: Simulator
) -> None:
    chain = simulator.chain
    chain.set_layout(*MULTI, accounts=3, decimals=6)
    chain.set_layout(*T2022, program="spl-token-2022", decimals=9)
    chain.set_balance(*MULTI, "76989.158861")
    chain.set_balance(*T2022, "123456789.123456789")  # more digits than a double holds
    chain.set_balance(*NATIVE, "1.5")
    for pair in (MULTI, T2022, EMPTY, NATIVE):
        await watch(db, *pair)
    async with running_daemon(chain_settings(database_url, simulator)):
        await wait_until(has_rows(db, "snapshot", 4), timeout=10, what="four snapshots")
    snapshots = {(r["wallet"], r["token"]): r for r in await rows(db, "snapshot")}
    assert {pair: r["amount"] for pair, r in snapshots.items()} == {
        MULTI: Decimal("76989.158861"),
        T2022: Decimal("123456789.123456789"),
        EMPTY: Decimal(0),
        NATIVE: Decimal("1.5"),
    }
    assert all(r["slot"] > 0 for r in snapshots.values())
    started = await db.fetchval("SELECT max(started_at) FROM coverage")
    assert all(r["received_at"] >= started for r in snapshots.values())


async def test_a_dropped_connection_ends_a_period_and_the_next_one_starts_with_a_snapshot(
    database_url: URL, db: Any, simulator: Simulator
) -> None:
    simulator.chain.set_balance(WALLET, TOKEN, "10")
    await watch(db)
    async with running_daemon(chain_settings(database_url, simulator)):
        await wait_until(has_rows(db, "snapshot", 1), timeout=10, what="the first snapshot")
        simulator.chain.set_balance(WALLET, TOKEN, "11")  # changed while not listening
        await simulator.drop_connections()
        await simulator.wait_for(lambda: room() in simulator.joined_rooms(), timeout=10)
        await wait_until(has_rows(db, "snapshot", 2), timeout=10, what="the second snapshot")
    periods = await db.fetch(
        "SELECT started_at, ended_at, end_reason FROM coverage ORDER BY started_at"
    )
    assert [p["end_reason"] for p in periods] == ["disconnected", "shutdown"]
    first, second = await rows(db, "snapshot")
    assert (first["amount"], second["amount"]) == (Decimal(10), Decimal(11))
    assert second["received_at"] >= periods[1]["started_at"]

    async def as_of(at: Any) -> tuple[Decimal, bool]:
        found = await db.fetchrow("SELECT * FROM balance_as_of($1, $2, $3)", WALLET, TOKEN, at)
        return found["amount"], found["certain"]

    in_the_gap = periods[0]["ended_at"] + (periods[1]["started_at"] - periods[0]["ended_at"]) / 2
    assert await as_of(in_the_gap) == (Decimal(10), False)
    assert await as_of(periods[1]["ended_at"]) == (Decimal(11), True)


async def test_balances_changed_upstream_without_a_message_are_found_as_drift(
    database_url: URL, db: Any, simulator: Simulator
) -> None:
    pairs = [MULTI, T2022, NATIVE, EMPTY]
    for pair in pairs:
        simulator.chain.set_balance(*pair, "5")
        await watch(db, *pair)
    settings = chain_settings(database_url, simulator, balance_check_interval=1.0)
    async with running_daemon(settings) as running:
        await wait_until(has_rows(db, "snapshot", 4), timeout=10, what="the snapshots")
        injected = pairs[:3]
        for pair in injected:  # no message: the stream missed these
            simulator.chain.set_balance(*pair, "7.25")
        await wait_until(has_rows(db, "check", 3), timeout=15, what="three check rows")
        drift = running.daemon.registry.get_sample_value(
            "balancewatch_balance_checks_total", {"result": "drift"}
        )
    checks = await rows(db, "check")
    assert sorted((r["wallet"], r["token"]) for r in checks) == sorted(injected)
    assert {r["amount"] for r in checks} == {Decimal("7.25")}
    assert drift == 3
    assert (
        await db.fetchval(
            "SELECT sum(reads) FROM chain_reads WHERE kind = 'check' AND result = 'drift'"
        )
        == 3
    )


async def test_a_message_in_flight_during_a_check_is_not_drift(
    database_url: URL, db: Any, simulator: Simulator
) -> None:
    simulator.chain.set_balance(WALLET, TOKEN, "5")
    await watch(db)
    settings = chain_settings(database_url, simulator, balance_check_interval=1.0)
    async with running_daemon(settings) as running:
        await wait_until(has_rows(db, "snapshot", 1), timeout=10, what="the snapshot")
        simulator.chain.set_balance(WALLET, TOKEN, "6")  # the change lands on the chain...
        asked = len(simulator.chain.requests)
        await wait_until(lambda: len(simulator.chain.requests) > asked, what="a check's read")
        await simulator.send_balance(WALLET, TOKEN, "6")  # ...and its message comes late
        checks = running.daemon.chain_reads
        assert checks is not None
        await wait_until(
            lambda: checks.results["check", "match"] + checks.results["check", "in_flight"] >= 2,
            timeout=10,
            what="two more checks",
        )
    assert await rows(db, "check") == []
    assert checks.results["check", "drift"] == 0


# Every answer-level fault of the simulated provider has a refusal reason of the same name.
MALFORMED: list[FaultKind] = sorted(ANSWER_FAULTS)


@pytest.mark.parametrize("kind", MALFORMED)
async def test_a_malformed_rpc_answer_never_becomes_a_balance_row(
    kind: FaultKind, database_url: URL, db: Any, simulator: Simulator
) -> None:
    simulator.chain.set_balance(WALLET, TOKEN, "5")
    simulator.chain.fail_next(kind, times=1000)
    await watch(db)
    async with running_daemon(chain_settings(database_url, simulator)):
        await wait_until(
            lambda: db.fetchval("SELECT count(*) FROM rpc_failures"), timeout=10, what="a failure"
        )
    assert await rows(db, "snapshot") == []
    failure = await db.fetchrow("SELECT wallet, token, reason FROM rpc_failures")
    assert (failure["wallet"], failure["token"]) == (WALLET, TOKEN)
    assert failure["reason"] == kind
    assert await db.fetchval(
        "SELECT reads FROM chain_reads WHERE kind = 'snapshot' AND result = 'failed'"
    )


async def test_a_rate_limited_rpc_is_waited_for_and_the_snapshot_still_comes(
    database_url: URL, db: Any, simulator: Simulator
) -> None:
    simulator.chain.set_balance(WALLET, TOKEN, "5")
    simulator.chain.fail_next("429", times=1, retry_after=1.0)
    simulator.chain.fail_next("503", times=1)
    await watch(db)
    async with running_daemon(chain_settings(database_url, simulator)) as running:
        await wait_until(has_rows(db, "snapshot", 1), timeout=15, what="the snapshot")
        outcomes = dict(running.daemon.rpc_requests)
    statuses = [request.status for request in simulator.chain.requests]
    assert statuses[:3] == [429, 503, 200]
    limited, after = simulator.chain.requests[0], simulator.chain.requests[1]
    assert after.at - limited.at >= 1.0  # Retry-After honoured
    assert outcomes["rate_limited"] == 1
    assert outcomes["server_error"] == 1
    assert outcomes["ok"] >= 1


async def test_the_rpc_urls_secret_parts_appear_in_no_log_row_or_metric(
    database_url: URL, db: Any, simulator: Simulator
) -> None:
    secret_path, secret_query = "path-secret-5d1c07e3", "query-secret-93b7aa10"
    url = f"{simulator.rpc_url}/{secret_path}?api-key={secret_query}"
    simulator.chain.fail_next("500", times=2)
    simulator.chain.fail_next("not_json", times=1)
    await watch(db)
    settings = chain_settings(database_url, simulator, rpc_url=url)
    with capture_logs() as logs:
        async with running_daemon(settings) as running:
            await wait_until(
                lambda: db.fetchval("SELECT count(*) FROM rpc_failures"), timeout=10, what="failure"
            )
            metrics = running.daemon.registry
            page = "\n".join(str(m) for m in metrics.collect())
            shown = repr(running.daemon.chain_reads) + repr(settings)
    stored = "\n".join(map(str, await db.fetch("SELECT * FROM rpc_failures")))
    everything = "\n".join([repr(logs), page, shown, stored])
    for secret in (secret_path, secret_query):
        assert secret not in everything


async def test_without_an_rpc_url_one_warning_says_so_and_periods_are_still_kept(
    database_url: URL, db: Any, simulator: Simulator
) -> None:
    await watch(db)
    with capture_logs() as logs:
        async with running_daemon(make_settings(database_url, simulator.url)) as running:
            await simulator.wait_for(lambda: room() in simulator.joined_rooms())
            await wait_until(
                lambda: db.fetchval("SELECT count(*) FROM coverage"), what="a listening period"
            )
            registry = running.daemon.registry
            configured = registry.get_sample_value("balancewatch_rpc_configured")
            queue = registry.get_sample_value("balancewatch_snapshot_queue")
    assert [e["event"] for e in logs].count("daemon.no_rpc_url") == 1
    assert (configured, queue) == (0, None)
    assert simulator.chain.requests == []
    assert await rows(db, "snapshot") == []


async def test_the_metrics_count_snapshots_checks_the_queue_and_rpc_requests(
    database_url: URL, db: Any, simulator: Simulator
) -> None:
    simulator.chain.fail_next("503")
    for pair in (MULTI, NATIVE):
        await watch(db, *pair)
    settings = chain_settings(database_url, simulator, balance_check_interval=0.5)
    async with running_daemon(settings) as running:
        registry = running.daemon.registry

        def sample(name: str, **labels: str) -> float:
            return registry.get_sample_value(name, labels) or 0.0

        await wait_until(
            lambda: sample("balancewatch_balance_checks_total", result="match") >= 2,
            timeout=10,
            what="two checks",
        )
        assert sample("balancewatch_rpc_configured") == 1
        assert sample("balancewatch_snapshots_total", result="stored") == 2
        assert sample("balancewatch_snapshot_queue") == 0
        assert sample("balancewatch_rpc_requests_total", outcome="server_error") == 1
        assert sample("balancewatch_rpc_requests_total", outcome="ok") >= 2


async def test_a_refused_rpc_key_is_counted_and_leaves_no_refused_answer_row_per_pair(
    database_url: URL, db: Any, simulator: Simulator
) -> None:
    simulator.chain.set_balance(WALLET, TOKEN, "5")
    simulator.chain.fail_next("401")
    await watch(db)
    async with running_daemon(chain_settings(database_url, simulator)) as running:
        reads = running.daemon.chain_reads
        assert reads is not None
        await wait_until(lambda: reads.refused["unavailable"] == 1, what="the refusal")
        await running.daemon.bookkeeping.flush()
        assert await db.fetchval("SELECT count(*) FROM rpc_failures") == 0
        assert running.daemon.rpc_requests["client_error"] == 1


# -- whole wallets -----------------------------------------------------------------------------

GONE = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"  # in the history, no longer on chain
SPENT = "DezXAZ8z7PnrnRJjz3wXBoRgixCa6xjnB7YaB1pPB263"  # in the history at 0 already


async def watch_wallet(db: Any, wallet: str = WALLET) -> None:
    await db.execute("INSERT INTO watchlist (wallet) VALUES ($1)", wallet)


def holds_three_tokens(simulator: Simulator) -> None:
    """WALLET: an SPL mint in two accounts, a Token-2022 mint, and native SOL."""
    chain = simulator.chain
    chain.set_layout(WALLET, TOKEN, accounts=2, program="spl-token", decimals=6)
    chain.set_layout(WALLET, TOKEN2022, program="spl-token-2022", decimals=9)
    chain.set_balance(WALLET, TOKEN, "76989.158861")
    chain.set_balance(WALLET, TOKEN2022, "123456789.123456789")
    chain.set_balance(WALLET, SOL, "1.5")


async def in_the_history(db: Any, *holdings: tuple[str, str]) -> None:
    """Stream rows of WALLET from before the daemon ran: (token, amount)."""
    at = await db.fetchval("SELECT now() - interval '1 day'")
    await insert(db, [(WALLET, token, amount, at) for token, amount in holdings])


async def test_a_whole_wallet_gets_a_snapshot_row_for_every_token_native_sol_included(
    database_url: URL, db: Any, simulator: Simulator
) -> None:
    holds_three_tokens(simulator)
    await watch_wallet(db)
    async with running_daemon(chain_settings(database_url, simulator)):
        await wait_until(has_rows(db, "snapshot", 3), timeout=10, what="three snapshots")
    snapshots = {r["token"]: r for r in await rows(db, "snapshot")}
    assert {token: r["amount"] for token, r in snapshots.items()} == {
        TOKEN: Decimal("76989.158861"),
        TOKEN2022: Decimal("123456789.123456789"),
        SOL: Decimal("1.5"),
    }
    assert {r["wallet"] for r in snapshots.values()} == {WALLET}
    assert all(r["slot"] > 0 for r in snapshots.values())
    period = await db.fetchrow("SELECT wallet, token, started_at FROM coverage")
    assert (period["wallet"], period["token"]) == (WALLET, None)
    assert all(r["received_at"] >= period["started_at"] for r in snapshots.values())
    assert [(r.calls, r.batch) for r in simulator.chain.requests] == [(3, True)]


async def test_a_token_the_history_holds_and_the_chain_no_longer_shows_gets_a_zero_row(
    database_url: URL, db: Any, simulator: Simulator
) -> None:
    simulator.chain.set_balance(WALLET, TOKEN, "1")
    await in_the_history(db, (TOKEN, "2"), (GONE, "5"), (SPENT, "0"))
    await watch_wallet(db)
    async with running_daemon(chain_settings(database_url, simulator)):
        await wait_until(has_rows(db, "snapshot", 2), timeout=10, what="two snapshots")
    snapshots = await rows(db, "snapshot")
    assert sorted((r["token"], r["amount"]) for r in snapshots) == sorted(
        [(TOKEN, Decimal(1)), (GONE, Decimal(0))]
    )
    gone = next(r for r in snapshots if r["token"] == GONE)
    as_of = await db.fetchrow(
        "SELECT amount, certain FROM balance_as_of($1, $2, $3)", WALLET, GONE, gone["received_at"]
    )
    assert (as_of["amount"], as_of["certain"]) == (Decimal(0), True)


async def test_a_failed_token_program_call_writes_no_snapshot_row_and_one_tokenless_failure(
    database_url: URL, db: Any, simulator: Simulator
) -> None:
    holds_three_tokens(simulator)
    await in_the_history(db, (GONE, "5"))
    # The wallet's one batch: both program calls get an account of another owner; getBalance
    # has no owner to get wrong, and its answer is good.
    simulator.chain.fail_next("wrong_owner")
    await watch_wallet(db)
    async with running_daemon(chain_settings(database_url, simulator)) as running:
        reads = running.daemon.chain_reads
        assert reads is not None
        await wait_until(
            lambda: db.fetchval("SELECT count(*) FROM rpc_failures"), timeout=10, what="a failure"
        )
        assert reads.results["snapshot", "failed"] == 1
    assert await rows(db, "snapshot") == []
    failures = await db.fetch("SELECT wallet, token, reason FROM rpc_failures")
    assert [tuple(f) for f in failures] == [(WALLET, None, "wrong_owner")]


async def test_a_wallet_check_finds_drift_in_one_token_and_writes_one_check_row(
    database_url: URL, db: Any, simulator: Simulator
) -> None:
    holds_three_tokens(simulator)
    await watch_wallet(db)
    settings = chain_settings(database_url, simulator, balance_check_interval=1.0)
    async with running_daemon(settings) as running:
        await wait_until(has_rows(db, "snapshot", 3), timeout=10, what="the snapshots")
        simulator.chain.set_balance(WALLET, TOKEN2022, "7.25")  # no message: the stream missed it
        await wait_until(has_rows(db, "check", 1), timeout=15, what="a check row")
        reads = running.daemon.chain_reads
        assert reads is not None
        matched = reads.results["check", "match"]
    checks = await rows(db, "check")
    assert [(r["wallet"], r["token"], r["amount"]) for r in checks] == [
        (WALLET, TOKEN2022, Decimal("7.25"))
    ]
    assert matched >= 2  # the other two tokens, the same round
    assert (
        await db.fetchval(
            "SELECT sum(reads) FROM chain_reads WHERE kind = 'check' AND result = 'drift'"
        )
        == 1
    )
