"""`balancewatch status` and `balancewatch healthcheck` in-process, against real Postgres and a
real daemon."""

from __future__ import annotations

import argparse
import asyncio
import random
import re
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.devtools.simulator import Simulator
from balancewatch.ops import status
from balancewatch.store import reports
from balancewatch.store.history import gaps_query
from tests.data import (
    WALLET3,
    history_rows,
    insert_periods,
    insert_statuses,
    insert_watches,
    seed,
)
from tests.helpers import (
    SOL,
    TOKEN,
    WALLET,
    WALLET2,
    make_settings,
    room,
    running_daemon,
    wait_until,
)


async def test_status_answers_is_it_working_from_the_database(
    engine: AsyncEngine, db: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    await seed(db)
    assert await status.show(engine, "none") == 0
    out = capsys.readouterr().out
    print(out)
    assert "daemon" not in out
    assert "pairs    4 enabled: 1 error, 1 joined, 1 joining, 1 not seen; 1 disabled" in out
    assert "rows     3 in the last minute, 6 in the last hour; newest " in out
    assert re.search(r"newest [0-9.]+ s ago", out)
    problems = out.split("pairs with problems")[1].split("rejected frames")[0]
    assert f"error    {WALLET2} {SOL}" in problems
    assert "server said: no such room" in problems
    assert f"joining  {WALLET3} {SOL}" in problems
    assert "no ack after 30 s (attempt 3)" in problems
    assert WALLET + " " + TOKEN not in problems
    rejected = out.split("rejected frames, last 24 h")[1]
    assert re.search(r"not_json +2", rejected)
    assert re.search(r"room_not_joined +1", rejected)
    assert "binary_frame" not in rejected  # older than a day


async def test_status_of_an_empty_database(
    engine: AsyncEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await status.show(engine, "none") == 0
    out = capsys.readouterr().out
    assert "pairs    0 enabled; 0 disabled" in out
    assert "rows     0 in the last minute, 0 in the last hour; no rows yet" in out
    assert "rejected frames, last 24 h: none" in out


async def test_rows_since_counts_like_a_full_scan(engine: AsyncEngine, db: Any) -> None:
    ages = [timedelta(seconds=7 * n) for n in range(1500)]
    await history_rows(db, ages)
    await db.execute("DELETE FROM balance_rows WHERE id % 7 = 3 OR id BETWEEN 200 AND 400")
    now = await db.fetchval("SELECT now()")
    backs = (timedelta(0), timedelta(minutes=1), timedelta(hours=1), timedelta(days=1))
    cutoffs = [now - back for back in backs]
    expected = [
        await db.fetchval("SELECT count(*) FROM balance_history WHERE received_at > $1", cutoff)
        for cutoff in cutoffs
    ]
    async with engine.connect() as connection:
        assert await reports.rows_since(connection, *cutoffs) == expected
        assert await reports.rows_since(connection, cutoffs[1]) == expected[1:2]


async def test_status_shows_the_running_daemon_and_healthcheck_follows_readyz(
    engine: AsyncEngine,
    database_url: URL,
    db: Any,
    simulator: Simulator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await db.execute("INSERT INTO watchlist (wallet, token) VALUES ($1, $2)", WALLET, TOKEN)
    async with running_daemon(make_settings(database_url, simulator.url)) as running:
        daemon = running.daemon
        await simulator.wait_for(lambda: room() in simulator.joined_rooms())
        await wait_until(lambda: daemon.http.port != 0, what="the HTTP server")
        url = f"http://127.0.0.1:{daemon.http.port}"
        for n in range(4):
            await simulator.send_balance(WALLET, TOKEN, f"{n}")
        await wait_until(lambda: daemon.writer.rows_written == 4, what="4 rows")
        await wait_until(lambda: _healthy(url), what="healthcheck to pass")
        assert await status.show(engine, url) == 0
        out = capsys.readouterr().out
        print(out)
        assert f"daemon   {url}: ready" in out
        assert "websocket connected, 0 reconnects; 4 messages received, 4 rows written" in out
        assert "0 rows in memory, 0 in the spool (0 bytes)" in out
        assert "pairs    1 enabled: 1 joined; 0 disabled" in out
        assert "rows     4 in the last minute" in out

        await simulator.drop_connections()
        simulator.refuse_status = 503
        await wait_until(lambda: not daemon.client.connected, what="disconnected")
        assert not await _healthy(url)
        assert await status.show(engine, url) == 0
        assert "NOT READY: websocket: not connected" in capsys.readouterr().out
    assert not await _healthy(url)
    assert await status.show(engine, url) == 0
    assert f"daemon   {url}: not reachable" in capsys.readouterr().out


async def _healthy(url: str) -> bool:
    code = await asyncio.to_thread(status.healthcheck, argparse.Namespace(url=url))
    return code == 0


async def test_status_counts_pairs_listened_to_and_the_gaps_of_the_last_day(
    engine: AsyncEngine, db: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    now = await db.fetchval("SELECT now()")
    await insert_watches(db, [(WALLET, TOKEN, True), (WALLET2, SOL, True), (WALLET3, SOL, False)])
    await insert_periods(
        db,
        (WALLET, TOKEN),
        (now - timedelta(hours=30), now - timedelta(hours=2), "disconnected"),
        (now - timedelta(hours=1), None, None),  # open: listening now
    )
    await insert_periods(
        db, (WALLET2, SOL), (now - timedelta(hours=3), now - timedelta(minutes=30), "lost")
    )
    await insert_periods(  # a disabled pair: not counted
        db, (WALLET3, SOL), (now - timedelta(hours=3), now - timedelta(hours=2), "left")
    )
    report = await reports.gather(engine)
    assert (report.pairs.listening, report.gapped) == (1, 2)
    # 1 h for the first; 30 min for the second, still going on (up to the report's own now)
    assert timedelta(minutes=90) <= report.uncovered < timedelta(minutes=90, seconds=10)
    assert await status.show(engine, "none") == 0
    out = capsys.readouterr().out
    assert "coverage 1 pairs being listened to; 2 with a gap in the last 24 h (90 min " in out


async def test_status_counts_whole_wallets_apart_and_their_pairs_as_listened_through_them(
    engine: AsyncEngine, db: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    now = await db.fetchval("SELECT now()")
    await insert_watches(
        db,
        [
            (WALLET, TOKEN, True),
            (WALLET, SOL, True),
            (WALLET, None, True),
            (WALLET2, TOKEN, True),
            (WALLET2, None, False),
            (WALLET3, None, True),
        ],
    )
    await insert_statuses(
        db,
        [
            (WALLET, TOKEN, "covered", None),
            (WALLET, SOL, "covered", None),
            (WALLET, None, "joined", None),
            (WALLET2, TOKEN, "joined", None),
            (WALLET3, None, "error", "server said: no such room"),
        ],
    )
    hours = [now - timedelta(hours=h) for h in (3, 2, 1.5, 1)]
    # TOKEN's own room left for the wallet's, which then missed half an hour.
    await insert_periods(db, (WALLET, TOKEN), (hours[0], hours[1], "left"))
    await insert_periods(
        db, (WALLET, None), (hours[1], hours[2], "disconnected"), (hours[3], None, None)
    )
    await insert_periods(db, (WALLET2, TOKEN), (hours[0], None, None))

    report = await reports.gather(engine)
    assert (report.pairs.listening, report.wallets.listening) == (3, 1)
    # The wallet's half hour, for it and each of its two pairs.
    assert report.gapped == 3
    assert timedelta(minutes=90) <= report.uncovered < timedelta(minutes=90, seconds=10)
    assert await status.show(engine, "none") == 0
    out = capsys.readouterr().out
    print(out)
    assert "pairs    3 enabled: 2 covered (all tokens), 1 joined; 0 disabled\n" in out
    assert "wallets  2 enabled: 1 error, 1 joined; 1 disabled (each for all its tokens)\n" in out
    assert "coverage 3 pairs, 1 whole wallet being listened to; 3 with a gap" in out
    problems = out.split("pairs with problems")[1].split("rejected frames")[0]
    assert f"error    {WALLET3} all tokens  since " in problems


async def test_status_without_any_listening_period(
    engine: AsyncEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await status.show(engine, "none") == 0
    assert "coverage 0 pairs being listened to; no gap in the last 24 h" in capsys.readouterr().out


async def test_status_shows_the_snapshot_queue_checks_drift_and_refused_rpc_answers(
    engine: AsyncEngine, db: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    await db.execute(
        "INSERT INTO coverage_holders (holder, started_at, confirmed_at, snapshot_queue) VALUES "
        "('live', now(), now(), 40), ('gone', now() - interval '1 h', now() - interval '1 h', 9)"
    )
    await db.execute(
        "INSERT INTO chain_reads (hour, kind, result, reads) VALUES "
        "(date_trunc('hour', now()), 'snapshot', 'stored', 1200),"
        "(date_trunc('hour', now()) - interval '1 hour', 'snapshot', 'failed', 3),"
        "(date_trunc('hour', now()), 'check', 'match', 5000),"
        "(date_trunc('hour', now()), 'check', 'in_flight', 2),"
        "(date_trunc('hour', now()), 'check', 'drift', 4),"
        "(date_trunc('hour', now()) - interval '2 days', 'check', 'drift', 99)"
    )
    await db.execute(
        "INSERT INTO rpc_failures (received_at, wallet, token, reason, detail) VALUES "
        "(now(), $1, $2, 'bad_amount', 'x'), (now(), $1, $2, 'bad_amount', 'x'),"
        "(now() - interval '2 days', $1, $2, 'wrong_mint', 'x')",
        WALLET,
        TOKEN,
    )
    assert await status.show(engine, "none") == 0
    out = capsys.readouterr().out
    assert "chain    snapshots: 40 waiting; last 24 h: 1,200 stored, 3 failed" in out
    assert "checks, last 24 h: 5,002 matched, 4 found drift, 0 failed" in out
    refused = out.split("RPC answers refused, last 24 h")[1]
    assert re.search(r"bad_amount +2", refused)
    assert "wrong_mint" not in refused


# The gaps and the rows listened to as status asked for them before migration 0021, the gaps
# from every period ever kept: what the queries of today must answer, to the microsecond.
_GAPS_OF_EVERY_PERIOD = gaps_query(
    """
    WITH rooms AS (
        SELECT wallet, token, started_at, coalesce(ended_at, 'infinity') AS ended_at
        FROM coverage WHERE ended_at IS NULL OR ended_at > now() - interval '24 hours'
        UNION ALL
        SELECT wallet, token, '-infinity', max(ended_at) FROM coverage
        WHERE ended_at <= now() - interval '24 hours' GROUP BY wallet, token
    )
    SELECT w.id AS watch, r.started_at, r.ended_at, NULL AS end_reason
    FROM watchlist w JOIN rooms r ON r.wallet = w.wallet AND r.token = w.token
    WHERE w.enabled
    UNION ALL
    SELECT w.id, r.started_at, r.ended_at, NULL
    FROM watchlist w JOIN rooms r ON r.wallet = w.wallet AND r.token IS NULL
    WHERE w.enabled
    """,
    """
    SELECT count(DISTINCT watch) AS watches,
           coalesce(sum(coalesce(gap_end, now())
                        - greatest(gap_start, now() - interval '24 hours')),
                    interval '0') AS uncovered
    FROM gaps
    WHERE coalesce(gap_end, now()) > now() - interval '24 hours'
    """,
)
_LISTENING_BEFORE_0021 = """
WITH open AS (SELECT DISTINCT wallet, token FROM coverage WHERE ended_at IS NULL)
SELECT count(*) FILTER (WHERE w.token IS NOT NULL) AS pairs,
       count(*) FILTER (WHERE w.token IS NULL) AS wallets
FROM watchlist w
LEFT JOIN open own ON own.wallet = w.wallet AND own.token = w.token
LEFT JOIN open room ON room.wallet = w.wallet AND room.token IS NULL
WHERE w.enabled AND (own.wallet IS NOT NULL OR room.wallet IS NOT NULL)
"""
# Hours from the start of the last 24: its edges and either side of them, or anywhere.
_MOMENTS = (-30.0, -24.0, -0.5, 0.0, 0.0, 0.25, 3.0, 12.0, 23.5, 24.0)
_LENGTHS = (0.0, 0.25, 1.0, 2.0, 5.0, 30.0, None)  # hours; None: still open


@pytest.mark.parametrize("seed", range(12))
async def test_the_gaps_and_listening_are_what_every_period_kept_says(db: Any, seed: int) -> None:
    """Random watchlists and periods (own rooms, wallet rooms, overlapping, open, ended before
    the last 24 hours or exactly at their start), the two queries in one transaction, so at one
    now()."""
    rng = random.Random(seed)
    wallets, tokens = (WALLET, WALLET2, WALLET3), (TOKEN, SOL, None)
    await insert_watches(
        db,
        [(w, t, rng.random() < 0.85) for w in wallets for t in tokens if rng.random() < 0.8],
    )
    async with db.transaction():
        now = await db.fetchval("SELECT now()")
        day = now - timedelta(hours=24)

        def hours(h: float) -> timedelta:
            return timedelta(hours=h)

        for room in [(w, t) for w in wallets for t in tokens]:
            spans = []
            for _ in range(rng.randrange(4)):
                start = min(now, day + hours(rng.choice(_MOMENTS) + rng.choice((0, rng.random()))))
                length = rng.choice(_LENGTHS)
                end = None if length is None else min(now, start + hours(length))
                if end is not None and rng.random() < 0.2:
                    end = max(start, day)  # ends exactly at the start of the 24 hours
                spans.append((start, end, None if end is None else "lost"))
            if spans:
                await insert_periods(db, room, *spans)
        found = await db.fetchrow(reports._GAPS.text)
        expected = await db.fetchrow(_GAPS_OF_EVERY_PERIOD.text)
        listening = await db.fetchrow(reports._LISTENING)
        listening_before = await db.fetchrow(_LISTENING_BEFORE_0021)
    assert tuple(found) == tuple(expected)
    assert tuple(listening) == tuple(listening_before)
