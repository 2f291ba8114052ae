"""The simulated chain: Solana JSON-RPC answers consistent with the simulated Datastream.

The Simulator serves it on its own port as `POST /rpc` (and `/rpc/anything`, with any query,
where a provider would put a key): single calls and batches of `getTokenAccountsByOwner` (the
mint filter, or the programId filter of either token program; jsonParsed, the shape of the
Agave RPC) and `getBalance`. A balance the Simulator streams is the chain's balance too;
`set_balance` changes the chain without a message, as a transfer missed by the stream would.

How each pair is held on chain varies the way it does on mainnet: an owner may hold two or
three accounts of one mint (the balance split unevenly over them), a mint may belong to
Token-2022. `set_layout` chooses; without it the choice is derived from the addresses' SHA-256,
the same on every run. The mint's decimals are 9 unless set. The wrapped SOL mint's balance is
native SOL (lamports, `getBalance`), as the Datastream reports it: no token account holds it.

It misbehaves on demand (`fail_next`, `refuse_batches`) and records every request
(`requests`) so a test can check a client's rate, retries and batching from the server's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
from collections import deque
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal, get_args

from aiohttp import web

from balancewatch.chain.answers import (
    MAX_DECIMALS,
    PROGRAM_IDS,
    U64_MAX,
    WRAPPED_SOL_MINT,
    Program,
)
from balancewatch.domain import Pair, is_address

DEFAULT_DECIMALS: Final = 9
FIRST_SLOT: Final = 341_000_000
FaultKind = Literal[
    "401",
    "429",
    "500",
    "503",
    "timeout",
    "not_json",
    "bad_shape",
    "rpc_error",
    "bad_amount",
    "bad_decimals",
    "wrong_mint",
    "wrong_owner",
]
FAULT_KINDS: Final[tuple[FaultKind, ...]] = get_args(FaultKind)
_HTTP_FAULTS: Final[dict[FaultKind, int]] = {"401": 401, "429": 429, "500": 500, "503": 503}
# The answer-level faults: every call of the request is answered, wrongly.
ANSWER_FAULTS: Final[frozenset[FaultKind]] = frozenset(FAULT_KINDS) - {*_HTTP_FAULTS, "timeout"}
# A held request ("timeout") is answered when the simulator stops, or after this long.
_HOLD_SECONDS: Final = 600.0
# The mint of the bad account a fault gives an owner of none when the call asked no mint.
_FAULT_MINT: Final = "Fau1tMint1111111111111111111111111111111111"
_PLAIN_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")
_BASE58_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_PROGRAMS: Final[dict[str, Program]] = {address: name for name, address in PROGRAM_IDS.items()}


@dataclass(frozen=True, slots=True)
class RpcRecord:
    """One HTTP request the simulated RPC received."""

    at: float  # time.monotonic() when it arrived
    calls: int  # JSON-RPC calls in it (1 for a single call)
    batch: bool
    status: int | None  # the HTTP status answered; None: held until the client gave up
    fault: FaultKind | None = None


@dataclass(frozen=True, slots=True)
class _Fault:
    kind: FaultKind
    retry_after: float | str | None


class Chain:
    """The balances on the simulated chain, how they are held, and the RPC that serves them."""

    def __init__(self) -> None:
        self.slot = FIRST_SLOT
        self.refuse_batches = False
        self.requests: list[RpcRecord] = []
        self._balances: dict[Pair, Decimal] = {}
        self._accounts: dict[Pair, int] = {}
        self._programs: dict[str, Program] = {}
        self._decimals: dict[str, int] = {}
        self._faults: deque[_Fault] = deque()
        self._release = asyncio.Event()

    # -- the state -----------------------------------------------------------------------------

    def set_balance(self, wallet: str, token: str, amount: Decimal | str) -> None:
        """Change a balance on chain, with no message on the stream."""
        value = self.chain_amount(token, amount)
        if value is None:
            raise ValueError(
                f"{amount!r} is not a balance this mint can hold: a plain non-negative decimal,"
                f" at most {self.decimals(token)} digits after the point, within a u64"
            )
        self._balances[(wallet, token)] = value
        self.slot += 1

    def balance(self, wallet: str, token: str) -> Decimal:
        return self._balances.get((wallet, token), Decimal(0))

    def tokens_of(self, wallet: str) -> list[str]:
        """Every token the wallet was ever given a balance of (it has an account for each)."""
        return [token for owner, token in self._balances if owner == wallet]

    def has_balance(self, wallet: str, token: str) -> bool:
        """Whether the pair was ever given a balance (if not, it has no token account)."""
        return (wallet, token) in self._balances

    def chain_amount(self, token: str, amount: Decimal | str) -> Decimal | None:
        """`amount` as the chain would hold it for this mint, or None if it cannot."""
        if isinstance(amount, str):
            if _PLAIN_DECIMAL.fullmatch(amount) is None:
                return None
            amount = Decimal(amount)
        if not amount.is_finite() or amount < 0:
            return None
        try:
            raw = amount.scaleb(self.decimals(token))
            exact = raw == raw.to_integral_value()
        except InvalidOperation:
            return None
        return amount if exact and raw <= U64_MAX else None

    def set_layout(
        self,
        wallet: str,
        token: str,
        *,
        accounts: int = 1,
        program: Program = "spl-token",
        decimals: int | None = None,
    ) -> None:
        """How `wallet` holds `token`: in how many accounts; and the mint's program and
        decimals (properties of the mint: they apply to every owner of it)."""
        if accounts < 1:
            raise ValueError("an owner given a layout holds at least one account")
        if decimals is not None and not 0 <= decimals <= MAX_DECIMALS:
            raise ValueError("decimals must be in 0..18")
        self._accounts[(wallet, token)] = accounts
        self._programs[token] = program
        if decimals is not None:
            self._decimals[token] = decimals

    def decimals(self, token: str) -> int:
        return self._decimals.get(token, DEFAULT_DECIMALS)

    def program(self, token: str) -> Program:
        if token in self._programs:
            return self._programs[token]
        if token == WRAPPED_SOL_MINT:
            return "spl-token"
        return "spl-token-2022" if _digest(token)[0] % 3 == 0 else "spl-token"

    def accounts(self, wallet: str, token: str) -> int:
        if (wallet, token) in self._accounts:
            return self._accounts[(wallet, token)]
        return (1, 1, 1, 2, 2, 3)[_digest(f"{wallet}:{token}")[0] % 6]

    # -- faults --------------------------------------------------------------------------------

    def fail_next(
        self, kind: FaultKind, times: int = 1, retry_after: float | str | None = None
    ) -> None:
        """Make the next `times` HTTP requests fail this way. "429" sends Retry-After:
        `retry_after` seconds (1 if None; a string goes verbatim, "" sends none)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}")
        self._faults.extend(_Fault(kind, retry_after) for _ in range(times))

    def release(self) -> None:
        """Answer every held request now (the simulator is stopping)."""
        self._release.set()
        self._release = asyncio.Event()

    # -- serving -------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        body = await request.read()
        self.slot += 1
        fault = self._faults.popleft() if self._faults else None
        try:
            payload = json.loads(body)
        except ValueError:
            self._record(arrived, 1, batch=False, status=200, fault=fault)
            return web.json_response(_error(None, -32700, "Parse error"))
        batch = isinstance(payload, list)
        calls: list[object] = payload if isinstance(payload, list) else [payload]
        if fault is not None and fault.kind not in ANSWER_FAULTS:
            return await self._transport_fault(fault, arrived, len(calls), batch=batch)
        if batch and (self.refuse_batches or not calls):
            self._record(arrived, len(calls), batch=True, status=400, fault=fault)
            message = "Batch requests are not supported" if calls else "Invalid request"
            return web.json_response(_error(None, -32600, message), status=400)
        self._record(arrived, len(calls), batch=batch, status=200, fault=fault)
        if fault is not None and fault.kind == "not_json":
            return web.Response(text="<html><body>502 Bad Gateway</body></html>", status=200)
        kind = fault.kind if fault is not None else None
        answers = [self._answer(call, kind, request.path_qs) for call in calls]
        return web.json_response(answers if batch else answers[0])

    async def _transport_fault(
        self, fault: _Fault, arrived: float, calls: int, *, batch: bool
    ) -> web.StreamResponse:
        status = _HTTP_FAULTS.get(fault.kind)
        self._record(arrived, calls, batch=batch, status=status, fault=fault)
        if status is None:  # "timeout": hold the request until the client gives up
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), _HOLD_SECONDS)
            return web.Response(status=504)
        headers = {}
        if status == 429:
            retry_after = fault.retry_after if fault.retry_after is not None else 1
            if retry_after != "":
                headers["Retry-After"] = str(retry_after)
        return web.json_response(
            _error(None, -32000 - status, f"HTTP {status} from the simulated provider"),
            status=status,
            headers=headers,
        )

    def _record(
        self, arrived: float, calls: int, *, batch: bool, status: int | None, fault: _Fault | None
    ) -> None:
        kind = fault.kind if fault is not None else None
        self.requests.append(RpcRecord(arrived, calls, batch, status, kind))

    def _answer(self, call: object, fault: FaultKind | None, path: str) -> dict[str, object]:
        if not isinstance(call, dict):
            return _error(None, -32600, "Invalid request")
        call_id, method, params = call.get("id"), call.get("method"), call.get("params")
        if fault == "rpc_error":
            # Providers quote what they were sent, the key in the URL with it.
            return _error(call_id, -32005, f"Node is behind by 153 slots (request {path})")
        value: object
        if method == "getBalance":
            value = self._lamports(params)
        elif method == "getTokenAccountsByOwner":
            value = self._token_accounts(params)
        else:
            return _error(call_id, -32601, "Method not found")
        if isinstance(value, _Invalid):
            return _error(call_id, -32602, value.message)
        if fault is not None:
            value = _corrupt(value, fault, params)
        context = {"apiVersion": "2.2.0", "slot": self.slot}
        return {"jsonrpc": "2.0", "id": call_id, "result": {"context": context, "value": value}}

    def _lamports(self, params: object) -> int | _Invalid:
        if not isinstance(params, list) or not params or not _is_address(params[0]):
            return _Invalid("Invalid param: WrongSize")
        return int(self.balance(params[0], WRAPPED_SOL_MINT).scaleb(9))

    def _token_accounts(self, params: object) -> list[dict[str, object]] | _Invalid:
        if not isinstance(params, list) or len(params) < 2 or not _is_address(params[0]):
            return _Invalid("Invalid param: WrongSize")
        wallet, accounts = params[0], params[1]
        config = params[2] if len(params) > 2 else None
        if not isinstance(config, dict) or config.get("encoding") != "jsonParsed":
            return _Invalid("Invalid param: the simulator answers jsonParsed only")
        if not isinstance(accounts, dict):
            return _Invalid("Invalid param: the filter is not an object")
        if "programId" in accounts:
            return self._program_accounts(wallet, accounts["programId"])
        return self._mint_accounts(wallet, accounts.get("mint"))

    def _mint_accounts(self, wallet: str, mint: object) -> list[dict[str, object]] | _Invalid:
        if not isinstance(mint, str) or not is_address(mint):
            return _Invalid("Invalid param: the simulator supports the mint and programId filters")
        return self.token_accounts(wallet, mint) if self.has_balance(wallet, mint) else []

    def _program_accounts(
        self, wallet: str, program_id: object
    ) -> list[dict[str, object]] | _Invalid:
        """Every account `wallet` holds under one token program, as the programId filter lists
        them (Agave refuses any other program)."""
        program = _PROGRAMS.get(program_id) if isinstance(program_id, str) else None
        if program is None:
            return _Invalid("Invalid param: unrecognized Token program id")
        return [
            account
            for token in self.tokens_of(wallet)
            if token != WRAPPED_SOL_MINT and self.program(token) == program
            for account in self.token_accounts(wallet, token)
        ]

    def token_accounts(self, wallet: str, token: str) -> list[dict[str, object]]:
        """The pair's token accounts as getTokenAccountsByOwner (jsonParsed) lists them."""
        decimals = self.decimals(token)
        raw = int(self.balance(wallet, token).scaleb(decimals))
        program = self.program(token)
        return [
            _account(wallet, token, index, part, decimals=decimals, program=program)
            for index, part in enumerate(split_unevenly(raw, self.accounts(wallet, token)))
        ]


@dataclass(frozen=True, slots=True)
class _Invalid:
    message: str


def split_unevenly(raw: int, accounts: int) -> list[int]:
    """`raw` over `accounts` parts of different sizes that sum to it exactly."""
    rest = [raw // (3 * (index + 1)) for index in range(1, accounts)]
    return [raw - sum(rest), *rest]


def _account(
    wallet: str, token: str, index: int, raw: int, *, decimals: int, program: Program
) -> dict[str, object]:
    ui = Decimal(raw).scaleb(-decimals)
    ui_text = format(ui, "f")
    token_amount = {
        "amount": str(raw),
        "decimals": decimals,
        "uiAmount": float(ui),
        "uiAmountString": ui_text.rstrip("0").rstrip(".") if "." in ui_text else ui_text,
    }
    info = {
        "isNative": token == WRAPPED_SOL_MINT,
        "mint": token,
        "owner": wallet,
        "state": "initialized",
        "tokenAmount": token_amount,
    }
    space = 165 if program == "spl-token" else 182
    return {
        "pubkey": base58(_digest(f"{wallet}:{token}:{index}")),
        "account": {
            "lamports": 2039280,
            "owner": PROGRAM_IDS[program],
            "executable": False,
            "rentEpoch": U64_MAX,
            "space": space,
            "data": {
                "program": program,
                "space": space,
                "parsed": {"type": "account", "info": info},
            },
        },
    }


def _corrupt(value: object, fault: FaultKind, params: object) -> object:
    """The answer's value made wrong the way `fault` says (getBalance has no decimals, mint or
    owner to get wrong, nor a program's accounts a mint: their value is left alone for those)."""
    if fault == "bad_shape":
        return "corrupted"
    if isinstance(value, int):
        return U64_MAX + 1 if fault == "bad_amount" else value
    assert isinstance(value, list)
    assert isinstance(params, list)
    wallet, asked = params[0], params[1]
    mint = asked.get("mint")
    if fault == "wrong_mint" and mint is None:
        return value
    program = _PROGRAMS.get(asked.get("programId"), "spl-token")
    # An owner without an account still gets a bad one: every call of the request is wrong.
    accounts = value or [
        _account(wallet, mint or _FAULT_MINT, 0, 0, decimals=DEFAULT_DECIMALS, program=program)
    ]
    for index, account in enumerate(accounts):
        tree: Any = account  # built just above, by _account
        info = tree["account"]["data"]["parsed"]["info"]
        if fault == "bad_amount":
            info["tokenAmount"]["amount"] = ("12.5", "-3")[index % 2]
        elif fault == "bad_decimals":
            info["tokenAmount"]["decimals"] = 300
        elif fault == "wrong_mint":
            info["mint"] = base58(_digest(f"not {mint}"))
        elif fault == "wrong_owner":
            info["owner"] = base58(_digest(f"not {wallet}"))
    return accounts


def _error(call_id: object, code: int, message: str) -> dict[str, object]:
    return {"jsonrpc": "2.0", "id": call_id, "error": {"code": code, "message": message}}


def _is_address(value: object) -> bool:
    return isinstance(value, str) and is_address(value)


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def base58(data: bytes) -> str:
    """Bitcoin-alphabet base58, as Solana writes an address."""
    number = int.from_bytes(data, "big")
    out = []
    while number:
        number, digit = divmod(number, 58)
        out.append(_BASE58_ALPHABET[digit])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(out))
