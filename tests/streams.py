"""Numbered messages for the replica tests: each message's amount is its number, so the rows
stored can be matched one for one with what the simulator delivered, and to whom."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from balancewatch.devtools.simulator import Simulator
from balancewatch.domain import Pair
from tests.helpers import wait_until


@contextlib.asynccontextmanager
async def numbered_messages(
    sim: Simulator, pairs: Sequence[Pair], per_second: float = 500
) -> AsyncIterator[dict[int, int]]:
    """Sends a message with a fresh amount to the pairs' rooms in turn until the block ends;
    yields amount -> how many connections it reached."""
    reached: dict[int, int] = {}
    stop = asyncio.Event()
    step = max(1, round(per_second / 100))

    async def send() -> None:
        number = 0
        while not stop.is_set():
            for _ in range(step):
                wallet, token = pairs[number % len(pairs)]
                number += 1
                reached[number] = await sim.send_balance(wallet, token, str(number))
            await asyncio.sleep(0.01)

    task = asyncio.create_task(send())
    try:
        yield reached
    finally:
        stop.set()
        await task


async def stream_amounts(db: Any) -> list[int]:
    rows = await db.fetch("SELECT amount FROM balance_history WHERE source = 'stream'")
    return sorted(int(row["amount"]) for row in rows)


async def assert_stored_once(db: Any, expected: Sequence[int], timeout: float = 10) -> None:
    """Exactly the messages `expected` are stored, each once (waits for the writers)."""
    wanted = sorted(expected)

    async def all_stored() -> bool:
        return await stream_amounts(db) == wanted

    with contextlib.suppress(AssertionError):
        await wait_until(all_stored, timeout=timeout, what="rows stored")
    found = await stream_amounts(db)
    missing = sorted(set(wanted) - set(found))
    twice = sorted(n for n in set(found) if found.count(n) > 1)
    extra = sorted(set(found) - set(wanted))
    assert (missing, twice, extra) == ([], [], []), f"of {len(wanted)} expected"
