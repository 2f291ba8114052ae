"""The Solana JSON-RPC client: reads many pairs' balances, or whole wallets', in batches,
within a rate limit.

`SolanaRpc.read` and `read_wallets` never raise for what a network or a provider does: every
pair comes back as a `ChainBalance`, every wallet as `WalletBalances`, or either as a
`ReadFailure` with a reason. A wallet is three calls (its accounts under each token program,
its lamports), batched with the others. Every HTTP request waits on one leaky bucket
(`max_rps`); a 429 holds every request of the client for its Retry-After; 5xx, timeouts and
refused or reset connections are retried with full-jitter backoff, `max_attempts` times in
all. A provider that refuses batches is remembered, and sent single calls from then on.

The URL is a secret (providers put the key in its path or query): it is in no log line, no
error, no repr. aiohttp's exceptions put the URL in their text, so none is ever turned into a
string here: a failure is described by its HTTP status or its exception's class.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import itertools
import math
import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Literal, Self

import aiohttp
import msgspec
from aiolimiter import AsyncLimiter

from balancewatch import logs
from balancewatch.aio import Backoff
from balancewatch.chain.answers import (
    CallFor,
    ChainRead,
    FailureReason,
    ReadFailure,
    WalletRead,
    balance_call,
    excerpt,
    parse_answer,
    parse_wallet,
    wallet_calls,
)
from balancewatch.domain import Pair, Watch
from balancewatch.settings import check_rpc_url, rpc_url_secrets

log = logs.get_logger(__name__)

# The longest Retry-After obeyed: a provider's "come back in a day" is a bug, not a plan.
MAX_RETRY_AFTER: Final = 120.0
_HEADERS: Final = {"Content-Type": "application/json", "Accept": "application/json"}
_KEY_REFUSED: Final = frozenset({401, 403})

RequestOutcome = Literal[
    "ok",
    "rate_limited",
    "server_error",
    "timeout",
    "refused",
    "batch_refused",
    "client_error",
    "malformed",
]


@dataclass(frozen=True, slots=True)
class RpcConfig:
    url: str = field(repr=False)  # a secret: may carry the key in its path or query
    max_rps: float = 10.0  # HTTP requests a second at most (a batch is one request)
    batch_size: int = 100  # calls per JSON-RPC batch
    timeout: float = 10.0  # per HTTP request, seconds
    max_attempts: int = 5  # per request, before its calls are ReadFailure("unavailable")
    retry_initial: float = 0.5
    retry_max: float = 30.0

    def __post_init__(self) -> None:
        problems = _url_problems(self.url) + [
            f"{name} must be positive"
            for name, value in [
                ("max_rps", self.max_rps),
                ("batch_size", self.batch_size),
                ("timeout", self.timeout),
                ("max_attempts", self.max_attempts),
                ("retry_max", self.retry_max),
            ]
            if not value > 0
        ]
        if self.retry_initial < 0:
            problems.append("retry_initial must not be negative")
        if problems:
            raise ValueError(f"RpcConfig: {'; '.join(problems)}")


def _url_problems(url: str) -> list[str]:
    """What is wrong with the RPC URL, in words that never quote it."""
    try:
        check_rpc_url(url)
    except ValueError as exc:
        return [f"url {exc}"]
    return []


# -- what one HTTP request gave ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    retry_after: str | None
    body: bytes


@dataclass(frozen=True, slots=True)
class _Fault:
    outcome: Literal["timeout", "refused"]
    error: str  # the exception's class (and errno), never its text


@dataclass(frozen=True, slots=True)
class _Decoded:
    value: object


@dataclass(frozen=True, slots=True)
class _Failed:
    reason: FailureReason
    detail: str
    answer: str | None = None

    def of(self, watch: Watch) -> ReadFailure:
        return ReadFailure(watch, self.reason, self.detail, self.answer)


class _BatchRefused:
    pass


_BATCH_REFUSED: Final = _BatchRefused()
_Settled = _Decoded | _Failed | _BatchRefused
_Answer = _Decoded | _Failed  # what came of one call


class SolanaRpc:
    """Reads balances over one aiohttp session; use as `async with SolanaRpc(config) as rpc`."""

    def __init__(
        self,
        config: RpcConfig,
        *,
        on_request: Callable[[RequestOutcome], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._on_request = on_request
        self._rng = rng or random.Random()
        # A bucket of one: requests are spaced 1/max_rps apart, with no burst at the start.
        self._limiter = AsyncLimiter(1, 1.0 / config.max_rps)
        self._session: aiohttp.ClientSession | None = None
        self._batches_refused = False
        self._resume_at = 0.0  # loop time before which no request goes (a 429's Retry-After)
        self._ids = itertools.count(1)
        # A last defence, for a caller that did not configure the logs with the settings'.
        logs.scrubber.register(rpc_url_secrets(config.url))

    def __repr__(self) -> str:
        return f"SolanaRpc({self._config!r}, batches_refused={self._batches_refused})"

    async def __aenter__(self) -> Self:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def batches_refused(self) -> bool:
        """Whether the provider refused a batch: every call then goes on its own."""
        return self._batches_refused

    # -- reading -------------------------------------------------------------------------------

    async def read(self, pairs: Sequence[Pair]) -> list[ChainRead]:
        """One result per pair, in the order given."""
        answers = await self._answers([functools.partial(balance_call, pair=p) for p in pairs])
        return [
            parse_answer(pair, answer.value) if isinstance(answer, _Decoded) else answer.of(pair)
            for pair, answer in zip(pairs, answers, strict=True)
        ]

    async def read_wallets(self, wallets: Sequence[str]) -> list[WalletRead]:
        """One result per wallet, in the order given. A wallet's calls go in the batches with
        the others; if any of them fails, so does the wallet."""
        calls = [wallet_calls(wallet) for wallet in wallets]
        answers = iter(await self._answers([call for its in calls for call in its]))
        return [
            _wallet_read(wallet, [next(answers) for _ in its])
            for wallet, its in zip(wallets, calls, strict=True)
        ]

    async def _answers(self, calls: Sequence[CallFor]) -> list[_Answer]:
        """Each call's decoded answer, or why there is none, in the order given."""
        if self._session is None:
            raise RuntimeError("SolanaRpc is not open: use it as `async with SolanaRpc(...)`")
        size = self._config.batch_size
        chunks = [calls[start : start + size] for start in range(0, len(calls), size)]
        done = await asyncio.gather(*(self._answer_chunk(chunk) for chunk in chunks))
        return [answer for chunk in done for answer in chunk]

    async def _answer_chunk(self, calls: Sequence[CallFor]) -> list[_Answer]:
        if len(calls) > 1 and not self._batches_refused:
            answers = await self._answer_batch(calls)
            if answers is not None:
                return answers
        return list(await asyncio.gather(*(self._answer_single(call) for call in calls)))

    async def _answer_batch(self, calls: Sequence[CallFor]) -> list[_Answer] | None:
        """The calls' answers, or None if the provider refused the batch."""
        ids = [next(self._ids) for _ in calls]
        payload = [call(call_id) for call, call_id in zip(calls, ids, strict=True)]
        settled = await self._post(payload, batch=True)
        if isinstance(settled, _BatchRefused):
            return None
        if isinstance(settled, _Failed):
            return [settled] * len(calls)
        assert isinstance(settled.value, list)  # _classify checked it
        answers = _by_id(settled.value, ids)
        return [
            _Decoded(answers[call_id])
            if call_id in answers
            else _Failed("missing_answer", f"the batch has no answer to call {call_id}")
            for call_id in ids
        ]

    async def _answer_single(self, call: CallFor) -> _Answer:
        call_id = next(self._ids)
        settled = await self._post(call(call_id), batch=False)
        if isinstance(settled, _Failed):
            return settled
        assert isinstance(settled, _Decoded)
        assert isinstance(settled.value, dict)  # _classify checked it
        answered = settled.value.get("id")
        if answered is not None and (answered != call_id or isinstance(answered, bool)):
            text = excerpt(msgspec.json.encode(settled.value).decode())
            return _Failed("bad_shape", "the answer is to another call's id", text)
        return settled

    # -- one request, with its retries ---------------------------------------------------------

    async def _post(self, payload: object, *, batch: bool) -> _Settled:
        body = msgspec.json.encode(payload)
        backoff = Backoff(self._config.retry_initial, self._config.retry_max, rng=self._rng)
        attempts = self._config.max_attempts
        for attempt in range(1, attempts + 1):
            reply = await self._exchange(body)
            outcome, settled = _classify(reply, batch=batch)
            self._report(outcome)
            if isinstance(settled, _BatchRefused):
                self._refuse_batches(reply)
            if settled is not None:
                return settled
            failure = _describe(reply)
            if attempt < attempts:
                delay = self._retry_delay(reply, backoff)
                log.warning(
                    "chain.request_retried",
                    outcome=outcome,
                    failure=failure,
                    attempt=attempt,
                    retry_in=round(delay, 3),
                )
                if outcome == "rate_limited":
                    self._pause(delay)  # every request of this client waits, in _slot
                else:
                    await asyncio.sleep(delay)
        log.warning("chain.request_failed", failure=failure, attempts=attempts)
        return _Failed("unavailable", f"no answer after {attempts} attempts, the last: {failure}")

    async def _exchange(self, body: bytes) -> _Reply | _Fault:
        """One HTTP request, once the rate limit and any Retry-After allow it."""
        session = self._session
        if session is None:
            raise RuntimeError("SolanaRpc was closed while reading")
        await self._slot()
        try:
            async with (
                asyncio.timeout(self._config.timeout),
                session.post(
                    self._config.url, data=body, headers=_HEADERS, allow_redirects=False
                ) as response,
            ):
                return _Reply(
                    response.status, response.headers.get("Retry-After"), await response.read()
                )
        except TimeoutError:
            return _Fault("timeout", f"no answer within {self._config.timeout} s")
        except (aiohttp.ClientError, OSError) as exc:
            return _Fault("refused", _error_name(exc))

    async def _slot(self) -> None:
        """Wait out any Retry-After, then the leaky bucket; again if a 429 came meanwhile."""
        loop = asyncio.get_running_loop()
        while True:
            # Not a poll: each sleep lasts until the pause ends, unless a later 429 moved it.
            while (wait := self._resume_at - loop.time()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait)
            await self._limiter.acquire()
            if loop.time() >= self._resume_at:
                return

    def _retry_delay(self, reply: _Reply | _Fault, backoff: Backoff) -> float:
        """How long before the next attempt: a 429's Retry-After, or the backoff's delay."""
        if isinstance(reply, _Reply) and reply.status == 429:
            wait = retry_after_seconds(reply.retry_after)
            if wait is not None:
                return wait
        return backoff.next_delay()

    def _pause(self, seconds: float) -> None:
        """Hold every request of this client for `seconds` (unless held longer already)."""
        loop = asyncio.get_running_loop()
        self._resume_at = max(self._resume_at, loop.time() + seconds)

    def _refuse_batches(self, reply: _Reply | _Fault) -> None:
        if not self._batches_refused:
            self._batches_refused = True
            status = reply.status if isinstance(reply, _Reply) else None
            log.warning("chain.batches_refused", status=status)

    def _report(self, outcome: RequestOutcome) -> None:
        if self._on_request is not None:
            self._on_request(outcome)


# -- pure helpers ------------------------------------------------------------------------------


def _classify(reply: _Reply | _Fault, *, batch: bool) -> tuple[RequestOutcome, _Settled | None]:
    """What one HTTP request's reply means; None: worth another attempt."""
    if isinstance(reply, _Fault):
        return reply.outcome, None
    if reply.status == 200:
        return _classify_body(reply.body, batch=batch)
    return _classify_status(reply, batch=batch)


def _classify_status(reply: _Reply, *, batch: bool) -> tuple[RequestOutcome, _Settled | None]:
    """What an HTTP status other than 200 means."""
    if reply.status == 429:
        return "rate_limited", None
    if reply.status >= 500:
        return "server_error", None
    if reply.status in _KEY_REFUSED:
        # Not the pairs' fault, nor the batch's: every call would get the same. Unavailable,
        # so that a wrong key does not leave a refused-answer row per pair every retry.
        detail = f"HTTP {reply.status}: the RPC provider refused the request (check its key)"
        return "client_error", _Failed("unavailable", detail)
    if reply.status >= 400 and batch:
        return "batch_refused", _BATCH_REFUSED
    detail = f"HTTP {reply.status} from the RPC provider"
    return "client_error", _Failed("rpc_error", detail, _body_excerpt(reply.body))


def _classify_body(body: bytes, *, batch: bool) -> tuple[RequestOutcome, _Settled]:
    try:
        value: object = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return "malformed", _Failed("not_json", "the answer is not JSON", _body_excerpt(body))
    if batch and isinstance(value, dict) and value.get("error") is not None:
        return "batch_refused", _BATCH_REFUSED  # one error for the whole batch
    expected = list if batch else dict
    if not isinstance(value, expected):
        kind = "an array" if batch else "an object"
        detail = f"the answer to a {'batch' if batch else 'call'} is not {kind}"
        return "malformed", _Failed("bad_shape", detail, _body_excerpt(body))
    return "ok", _Decoded(value)


def _wallet_read(wallet: str, answers: Sequence[_Answer]) -> WalletRead:
    """The wallet's balances from its calls' answers; the first call without one fails it."""
    decoded = []
    for answer in answers:
        if isinstance(answer, _Failed):
            return answer.of((wallet, None))
        decoded.append(answer.value)
    return parse_wallet(wallet, decoded)


def _by_id(answers: list[object], wanted: Collection[int]) -> dict[int, object]:
    """Each call's answer by its id (the first, if one comes twice); others are ignored."""
    found: dict[int, object] = {}
    for answer in answers:
        call_id = answer.get("id") if isinstance(answer, dict) else None
        if isinstance(call_id, int) and not isinstance(call_id, bool) and call_id in wanted:
            found.setdefault(call_id, answer)
    return found


def retry_after_seconds(header: str | None) -> float | None:
    """Retry-After in seconds (a number; the HTTP-date form is not used by RPC providers),
    capped at MAX_RETRY_AFTER; None if absent or not a number."""
    if header is None:
        return None
    try:
        seconds = float(header.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER)


def _describe(reply: _Reply | _Fault) -> str:
    return reply.error if isinstance(reply, _Fault) else f"HTTP {reply.status}"


def _error_name(exc: BaseException) -> str:
    """The exception's class, and its errno's name if it has one: never its text, which for
    aiohttp names the URL."""
    code = getattr(exc, "errno", None)
    name = errno.errorcode.get(code) if isinstance(code, int) else None
    return f"{type(exc).__name__} ({name})" if name else type(exc).__name__


def _body_excerpt(body: bytes) -> str:
    return excerpt(body.decode("utf-8", "replace"))
