"""What the daemon reads of the watchlist (all enabled rows, or every row of a few wallets), and
what the CLI writes to it: pairs and whole wallets (token NULL) side by side."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.store import watchlist
from balancewatch.store.watchlist import ImportRow
from tests.data import insert_statuses
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


async def rows(db: Any) -> list[tuple[str, str | None, bool, str | None]]:
    found = await db.fetch(
        "SELECT wallet, token, enabled, label FROM watchlist ORDER BY wallet, token NULLS FIRST"
    )
    return [(r["wallet"], r["token"], r["enabled"], r["label"]) for r in found]


async def test_a_whole_wallet_added_twice_is_one_row_enabled_again(
    engine: AsyncEngine, db: Any
) -> None:
    assert await watchlist.add(engine, WALLET, None, "treasury")
    await db.execute("UPDATE watchlist SET enabled = false")
    assert not await watchlist.add(engine, WALLET, None, None)
    assert await watchlist.add(engine, WALLET, TOKEN, None)  # a pair of it is another row
    assert await rows(db) == [(WALLET, None, True, "treasury"), (WALLET, TOKEN, True, None)]


async def test_removing_a_whole_wallet_leaves_its_pairs(engine: AsyncEngine, db: Any) -> None:
    await watch(db, WALLET, TOKEN)
    await watchlist.add(engine, WALLET, None, None)
    assert await watchlist.remove(engine, WALLET, None)
    assert not await watchlist.remove(engine, WALLET, None)
    assert await rows(db) == [(WALLET, TOKEN, True, None)]
    assert await watchlist.remove(engine, WALLET, TOKEN)
    assert await rows(db) == []


async def test_entries_give_a_whole_wallet_and_its_covered_pair_their_own_status(
    engine: AsyncEngine, db: Any
) -> None:
    await watch(db, WALLET, TOKEN)
    await watchlist.add(engine, WALLET, None, None)
    await insert_statuses(db, [(WALLET, TOKEN, "covered", None), (WALLET, None, "joined", None)])
    found = [(e.wallet, e.token, e.state) for e in await watchlist.entries(engine)]
    assert found == [(WALLET, TOKEN, "covered"), (WALLET, None, "joined")]


def imported(wallet: str, token: str | None, label: str) -> ImportRow:
    return ImportRow(wallet, token, enabled=None, label=label, has_label=True)


async def test_an_import_of_pairs_and_whole_wallets_upserts_both_kinds(
    engine: AsyncEngine, db: Any
) -> None:
    await watchlist.add(engine, WALLET, None, "old")
    await watch(db, WALLET, TOKEN)
    result = await watchlist.import_rows(
        engine,
        [
            imported(WALLET, TOKEN, "usdt"),
            imported(WALLET, None, "new"),
            imported(WALLET2, None, "hot"),
            imported(WALLET2, SOL, "sol"),
        ],
    )
    assert (result.added, result.updated) == (2, 2)
    assert await rows(db) == [
        (WALLET2, None, True, "hot"),
        (WALLET2, SOL, True, "sol"),
        (WALLET, None, True, "new"),
        (WALLET, TOKEN, True, "usdt"),
    ]


async def test_an_import_whose_whole_wallet_fails_leaves_its_pairs_unwritten_too(
    engine: AsyncEngine, db: Any
) -> None:
    # A rule the file check does not know: the whole-wallet statement, after the pairs', fails.
    await db.execute(
        "ALTER TABLE watchlist ADD CONSTRAINT no_whole_wallet2 "
        f"CHECK (token IS NOT NULL OR wallet <> '{WALLET2}')"
    )
    with pytest.raises(IntegrityError, match="no_whole_wallet2"):
        await watchlist.import_rows(
            engine, [imported(WALLET, TOKEN, "a"), imported(WALLET2, None, "b")]
        )
    assert await rows(db) == []
