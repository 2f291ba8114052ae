"""The thirteen queries of the README's "Querying" section, taken from README.md as written and run
on known data: each answer is checked, not just that it runs."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.data import insert_periods
from tests.files import numbered_queries
from tests.helpers import SOL, TOKEN, WALLET, WALLET2

A = (WALLET, TOKEN)  # a long history, some of it before the as-of time
B = (WALLET2, SOL)  # quiet for three hours
C = (WALLET, SOL)  # watched, never heard of
D = (WALLET2, TOKEN)  # first heard of two hours ago, no longer watched

AS_OF = datetime(2025, 1, 1, tzinfo=UTC)  # the time written in queries 4 and 5


QUERIES = numbered_queries()


@pytest.fixture
async def known(db: Any) -> dict[str, Any]:
    """The data every query runs on; returns `now` and the rows, for answers computed here."""
    now: datetime = await db.fetchval("SELECT now()")
    rows = [
        (*A, "100", AS_OF - timedelta(hours=1)),
        (*A, "150", AS_OF),  # at the as-of time exactly: included
        (*A, "999", AS_OF + timedelta(seconds=1)),
        (*A, "200", now - timedelta(hours=30)),
        (*A, "260", now - timedelta(hours=20)),
        (*A, "255.5", now - timedelta(minutes=50)),
        (*A, "300.25", now - timedelta(minutes=10)),
        (*B, "5", AS_OF - timedelta(hours=12)),
        (*B, "10", now - timedelta(hours=26)),
        (*B, "2", now - timedelta(hours=3)),
        (*D, "42", now - timedelta(hours=2)),
    ]
    await db.executemany(
        "INSERT INTO balance_history (wallet, token, amount, received_at) "
        "VALUES ($1, $2, $3::numeric, $4)",
        rows,
    )
    await db.executemany(
        "INSERT INTO watchlist (wallet, token, enabled, label) VALUES ($1, $2, $3, $4)",
        [(*A, True, "a"), (*B, True, "b"), (*C, True, "c"), (*D, False, "d")],
    )
    return {"now": now, "rows": [(w, t, Decimal(a), at) for w, t, a, at in rows]}


async def run(db: Any, number: int) -> list[Any]:
    return list(await db.fetch(QUERIES[number]))


def pair(row: Any) -> tuple[str, str]:
    return (row["wallet"], row["token"])


async def test_1_latest_balances(db: Any, known: dict[str, Any]) -> None:
    rows = await run(db, 1)
    assert {pair(r): r["amount"] for r in rows} == {
        A: Decimal("300.25"),
        B: Decimal("2"),
        D: Decimal("42"),
    }


async def test_2_the_history_of_one_pair_newest_first(db: Any, known: dict[str, Any]) -> None:
    rows = await run(db, 2)
    expected = sorted((r for r in known["rows"] if r[:2] == A), key=lambda r: r[3], reverse=True)
    assert [(r["received_at"], r["amount"]) for r in rows] == [(r[3], r[2]) for r in expected]


async def test_3_changes_in_the_last_hour_with_deltas(db: Any, known: dict[str, Any]) -> None:
    rows = await run(db, 3)
    assert [(pair(r), r["previous_amount"], r["amount"], r["delta"]) for r in rows] == [
        (A, Decimal("260"), Decimal("255.5"), Decimal("-4.5")),
        (A, Decimal("255.5"), Decimal("300.25"), Decimal("44.75")),
    ]


async def test_4_the_balance_of_one_pair_at_a_time(db: Any, known: dict[str, Any]) -> None:
    rows = await run(db, 4)
    assert [(r["amount"], r["received_at"]) for r in rows] == [(Decimal("150"), AS_OF)]
    function = await db.fetchval("SELECT balance_at($1, $2, $3)", *A, AS_OF)
    assert function == Decimal("150")


async def test_5_every_pair_at_a_time(db: Any, known: dict[str, Any]) -> None:
    rows = await run(db, 5)
    assert {pair(r): r["amount"] for r in rows} == {A: Decimal("150"), B: Decimal("5")}


async def test_6_the_biggest_movers_of_the_day(db: Any, known: dict[str, Any]) -> None:
    rows = await run(db, 6)
    assert [(pair(r), r["day_ago"], r["now"], r["change"]) for r in rows] == [
        (A, Decimal("200"), Decimal("300.25"), Decimal("100.25")),
        (B, Decimal("10"), Decimal("2"), Decimal("-8")),
        (D, None, Decimal("42"), None),
    ]


async def test_7_the_biggest_single_changes_of_the_week(db: Any, known: dict[str, Any]) -> None:
    rows = await run(db, 7)
    # The first change in the window is measured against the last row before it (999).
    assert [(pair(r), r["delta"]) for r in rows] == [
        (A, Decimal("-799")),
        (A, Decimal("60")),
        (A, Decimal("44.75")),
        (B, Decimal("-8")),
        (B, Decimal("5")),
        (A, Decimal("-4.5")),
        (D, None),
    ]


async def test_8_daily_first_last_lowest_highest(db: Any, known: dict[str, Any]) -> None:
    rows = await run(db, 8)
    # Whole UTC days (balance_daily's day is a date), today and the 30 before it.
    month_ago = known["now"].astimezone(UTC).date() - timedelta(days=30)
    days: dict[tuple[str, str, date], list[Decimal]] = {}
    for wallet, token, amount, at in sorted(known["rows"], key=lambda r: r[3]):
        day = at.astimezone(UTC).date()
        if day >= month_ago:
            days.setdefault((wallet, token, day), []).append(amount)
    assert {
        (r["wallet"], r["token"], r["day"]): (
            r["first"],
            r["last"],
            r["lowest"],
            r["highest"],
            r["messages"],
        )
        for r in rows
    } == {key: (a[0], a[-1], min(a), max(a), len(a)) for key, a in days.items()}
    assert len(rows) == len(days) >= 3


async def test_9_hourly_closing_balance(db: Any, known: dict[str, Any]) -> None:
    rows = await run(db, 9)
    day_ago = known["now"] - timedelta(hours=24)
    closing: dict[datetime, Decimal] = {}
    for wallet, token, amount, at in sorted(known["rows"], key=lambda r: r[3]):
        if (wallet, token) == A and at > day_ago:
            hour = at.astimezone(UTC).replace(minute=0, second=0, microsecond=0, tzinfo=None)
            closing[hour] = amount
    assert [(r["hour"], r["closing"]) for r in rows] == sorted(closing.items())
    assert Decimal("300.25") in closing.values()


async def test_10_quiet_pairs(db: Any, known: dict[str, Any]) -> None:
    rows = await run(db, 10)
    assert [(pair(r), r["label"], r["last_message"]) for r in rows] == [
        (C, "c", None),
        (B, "b", known["now"] - timedelta(hours=3)),
    ]


async def test_10_a_whole_wallet_is_quiet_when_every_token_of_it_is(
    db: Any, known: dict[str, Any]
) -> None:
    whole = "INSERT INTO watchlist (wallet, label) VALUES ($1, $2)"
    await db.execute(whole, WALLET2, "all of wallet 2")  # its newest row: D's, 2 hours ago
    await db.execute(whole, WALLET, "all of wallet 1")  # A spoke 10 minutes ago
    rows = await run(db, 10)
    assert [(pair(r), r["label"], r["last_message"]) for r in rows] == [
        (C, "c", None),
        (B, "b", known["now"] - timedelta(hours=3)),
        ((WALLET2, None), "all of wallet 2", known["now"] - timedelta(hours=2)),
    ]


async def test_11_the_balance_at_a_time_and_whether_it_is_certain(
    db: Any, known: dict[str, Any]
) -> None:
    [row] = await run(db, 11)
    assert (row["amount"], row["received_at"], row["source"], row["certain"]) == (
        Decimal("150"),
        AS_OF,
        "stream",
        False,  # nobody was listening then
    )
    await insert_periods(
        db, A, (AS_OF - timedelta(hours=2), AS_OF + timedelta(hours=1), "shutdown")
    )
    [row] = await run(db, 11)
    assert (row["amount"], row["certain"]) == (Decimal("150"), True)


async def test_11_a_period_of_the_whole_wallet_makes_each_of_its_tokens_certain(
    db: Any, known: dict[str, Any]
) -> None:
    await insert_periods(
        db, D, (AS_OF - timedelta(hours=2), AS_OF + timedelta(hours=1), "left")
    )  # another wallet's period: no help
    [row] = await run(db, 11)
    assert row["certain"] is False
    whole_wallet = (A[0], None)
    await insert_periods(
        db, whole_wallet, (AS_OF - timedelta(hours=2), AS_OF + timedelta(hours=1), "left")
    )
    [row] = await run(db, 11)
    assert (row["amount"], row["certain"]) == (Decimal("150"), True)


async def test_12_when_the_daemon_was_not_listening(db: Any, known: dict[str, Any]) -> None:
    now = known["now"]
    await insert_periods(
        db,
        A,
        (AS_OF - timedelta(hours=2), AS_OF + timedelta(hours=1), "shutdown"),  # long before
        (now - timedelta(hours=30), now - timedelta(hours=5), "disconnected"),
        (now - timedelta(hours=4), now - timedelta(hours=1), "lost"),
        (now - timedelta(minutes=30), None, None),  # still listening
    )
    await insert_periods(db, B, (now - timedelta(hours=2), now - timedelta(hours=1), "left"))
    rows = await run(db, 12)
    assert [(r["not_listening_from"], r["until"], r["end_reason"]) for r in rows] == [
        (now - timedelta(hours=5), now - timedelta(hours=4), "disconnected"),
        (now - timedelta(hours=1), now - timedelta(minutes=30), "lost"),
    ]
    # Listened to through the wallet's room for a while: that part is no gap.
    await insert_periods(
        db, (A[0], None), (now - timedelta(hours=1), now - timedelta(minutes=45), "left")
    )
    rows = await run(db, 12)
    assert [(r["not_listening_from"], r["until"], r["end_reason"]) for r in rows] == [
        (now - timedelta(hours=5), now - timedelta(hours=4), "disconnected"),
        (now - timedelta(minutes=45), now - timedelta(minutes=30), "left"),
    ]


async def test_13_what_the_chain_said_of_one_pair(db: Any, known: dict[str, Any]) -> None:
    now = known["now"]
    await db.executemany(
        "INSERT INTO balance_history (wallet, token, amount, received_at, source, slot) "
        "VALUES ($1, $2, $3::numeric, $4, $5, $6)",
        [
            (*A, "300", now - timedelta(minutes=40), "snapshot", 1000),
            (*A, "310", now - timedelta(minutes=5), "check", 2000),
        ],
    )
    rows = await run(db, 13)
    assert [(r["source"], r["amount"], r["slot"], r["stored_before"]) for r in rows[:3]] == [
        ("check", Decimal(310), 2000, Decimal("300.25")),
        ("stream", Decimal("300.25"), None, Decimal(300)),
        ("snapshot", Decimal(300), 1000, Decimal("255.5")),
    ]
    assert len(rows) == 9  # every row of the pair, the chain's among them


async def test_13_the_oldest_row_shown_has_the_amount_before_it(
    db: Any, known: dict[str, Any]
) -> None:
    """20 rows are shown of a pair with more: the oldest of them still has its stored_before
    (query 13 reads one row more than it shows)."""
    now = known["now"]
    await db.executemany(
        "INSERT INTO balance_history (wallet, token, amount, received_at) "
        "VALUES ($1, $2, $3::numeric, $4)",
        [(*A, str(n), now + timedelta(seconds=n)) for n in range(1, 26)],
    )
    rows = await run(db, 13)
    assert [r["amount"] for r in rows] == [Decimal(n) for n in range(25, 5, -1)]
    assert [r["stored_before"] for r in rows] == [Decimal(n) for n in range(24, 4, -1)]
