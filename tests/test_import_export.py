"""`balancewatch watch import/export`: the watchlist as CSV, all or nothing, every bad line
reported; parsing unit-tested, the commands run for real against Postgres."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL

from balancewatch.ops.watchfile import parse, render
from balancewatch.store.watchlist import WatchEntry
from tests.helpers import SOL, TOKEN, WALLET, WALLET2
from tests.processes import balancewatch, environment


def entry(wallet: str, token: str, enabled: bool, label: str | None) -> WatchEntry:
    return WatchEntry(wallet, token, enabled, label, None, None, None)


# --- parsing --------------------------------------------------------------------------------


def test_a_full_file_parses_with_defaults_for_empty_cells() -> None:
    parsed = parse(
        "wallet,token,enabled,label\n"
        f"{WALLET},{TOKEN},true,treasury USDT\n"
        f"{WALLET},{SOL},no,\n"
        f' {WALLET2} ,{SOL},,"hot, wallet"\n'
        "\n"
    )
    assert parsed.errors == []
    assert [(r.wallet, r.token, r.enabled, r.label) for r in parsed.rows] == [
        (WALLET, TOKEN, True, "treasury USDT"),
        (WALLET, SOL, False, None),
        (WALLET2, SOL, True, "hot, wallet"),
    ]


def test_optional_columns_may_be_left_out_and_come_in_any_order() -> None:
    parsed = parse(f"Token,Wallet\n{TOKEN},{WALLET}\n")
    assert parsed.errors == []
    (row,) = parsed.rows
    assert (row.wallet, row.token, row.enabled, row.has_label) == (WALLET, TOKEN, None, False)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty file"),
        ("wallet,mint\n", "unknown column 'mint'"),
        ("wallet,wallet,token\n", "column 'wallet' twice"),
        ("wallet,label\n", "no 'token' column"),
    ],
)
def test_a_bad_header_is_one_error_on_line_1(text: str, reason: str) -> None:
    parsed = parse(text)
    assert [error.line for error in parsed.errors] == [1]
    assert reason in parsed.errors[0].reason


BAD_FILE = (
    "wallet,token,enabled,label\n"  # 1
    f"{WALLET},{TOKEN},true,ok\n"  # 2
    f"0xdeadbeef,{TOKEN},true,bad wallet\n"  # 3
    f"{WALLET},{TOKEN},false,again\n"  # 4
    f"{WALLET},{SOL},maybe,bad enabled\n"  # 5
    f"{WALLET2},{SOL},true\n"  # 6
    "\n"  # 7 (blank: skipped)
    f'{WALLET2},{TOKEN},true,"a label\nover two lines"\n'  # 8-9
    f"{WALLET2},not-a-mint!,yes,\n"  # 10
    f"{WALLET2},{WALLET},1,fine,extra\n"  # 11
)


def test_every_bad_line_is_reported_with_its_number_and_why() -> None:
    parsed = parse(BAD_FILE)
    assert [(error.line, error.reason) for error in parsed.errors] == [
        (3, "wallet '0xdeadbeef' is not a base58 address of 32 to 44 characters"),
        (4, "duplicate of line 2"),
        (5, "enabled 'maybe' is not true/false (or yes/no, 1/0)"),
        (6, "3 columns, expected 4 (wallet,token,enabled,label)"),
        (10, "token 'not-a-mint!' is not a base58 address of 32 to 44 characters"),
        (11, "5 columns, expected 4 (wallet,token,enabled,label)"),
    ]


def test_export_reads_back_to_the_same_rows() -> None:
    entries = [
        entry(WALLET, TOKEN, True, 'treasury "USDT", main'),
        entry(WALLET, SOL, False, None),
    ]
    text = render(entries)
    assert text.splitlines()[0] == "wallet,token,enabled,label"
    parsed = parse(text)
    assert parsed.errors == []
    assert [(r.wallet, r.token, r.enabled, r.label) for r in parsed.rows] == [
        (e.wallet, e.token, e.enabled, e.label) for e in entries
    ]


# --- the commands, against Postgres ---------------------------------------------------------


async def watchlist_rows(db: Any) -> list[tuple[str, str, bool, str | None]]:
    rows = await db.fetch("SELECT wallet, token, enabled, label FROM watchlist ORDER BY id")
    return [(r["wallet"], r["token"], r["enabled"], r["label"]) for r in rows]


async def test_import_upserts_and_export_round_trips(
    database_url: URL, db: Any, tmp_path: Path
) -> None:
    await db.execute(
        "INSERT INTO watchlist (wallet, token, enabled, label) VALUES ($1, $2, false, 'old')",
        WALLET,
        TOKEN,
    )
    source = tmp_path / "in.csv"
    source.write_text(
        "\ufeffwallet,token,enabled,label\r\n"  # a BOM and CRLF, as spreadsheets write them
        f"{WALLET},{TOKEN},true,treasury USDT\r\n"
        f"{WALLET},{SOL},false,\r\n"
        f"{WALLET2},{SOL},,hot\r\n"
    )
    env = environment(database_url)
    imported = await balancewatch("watch", "import", str(source), env=env)
    assert imported.code == 0, imported.stderr
    assert "1 added" not in imported.stdout
    assert "2 added, 1 updated" in imported.stdout
    expected = [
        (WALLET, TOKEN, True, "treasury USDT"),
        (WALLET, SOL, False, None),
        (WALLET2, SOL, True, "hot"),
    ]
    assert await watchlist_rows(db) == expected

    exported = tmp_path / "out.csv"
    assert (await balancewatch("watch", "export", str(exported), env=env)).code == 0
    to_stdout = await balancewatch("watch", "export", env=env)
    assert to_stdout.stdout == exported.read_text()
    assert to_stdout.stdout.splitlines() == [
        "wallet,token,enabled,label",
        f"{WALLET},{TOKEN},true,treasury USDT",
        f"{WALLET},{SOL},false,",
        f"{WALLET2},{SOL},true,hot",
    ]
    # Importing the export again changes nothing.
    again = await balancewatch("watch", "import", str(exported), env=env)
    assert again.code == 0
    assert "0 added, 3 updated" in again.stdout
    assert await watchlist_rows(db) == expected


async def test_import_without_the_optional_columns_keeps_what_a_known_pair_had(
    database_url: URL, db: Any, tmp_path: Path
) -> None:
    await db.execute(
        "INSERT INTO watchlist (wallet, token, enabled, label) VALUES ($1, $2, false, 'kept')",
        WALLET,
        TOKEN,
    )
    source = tmp_path / "pairs.csv"
    source.write_text(f"wallet,token\n{WALLET},{TOKEN}\n{WALLET2},{TOKEN}\n")
    finished = await balancewatch("watch", "import", str(source), env=environment(database_url))
    assert finished.code == 0, finished.stderr
    assert await watchlist_rows(db) == [
        (WALLET, TOKEN, False, "kept"),
        (WALLET2, TOKEN, True, None),
    ]


async def test_a_file_with_bad_lines_changes_nothing_and_lists_every_error(
    database_url: URL, db: Any, tmp_path: Path
) -> None:
    await db.execute(
        "INSERT INTO watchlist (wallet, token, label) VALUES ($1, $2, 'before')", WALLET, TOKEN
    )
    source = tmp_path / "bad.csv"
    source.write_text(BAD_FILE)
    finished = await balancewatch("watch", "import", str(source), env=environment(database_url))
    assert finished.code == 2
    lines = finished.stderr.strip().splitlines()
    assert [line.split(":")[1] for line in lines[:-1]] == ["3", "4", "5", "6", "10", "11"]
    assert all(line.startswith(f"{source}:") for line in lines[:-1])
    assert lines[-1] == f"balancewatch: {source}: 6 bad lines, nothing imported"
    assert await watchlist_rows(db) == [(WALLET, TOKEN, True, "before")]


async def test_a_failure_while_applying_rolls_back_every_row(
    database_url: URL, db: Any, tmp_path: Path
) -> None:
    # A rule the file check does not know about (as a later constraint might be) fails on the
    # last row, in the second statement (5,000 rows each): the first must not stay.
    await db.execute(
        "ALTER TABLE watchlist ADD CONSTRAINT no_sol CHECK (token <> "
        "'So11111111111111111111111111111111111111112')"
    )
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    tokens = [
        "".join(alphabet[(i // 58**k) % 58] for k in range(4)) + TOKEN[4:] for i in range(5200)
    ]
    source = tmp_path / "pairs.csv"
    source.write_text(
        "wallet,token\n" + "".join(f"{WALLET},{token}\n" for token in tokens) + f"{WALLET},{SOL}\n"
    )
    finished = await balancewatch("watch", "import", str(source), env=environment(database_url))
    assert finished.code == 1
    assert "no_sol" in finished.stdout + finished.stderr
    assert await watchlist_rows(db) == []


async def test_import_of_a_missing_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    finished = await balancewatch(
        "watch", "import", str(tmp_path / "nope.csv"), env=environment(None)
    )
    assert finished.code == 2
    assert len(finished.stderr.strip().splitlines()) == 1
    assert "nope.csv" in finished.stderr
