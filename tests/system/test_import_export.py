"""`balancewatch watch import/export` run for real against Postgres: all or nothing, every bad
line reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

from tests.data import BAD_FILE
from tests.helpers import SOL, TOKEN, WALLET, WALLET2
from tests.processes import balancewatch, environment

# --- the commands, against Postgres ---------------------------------------------------------


async def watchlist_rows(db: Any) -> list[tuple[str, str | None, bool, str | None]]:
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


async def test_an_empty_token_imports_and_exports_a_whole_wallet(
    database_url: URL, db: Any, tmp_path: Path
) -> None:
    await db.execute("INSERT INTO watchlist (wallet, label) VALUES ($1, 'old')", WALLET)
    source = tmp_path / "in.csv"
    source.write_text(
        f"wallet,token,enabled,label\n{WALLET},,true,treasury\n{WALLET2},,false,\n"
        f"{WALLET},{TOKEN},,usdt\n"
    )
    env = environment(database_url)
    imported = await balancewatch("watch", "import", str(source), env=env)
    assert imported.code == 0, imported.stderr
    assert "2 added, 1 updated" in imported.stdout
    expected = [
        (WALLET, None, True, "treasury"),
        (WALLET2, None, False, None),
        (WALLET, TOKEN, True, "usdt"),
    ]
    assert await watchlist_rows(db) == expected

    exported = await balancewatch("watch", "export", env=env)
    assert exported.stdout.splitlines() == [
        "wallet,token,enabled,label",
        f"{WALLET},,true,treasury",
        f"{WALLET2},,false,",
        f"{WALLET},{TOKEN},true,usdt",
    ]
    (tmp_path / "out.csv").write_text(exported.stdout)
    again = await balancewatch("watch", "import", str(tmp_path / "out.csv"), env=env)
    assert "0 added, 3 updated" in again.stdout
    assert await watchlist_rows(db) == expected


async def test_two_all_tokens_lines_of_one_wallet_are_refused_and_nothing_is_imported(
    database_url: URL, db: Any, tmp_path: Path
) -> None:
    source = tmp_path / "twice.csv"
    source.write_text(f"wallet,token\n{WALLET},\n{WALLET},{TOKEN}\n{WALLET}, \n")
    finished = await balancewatch("watch", "import", str(source), env=environment(database_url))
    assert finished.code == 2
    assert finished.stderr.splitlines() == [
        f"{source}:4: duplicate of line 2",
        f"balancewatch: {source}: 1 bad line, nothing imported",
    ]
    assert await watchlist_rows(db) == []


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
