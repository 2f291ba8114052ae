"""What the daemon reads of the watchlist: all enabled pairs, or those among a few."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.store import watchlist
from tests.helpers import SOL, TOKEN, WALLET, WALLET2, watch


async def test_enabled_among_gives_the_asked_pairs_that_are_there_and_enabled(
    engine: AsyncEngine, db: Any
) -> None:
    await watch(db, WALLET, TOKEN)
    await watch(db, WALLET, SOL)
    await watch(db, WALLET2, TOKEN)
    await db.execute("UPDATE watchlist SET enabled = false WHERE token = $1", SOL)

    asked = {(WALLET, TOKEN), (WALLET, SOL), (WALLET2, SOL)}  # present, disabled, absent
    assert await watchlist.enabled_among(engine, asked) == [(WALLET, TOKEN)]
    assert set(await watchlist.enabled_pairs(engine)) == {(WALLET, TOKEN), (WALLET2, TOKEN)}
    assert await watchlist.enabled_among(engine, set()) == []
