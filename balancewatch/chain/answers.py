"""Solana JSON-RPC for one balance: the call to send, and what its answer says.

Everything here is pure: a pair in, a call out; a decoded answer in, a `ChainBalance` or a
`ReadFailure` with a reason out. The RPC is untrusted input: an answer that is not exactly the
documented shape never becomes a balance. The amount is the sum of every token account's raw
`tokenAmount.amount`, scaled by `decimals` in exact Decimal arithmetic; `uiAmount` (an f64) is
never read.
"""

from __future__ import annotations

import decimal
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, Literal

import msgspec

from balancewatch import logs
from balancewatch.domain import Pair

WRAPPED_SOL_MINT: Final = "So11111111111111111111111111111111111111112"
LAMPORTS_DECIMALS: Final = 9
U64_MAX: Final = 2**64 - 1
MAX_DECIMALS: Final = 18
COMMITMENT: Final = "confirmed"

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
    "missing_answer",
    "unavailable",
]


@dataclass(frozen=True, slots=True)
class ChainBalance:
    pair: Pair
    amount: Decimal  # in UI units, exact
    slot: int  # result.context.slot: the slot the chain was read at


@dataclass(frozen=True, slots=True)
class ReadFailure:
    pair: Pair
    reason: FailureReason
    detail: str  # human readable; never the RPC URL
    answer: str | None  # an excerpt of the offending answer, scrubbed, or None


ChainRead = ChainBalance | ReadFailure


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
        method = "getBalance"
        params: list[object] = [wallet, {"commitment": COMMITMENT}]
    else:
        method = "getTokenAccountsByOwner"
        params = [wallet, {"mint": token}, {"encoding": "jsonParsed", "commitment": COMMITMENT}]
    return {"jsonrpc": "2.0", "id": call_id, "method": method, "params": params}


def parse_answer(pair: Pair, answer: object) -> ChainRead:
    """What one decoded JSON-RPC response object says of `pair`'s balance. Never raises."""
    try:
        slot, value = _result(answer)
        native = pair[1] == WRAPPED_SOL_MINT
        amount = _lamports(value) if native else _token_amount(pair, value)
    except _Refused as refused:
        return ReadFailure(pair, refused.reason, refused.detail, excerpt(_encoded(answer)))
    return ChainBalance(pair, amount, slot)


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
    if not isinstance(value, list):
        raise _Refused("bad_shape", f"result.value is a JSON {_kind(value)}, not an array")
    total = 0
    scale: int | None = None
    for index, account in enumerate(value):
        raw, decimals = _account_amount(pair, index, account)
        if scale is not None and decimals != scale:
            disagree = f"the accounts disagree on the mint's decimals ({scale}, {decimals})"
            raise _Refused("bad_decimals", disagree)
        total, scale = total + raw, decimals
    return Decimal(total).scaleb(-(scale or 0), context=_EXACT)


def _account_amount(pair: Pair, index: int, account: object) -> tuple[int, int]:
    """One token account's raw amount and decimals, once its mint and owner are checked."""
    where = f"result.value[{index}]"
    if not isinstance(account, dict):
        raise _Refused("bad_shape", f"{where} is a JSON {_kind(account)}, not an object")
    info = _info(account, where)
    wallet, token = pair
    _same_address(info, "mint", token, where, "wrong_mint")
    _same_address(info, "owner", wallet, where, "wrong_owner")
    token_amount = _object(info, "tokenAmount", f"{where} info")
    return _raw_amount(token_amount.get("amount"), where), _decimals(
        token_amount.get("decimals"), where
    )


def _info(account: dict[str, object], where: str) -> dict[str, object]:
    inner = _object(account, "account", where)
    data = _object(inner, "data", f"{where}.account")
    parsed = _object(data, "parsed", f"{where}.account.data")
    return _object(parsed, "info", f"{where}.account.data.parsed")


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
