"""The history made easy to read: the views and `balance_at` of migration 0003, and
`balancewatch history` as a user runs it, against real Postgres."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.ops.history import Row, UsageError, parse_time, render_chart
from balancewatch.store import migrate
from tests.helpers import SOL, TOKEN, WALLET, WALLET2, downgrade
from tests.processes import balancewatch, environment, python

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
# Amounts Postgres keeps exactly and a float would not (or would print another way).
AMOUNTS = ["76989.158861", "0.000000001", "1000000000000000000.000000000001", "76989.158861"]


async def insert(db: Any, rows: list[tuple[str, str, str, datetime]]) -> None:
    await db.executemany(
        "INSERT INTO balance_history (wallet, token, amount, received_at) "
        "VALUES ($1, $2, $3::numeric, $4)",
        rows,
    )


async def insert_pair_history(db: Any) -> None:
    """AMOUNTS for (WALLET, TOKEN) at T0, +1 min, +2 min, +3 min; one row of another pair."""
    await insert(
        db, [(WALLET, TOKEN, amount, T0 + timedelta(minutes=i)) for i, amount in enumerate(AMOUNTS)]
    )
    await insert(db, [(WALLET2, SOL, "5", T0)])


# --- the views and balance_at ---------------------------------------------------------------


async def test_latest_balance_has_one_row_per_pair_with_the_newest_amount(db: Any) -> None:
    await insert_pair_history(db)
    # Two rows in the same microsecond: the one stored last is the newest.
    await insert(db, [(WALLET2, SOL, "6", T0), (WALLET2, SOL, "7", T0)])
    rows = await db.fetch(
        "SELECT wallet, token, amount::text AS amount, received_at FROM latest_balance "
        "ORDER BY wallet"
    )
    assert [(r["wallet"], r["token"], r["amount"], r["received_at"]) for r in rows] == [
        (WALLET2, SOL, "7", T0),
        (WALLET, TOKEN, "76989.158861", T0 + timedelta(minutes=3)),
    ]


async def test_balance_change_has_the_previous_amount_and_the_delta(db: Any) -> None:
    await insert_pair_history(db)
    rows = await db.fetch(
        "SELECT amount, previous_amount, delta FROM balance_change "
        "WHERE wallet = $1 AND token = $2 ORDER BY received_at",
        WALLET,
        TOKEN,
    )
    amounts = [Decimal(a) for a in AMOUNTS]
    assert [r["amount"] for r in rows] == amounts
    assert [r["previous_amount"] for r in rows] == [None, *amounts[:-1]]
    with localcontext(prec=100):  # Postgres is exact; Python's default context is 28 digits
        deltas = [b - a for a, b in pairwise(amounts)]
    assert [r["delta"] for r in rows] == [None, *deltas]
    # A time filter keeps the delta of the first row in the window (it is not recomputed).
    in_window = await db.fetch(
        "SELECT delta FROM balance_change WHERE wallet = $1 AND received_at > $2",
        WALLET,
        T0 + timedelta(seconds=90),
    )
    assert [r["delta"] for r in in_window] == deltas[1:]


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (T0 - timedelta(microseconds=1), None),
        (T0, AMOUNTS[0]),
        (T0 + timedelta(seconds=119), AMOUNTS[1]),
        (T0 + timedelta(minutes=2), AMOUNTS[2]),
        (T0 + timedelta(days=365), AMOUNTS[3]),
    ],
)
async def test_balance_at_is_the_newest_amount_at_or_before_the_time(
    db: Any, at: datetime, expected: str | None
) -> None:
    await insert_pair_history(db)
    found = await db.fetchval("SELECT balance_at($1, $2, $3)::text", WALLET, TOKEN, at)
    assert found == expected


async def test_downgrading_0003_drops_the_views_and_the_function(engine: AsyncEngine) -> None:
    await downgrade(engine, "0002")
    async with engine.connect() as connection:
        left = await connection.exec_driver_sql(
            "SELECT count(*) FROM pg_class WHERE relname IN ('latest_balance', 'balance_change')"
        )
        functions = await connection.exec_driver_sql(
            "SELECT count(*) FROM pg_proc WHERE proname = 'balance_at'"
        )
        assert (left.scalar_one(), functions.scalar_one()) == (0, 0)
    await migrate.upgrade(engine)
    assert await migrate.current_revision(engine) == migrate.head_revision()


# --- pure parts -----------------------------------------------------------------------------

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("90s", NOW - timedelta(seconds=90)),
        ("15m", NOW - timedelta(minutes=15)),
        ("1h", NOW - timedelta(hours=1)),
        ("2d", NOW - timedelta(days=2)),
        ("1w", NOW - timedelta(weeks=1)),
        ("2026-11-20T12:00:00Z", T0),
        ("2026-11-20 13:00:00+01:00", T0),
        ("2026-11-20T12:00", T0),  # naive means UTC
    ],
)
def test_times_are_iso_8601_or_a_span_back_from_now(given: str, expected: datetime) -> None:
    assert parse_time(given, NOW) == expected


@pytest.mark.parametrize("given", ["yesterday", "1y", "-1h", "1.5h", ""])
def test_an_unreadable_time_is_a_usage_error(given: str) -> None:
    with pytest.raises(UsageError):
        parse_time(given, NOW)


def test_the_chart_is_a_braille_step_line_labelled_with_the_exact_extremes() -> None:
    rows = [Row(T0 + timedelta(minutes=i), a) for i, a in enumerate(["1.5", "3", "0.25", "3"])]
    lines = render_chart(rows, width=40, height=6).splitlines()
    assert len(lines) == 6 + 2
    assert lines[0].startswith("   3 ┤")
    assert lines[5].startswith("0.25 ┤")
    plot = [line[6:] for line in lines[:6]]
    assert all(len(row) == 40 for row in plot)
    assert all(0x2800 <= ord(ch) <= 0x28FF for row in plot for ch in row)
    # Every column has at least one dot: the line is continuous.
    assert all(any(ord(row[col]) != 0x2800 for row in plot) for col in range(40))
    assert lines[-1].strip().startswith("2026-11-20T12:00:00.000000Z")
    assert lines[-1].strip().endswith("2026-11-20T12:03:00.000000Z")


def test_a_flat_history_draws_a_flat_line_and_one_row_draws_nothing() -> None:
    flat = [Row(T0 + timedelta(minutes=i), "7") for i in range(3)]
    plot = [line.split("┤")[-1].split("│")[-1] for line in render_chart(flat).splitlines()[:8]]
    assert sum(any(ch != "\u2800" for ch in row) for row in plot) == 1
    assert render_chart(flat[:1]) == ""


# --- the command ----------------------------------------------------------------------------


async def test_history_prints_newest_first_exact_amounts_and_a_chart(
    database_url: URL, db: Any
) -> None:
    await insert_pair_history(db)
    finished = await balancewatch("history", WALLET, TOKEN, env=environment(database_url))
    assert finished.code == 0, finished.stderr
    table, chart = finished.stdout.split("\n\n")
    lines = table.splitlines()
    assert lines[0].split() == ["RECEIVED_AT", "(UTC)", "AMOUNT"]
    assert [line.split() for line in lines[1:]] == [
        [f"2026-11-20T12:0{i}:00.000000Z", AMOUNTS[i]] for i in (3, 2, 1, 0)
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
        "received_at,amount",
        f"2026-11-20T12:03:00.000000Z,{AMOUNTS[3]}",
        f"2026-11-20T12:02:00.000000Z,{AMOUNTS[2]}",
        f"2026-11-20T12:01:00.000000Z,{AMOUNTS[1]}",
    ]
    as_json = await balancewatch(
        "history", WALLET, TOKEN, "--format", "json", "--until", "2026-11-20T12:02:00",
        "--limit", "2", env=env,
    )  # fmt: skip
    assert as_json.code == 0, as_json.stderr
    assert json.loads(as_json.stdout) == [
        {"received_at": "2026-11-20T12:02:00.000000Z", "amount": AMOUNTS[2]},
        {"received_at": "2026-11-20T12:01:00.000000Z", "amount": AMOUNTS[1]},
    ]


async def test_history_since_a_relative_time(database_url: URL, db: Any) -> None:
    now = datetime.now(UTC)
    await insert(db, [(WALLET, TOKEN, str(i), now - timedelta(hours=i)) for i in range(1, 6)])
    finished = await balancewatch(
        "history", WALLET, TOKEN, "--since", "3h", "--format", "csv", env=environment(database_url)
    )
    assert finished.code == 0, finished.stderr
    assert [line.split(",")[1] for line in finished.stdout.splitlines()[1:]] == ["1", "2"]


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


async def test_the_as_of_lookup_is_an_index_scan(db: Any) -> None:
    await db.execute("SET enable_seqscan = off")
    rows = await db.fetch(
        "EXPLAIN SELECT amount FROM balance_history WHERE wallet = $1 AND token = $2 "
        "AND received_at <= $3 ORDER BY received_at DESC, id DESC LIMIT 1",
        WALLET,
        TOKEN,
        T0,
    )
    assert "balance_history_pair_received_at_idx" in "\n".join(row[0] for row in rows)
