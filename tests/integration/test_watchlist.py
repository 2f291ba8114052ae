"""What the daemon reads of the watchlist: all enabled rows, or every row of a few wallets."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.store import watchlist
from tests.helpers import SOL, TOKEN, WALLET, WALLET2, watch


async def test_enabled_of_wallets_gives_every_enabled_row_of_the_asked_wallets(
    engine: AsyncEngine, db: Any
) -> None:
    await watch(db, WALLET, TOKEN)
    await watch(db, WALLET, SOL)
    await db.execute("INSERT INTO watchlist (wallet) VALUES ($1)", WALLET)  # all tokens
    await watch(db, WALLET2, TOKEN)
    await db.execute("UPDATE watchlist SET enabled = false WHERE token = $1", SOL)

    mine = set(await watchlist.enabled_of_wallets(engine, [WALLET]))
    assert mine == {(WALLET, TOKEN), (WALLET, None)}
    everything = set(await watchlist.enabled_watches(engine))
    assert everything == {(WALLET, TOKEN), (WALLET, None), (WALLET2, TOKEN)}
    assert await watchlist.enabled_of_wallets(engine, []) == []
