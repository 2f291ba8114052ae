"""The command line as a user runs it: real subprocesses, real signals, exit codes and rows."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL

from balancewatch.devtools.simulator import Simulator
from tests.data import insert_statuses
from tests.helpers import API_KEY, SOL, TOKEN, WALLET, room
from tests.processes import balancewatch, environment, started

TERM_DEADLINE = 10.0


async def test_migrate_creates_the_schema_and_is_safe_to_run_again(
    empty_database_url: URL, tmp_path: Path
) -> None:
    env = environment(empty_database_url)
    first = await balancewatch("migrate", env=env)
    second = await balancewatch("migrate", env=env)
    assert (first.code, second.code) == (0, 0), first.stdout + first.stderr
    assert '"migrate.done"' in second.stdout


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({}, "BALANCEWATCH_DATABASE_URL"),
        ({"database_url": "mysql://u:p@h/db"}, "BALANCEWATCH_DATABASE_URL"),
        ({"database_url": "postgresql://h/db"}, "BALANCEWATCH_API_KEY"),
        (
            {"database_url": "postgresql://h/db", "api_key_file": "/nonexistent/key"},
            "BALANCEWATCH_API_KEY_FILE",
        ),
        (
            {"database_url": "postgresql://h/db", "api_key": "k", "batch_size": "lots"},
            "BALANCEWATCH_BATCH_SIZE",
        ),
    ],
)
async def test_bad_configuration_is_refused_with_one_line_and_exit_code_2(
    settings: dict[str, str], named: str
) -> None:
    finished = await balancewatch("run", env=environment(None, **settings))
    assert finished.code == 2
    lines = finished.stderr.strip().splitlines()
    assert len(lines) == 1
    assert named in lines[0]


async def test_run_refuses_an_unmigrated_database(empty_database_url: URL) -> None:
    finished = await balancewatch("run", env=environment(empty_database_url, api_key=API_KEY))
    assert finished.code == 1
    assert "balancewatch migrate" in finished.stdout


async def test_watch_commands_edit_the_watchlist(database_url: URL, db: Any) -> None:
    env = environment(database_url)
    added = await balancewatch("watch", "add", WALLET, TOKEN, "--label", "usdt", env=env)
    again = await balancewatch("watch", "add", WALLET, SOL, env=env)
    listed = await balancewatch("watch", "list", env=env)
    assert (added.code, again.code, listed.code) == (0, 0, 0)
    assert WALLET in listed.stdout
    assert "usdt" in listed.stdout
    rows = await db.fetch("SELECT token, label FROM watchlist ORDER BY id")
    assert [(row["token"], row["label"]) for row in rows] == [(TOKEN, "usdt"), (SOL, None)]

    removed = await balancewatch("watch", "remove", WALLET, SOL, env=env)
    missing = await balancewatch("watch", "remove", WALLET, SOL, env=env)
    assert (removed.code, missing.code) == (0, 1)
    assert await db.fetchval("SELECT count(*) FROM watchlist") == 1


async def test_watch_add_without_a_token_watches_every_token_of_the_wallet(
    database_url: URL, db: Any
) -> None:
    env = environment(database_url)
    first = await balancewatch("watch", "add", WALLET, "--label", "treasury", env=env)
    again = await balancewatch("watch", "add", WALLET, env=env)
    assert (first.code, again.code) == (0, 0), first.stderr + again.stderr
    assert first.stdout.strip() == f"added {WALLET} all tokens"
    assert again.stdout.strip() == f"enabled {WALLET} all tokens"
    rows = await db.fetch("SELECT token, label FROM watchlist")
    assert [(row["token"], row["label"]) for row in rows] == [(None, "treasury")]


async def watch_a_pair_and_its_whole_wallet(database_url: URL) -> dict[str, str]:
    """`watch add WALLET TOKEN` then `watch add WALLET`; the environment they ran in."""
    env = environment(database_url)
    for token in ([TOKEN], []):
        added = await balancewatch("watch", "add", WALLET, *token, env=env)
        assert added.code == 0, added.stderr
    return env


async def test_watch_list_shows_a_whole_wallet_and_the_pairs_it_covers(
    database_url: URL, db: Any
) -> None:
    env = await watch_a_pair_and_its_whole_wallet(database_url)
    await insert_statuses(db, [(WALLET, TOKEN, "covered", None), (WALLET, None, "joined", None)])
    listed = await balancewatch("watch", "list", env=env)
    assert listed.code == 0, listed.stderr
    pair, whole = listed.stdout.splitlines()[1:]  # after the header
    assert pair.split() == [WALLET, TOKEN, "yes", "covered", "(all", "tokens)"]
    assert whole.split() == [WALLET, "all", "tokens", "yes", "joined"]


async def test_watch_remove_without_a_token_removes_only_the_all_tokens_row(
    database_url: URL, db: Any
) -> None:
    env = await watch_a_pair_and_its_whole_wallet(database_url)
    removed = await balancewatch("watch", "remove", WALLET, env=env)
    missing = await balancewatch("watch", "remove", WALLET, env=env)
    assert (removed.code, missing.code) == (0, 1)
    assert removed.stdout.strip() == (
        f"removed {WALLET} all tokens (its history and single-token rows stay)"
    )
    assert missing.stderr.strip() == f"not watched: {WALLET} all tokens"
    assert await db.fetchval("SELECT array_agg(token) FROM watchlist") == [TOKEN]


@pytest.mark.parametrize("token", [[TOKEN], []], ids=["pair", "whole wallet"])
async def test_watch_add_refuses_a_malformed_address(
    database_url: URL, db: Any, token: list[str]
) -> None:
    finished = await balancewatch(
        "watch", "add", "0xdeadbeef", *token, env=environment(database_url)
    )
    assert finished.code == 2
    assert "WALLET" in finished.stderr
    assert await db.fetchval("SELECT count(*) FROM watchlist") == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_stores_every_received_message_and_exits_0(
    database_url: URL, db: Any, simulator: Simulator, start_daemon: Any, signum: int
) -> None:
    await db.execute("INSERT INTO watchlist (wallet, token) VALUES ($1, $2)", WALLET, TOKEN)
    # Neither the flush age nor the batch size would ever flush: only the drain on exit can.
    env = environment(
        database_url,
        datastream_url=simulator.url,
        api_key=API_KEY,
        flush_interval="60",
        batch_size="1000000",
    )
    daemon = await start_daemon(env)
    await simulator.wait_for(lambda: room() in simulator.joined_rooms(), timeout=15)
    for i in range(1000):
        await simulator.send_balance(WALLET, TOKEN, f"{i}.5")
    # The daemon reads frames in order, so its pong proves it has read every message before.
    await simulator.ping()
    await simulator.wait_for(lambda: any(e.kind == "pong" for e in simulator.events))
    assert await db.fetchval("SELECT count(*) FROM balance_history") == 0

    code = await daemon.stop(signum, timeout=TERM_DEADLINE)

    assert code == 0, daemon.text()
    amounts = await db.fetch("SELECT amount::text AS a FROM balance_history ORDER BY id")
    assert [row["a"] for row in amounts] == [f"{i}.5" for i in range(1000)]


async def test_the_demo_runs_end_to_end_and_ctrl_c_cleans_everything_up() -> None:
    async with started(environment(None), "demo", "--rate", "50", deadline=40) as demo:
        await demo.wait_for(lambda: "added while running" in demo.text(), "a pair added")
        await demo.wait_for(lambda: "2 token rooms left" in demo.text(), "a whole wallet")
        await demo.wait_for(lambda: "Token-2022 and native SOL): 2b1k" in demo.text(), "snapshot")
        await demo.wait_for(lambda: "never held" in demo.text(), "a token first received")
        await demo.wait_for(lambda: "a check found the drift" in demo.text(), "the drift found")
        await demo.wait_for(lambda: "check@" in demo.text(), "the check row printed")
        await demo.wait_for(lambda: "back with demo-a" in demo.text(), "the handover back")
        await demo.wait_for(lambda: "balance_daily, today so far" in demo.text(), "the day")
        code = await demo.stop(signal.SIGINT, timeout=20)
    text = demo.text()
    assert code == 0, text
    assert "join on the socket in" in text
    assert text.count("  row ") >= 5
    assert re.search(r"2500\.750000000 +snapshot@\d+ +EPjF\.\. +a cold wallet", text)  # joined
    assert "what was missed is known again" in text  # the snapshot after the gap
    assert re.search(r"2400\.000000000 +check@\d+ +EPjF\.\. +a cold wallet", text)
    shares = re.search(r"demo-a holds (\d+) of 64 shards, demo-b holds (\d+) of 64", text)
    assert shares is not None
    assert int(shares[1]) + int(shares[2]) == 64
    day = re.search(r"balance_daily, today so far \(.*\): first \S+, last \S+, .* (\d+) rows", text)
    assert day is not None
    assert int(day[1]) > 0
    assert min(int(shares[1]), int(shares[2])) > 0
    base_dir = Path(text.split("throwaway Postgres in ")[1].split(";")[0])
    assert not base_dir.exists()
    assert "the throwaway database is deleted" in text
