"""`balancewatch history` as a user runs it, against real Postgres."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL

from tests.data import AMOUNTS, T0, insert, insert_pair_history, insert_periods
from tests.helpers import SOL, TOKEN, WALLET, WALLET2
from tests.processes import balancewatch, environment, python

# --- the command ----------------------------------------------------------------------------


async def test_history_prints_newest_first_exact_amounts_and_a_chart(
    database_url: URL, db: Any
) -> None:
    await insert_pair_history(db)
    finished = await balancewatch("history", WALLET, TOKEN, env=environment(database_url))
    assert finished.code == 0, finished.stderr
    table, chart = finished.stdout.split("\n\n")
    lines = table.splitlines()
    assert lines[0].split() == ["RECEIVED_AT", "(UTC)", "AMOUNT", "SOURCE"]
    assert [line.split() for line in lines[1:]] == [
        [f"2026-11-20T12:0{i}:00.000000Z", AMOUNTS[i], "stream"] for i in (3, 2, 1, 0)
    ]
    assert "1000000000000000000.000000000001 ┤" in chart
    assert "0.000000001 ┤" in chart


async def test_history_as_csv_and_json_with_a_window_and_a_limit(
    database_url: URL, db: Any
) -> None:
    await insert_pair_history(db)
    env = environment(database_url)
    as_csv = await balancewatch(
        "history", WALLET, TOKEN, "--format", "csv", "--since", "2026-11-20T12:01:00Z", env=env
    )
    assert as_csv.code == 0, as_csv.stderr
    assert as_csv.stdout.splitlines() == [
        "kind,received_at,amount,source,slot,until,end_reason",
        f"balance,2026-11-20T12:03:00.000000Z,{AMOUNTS[3]},stream,,,",
        f"balance,2026-11-20T12:02:00.000000Z,{AMOUNTS[2]},stream,,,",
        f"balance,2026-11-20T12:01:00.000000Z,{AMOUNTS[1]},stream,,,",
    ]
    as_json = await balancewatch(
        "history", WALLET, TOKEN, "--format", "json", "--until", "2026-11-20T12:02:00",
        "--limit", "2", env=env,
    )  # fmt: skip
    assert as_json.code == 0, as_json.stderr
    assert json.loads(as_json.stdout) == [
        {"kind": "balance", "received_at": f"2026-11-20T12:0{i}:00.000000Z",
         "amount": AMOUNTS[i], "source": "stream", "slot": None}
        for i in (2, 1)
    ]  # fmt: skip


async def test_history_marks_where_the_daemon_was_not_listening(database_url: URL, db: Any) -> None:
    await insert_pair_history(db)  # rows at 12:00, 12:01, 12:02, 12:03
    await insert_periods(
        db,
        (WALLET, TOKEN),
        (T0, T0 + timedelta(seconds=90), "disconnected"),
        (T0 + timedelta(seconds=110), T0 + timedelta(minutes=4), "shutdown"),
    )
    env = environment(database_url)
    table = await balancewatch("history", WALLET, TOKEN, env=env)
    assert table.code == 0, table.stderr
    lines = table.stdout.split("\n\n")[0].splitlines()
    first_gap = "-- not listening from 2026-11-20T12:01:30.000000Z to 2026-11-20T12:01:50.000000Z"
    since_shutdown = "-- not listening from 2026-11-20T12:04:00.000000Z to now (shutdown) --"
    assert lines[1] == since_shutdown
    after_the_first_gap = [f"2026-11-20T12:0{minute}:00.000000Z" for minute in (3, 2)]
    assert [line.split()[0] for line in lines[2:4]] == after_the_first_gap
    assert lines[4] == first_gap + " (disconnected) --"
    assert "░ not listening" in table.stdout  # the chart marks the gaps under its time axis
    as_csv = await balancewatch("history", WALLET, TOKEN, "--format", "csv", env=env)
    assert as_csv.stdout.splitlines()[4] == (
        "gap,2026-11-20T12:01:30.000000Z,,,,2026-11-20T12:01:50.000000Z,disconnected"
    )
    as_json = await balancewatch("history", WALLET, TOKEN, "--format", "json", env=env)
    entries = json.loads(as_json.stdout)
    assert entries[0] == {
        "kind": "gap", "from": "2026-11-20T12:04:00.000000Z", "until": None,
        "end_reason": "shutdown",
    }  # fmt: skip
    kinds = ["gap", "balance", "balance", "gap", "balance", "balance"]
    assert [entry["kind"] for entry in entries] == kinds


BONK = "DezXAZ8z7PnrnRJjz3wXBoRgixCa6xjnB7YaB1pPB263"


async def insert_wallet_history(db: Any) -> None:
    """Rows of three tokens of WALLET a minute apart from T0, listened to through the wallet's
    room with a gap from 12:02:30 to 12:03:30; and one row of another wallet."""
    tokens = [TOKEN, SOL, BONK, TOKEN, SOL]
    await insert(
        db, [(WALLET, token, str(i), T0 + timedelta(minutes=i)) for i, token in enumerate(tokens)]
    )
    await insert(db, [(WALLET2, TOKEN, "9", T0)])
    await insert_periods(
        db,
        (WALLET, None),
        (T0, T0 + timedelta(seconds=150), "disconnected"),
        (T0 + timedelta(seconds=210), None, None),
    )


async def test_history_of_a_wallet_prints_every_token_newest_first_with_its_gaps(
    database_url: URL, db: Any
) -> None:
    await insert_wallet_history(db)
    finished = await balancewatch("history", WALLET, env=environment(database_url))
    assert finished.code == 0, finished.stderr
    lines = finished.stdout.splitlines()  # no chart: a chart is of one token
    assert lines[0].split() == ["RECEIVED_AT", "(UTC)", "TOKEN", "AMOUNT", "SOURCE"]
    at = [f"2026-11-20T12:0{minute}:00.000000Z" for minute in range(5)]
    assert [line.split() for line in lines[1:3]] == [
        [at[4], SOL, "4", "stream"],
        [at[3], TOKEN, "3", "stream"],
    ]
    assert lines[3] == (
        "-- not listening from 2026-11-20T12:02:30.000000Z to 2026-11-20T12:03:30.000000Z "
        "(disconnected) --"
    )
    assert [line.split() for line in lines[4:]] == [
        [at[2], BONK, "2", "stream"],
        [at[1], SOL, "1", "stream"],
        [at[0], TOKEN, "0", "stream"],
    ]


async def test_history_of_a_wallet_as_csv_and_json_names_each_rows_token(
    database_url: URL, db: Any
) -> None:
    await insert_wallet_history(db)
    env = environment(database_url)
    as_csv = await balancewatch("history", WALLET, "--format", "csv", "--limit", "3", env=env)
    assert as_csv.code == 0, as_csv.stderr
    assert as_csv.stdout.splitlines() == [
        "kind,received_at,token,amount,source,slot,until,end_reason",
        f"balance,2026-11-20T12:04:00.000000Z,{SOL},4,stream,,,",
        f"balance,2026-11-20T12:03:00.000000Z,{TOKEN},3,stream,,,",
        "gap,2026-11-20T12:02:30.000000Z,,,,,2026-11-20T12:03:30.000000Z,disconnected",
        f"balance,2026-11-20T12:02:00.000000Z,{BONK},2,stream,,,",
    ]
    as_json = await balancewatch("history", WALLET, "--format", "json", "--limit", "1", env=env)
    assert as_json.code == 0, as_json.stderr
    assert json.loads(as_json.stdout) == [
        {"kind": "balance", "token": SOL, "received_at": "2026-11-20T12:04:00.000000Z",
         "amount": "4", "source": "stream", "slot": None},
    ]  # fmt: skip


async def test_history_of_a_wallet_with_no_rows_says_so(database_url: URL) -> None:
    finished = await balancewatch("history", WALLET, env=environment(database_url))
    assert (finished.code, finished.stdout) == (0, "")
    assert finished.stderr.strip() == f"no balances for any token of {WALLET} in that window"


async def test_history_since_a_relative_time(database_url: URL, db: Any) -> None:
    now = datetime.now(UTC)
    await insert(db, [(WALLET, TOKEN, str(i), now - timedelta(hours=i)) for i in range(1, 6)])
    finished = await balancewatch(
        "history", WALLET, TOKEN, "--since", "3h", "--format", "csv", env=environment(database_url)
    )
    assert finished.code == 0, finished.stderr
    assert [line.split(",")[2] for line in finished.stdout.splitlines()[1:]] == ["1", "2"]


async def test_history_of_a_pair_with_no_rows_says_so(database_url: URL) -> None:
    finished = await balancewatch("history", WALLET, TOKEN, env=environment(database_url))
    assert (finished.code, finished.stdout) == (0, "")
    assert "no balances" in finished.stderr


async def test_history_plot_writes_a_png(database_url: URL, db: Any, tmp_path: Path) -> None:
    await insert_pair_history(db)
    target = tmp_path / "chart.png"
    finished = await balancewatch(
        "history", WALLET, TOKEN, "--plot", str(target), env=environment(database_url)
    )
    assert finished.code == 0, finished.stderr
    assert target.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert target.stat().st_size > 5000


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["0xdeadbeef", TOKEN], "WALLET"),
        ([WALLET, "not base58!"], "TOKEN"),
        ([WALLET, TOKEN, "--since", "last tuesday"], "last tuesday"),
        ([WALLET, TOKEN, "--since", "1h", "--until", "2h"], "--since"),
        ([WALLET, TOKEN, "--limit", "-1"], "--limit"),
        (["0xdeadbeef"], "WALLET"),
        ([WALLET, "--plot", "chart.png"], "TOKEN"),  # a chart is of one token
    ],
)
async def test_history_refuses_bad_arguments_with_one_line_and_exit_2(
    args: list[str], named: str
) -> None:
    finished = await balancewatch("history", *args, env=environment(None))
    assert finished.code == 2
    lines = finished.stderr.strip().splitlines()
    assert len(lines) == 1
    assert named in lines[0]


async def test_history_plot_without_matplotlib_says_how_to_get_it(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from balancewatch.cli import main\n"
        f"sys.exit(main(['history', {WALLET!r}, {TOKEN!r}, '--plot', 'x.png']))"
    )
    finished = await python("-c", code, env=environment(None), cwd=tmp_path)
    assert finished.code == 2
    assert "balancewatch[plot]" in finished.stderr
    assert not (tmp_path / "x.png").exists()
