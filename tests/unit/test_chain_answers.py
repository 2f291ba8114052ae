"""Chain answers: the call for a pair, and every answer either the exact balance it documents or
a ReadFailure with the right reason, never a balance made of a bad answer."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from balancewatch import logs
from balancewatch.chain.answers import (
    EXCERPT_CHARS,
    U64_MAX,
    WRAPPED_SOL_MINT,
    ChainBalance,
    ChainRead,
    FailureReason,
    ReadFailure,
    WalletBalances,
    WalletRead,
    balance_call,
    parse_answer,
    parse_wallet,
    program_call,
    wallet_calls,
)
from tests.helpers import TOKEN, WALLET, WALLET2

PAIR = (WALLET, TOKEN)
SOL_PAIR = (WALLET, WRAPPED_SOL_MINT)
SPL = "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA"
TOKEN_2022 = "TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb"
OTHER_MINT = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"
MINT_2022 = "2b1kV6DkPAnxd5ixfnxCpjxmKwqjjaYmCZfHsFu24GXo"


def account(
    amount: object = "76989158861",
    decimals: object = 6,
    *,
    mint: object = TOKEN,
    owner: object = WALLET,
    program: str = "spl-token",
) -> dict[str, Any]:
    """One token account as getTokenAccountsByOwner answers it (jsonParsed)."""
    return {
        "pubkey": "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin",
        "account": {
            "lamports": 2039280,
            "owner": TOKEN_2022 if program == "spl-token-2022" else SPL,
            "executable": False,
            "rentEpoch": U64_MAX,
            "space": 165,
            "data": {
                "program": program,
                "space": 165,
                "parsed": {
                    "type": "account",
                    "info": {
                        "isNative": False,
                        "mint": mint,
                        "owner": owner,
                        "state": "initialized",
                        "tokenAmount": {
                            "amount": amount,
                            "decimals": decimals,
                            # Deliberately wrong: the parser must never read these.
                            "uiAmount": 1.0,
                            "uiAmountString": "1",
                        },
                    },
                },
            },
        },
    }


def answer(value: object, slot: object = 341197053, call_id: int = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": call_id,
        "result": {"context": {"apiVersion": "2.2.0", "slot": slot}, "value": value},
    }


def failure(read: ChainRead | WalletRead) -> ReadFailure:
    assert isinstance(read, ReadFailure), read
    return read


# -- the calls ---------------------------------------------------------------------------------


def test_a_token_pair_is_read_with_get_token_accounts_by_owner_filtered_on_its_mint() -> None:
    assert balance_call(7, PAIR) == {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "getTokenAccountsByOwner",
        "params": [WALLET, {"mint": TOKEN}, {"encoding": "jsonParsed", "commitment": "confirmed"}],
    }


def test_native_sol_is_read_with_get_balance() -> None:
    assert balance_call(8, SOL_PAIR) == {
        "jsonrpc": "2.0",
        "id": 8,
        "method": "getBalance",
        "params": [WALLET, {"commitment": "confirmed"}],
    }


# -- good answers ------------------------------------------------------------------------------


def test_the_documented_answer_is_its_exact_balance_and_slot() -> None:
    assert parse_answer(PAIR, answer([account()])) == ChainBalance(
        PAIR, Decimal("76989.158861"), 341197053
    )


def test_several_accounts_of_one_mint_are_summed_exactly() -> None:
    # As floats, 0.1 + 0.2 is 0.30000000000000004: the sum must be done on the raw integers.
    read = parse_answer(PAIR, answer([account("1", 1), account("2", 1), account("7", 1)]))
    assert read == ChainBalance(PAIR, Decimal("1.0"), 341197053)
    big = parse_answer(PAIR, answer([account(str(U64_MAX), 9), account("1", 9)]))
    assert isinstance(big, ChainBalance)
    assert big.amount == Decimal("18446744073.709551616")


def test_a_token_2022_account_counts_like_any_other() -> None:
    read = parse_answer(PAIR, answer([account("5", 0, program="spl-token-2022"), account("10", 0)]))
    assert read == ChainBalance(PAIR, Decimal(15), 341197053)


def test_no_account_is_a_balance_of_zero() -> None:
    assert parse_answer(PAIR, answer([])) == ChainBalance(PAIR, Decimal(0), 341197053)


def test_native_sol_is_lamports_over_a_billion() -> None:
    read = parse_answer(SOL_PAIR, answer(1500000001))
    assert read == ChainBalance(SOL_PAIR, Decimal("1.500000001"), 341197053)
    assert parse_answer(SOL_PAIR, answer(0)) == ChainBalance(SOL_PAIR, Decimal(0), 341197053)


def test_eighteen_decimals_and_u64_max_are_exact() -> None:
    read = parse_answer(PAIR, answer([account(str(U64_MAX), 18)]))
    assert read == ChainBalance(PAIR, Decimal("18.446744073709551615"), 341197053)
    sol = parse_answer(SOL_PAIR, answer(U64_MAX))
    assert sol == ChainBalance(SOL_PAIR, Decimal("18446744073.709551615"), 341197053)


def test_ui_amount_is_never_read() -> None:
    read = parse_answer(PAIR, answer([account("123", 2)]))
    assert isinstance(read, ChainBalance)
    assert read.amount == Decimal("1.23")  # the account's uiAmount says 1.0


@given(
    amounts=st.lists(st.integers(0, U64_MAX), max_size=4),
    decimals=st.integers(0, 18),
    slot=st.integers(0, 2**63),
)
def test_any_valid_answer_is_the_exact_sum_scaled(
    amounts: list[int], decimals: int, slot: int
) -> None:
    read = parse_answer(PAIR, answer([account(str(a), decimals) for a in amounts], slot))
    assert isinstance(read, ChainBalance)
    assert read.slot == slot
    assert read.amount * 10**decimals == sum(amounts)


# -- bad answers -------------------------------------------------------------------------------

Corrupt = Callable[[dict[str, Any]], object]


def _set(path: tuple[str | int, ...], value: object) -> Corrupt:
    def corrupt(good: dict[str, Any]) -> object:
        target: Any = good
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return good

    return corrupt


def _delete(path: tuple[str | int, ...]) -> Corrupt:
    def corrupt(good: dict[str, Any]) -> object:
        target: Any = good
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
        return good

    return corrupt


INFO = ("result", "value", 0, "account", "data", "parsed", "info")
AMOUNT = (*INFO, "tokenAmount", "amount")
DECIMALS = (*INFO, "tokenAmount", "decimals")

BAD_TOKEN_ANSWERS: dict[str, tuple[FailureReason, Corrupt]] = {
    "an array": ("bad_shape", lambda good: [good]),
    "null": ("bad_shape", lambda good: None),
    "a string": ("bad_shape", lambda good: "ok"),
    "an error": ("rpc_error", _set(("error",), {"code": -32602, "message": "Invalid param"})),
    "an error without a code": ("rpc_error", _set(("error",), "boom")),
    "no result": ("bad_shape", _delete(("result",))),
    "result null": ("bad_shape", _set(("result",), None)),
    "no context": ("bad_shape", _delete(("result", "context"))),
    "no slot": ("bad_shape", _delete(("result", "context", "slot"))),
    "slot negative": ("bad_shape", _set(("result", "context", "slot"), -1)),
    "slot a bool": ("bad_shape", _set(("result", "context", "slot"), True)),
    "slot a float": ("bad_shape", _set(("result", "context", "slot"), 1.0)),
    "slot a string": ("bad_shape", _set(("result", "context", "slot"), "5")),
    "no value": ("bad_shape", _delete(("result", "value"))),
    "value an object": ("bad_shape", _set(("result", "value"), {})),
    "value a number": ("bad_shape", _set(("result", "value"), 5)),
    "account a string": ("bad_shape", _set(("result", "value", 0), "acct")),
    "no account": ("bad_shape", _delete(("result", "value", 0, "account"))),
    "data base64": (
        "bad_shape",
        _set(("result", "value", 0, "account", "data"), ["AAAA", "base64"]),
    ),
    "no parsed": ("bad_shape", _delete(("result", "value", 0, "account", "data", "parsed"))),
    "no info": ("bad_shape", _delete(INFO)),
    "no tokenAmount": ("bad_shape", _delete((*INFO, "tokenAmount"))),
    "tokenAmount a number": ("bad_shape", _set((*INFO, "tokenAmount"), 5)),
    "no mint": ("bad_shape", _delete((*INFO, "mint"))),
    "no owner": ("bad_shape", _delete((*INFO, "owner"))),
    "amount with a point": ("bad_amount", _set(AMOUNT, "12.5")),
    "amount negative": ("bad_amount", _set(AMOUNT, "-3")),
    "amount with a plus": ("bad_amount", _set(AMOUNT, "+3")),
    "amount with an exponent": ("bad_amount", _set(AMOUNT, "1e5")),
    "amount with a space": ("bad_amount", _set(AMOUNT, " 5")),
    "amount with a newline": ("bad_amount", _set(AMOUNT, "5\n")),
    "amount empty": ("bad_amount", _set(AMOUNT, "")),
    "amount in Arabic digits": ("bad_amount", _set(AMOUNT, "\u0665")),
    "amount superscript": ("bad_amount", _set(AMOUNT, "\u00b2")),
    "amount a number": ("bad_amount", _set(AMOUNT, 5)),
    "amount null": ("bad_amount", _delete(AMOUNT)),
    "amount over u64": ("bad_amount", _set(AMOUNT, str(U64_MAX + 1))),
    "amount of 5000 digits": ("bad_amount", _set(AMOUNT, "9" * 5000)),
    "decimals 300": ("bad_decimals", _set(DECIMALS, 300)),
    "decimals 19": ("bad_decimals", _set(DECIMALS, 19)),
    "decimals negative": ("bad_decimals", _set(DECIMALS, -1)),
    "decimals a string": ("bad_decimals", _set(DECIMALS, "6")),
    "decimals a float": ("bad_decimals", _set(DECIMALS, 6.0)),
    "decimals a bool": ("bad_decimals", _set(DECIMALS, True)),
    "decimals missing": ("bad_decimals", _delete(DECIMALS)),
    "another mint": ("wrong_mint", _set((*INFO, "mint"), OTHER_MINT)),
    "another owner": ("wrong_owner", _set((*INFO, "owner"), WALLET2)),
}


@pytest.mark.parametrize(
    ("reason", "corrupt"), BAD_TOKEN_ANSWERS.values(), ids=list(BAD_TOKEN_ANSWERS)
)
def test_a_bad_token_answer_is_a_failure_with_its_reason(
    reason: FailureReason, corrupt: Corrupt
) -> None:
    read = failure(parse_answer(PAIR, corrupt(answer([account()]))))
    assert read.reason == reason
    assert read.pair == PAIR
    assert read.detail
    assert read.answer is not None
    assert len(read.answer) <= EXCERPT_CHARS


def test_a_bad_account_after_good_ones_spoils_the_whole_answer() -> None:
    good = account("5", 6)
    for bad, reason in [
        (account("5", 7), "bad_decimals"),  # the mint's accounts disagree on its decimals
        (account("5", 6, mint=OTHER_MINT), "wrong_mint"),
        (account("5", 6, owner=WALLET2), "wrong_owner"),
        (account("x", 6), "bad_amount"),
    ]:
        assert failure(parse_answer(PAIR, answer([good, good, bad]))).reason == reason


BAD_LAMPORTS: dict[str, tuple[FailureReason, object]] = {
    "negative": ("bad_shape", answer(-1)),
    "a float": ("bad_shape", answer(1.5)),
    "a string": ("bad_shape", answer("1500000000")),
    "a bool": ("bad_shape", answer(True)),
    "null": ("bad_shape", answer(None)),
    "an account list": ("bad_shape", answer([])),
    "over u64": ("bad_amount", answer(U64_MAX + 1)),
    "bad slot": ("bad_shape", answer(5, slot=None)),
    "an error": ("rpc_error", {"jsonrpc": "2.0", "id": 1, "error": {"code": -32005}}),
}


@pytest.mark.parametrize(("reason", "bad"), BAD_LAMPORTS.values(), ids=list(BAD_LAMPORTS))
def test_a_bad_get_balance_answer_is_a_failure_with_its_reason(
    reason: FailureReason, bad: object
) -> None:
    assert failure(parse_answer(SOL_PAIR, bad)).reason == reason


def test_an_rpc_error_detail_names_its_code_and_message() -> None:
    error = {"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "Invalid param"}}
    read = failure(parse_answer(PAIR, error))
    assert read.detail == "JSON-RPC error -32602: Invalid param"


def test_the_excerpt_is_cut_and_scrubbed_of_every_secret() -> None:
    secret = "answer-secret-3c9d0e1f2a"
    logs.scrubber.register([secret])
    huge = answer([account(mint=OTHER_MINT)] * 50)
    huge["result"]["context"]["note"] = secret
    read = failure(parse_answer(PAIR, huge))
    assert read.answer is not None
    assert len(read.answer) == EXCERPT_CHARS
    assert secret not in read.answer
    assert "***" in read.answer
    message = {"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": f"bad key {secret}"}}
    assert secret not in failure(parse_answer(PAIR, message)).detail


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=20,
)


@settings(max_examples=150)
@given(json_values)
def test_any_json_at_all_is_a_failure_and_never_raises(value: object) -> None:
    for pair in (PAIR, SOL_PAIR):
        assert isinstance(parse_answer(pair, value), ReadFailure)


@settings(max_examples=150)
@given(
    path_index=st.integers(0, len(AMOUNT) - 1),
    replacement=json_values,
)
def test_a_random_corruption_is_a_failure_or_the_same_balance(
    path_index: int, replacement: object
) -> None:
    """Replacing any one node of a good answer gives a failure, or (where the node was not
    read, or the new value means the same) exactly the good balance: never another one."""
    assume(AMOUNT[: path_index + 1] != ("result", "value") or replacement != [])  # no account
    good = answer([account()])
    expected = parse_answer(PAIR, copy.deepcopy(good))
    read = parse_answer(PAIR, _set(AMOUNT[: path_index + 1], replacement)(good))
    assert isinstance(read, ReadFailure) or read == expected


# -- whole wallets -----------------------------------------------------------------------------

WALLET_WATCH = (WALLET, None)


def wallet_answers(
    spl: Sequence[object], token_2022: Sequence[object], lamports: object = 0
) -> list[object]:
    """The answers to wallet_calls(WALLET), in their order, each at its own slot."""
    return [answer(spl, slot=10), answer(token_2022, slot=11), answer(lamports, slot=12)]


def held(read: WalletRead) -> dict[str, Decimal]:
    assert isinstance(read, WalletBalances), read
    return {token: balance.amount for token, balance in read.held.items()}


def test_a_wallet_is_read_with_one_call_per_token_program_then_get_balance() -> None:
    calls = [call(id_) for id_, call in enumerate(wallet_calls(WALLET), start=1)]
    parsed = {"encoding": "jsonParsed", "commitment": "confirmed"}
    assert calls == [
        program_call(1, WALLET, "spl-token"),
        program_call(2, WALLET, "spl-token-2022"),
        balance_call(3, SOL_PAIR),
    ]
    assert [c["params"] for c in calls[:2]] == [
        [WALLET, {"programId": SPL}, parsed],
        [WALLET, {"programId": TOKEN_2022}, parsed],
    ]
    assert calls[2]["method"] == "getBalance"


def test_a_wallet_holds_each_mint_summed_over_its_accounts_and_native_sol() -> None:
    spl = [account("1", 1), account("2", 1, mint=OTHER_MINT), account("7", 1)]
    token_2022 = [account("5", 0, mint=MINT_2022, program="spl-token-2022")]
    read = parse_wallet(WALLET, wallet_answers(spl, token_2022, lamports=1500000001))
    assert held(read) == {
        TOKEN: Decimal("0.8"),
        OTHER_MINT: Decimal("0.2"),
        MINT_2022: Decimal(5),
        WRAPPED_SOL_MINT: Decimal("1.500000001"),
    }
    assert isinstance(read, WalletBalances)
    assert read.held[TOKEN] == ChainBalance((WALLET, TOKEN), Decimal("0.8"), 10)
    assert read.held[MINT_2022].slot == 11
    assert read.held[WRAPPED_SOL_MINT].slot == 12
    assert read.slot == 10


def test_an_account_at_zero_is_held_and_no_lamports_are_not() -> None:
    read = parse_wallet(WALLET, wallet_answers([account("0", 6)], [], lamports=0))
    assert held(read) == {TOKEN: Decimal(0)}
    assert isinstance(read, WalletBalances)
    assert read.balance(OTHER_MINT) == ChainBalance((WALLET, OTHER_MINT), Decimal(0), 10)


def test_a_wrapped_sol_account_never_stands_in_for_native_sol() -> None:
    wrapped = account("2000000000", 9, mint=WRAPPED_SOL_MINT)
    assert held(parse_wallet(WALLET, wallet_answers([wrapped], [], lamports=5))) == {
        WRAPPED_SOL_MINT: Decimal("0.000000005")
    }
    assert held(parse_wallet(WALLET, wallet_answers([wrapped], []))) == {}


BAD_WALLET_ANSWERS: dict[str, tuple[FailureReason, list[object]]] = {
    "a Token-2022 account in the SPL answer": (
        "wrong_program",
        wallet_answers([account(program="spl-token-2022")], []),
    ),
    "an SPL account in the Token-2022 answer": (
        "wrong_program",
        wallet_answers([], [account(mint=MINT_2022)]),
    ),
    "no program": (
        "wrong_program",
        wallet_answers([_delete(("account", "data", "program"))(account())], []),
    ),
    "one mint under both programs": (
        "wrong_program",
        wallet_answers([account()], [account(program="spl-token-2022")]),
    ),
    "another owner": ("wrong_owner", wallet_answers([account(), account(owner=WALLET2)], [])),
    "a mint that is no address": ("bad_shape", wallet_answers([account(mint="0OIl")], [])),
    "a mint that is no string": ("bad_shape", wallet_answers([account(mint=5)], [])),
    "decimals that disagree": (
        "bad_decimals",
        wallet_answers([account("5", 6), account("5", 7)], []),
    ),
    "a bad amount": ("bad_amount", wallet_answers([], [account("-3", program="spl-token-2022")])),
    "an error from one program": (
        "rpc_error",
        [answer([]), {"jsonrpc": "2.0", "id": 2, "error": {"code": -32005}}, answer(5)],
    ),
    "bad lamports": ("bad_amount", wallet_answers([account()], [], lamports=U64_MAX + 1)),
    "an error for the lamports": (
        "rpc_error",
        [answer([account()]), answer([]), {"jsonrpc": "2.0", "id": 3, "error": {"code": 1}}],
    ),
}


@pytest.mark.parametrize(
    ("reason", "answers"), BAD_WALLET_ANSWERS.values(), ids=list(BAD_WALLET_ANSWERS)
)
def test_one_bad_answer_of_a_wallets_three_fails_the_whole_wallet(
    reason: FailureReason, answers: list[object]
) -> None:
    read = failure(parse_wallet(WALLET, answers))
    assert (read.pair, read.reason) == (WALLET_WATCH, reason)
    assert read.detail
    assert read.answer is not None


def test_mints_of_different_decimals_each_keep_their_own() -> None:
    spl = [account("5", 6), account("5", 2, mint=OTHER_MINT)]
    assert held(parse_wallet(WALLET, wallet_answers(spl, []))) == {
        TOKEN: Decimal("0.000005"),
        OTHER_MINT: Decimal("0.05"),
    }


@settings(max_examples=100)
@given(json_values, st.integers(0, 2))
def test_any_json_in_place_of_one_wallet_answer_is_a_failure_and_never_raises(
    value: object, which: int
) -> None:
    answers = wallet_answers([account()], [])
    answers[which] = value
    assert failure(parse_wallet(WALLET, answers)).pair == WALLET_WATCH
