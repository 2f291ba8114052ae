"""The history made easy to read: the views and `balance_at` of migration 0003, and the gaps
`balancewatch history` shows, against real Postgres."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal, localcontext
from itertools import pairwise
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.store import migrate
from balancewatch.store.history import Gap, fetch_gaps
from tests.data import AMOUNTS, T0, Span, insert, insert_pair_history, insert_periods
from tests.helpers import SOL, TOKEN, WALLET, WALLET2, downgrade

# --- the views and balance_at ---------------------------------------------------------------


async def test_latest_balance_has_one_row_per_pair_with_the_newest_amount(db: Any) -> None:
    await insert_pair_history(db)
    # Two rows in the same microsecond: the one stored last is the newest.
    await insert(db, [(WALLET2, SOL, "6", T0), (WALLET2, SOL, "7", T0)])
    rows = await db.fetch(
        "SELECT wallet, token, amount::text AS amount, received_at FROM latest_balance "
        "ORDER BY wallet"
    )
    assert [(r["wallet"], r["token"], r["amount"], r["received_at"]) for r in rows] == [
        (WALLET2, SOL, "7", T0),
        (WALLET, TOKEN, "76989.158861", T0 + timedelta(minutes=3)),
    ]


async def test_balance_change_has_the_previous_amount_and_the_delta(db: Any) -> None:
    await insert_pair_history(db)
    rows = await db.fetch(
        "SELECT amount, previous_amount, delta FROM balance_change "
        "WHERE wallet = $1 AND token = $2 ORDER BY received_at",
        WALLET,
        TOKEN,
    )
    amounts = [Decimal(a) for a in AMOUNTS]
    assert [r["amount"] for r in rows] == amounts
    assert [r["previous_amount"] for r in rows] == [None, *amounts[:-1]]
    with localcontext(prec=100):  # Postgres is exact; Python's default context is 28 digits
        deltas = [b - a for a, b in pairwise(amounts)]
    assert [r["delta"] for r in rows] == [None, *deltas]
    # A time filter keeps the delta of the first row in the window (it is not recomputed).
    in_window = await db.fetch(
        "SELECT delta FROM balance_change WHERE wallet = $1 AND received_at > $2",
        WALLET,
        T0 + timedelta(seconds=90),
    )
    assert [r["delta"] for r in in_window] == deltas[1:]


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (T0 - timedelta(microseconds=1), None),
        (T0, AMOUNTS[0]),
        (T0 + timedelta(seconds=119), AMOUNTS[1]),
        (T0 + timedelta(minutes=2), AMOUNTS[2]),
        (T0 + timedelta(days=365), AMOUNTS[3]),
    ],
)
async def test_balance_at_is_the_newest_amount_at_or_before_the_time(
    db: Any, at: datetime, expected: str | None
) -> None:
    await insert_pair_history(db)
    found = await db.fetchval("SELECT balance_at($1, $2, $3)::text", WALLET, TOKEN, at)
    assert found == expected


async def test_downgrading_0003_drops_the_views_and_the_function(engine: AsyncEngine) -> None:
    await downgrade(engine, "0002")
    async with engine.connect() as connection:
        left = await connection.exec_driver_sql(
            "SELECT count(*) FROM pg_class WHERE relname IN ('latest_balance', 'balance_change')"
        )
        functions = await connection.exec_driver_sql(
            "SELECT count(*) FROM pg_proc WHERE proname = 'balance_at'"
        )
        assert (left.scalar_one(), functions.scalar_one()) == (0, 0)
    await migrate.upgrade(engine)
    assert await migrate.current_revision(engine) == migrate.head_revision()


async def test_the_as_of_lookup_is_an_index_scan_without_a_sort(db: Any) -> None:
    await db.execute("SET enable_seqscan = off")
    rows = await db.fetch(  # the query of balance_at and balance_as_of (migration 0009)
        "EXPLAIN SELECT amount FROM balance_rows "
        "WHERE pair_id = (SELECT pair_id FROM pairs WHERE wallet = $1 AND token = $2) "
        "AND received_at <= $3 ORDER BY received_at DESC, id DESC LIMIT 1",
        WALLET,
        TOKEN,
        T0,
    )
    plan = "\n".join(row[0] for row in rows)
    assert "_pair_idx" in plan
    assert "->  Sort" not in plan


# --- the gaps of `balancewatch history` -----------------------------------------------------


def minutes(start: float, end: float | None, reason: str | None = None) -> Span:
    return (
        T0 + timedelta(minutes=start),
        None if end is None else T0 + timedelta(minutes=end),
        reason,
    )


def gap(start: float, end: float | None, reason: str) -> Gap:
    return Gap(*minutes(start, end)[:2], reason)


async def gaps_of(engine: AsyncEngine, token: str | None) -> list[Gap]:
    until = T0 + timedelta(days=1)
    return await fetch_gaps(engine, WALLET, token, since=T0, until=until)


async def test_a_gap_begins_where_the_furthest_period_so_far_ends(
    engine: AsyncEngine, db: Any
) -> None:
    # Two replicas around a handover: the second period ends first, inside the first one.
    await insert_periods(
        db,
        (WALLET, TOKEN),
        minutes(0, 10, "handover"),
        minutes(2, 5, "lost"),
        minutes(12, 20, "shutdown"),
    )
    assert await gaps_of(engine, TOKEN) == [gap(10, 12, "handover"), gap(20, None, "shutdown")]


async def test_a_pair_is_listened_to_through_its_wallets_room_too(
    engine: AsyncEngine, db: Any
) -> None:
    # Its own room left for the wallet's (an all-tokens row added), then taken back.
    await insert_periods(db, (WALLET, TOKEN), minutes(0, 10, "left"), minutes(30, 40, "shutdown"))
    await insert_periods(db, (WALLET, None), minutes(10, 25, "left"))
    await insert_periods(db, (WALLET, SOL), minutes(0, 50, "shutdown"))  # another token's
    assert await gaps_of(engine, TOKEN) == [gap(25, 30, "left"), gap(40, None, "shutdown")]


async def test_a_wallets_gaps_are_when_no_room_of_it_was_listened_to(
    engine: AsyncEngine, db: Any
) -> None:
    await insert_periods(db, (WALLET, TOKEN), minutes(0, 10, "left"), minutes(30, 40, "shutdown"))
    await insert_periods(db, (WALLET, None), minutes(10, 25, "disconnected"))
    await insert_periods(db, (WALLET, SOL), minutes(35, 50, "shutdown"))
    await insert_periods(db, (WALLET2, None), minutes(0, None))  # another wallet's
    assert await gaps_of(engine, None) == [gap(25, 30, "disconnected"), gap(50, None, "shutdown")]
