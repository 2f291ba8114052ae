"""Solana JSON-RPC for one balance, or a whole wallet's: the calls to send, and what their
answers say.

Everything here is pure: a pair or a wallet in, calls out; decoded answers in, a `ChainBalance`
(a pair), `WalletBalances` (a wallet) or a `ReadFailure` with a reason out. The RPC is
untrusted input: an answer that is not exactly the documented shape never becomes a balance,
and one bad answer of a wallet's three spoils the whole wallet (a token missing from a refused
answer must not read as 0). An amount is the sum of every token account's raw
`tokenAmount.amount` (per mint, for a wallet), scaled by `decimals` in exact Decimal
arithmetic; `uiAmount` (an f64) is never read.
"""

from __future__ import annotations

import decimal
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Final, Literal

import msgspec

from balancewatch import logs
from balancewatch.domain import Pair, Watch, is_address

WRAPPED_SOL_MINT: Final = "So11111111111111111111111111111111111111112"
LAMPORTS_DECIMALS: Final = 9
U64_MAX: Final = 2**64 - 1
MAX_DECIMALS: Final = 18
COMMITMENT: Final = "confirmed"
# The token programs a wallet read lists accounts of, by the name jsonParsed gives each as
# `data.program`.
Program = Literal["spl-token", "spl-token-2022"]
PROGRAM_IDS: Final[dict[Program, str]] = {
    "spl-token": "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA",
    "spl-token-2022": "TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb",
}

# An excerpt of an offending answer is at most this long; a detail quotes at most _DETAIL_CHARS.
EXCERPT_CHARS: Final = 1000
_DETAIL_CHARS: Final = 200
# Scrubbed before it is cut, so no cut can leave a secret's first half behind; the text is first
# cut to this much, since an answer may be megabytes.
_SCRUB_CHARS: Final = 4 * EXCERPT_CHARS
# Digits only: no sign, point, exponent, space or non-ASCII digit; 20 digits hold any u64 and
# leading zeros beyond 40 are not an amount anyone sends.
_RAW_AMOUNT = re.compile(r"[0-9]{1,40}")
# Enough digits for any sum of u64 amounts: the scaling is exact, never rounded.
_EXACT = decimal.Context(prec=100)
_JSON_KINDS: Final[dict[type, str]] = {
    type(None): "null",
    bool: "boolean",
    int: "number",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}

FailureReason = Literal[
    "not_json",
    "bad_shape",
    "rpc_error",
    "bad_amount",
    "bad_decimals",
    "wrong_mint",
    "wrong_owner",
    "wrong_program",
    "missing_answer",
    "unavailable",
]


@dataclass(frozen=True, slots=True)
class ChainBalance:
    pair: Pair
    amount: Decimal  # in UI units, exact
    slot: int  # result.context.slot: the slot the chain was read at


@dataclass(frozen=True, slots=True)
class WalletBalances:
    """What the chain says a wallet holds: a balance for each token it has an account of (and
    native SOL if it has lamports), each with the slot of the answer that showed it."""

    wallet: str
    held: Mapping[str, ChainBalance]
    slot: int  # the oldest slot of its answers: as of it, the wallet held no other token

    def balance(self, token: str) -> ChainBalance:
        """The token's balance: 0 if the wallet holds none of it."""
        held = self.held.get(token)
        return ChainBalance((self.wallet, token), Decimal(0), self.slot) if held is None else held


@dataclass(frozen=True, slots=True)
class ReadFailure:
    pair: Watch  # token None: a whole wallet's read
    reason: FailureReason
    detail: str  # human readable; never the RPC URL
    answer: str | None  # an excerpt of the offending answer, scrubbed, or None


ChainRead = ChainBalance | ReadFailure
WalletRead = WalletBalances | ReadFailure
# A JSON-RPC call, given its id.
CallFor = Callable[[int], dict[str, object]]


class _Refused(Exception):
    """Why an answer is refused; raised deep in the checks, caught once in `parse_answer`."""

    def __init__(self, reason: FailureReason, detail: str) -> None:
        super().__init__(detail)
        self.reason: FailureReason = reason
        self.detail = detail


def balance_call(call_id: int, pair: Pair) -> dict[str, object]:
    """The JSON-RPC call that reads `pair`'s balance: getBalance for native SOL (the wrapped
    SOL mint), else getTokenAccountsByOwner filtered on the mint (either token program)."""
    wallet, token = pair
    if token == WRAPPED_SOL_MINT:
        return _call(call_id, "getBalance", [wallet, {"commitment": COMMITMENT}])
    return _token_accounts_call(call_id, wallet, {"mint": token})


def program_call(call_id: int, wallet: str, program: Program) -> dict[str, object]:
    """The JSON-RPC call that lists every account `wallet` owns under one token program."""
    return _token_accounts_call(call_id, wallet, {"programId": PROGRAM_IDS[program]})


def wallet_calls(wallet: str) -> list[CallFor]:
    """A whole wallet's read: its accounts under each token program, then its native SOL. The
    answers go to `parse_wallet` in this order."""
    return [
        *(
            functools.partial(program_call, wallet=wallet, program=program)
            for program in PROGRAM_IDS
        ),
        functools.partial(balance_call, pair=(wallet, WRAPPED_SOL_MINT)),
    ]


def _token_accounts_call(call_id: int, wallet: str, accounts: dict[str, str]) -> dict[str, object]:
    config = {"encoding": "jsonParsed", "commitment": COMMITMENT}
    return _call(call_id, "getTokenAccountsByOwner", [wallet, accounts, config])


def _call(call_id: int, method: str, params: list[object]) -> dict[str, object]:
    return {"jsonrpc": "2.0", "id": call_id, "method": method, "params": params}


def parse_answer(pair: Pair, answer: object) -> ChainRead:
    """What one decoded JSON-RPC response object says of `pair`'s balance. Never raises."""
    try:
        slot, value = _result(answer)
        native = pair[1] == WRAPPED_SOL_MINT
        amount = _lamports(value) if native else _token_amount(pair, value)
    except _Refused as refused:
        return _failure(pair, refused, answer)
    return ChainBalance(pair, amount, slot)


def parse_wallet(wallet: str, answers: Sequence[object]) -> WalletRead:
    """What the answers to `wallet_calls(wallet)`, in their order, say the wallet holds; the
    first refused answer, if any, as the whole wallet's failure. Never raises."""
    *program_answers, lamports_answer = answers
    held: dict[str, ChainBalance] = {}
    slots: list[int] = []
    for program, answer in zip(PROGRAM_IDS, program_answers, strict=True):
        try:
            slot, value = _result(answer)
            amounts = _sum_by_mint(value, wallet, program=program)
            _listed_once(amounts, held)
        except _Refused as refused:
            return _failure((wallet, None), refused, answer)
        slots.append(slot)
        held |= {mint: ChainBalance((wallet, mint), amounts[mint], slot) for mint in amounts}
    native = parse_answer((wallet, WRAPPED_SOL_MINT), lamports_answer)
    if isinstance(native, ReadFailure):
        return replace(native, pair=(wallet, None))
    # Lamports are no token account: none at all is no system account, and nothing to show.
    # The wrapped SOL mint is native SOL here, as in a pair's read and on the stream, so a
    # wrapped SOL token account (skipped by _sum_by_mint) never stands in for it.
    if native.amount:
        held[WRAPPED_SOL_MINT] = native
    return WalletBalances(wallet, held, min(native.slot, *slots))


def _failure(watch: Watch, refused: _Refused, answer: object) -> ReadFailure:
    return ReadFailure(watch, refused.reason, refused.detail, excerpt(_encoded(answer)))


def excerpt(text: str) -> str:
    """At most EXCERPT_CHARS of `text`, every registered secret scrubbed."""
    return logs.scrubber.scrub(text[:_SCRUB_CHARS])[:EXCERPT_CHARS]


def short(text: str, limit: int = _DETAIL_CHARS) -> str:
    text = logs.scrubber.scrub(text[: 4 * limit])
    return text if len(text) <= limit else f"{text[:limit]}..."


# -- the envelope ------------------------------------------------------------------------------


def _result(answer: object) -> tuple[int, object]:
    """The answer's `result.context.slot` and `result.value`."""
    if not isinstance(answer, dict):
        raise _Refused("bad_shape", f"the answer is a JSON {_kind(answer)}, not an object")
    error = answer.get("error")
    if error is not None:
        raise _Refused("rpc_error", _rpc_error(error))
    result = _object(answer, "result", "the answer")
    context = _object(result, "context", "result")
    slot = context.get("slot")
    if not _is_count(slot):
        raise _Refused("bad_shape", "result.context.slot is not a non-negative integer")
    assert isinstance(slot, int)
    if "value" not in result:
        raise _Refused("bad_shape", "result has no value")
    return slot, result["value"]


def _rpc_error(error: object) -> str:
    if not isinstance(error, dict):
        return f"JSON-RPC error that is a JSON {_kind(error)}, not an object"
    code, message = error.get("code"), error.get("message")
    code_text = str(code) if isinstance(code, int) else "without a code"
    message_text = short(message) if isinstance(message, str) else "(no message)"
    return f"JSON-RPC error {code_text}: {message_text}"


# -- native SOL --------------------------------------------------------------------------------


def _lamports(value: object) -> Decimal:
    if not _is_count(value):
        raise _Refused("bad_shape", "result.value is not a non-negative integer of lamports")
    assert isinstance(value, int)
    if value > U64_MAX:
        raise _Refused("bad_amount", "result.value is more lamports than a u64 holds")
    return Decimal(value).scaleb(-LAMPORTS_DECIMALS, context=_EXACT)


# -- token accounts ----------------------------------------------------------------------------


def _token_amount(pair: Pair, value: object) -> Decimal:
    wallet, token = pair
    return _sum_by_mint(value, wallet, mint=token).get(token, Decimal(0))


def _sum_by_mint(
    value: object, owner: str, *, mint: str | None = None, program: Program | None = None
) -> dict[str, Decimal]:
    """The accounts' amounts summed per mint, each account's owner (and the mint or program
    asked) checked first. Wrapped SOL accounts are left out unless their mint was asked."""
    if not isinstance(value, list):
        raise _Refused("bad_shape", f"result.value is a JSON {_kind(value)}, not an array")
    sums: dict[str, tuple[int, int]] = {}  # mint: (raw total, decimals)
    for index, account in enumerate(value):
        found, raw, decimals = _account_amount(index, account, owner, mint=mint, program=program)
        total, scale = sums.get(found, (0, decimals))
        if decimals != scale:
            disagree = f"the accounts disagree on the mint's decimals ({scale}, {decimals})"
            raise _Refused("bad_decimals", disagree)
        sums[found] = (total + raw, decimals)
    if mint is None:
        sums.pop(WRAPPED_SOL_MINT, None)
    return {
        found: Decimal(total).scaleb(-scale, context=_EXACT)
        for found, (total, scale) in sums.items()
    }


def _account_amount(
    index: int, account: object, owner: str, *, mint: str | None, program: Program | None
) -> tuple[str, int, int]:
    """One token account's mint, raw amount and decimals, once its program (if one was asked),
    mint and owner are checked."""
    where = f"result.value[{index}]"
    if not isinstance(account, dict):
        raise _Refused("bad_shape", f"{where} is a JSON {_kind(account)}, not an object")
    data = _object(_object(account, "account", where), "data", f"{where}.account")
    if program is not None and data.get("program") != program:
        shown = short(repr(data.get("program")), 60)
        raise _Refused("wrong_program", f"{where} data.program is {shown}, not {program!r}")
    parsed = _object(data, "parsed", f"{where}.account.data")
    info = _object(parsed, "info", f"{where}.account.data.parsed")
    if mint is None:
        found = _address(info, "mint", where)
    else:
        _same_address(info, "mint", mint, where, "wrong_mint")
        found = mint
    _same_address(info, "owner", owner, where, "wrong_owner")
    token_amount = _object(info, "tokenAmount", f"{where} info")
    return (
        found,
        _raw_amount(token_amount.get("amount"), where),
        _decimals(token_amount.get("decimals"), where),
    )


def _listed_once(amounts: Mapping[str, Decimal], held: Mapping[str, ChainBalance]) -> None:
    """A mint belongs to one token program: listed under both, one answer is wrong."""
    twice = amounts.keys() & held.keys()
    if twice:
        mint = short(min(twice), 60)
        raise _Refused("wrong_program", f"mint {mint!r} is listed under both token programs")


def _address(info: dict[str, object], name: str, where: str) -> str:
    found = info.get(name)
    if not isinstance(found, str) or not is_address(found):
        raise _Refused("bad_shape", f"{where} info.{name} is not an address")
    return found


def _same_address(
    info: dict[str, object],
    name: str,
    expected: str,
    where: str,
    reason: Literal["wrong_mint", "wrong_owner"],
) -> None:
    found = info.get(name)
    if not isinstance(found, str):
        raise _Refused("bad_shape", f"{where} info.{name} is not a string")
    if found != expected:
        raise _Refused(reason, f"{where} info.{name} is {short(found, 60)!r}, not the one asked")


def _raw_amount(amount: object, where: str) -> int:
    if not isinstance(amount, str) or _RAW_AMOUNT.fullmatch(amount) is None:
        shown = short(repr(amount), 60)
        raise _Refused("bad_amount", f"{where} tokenAmount.amount {shown} is not a u64 string")
    raw = int(amount)
    if raw > U64_MAX:
        raise _Refused("bad_amount", f"{where} tokenAmount.amount is more than a u64 holds")
    return raw


def _decimals(decimals: object, where: str) -> int:
    if not isinstance(decimals, int) or isinstance(decimals, bool):
        raise _Refused("bad_decimals", f"{where} tokenAmount.decimals is not an integer")
    if not 0 <= decimals <= MAX_DECIMALS:
        raise _Refused("bad_decimals", f"{where} tokenAmount.decimals {decimals} is not in 0..18")
    return decimals


# -- small checks ------------------------------------------------------------------------------


def _object(container: dict[str, object], name: str, where: str) -> dict[str, object]:
    value = container.get(name)
    if not isinstance(value, dict):
        shown = "missing" if value is None else f"a JSON {_kind(value)}"
        raise _Refused("bad_shape", f"{where}.{name} is {shown}, not an object")
    return value


def _is_count(value: object) -> bool:
    """A non-negative JSON integer (a bool is an int in Python, never in JSON)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _kind(value: object) -> str:
    return _JSON_KINDS.get(type(value), type(value).__name__)


def _encoded(answer: object) -> str:
    try:
        return msgspec.json.encode(answer).decode()
    except (TypeError, msgspec.EncodeError):
        return repr(answer)
