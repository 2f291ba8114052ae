"""`balancewatch watch import/export`: the watchlist as CSV, parsed and rendered, every bad line
reported."""

from __future__ import annotations

import pytest

from balancewatch.ops.watchfile import parse, render
from balancewatch.store.watchlist import WatchEntry
from tests.data import BAD_FILE
from tests.helpers import SOL, TOKEN, WALLET, WALLET2


def entry(wallet: str, token: str | None, enabled: bool, label: str | None) -> WatchEntry:
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


def test_an_empty_token_is_every_token_of_the_wallet_and_its_pairs_are_no_duplicates() -> None:
    parsed = parse(f"wallet,token\n{WALLET},\n{WALLET},{TOKEN}\n{WALLET2}, \n")
    assert parsed.errors == []
    assert [(r.wallet, r.token) for r in parsed.rows] == [
        (WALLET, None),
        (WALLET, TOKEN),
        (WALLET2, None),
    ]


def test_two_all_tokens_lines_of_one_wallet_are_a_duplicate() -> None:
    parsed = parse(f"wallet,token,label\n{WALLET},,a\n{WALLET2},,b\n{WALLET},,c\n")
    assert [(error.line, error.reason) for error in parsed.errors] == [(4, "duplicate of line 2")]


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
        entry(WALLET2, None, True, "every token"),
    ]
    text = render(entries)
    assert text.splitlines()[3] == f"{WALLET2},,true,every token"
    assert text.splitlines()[0] == "wallet,token,enabled,label"
    parsed = parse(text)
    assert parsed.errors == []
    assert [(r.wallet, r.token, r.enabled, r.label) for r in parsed.rows] == [
        (e.wallet, e.token, e.enabled, e.label) for e in entries
    ]
