"""`balancewatch demo`: the whole service on a throwaway Postgres and a simulated Datastream.

It starts a local cluster, migrates it, seeds a few watchlist rows, starts the simulator (the
Datastream, and the chain behind it as Solana JSON-RPC) and the daemon, and prints each row as
it is committed, with where it came from. Along the way it adds a pair with SQL (the watchlist
sync), watches a whole wallet (its token rooms left for its wallet room, and a token it never
held before recorded as it arrives), cuts the connection (the gap it leaves, and the snapshots
that close it), changes a cold wallet's balance on the chain without a message (the check that
finds the drift), and starts a second replica that takes its share of the shards, then stops
it (the handover back).
Ctrl-C (or --seconds) stops all of it and deletes the cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import URL

from balancewatch import logs
from balancewatch.aio import wait_first
from balancewatch.daemon.service import serve
from balancewatch.daemon.signals import stop_on_signals
from balancewatch.devtools.localpg import LocalPostgres, PostgresNotFound
from balancewatch.devtools.simulator import Simulator
from balancewatch.domain import room_for
from balancewatch.progress import Progress, Step, shown
from balancewatch.settings import Settings, parse_database_url
from balancewatch.store import migrate
from balancewatch.store.db import asyncpg_dsn, create_engine

DEMO_KEY = "demo-key"
USDC = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"
USDT = "Es9vMFrzaCERmJfrF4H2FYD4KCoNkY11McCe8BenwNYB"
WSOL = "So11111111111111111111111111111111111111112"
PYUSD = "2b1kV6DkPAnxd5ixfnxCpjxmKwqjjaYmCZfHsFu24GXo"  # a Token-2022 mint
SEED = [
    ("FV1r15rbNKkJanXLheoJA7fXEq6NDuMJ3bukXuhJWyV1", USDT, "upstream example"),
    ("FV1r15rbNKkJanXLheoJA7fXEq6NDuMJ3bukXuhJWyV1", WSOL, "native SOL"),
    ("7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU", USDC, "a trader"),
    ("9WzDXwBbmkg8ZTbNMqUxvQRAyrZzDsGYdLVL9zYtAWWM", USDC, "a cold wallet"),
]
# What the chain holds before anything is streamed: the snapshots read these.
ON_CHAIN = {
    SEED[0][:2]: "1520.25",
    SEED[1][:2]: "3.5",
    SEED[2][:2]: "88000",
    SEED[3][:2]: "2500.75",
}
COLD = SEED[3]  # the random walk never sends it a message
LATE_PAIR = ("7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU", WSOL, "added while running")
WHOLE_WALLET = ("7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU", "the trader, every token")
CHECK_INTERVAL = 5.0
_FEED_POLL = 0.25


def command(args: argparse.Namespace) -> int:
    """`balancewatch demo`."""
    return run_demo(rate=args.rate, seconds=args.seconds)


def run_demo(rate: float, seconds: float | None) -> int:
    logs.configure(level="warning")
    try:
        cluster = LocalPostgres()
    except PostgresNotFound as exc:
        print(f"balancewatch demo: {exc}", file=sys.stderr)
        return 1
    with cluster:
        say(f"throwaway Postgres in {cluster.base_dir}; while the demo runs: psql {cluster.url()}")
        spool_dir = cluster.base_dir / "spool"
        asyncio.run(_demo(parse_database_url(cluster.url()), spool_dir, rate, seconds))
    print("demo stopped; the throwaway database is deleted")
    return 0


async def _demo(url: URL, spool_dir: Path, rate: float, seconds: float | None) -> None:
    engine = create_engine(url)
    stop = asyncio.Event()
    try:
        await migrate.upgrade(engine)
        say(f"schema migrated to revision {migrate.head_revision()}")
        async with _database(url) as db, Simulator(api_key=DEMO_KEY, ping_interval=5.0) as sim:
            await _seed(db, sim)
            say(f"simulated Datastream at {sim.url}, {rate:g} balance changes a second")
            say(f"simulated Solana JSON-RPC at {sim.rpc_url}; checks every {CHECK_INTERVAL:g} s")
            settings = Settings(
                database_url=url.render_as_string(hide_password=False),
                datastream_url=sim.url,
                api_key=DEMO_KEY,
                rpc_url=sim.rpc_url,
                balance_check_interval=CHECK_INTERVAL,
                spool_dir=spool_dir,
                http_port=0,  # any free port (logged): the demo must not need 8080
                replica_id="demo-a",
            )
            # On a terminal, a bar of --seconds (or the time so far) under the rows as they
            # scroll; off one, nothing more than the rows.
            running = "demo" if seconds is None else f"demo, {seconds:g} s"
            with stop_on_signals(stop), shown(Progress("demo.running"), running, seconds) as step:
                say("running; rows appear as they are committed (Ctrl-C to stop)")
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(_tick(step, stop))
                    tasks.create_task(serve(settings, stop))
                    tasks.create_task(sim.run_random_walk(rate, stop))
                    tasks.create_task(_feed(db, stop))
                    tasks.create_task(_add_late_pair(db, sim, stop))
                    tasks.create_task(_watch_a_whole_wallet(db, sim, stop))
                    tasks.create_task(_drop_and_show_the_gap(db, sim, stop))
                    tasks.create_task(_drift_and_its_check(db, sim, stop))
                    tasks.create_task(_second_replica(db, settings, stop))
                    tasks.create_task(_the_day_so_far(db, stop))
                    if seconds is not None:
                        tasks.create_task(_stop_after(seconds, stop))
    finally:
        await engine.dispose()


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


@contextlib.asynccontextmanager
async def _database(url: URL) -> AsyncIterator[Any]:
    """A small pool: the demo's tasks query at the same time, and one connection takes one
    query at a time ("another operation is in progress")."""
    async with asyncpg.create_pool(asyncpg_dsn(url), min_size=1, max_size=4) as pool:
        yield pool


async def _seed(db: Any, sim: Simulator) -> None:
    for (wallet, token), amount in ON_CHAIN.items():
        sim.chain.set_balance(wallet, token, amount)
    # A token of the trader's no watchlist row names: its whole-wallet snapshot finds it.
    sim.chain.set_layout(WHOLE_WALLET[0], PYUSD, program="spl-token-2022", decimals=6)
    sim.chain.set_balance(WHOLE_WALLET[0], PYUSD, "420.5")
    sim.quiet_rooms.add(room_for(*COLD[:2]))
    await db.executemany("INSERT INTO watchlist (wallet, token, label) VALUES ($1, $2, $3)", SEED)
    say(
        f"watchlist seeded with {len(SEED)} pairs; each gets a snapshot row from the chain as "
        "soon as it is joined, even the cold wallet that no message will ever come for"
    )


async def _feed(db: Any, stop: asyncio.Event) -> None:
    """Print every committed row once, oldest first, until stopped."""
    last_id = 0
    while not stop.is_set():
        rows = await db.fetch(
            "SELECT h.id, h.received_at, h.amount, h.source, h.slot, h.token, "
            "coalesce(w.label, a.label, '') AS label "
            "FROM balance_history h LEFT JOIN watchlist w USING (wallet, token) "
            "LEFT JOIN watchlist a ON a.wallet = h.wallet AND a.token IS NULL "
            "WHERE h.id > $1 ORDER BY h.id",
            last_id,
        )
        for row in rows:
            stamp = row["received_at"].strftime("%H:%M:%S.%f")[:-3]
            source = row["source"] if row["slot"] is None else f"{row['source']}@{row['slot']}"
            print(
                f"  row {row['id']:>5}  {stamp}  {row['amount']:>24}  {source:<18}  "
                f"{row['token'][:4]}..  {row['label']}",
                flush=True,
            )
            last_id = row["id"]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), _FEED_POLL)


async def _add_late_pair(db: Any, sim: Simulator, stop: asyncio.Event) -> None:
    """Insert one more pair with SQL, as a user would, and time it until the join is sent."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), 3.0)
    if stop.is_set():
        return
    wallet, token, label = LATE_PAIR
    room = room_for(wallet, token)
    started = time.monotonic()
    await db.execute(
        "INSERT INTO watchlist (wallet, token, label) VALUES ($1, $2, $3)", wallet, token, label
    )
    await sim.wait_for(lambda: room in sim.joined_rooms(), timeout=5.0)
    elapsed_ms = (time.monotonic() - started) * 1000
    say(f"INSERT INTO watchlist ({label}) -> join on the socket in {elapsed_ms:.0f} ms")


async def _watch_a_whole_wallet(db: Any, sim: Simulator, stop: asyncio.Event) -> None:
    """Watch every token of the trader's wallet: its token rooms are left and its wallet room
    joined, in one step; a token it receives from then on is recorded with no row of its own."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), 4.5)
    if stop.is_set():
        return
    wallet, label = WHOLE_WALLET
    room = room_for(wallet, None)
    token_rooms = [name for name in sim.joined_rooms() if name.startswith(f"wallet:{wallet}:")]
    started = time.monotonic()
    inserted_at = await db.fetchval("SELECT clock_timestamp()")
    await db.execute("INSERT INTO watchlist (wallet, label) VALUES ($1, $2)", wallet, label)
    await sim.wait_for(lambda: sim.joined_rooms() & set(token_rooms) == set(), timeout=5.0)
    await sim.wait_for(lambda: room in sim.joined_rooms(), timeout=5.0)
    say(
        f"INSERT INTO watchlist (wallet, label): every token of {wallet[:4]}.. (what `watch add"
        f" WALLET` does) -> its {len(token_rooms)} token rooms left and its wallet room joined"
        f" in {_ms_since(started)}"
    )
    await _show_the_wallet_snapshot(db, wallet, inserted_at, stop)
    deadline = time.monotonic() + 15.0
    while not stop.is_set() and time.monotonic() < deadline:
        found = await db.fetchrow(_FIRST_UNLISTED_ROW, wallet)
        if found is not None:
            say(
                f"{wallet[:4]}.. received a token it never held, {found['token'][:4]}..: row "
                f"{found['id']}, though no watchlist row names it"
            )
            return
        await asyncio.sleep(_FEED_POLL)


async def _show_the_wallet_snapshot(db: Any, wallet: str, since: Any, stop: asyncio.Event) -> None:
    deadline = time.monotonic() + 10.0
    while not stop.is_set() and time.monotonic() < deadline:
        rows = await db.fetch(_SNAPSHOT_OF_WALLET, wallet, since)
        if any(row["token"] == PYUSD for row in rows):
            read = ", ".join(f"{row['token'][:4]}.. {row['amount']}" for row in rows)
            say(
                f"its snapshot read every token from the chain (SPL Token, Token-2022 and native"
                f" SOL): {read}"
            )
            return
        await asyncio.sleep(_FEED_POLL)


_SNAPSHOT_OF_WALLET = """
SELECT token, amount FROM balance_history
WHERE wallet = $1 AND source = 'snapshot' AND received_at >= $2 ORDER BY token
"""
_FIRST_UNLISTED_ROW = """
SELECT h.id, h.token FROM balance_history h
WHERE h.wallet = $1 AND h.source = 'stream' AND NOT EXISTS (
    SELECT 1 FROM balance_history e WHERE e.wallet = h.wallet AND e.token = h.token AND e.id < h.id
)
ORDER BY h.id LIMIT 1
"""


_GAP = """
SELECT ended_at, next_start FROM (
    SELECT ended_at, end_reason, lead(started_at) OVER (ORDER BY started_at) AS next_start
    FROM coverage WHERE wallet = $1 AND token = $2
) periods
WHERE end_reason = 'disconnected' AND next_start IS NOT NULL
"""


async def _drop_and_show_the_gap(db: Any, sim: Simulator, stop: asyncio.Event) -> None:
    """Cut the connection as a network failure would, and show the gap it leaves in the
    coverage: the minutes (here, milliseconds) the history cannot vouch for."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), 6.0)
    if stop.is_set():
        return
    wallet, token, label = SEED[0]
    await sim.drop_connections()
    say("connection dropped, as a network failure would; the daemon reconnects and joins again")
    deadline = time.monotonic() + 10.0
    while not stop.is_set() and time.monotonic() < deadline:
        gap = await db.fetchrow(_GAP, wallet, token)
        if gap is not None:
            ended, resumed = gap["ended_at"], gap["next_start"]
            say(
                f"coverage ({label}): not listening from {ended:%H:%M:%S.%f} to "
                f"{resumed:%H:%M:%S.%f}, {(resumed - ended).total_seconds() * 1000:.0f} ms "
                "(README query 12 lists such gaps)"
            )
            await _show_the_snapshot_after(db, (wallet, token, label), resumed, stop)
            return
        await asyncio.sleep(_FEED_POLL)


async def _show_the_snapshot_after(
    db: Any, pair: tuple[str, str, str], resumed: Any, stop: asyncio.Event
) -> None:
    wallet, token, label = pair
    deadline = time.monotonic() + 10.0
    while not stop.is_set() and time.monotonic() < deadline:
        found = await db.fetchrow(_SNAPSHOT_AFTER, wallet, token, resumed)
        if found is not None:
            say(
                f"snapshot ({label}) at {found['received_at']:%H:%M:%S.%f}: {found['amount']}, "
                f"read from the chain at slot {found['slot']}: what was missed is known again"
            )
            return
        await asyncio.sleep(_FEED_POLL)


_SNAPSHOT_AFTER = """
SELECT received_at, amount, slot FROM balance_history
WHERE wallet = $1 AND token = $2 AND source = 'snapshot' AND received_at >= $3
ORDER BY received_at LIMIT 1
"""
_CHECK_ROW = """
SELECT received_at, amount, slot FROM balance_history
WHERE wallet = $1 AND token = $2 AND source = 'check' LIMIT 1
"""


async def _drift_and_its_check(db: Any, sim: Simulator, stop: asyncio.Event) -> None:
    """Change the cold wallet's balance on the chain without a message, as a message lost
    upstream would leave it, and show the check that finds it."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), 9.0)
    if stop.is_set():
        return
    wallet, token, label = COLD
    sim.chain.set_balance(wallet, token, "2400")
    say(f"the chain's balance of {label} changed to 2400 with no message (a lost message)")
    deadline = time.monotonic() + 3 * CHECK_INTERVAL
    while not stop.is_set() and time.monotonic() < deadline:
        found = await db.fetchrow(_CHECK_ROW, wallet, token)
        if found is not None:
            say(
                f"a check found the drift: stored 2500.75, the chain {found['amount']} at slot "
                f"{found['slot']}; a 'check' row corrects the history (status counts drift)"
            )
            return
        await asyncio.sleep(_FEED_POLL)


_SHARES = """
SELECT r.replica_id, count(*) AS shards FROM shard_leases l
JOIN replicas r ON r.instance = l.owner WHERE l.expires_at > now()
GROUP BY r.replica_id ORDER BY r.replica_id
"""


async def _second_replica(db: Any, settings: Settings, stop: asyncio.Event) -> None:
    """Start a second replica on the same database: it gets its share of the shards by a
    handover; stopped (as SIGTERM would), it hands them back."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), 13.0)
    if stop.is_set():
        return
    second = settings.model_copy(
        update={"replica_id": "demo-b", "spool_dir": settings.spool_dir.with_name("spool-b")}
    )
    stop_b = asyncio.Event()
    started = time.monotonic()
    replica_b = asyncio.create_task(serve(second, stop_b))
    shares = await _shares_when(db, lambda found: len(found) == 2, stop)
    if shares is not None:
        say(
            f"a second replica, demo-b, took its share in {_ms_since(started)}: "
            + ", ".join(f"{name} holds {count} of 64 shards" for name, count in shares.items())
        )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), 3.0)
    stopping = time.monotonic()
    stop_b.set()
    await replica_b
    shares = await _shares_when(db, lambda found: found.get("demo-a") == 64, stop)
    if shares is not None:
        say(
            f"demo-b stopped (as SIGTERM would): all 64 shards back with demo-a in "
            f"{_ms_since(stopping)}; coverage has the milliseconds between"
        )


# The busiest pair's day: its rolled-up figures up to two minutes ago, merged with
# its raw rows since (in a demo of a minute or two, all of its rows).
_TODAY = """
SELECT d.first, d.last, d.low, d.high, d.messages, coalesce(w.label, '') AS label
FROM balance_daily d LEFT JOIN watchlist w USING (wallet, token)
WHERE d.day = (now() AT TIME ZONE 'UTC')::date
ORDER BY d.messages DESC LIMIT 1
"""


async def _the_day_so_far(db: Any, stop: asyncio.Event) -> None:
    """The day so far in balance_daily, once the daemon has stored a few seconds of rows."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), 10.0)
    if stop.is_set() or (row := await db.fetchrow(_TODAY)) is None:
        return
    say(
        f"balance_daily, today so far ({row['label']}): first {row['first']}, last "
        f"{row['last']}, low {row['low']}, high {row['high']}, {row['messages']} rows "
        "(daily_rows up to two minutes ago, the raw rows since: always complete)"
    )


async def _shares_when(
    db: Any, done: Callable[[dict[str, int]], bool], stop: asyncio.Event
) -> dict[str, int] | None:
    deadline = time.monotonic() + 10.0
    while not stop.is_set() and time.monotonic() < deadline:
        found = {row["replica_id"]: row["shards"] for row in await db.fetch(_SHARES)}
        if done(found):
            return found
        await asyncio.sleep(0.05)
    return None


def _ms_since(started: float) -> str:
    return f"{(time.monotonic() - started) * 1000:.0f} ms"


async def _tick(step: Step, stop: asyncio.Event) -> None:
    """The demo's seconds so far, told to its bar once a second until stopped."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not stop.is_set():
        step(loop.time() - started)
        await wait_first(stop, timeout=1.0)
    step(loop.time() - started)


async def _stop_after(seconds: float, stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    stop.set()
