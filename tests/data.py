"""Known data that tests of more than one tier put in (or parse): the history of a pair, the
rows `balancewatch status` summarises, listening periods, a watchlist file with bad lines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from balancewatch.domain import Watch
from tests.helpers import SOL, TOKEN, WALLET, WALLET2

# -- a history: the views and `balancewatch history` -----------------------------------------

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
# Amounts Postgres keeps exactly and a float would not (or would print another way).
AMOUNTS = ["76989.158861", "0.000000001", "1000000000000000000.000000000001", "76989.158861"]


async def insert(db: Any, rows: list[tuple[str, str, str, datetime]]) -> None:
    await db.executemany(
        "INSERT INTO balance_history (wallet, token, amount, received_at) "
        "VALUES ($1, $2, $3::numeric, $4)",
        rows,
    )


async def insert_pair_history(db: Any) -> None:
    """AMOUNTS for (WALLET, TOKEN) at T0, +1 min, +2 min, +3 min; one row of another pair."""
    await insert(
        db, [(WALLET, TOKEN, amount, T0 + timedelta(minutes=i)) for i, amount in enumerate(AMOUNTS)]
    )
    await insert(db, [(WALLET2, SOL, "5", T0)])


Span = tuple[datetime, datetime | None, str | None]  # started_at, ended_at, end_reason


async def insert_periods(db: Any, watch: Watch, *spans: Span) -> None:
    """Listening periods of `watch` (a pair, or a wallet's room: token None), kept by one
    daemon that confirmed them just now."""
    holder = "test-host/1/abcd"
    await db.execute(
        "INSERT INTO coverage_holders (holder, started_at, confirmed_at) VALUES ($1, $2, now()) "
        "ON CONFLICT DO NOTHING",
        holder,
        min(span[0] for span in spans),
    )
    await db.executemany(
        "INSERT INTO coverage (id, wallet, token, started_at, ended_at, end_reason, holder) "
        "VALUES (gen_random_uuid(), $1, $2, $3, $4, $5, $6)",
        [(*watch, start, end, reason, holder) for start, end, reason in spans],
    )


# -- what `balancewatch status` summarises ---------------------------------------------------

WALLET3 = "9WzDXwBbmkg8ZTbNMqUxvQRAyrZzDsGYdLVL9zYtAWWM"


async def history_rows(db: Any, ages: list[timedelta]) -> None:
    """Rows received `ages` ago, stored oldest first, as the daemon stores them."""
    now = await db.fetchval("SELECT now()")
    rows = [
        (WALLET, TOKEN, Decimal(n), now - age) for n, age in enumerate(sorted(ages, reverse=True))
    ]
    await db.copy_records_to_table(
        "balance_history", records=rows, columns=["wallet", "token", "amount", "received_at"]
    )


async def insert_watches(db: Any, rows: list[tuple[str, str | None, bool]]) -> None:
    """Watchlist rows (wallet, token or None for all tokens, enabled)."""
    await db.executemany("INSERT INTO watchlist (wallet, token, enabled) VALUES ($1, $2, $3)", rows)


async def insert_statuses(db: Any, rows: list[tuple[str, str | None, str, str | None]]) -> None:
    """What the daemon said of each watch, since now: (wallet, token, state, last_error)."""
    await db.executemany(
        "INSERT INTO subscription_status (wallet, token, state, since, last_error, updated_at)"
        " VALUES ($1, $2, $3, now(), $4, now())",
        rows,
    )


async def seed(db: Any) -> None:
    await insert_watches(
        db,
        [
            (WALLET, TOKEN, True),
            (WALLET2, SOL, True),
            (WALLET3, SOL, True),
            (WALLET3, TOKEN, True),
            (WALLET2, TOKEN, False),
        ],
    )
    await insert_statuses(
        db,
        [
            (WALLET, TOKEN, "joined", None),
            (WALLET2, SOL, "error", "server said: no such room"),
            (WALLET3, SOL, "joining", "no ack after 30 s (attempt 3)"),
        ],
    )
    await history_rows(
        db,
        [timedelta(seconds=s) for s in (5, 20, 50)]
        + [timedelta(minutes=m) for m in (5, 30, 59)]
        + [timedelta(hours=h) for h in (2, 30)],
    )
    await db.execute(
        "INSERT INTO rejected_messages (received_at, reason, detail, frame, frame_size) VALUES"
        " (now(), 'not_json', 'x', 'x', 1), (now(), 'not_json', 'x', 'x', 1),"
        " (now() - interval '1 hour', 'room_not_joined', 'x', 'x', 1),"
        " (now() - interval '3 days', 'binary_frame', 'x', 'x', 1)"
    )


# -- a watchlist file for `balancewatch watch import` ----------------------------------------

BAD_FILE = (
    "wallet,token,enabled,label\n"  # 1
    f"{WALLET},{TOKEN},true,ok\n"  # 2
    f"0xdeadbeef,{TOKEN},true,bad wallet\n"  # 3
    f"{WALLET},{TOKEN},false,again\n"  # 4
    f"{WALLET},{SOL},maybe,bad enabled\n"  # 5
    f"{WALLET2},{SOL},true\n"  # 6
    "\n"  # 7 (blank: skipped)
    f'{WALLET2},{TOKEN},true,"a label\nover two lines"\n'  # 8-9
    f"{WALLET2},not-a-mint!,yes,\n"  # 10
    f"{WALLET2},{WALLET},1,fine,extra\n"  # 11
)
