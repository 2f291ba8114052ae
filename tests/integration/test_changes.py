"""`balance_changes(since, until)` and `pair_history(wallet, token, until, n)` (migration 0016)
against the views they stand in for: the same answers on the edges (a pair's first row ever in
the window, a previous row days back, ties on received_at, rows in the default partition),
whatever the rollups hold, and reading only the partitions they need."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.daemon.partitions import PartitionKeeper
from balancewatch.store import migrate
from tests.data import WALLET3
from tests.helpers import SOL, TOKEN, WALLET, WALLET2, downgrade

TODAY = datetime.now(UTC).date()
NOON = datetime.combine(TODAY, time(12), UTC)  # the keeper's clock: yesterday is closed
INFINITY = datetime.max.replace(tzinfo=UTC)  # asyncpg sends it as 'infinity'


def at(days_ago: int, hour: int) -> datetime:
    return datetime.combine(TODAY - timedelta(days=days_ago), time(hour), UTC)


SINCE = at(1, 12)  # the window of most tests: (yesterday noon, infinity]
NEW = (WALLET, TOKEN)  # its first row ever is in the window
FAR = (WALLET, SOL)  # the row before the window is five days back, in another partition
GONE = (WALLET2, TOKEN)  # rows only before the window
TIES = (WALLET2, SOL)  # two rows at SINCE itself, three at one instant in the window
DEFAULT = (WALLET3, TOKEN)  # rows where no partition is: ten days back, a month ahead
ROWS = [
    (*NEW, "1", at(1, 13)),
    (*NEW, "2", at(0, 1)),
    (*NEW, "4.5", at(0, 2)),
    (*FAR, "1", at(6, 1)),
    (*FAR, "100", at(5, 8)),
    (*FAR, "90", at(0, 3)),
    (*FAR, "95", at(0, 4)),
    (*GONE, "7", at(4, 0)),
    (*GONE, "8", at(2, 0)),
    (*TIES, "10", SINCE),
    (*TIES, "11", SINCE),  # stored after "10": the later of the two
    (*TIES, "12", at(1, 18)),
    (*TIES, "13", at(1, 18)),
    (*TIES, "14", at(1, 18)),
    (*TIES, "15", at(0, 5)),
    (*DEFAULT, "50", at(10, 0)),
    (*DEFAULT, "60", at(0, 6)),
    (*DEFAULT, "70", at(-30, 0)),
]
COLUMNS = "id, wallet, token, received_at, amount, previous_amount, delta"
VIEW = (
    f"SELECT {COLUMNS} FROM balance_change WHERE received_at > $1 AND received_at <= $2 ORDER BY id"
)
FUNCTION = f"SELECT {COLUMNS} FROM balance_changes($1, $2) ORDER BY id"
WINDOWS = [
    (SINCE, INFINITY),
    (SINCE, at(0, 4)),  # until is in: FAR's row at 04:00 is, its rows after are not
    (at(3, 0), at(1, 18)),  # GONE's last row in, the window ends on TIES' tie
    (at(1, 18), INFINITY),  # starts on a tie: the last of the three is the row before
    (at(11, 0), at(3, 0)),  # only older rows, DEFAULT's first row from the default partition
    (datetime.min.replace(tzinfo=UTC), INFINITY),  # everything: balance_change itself
]


@pytest.fixture
async def history(db: Any) -> None:
    """ROWS, with a partition for each of the last six days (ten days back and a month ahead
    have none: those rows are in the default partition)."""
    for days_ago in range(1, 7):
        await db.execute("SELECT create_balance_partition($1, 1)", TODAY - timedelta(days=days_ago))
    await db.executemany(
        "INSERT INTO balance_history (wallet, token, amount, received_at) "
        "VALUES ($1, $2, $3::numeric, $4)",
        ROWS,
    )
    assert await db.fetchval("SELECT count(*) FROM balance_rows_default") == 2


async def roll_up(engine: AsyncEngine) -> None:
    await PartitionKeeper(engine, now=lambda: NOON).roll_up()


async def stale_rollups(engine: AsyncEngine, db: Any) -> None:
    """Rolled up, then FAR's row five days back deleted (as the README says rows are): daily_rows
    still says FAR has a row that day, and the row before the window is six days back."""
    await roll_up(engine)
    deleted = await db.execute(
        "DELETE FROM balance_rows WHERE received_at = $1 AND amount = 100", at(5, 8)
    )
    assert deleted == "DELETE 1"


ROLLUPS = {
    "none": None,
    "current": lambda engine, db: roll_up(engine),
    "stale": stale_rollups,
}


def changes(rows: list[Any], pair: tuple[str, str]) -> list[tuple[Decimal, Decimal | None]]:
    return [(r["amount"], r["previous_amount"]) for r in rows if (r["wallet"], r["token"]) == pair]


@pytest.mark.parametrize("rollups", list(ROLLUPS))
async def test_balance_changes_gives_balance_changes_answers_for_every_window(
    history: None, engine: AsyncEngine, db: Any, rollups: str
) -> None:
    """The same rows and previous amounts as the view restricted to the window, whether the
    closed days are rolled up or not, and when daily_rows no longer matches the rows."""
    prepare = ROLLUPS[rollups]
    if prepare is not None:
        await prepare(engine, db)
    if rollups != "none":
        assert await db.fetchval("SELECT count(*) FROM daily_rows") > 0
    for since, until in WINDOWS:
        expected = [tuple(r) for r in await db.fetch(VIEW, since, until)]
        assert [tuple(r) for r in await db.fetch(FUNCTION, since, until)] == expected, (
            since,
            until,
        )


async def test_balance_changes_finds_the_row_before_the_window_across_days_and_partitions(
    history: None, engine: AsyncEngine, db: Any
) -> None:
    await roll_up(engine)
    rows = await db.fetch(FUNCTION, SINCE, INFINITY)
    d = Decimal
    assert changes(rows, NEW) == [(d(1), None), (d(2), d(1)), (d("4.5"), d(2))]
    assert changes(rows, FAR) == [(d(90), d(100)), (d(95), d(90))]
    assert changes(rows, GONE) == []
    # The later of the two rows at SINCE (outside the window), then the ties in id order.
    assert changes(rows, TIES) == [(d(12), d(11)), (d(13), d(12)), (d(14), d(13)), (d(15), d(14))]
    assert changes(rows, DEFAULT) == [(d(60), d(50)), (d(70), d(60))]
    assert [r["delta"] for r in rows if (r["wallet"], r["token"]) == FAR] == [d(-10), d(5)]


async def test_balance_changes_looks_back_only_from_the_pairs_last_rolled_up_day(
    history: None, engine: AsyncEngine, db: Any
) -> None:
    """In (today 02:00, today 04:00] only FAR has rows, and its row before them is five days
    back, nothing between: rolled up, the probe enters the partitions from that day on and not
    the one before it; without rollups it enters every partition before the window once."""
    window = (at(0, 2), at(0, 4))

    async def index_scans(days_ago: int) -> int:
        await db.execute("SELECT pg_stat_force_next_flush()")
        # Every index of the partition, whatever it is named (the window's BRIN scans are
        # in today's).
        scans: int = await db.fetchval(
            "SELECT coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = $1",
            f"balance_rows_{TODAY - timedelta(days=days_ago):%Y%m%d}",
        )
        return scans

    async def entered() -> list[bool]:
        before = [await index_scans(n) for n in (5, 6)]
        rows = await db.fetch(FUNCTION, *window)
        assert changes(rows, FAR) == [(Decimal(90), Decimal(100)), (Decimal(95), Decimal(90))]
        return [await index_scans(n) > scans for n, scans in zip((5, 6), before, strict=True)]

    assert await entered() == [True, True]
    await roll_up(engine)
    assert await entered() == [True, False]


PAIR_HISTORY = "SELECT * FROM pair_history($1, $2, $3, $4)"
NEWEST = (
    "SELECT * FROM balance_history WHERE wallet = $1 AND token = $2 AND received_at <= $3 "
    "ORDER BY received_at DESC, id DESC LIMIT $4"
)


@pytest.mark.parametrize("pair", [TIES, DEFAULT, FAR])
@pytest.mark.parametrize(
    "until", [INFINITY, at(1, 18), at(1, 18) - timedelta(microseconds=1), SINCE, at(20, 0)]
)
@pytest.mark.parametrize("n", [1, 2, 50])
async def test_pair_history_is_the_views_newest_rows_up_to_until(
    history: None, db: Any, pair: tuple[str, str], until: datetime, n: int
) -> None:
    expected = [tuple(r) for r in await db.fetch(NEWEST, *pair, until, n)]
    assert [tuple(r) for r in await db.fetch(PAIR_HISTORY, *pair, until, n)] == expected


async def test_pair_history_of_a_pair_without_rows_is_empty(history: None, db: Any) -> None:
    assert await db.fetch("SELECT * FROM pair_history($1, $2)", WALLET3, SOL) == []
    assert await db.fetch("SELECT * FROM pair_history($1, $2)", WALLET, "not-a-token") == []


async def test_pair_history_defaults_to_the_newest_50_rows_with_the_views_columns(
    db: Any,
) -> None:
    await db.executemany(
        "INSERT INTO balance_history (wallet, token, amount, received_at, source, slot) "
        "VALUES ($1, $2, $3::numeric, $4, $5, $6)",
        [(*NEW, str(i), at(0, 0) + timedelta(minutes=i), "check", i) for i in range(60)],
    )
    rows = await db.fetch("SELECT * FROM pair_history($1, $2)", *NEW)
    view = await db.fetch(NEWEST, *NEW, INFINITY, 50)
    assert [tuple(r) for r in rows] == [tuple(r) for r in view]
    assert list(rows[0].keys()) == list(view[0].keys())
    assert (rows[0]["amount"], rows[0]["source"], rows[0]["slot"]) == (59, "check", 59)


async def test_downgrading_0016_drops_both_functions(engine: AsyncEngine, db: Any) -> None:
    await downgrade(engine, "0015")
    names = "SELECT count(*) FROM pg_proc WHERE proname IN ('balance_changes', 'pair_history')"
    assert await db.fetchval(names) == 0
    await migrate.upgrade(engine)
    assert await db.fetchval(names) == 2
