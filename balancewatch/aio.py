"""asyncio helpers shared by the long-running loops and the commands: waiting for the first of
several events, backoff between retries, running a command's coroutine to an exit code, and the
time of an event as a burst of them shares it."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from balancewatch import logs
from balancewatch.errors import EXIT_FAILURE, EXIT_OK, StartupError

log = logs.get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class SharedClock:
    """The time now, in whole milliseconds rounded up: one `datetime` object shared by every
    reading until the clock passes it. The joins of a large watchlist are acknowledged tens of
    thousands a second, and each ack's state change and listening period keep their time until
    they are written: one object a millisecond, not one a pair (48 bytes a pair).

    Rounded up, never down: a listening period must not start before the ack that opened it
    (the history would claim a moment not listened to), and one that ends a moment late still
    ends before the server has taken the leave in."""

    def __init__(
        self,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._monotonic = monotonic
        self._now = now
        self._until = float("-inf")  # on the monotonic clock: when the time passes `_last`
        self._last = datetime.min.replace(tzinfo=UTC)

    def __call__(self) -> datetime:
        tick = self._monotonic()
        if tick >= self._until:
            now = self._now()
            ahead = timedelta(microseconds=-now.microsecond % 1000)
            self._last = now + ahead
            self._until = tick + ahead.total_seconds()
        return self._last


# One for the process, as datetime.now is: what shares a moment is then found equal by identity.
shared_now = SharedClock()


async def wait_first(*events: asyncio.Event, timeout: float | None) -> None:
    """Wait until any of the events is set, or the timeout passes (no error on timeout)."""
    if any(event.is_set() for event in events):
        return
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def finish_despite_cancel(
    work: Coroutine[Any, Any, T], grace: float, settle: Callable[[asyncio.Future[T]], R]
) -> R:
    """Run `work` to its end even if the caller is cancelled meanwhile (for up to `grace` more
    seconds, then it is cancelled too). `settle` sees how it ended either way, before a
    cancellation is re-raised: what was taken out for a write is never forgotten."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.wait([task])  # unlike awaiting it, a cancellation leaves it running
    except asyncio.CancelledError:
        await asyncio.wait([task], timeout=grace)
        if not task.done():
            task.cancel()
            await asyncio.wait([task])
        settle(task)
        raise
    return settle(task)


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with full jitter, as a pure object the retry loops consult."""

    initial: float
    maximum: float
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def ceiling(self) -> float:
        # Capping the exponent keeps 2**attempt from overflowing after days of failures.
        return min(self.maximum, self.initial * 2.0 ** min(self.attempt, 32))

    def next_delay(self) -> float:
        """Full jitter: uniform in [0, ceiling], so many clients never retry in lockstep."""
        delay = self.rng.uniform(0, self.ceiling())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


def run_to_exit_code(work: Callable[[], Awaitable[None]]) -> int:
    """Run a command's coroutine; the failures it expects become one log line and exit 1."""

    async def body() -> None:
        await work()

    try:
        asyncio.run(body())
    except StartupError as exc:
        log.error(exc.event, error=str(exc))
        return EXIT_FAILURE
    except (OSError, SQLAlchemyError) as exc:
        log.error("database.unreachable", error=logs.describe_error(exc))
        return EXIT_FAILURE
    except Exception:
        log.exception("daemon.crashed")
        return EXIT_FAILURE
    return EXIT_OK
