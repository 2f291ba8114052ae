"""`balancewatch bench`: how fast the daemon is, against a real Postgres and a real websocket.

Six measurements, printed as one table:

- ingest: N balance frames over 100 rooms, sent as fast as the simulator can, from the first
  frame written to the socket until the daemon's writer has committed the last row; beside it,
  the same rows COPYed straight into a twin of `balance_history` with asyncpg in batches of
  the same size (the ceiling), and one INSERT + commit per row (the naive baseline).
- latency: a steady rate (10,000 a second) for a while; for every message, the time from the
  simulator writing its frame to the socket until a LISTEN connection of the bench receives
  the NOTIFY that a statement trigger on `balance_history` sends for the COPY holding its row.
  A NOTIFY is delivered at commit, so this is commit time plus the notification's own trip
  (an upper bound). Also the oldest row of each batch at that moment (now - received_at).
- sync: from a committed single-row INSERT / DELETE in `watchlist` (the bench's `execute`
  has returned) until the simulator has read the join / leave frame; and one transaction of
  many rows until the simulator has read the last of their joins.
- chain: a second daemon reading balances from the simulator's chain (Solana JSON-RPC) at
  10 requests a second: from each join's ack (its listening period's start) until its
  snapshot row is seen committed; the ingest run again with checks every 2 s (the busiest
  schedule a user would set) beside the first run's rate; then the chain set to what is
  stored, a fifth of the pairs changed on the chain without a message, and the `check` rows
  that found them (and any on an unchanged pair: a false drift).
- scale: many watched pairs; `python -m balancewatch run` as a subprocess, from its start
  until the simulator has read every join and `subscription_status` says every pair is
  `joined` (acked, recorded and committed); the subprocess's peak RSS (VmHWM); then until a
  snapshot of every pair is stored, at 10 RPC requests a second in batches.
- replicas: two such subprocesses (replicas a and b, each with a key, a spool directory and
  a port of its own) on one database; once every room is held by exactly one of them (the
  simulator tells their connections apart by key), b is SIGKILLed, three times at different
  points of its renewal cycle, and timed until a holds every room (b's leases expire: 15 s by
  default, `BALANCEWATCH_LEASE_TTL`), with the rooms a re-joined per second, from its first
  join of b's rooms to its last; then b is started again and SIGTERMed, three times: from the
  signal until a holds every room (a handover). Then one kill with 10,000 pairs, for the rate.

The simulator runs in the bench's process; its fast path writes pre-built frames, many per
socket write, and its own ceiling (to a client that reads and discards) is printed too.

With `--history N` the bench runs one other section instead, alone: how long the README's
numbered queries, `latest_balance`, `balance_daily` (where the schema has it), `status` and
`history` take on a history of N rows over 10,000 pairs, and the bytes a row takes on disk.
The history is the last 60 days, newest row at the load's start, as a daemon would have
written it: stream rows spread evenly over the time it was listening, the newest hour at one
change a pair a minute and the rest far sparser (N = 10 million: 600,000 rows in the newest
hour, 6,500 an hour before it), in arrival order (ids follow received_at, which `status`
relies on), each pair's amount a random walk with six
decimals, under a shard tenure's epoch; a snapshot of each pair at each listening period's
start; periods in `coverage` broken by three outages (a disconnect 45 days ago, a restart 20
days ago, a disconnect 3 hours ago); the watchlist and each pair's state. The rows go in
through the daemon's own COPY statements (store.writes, store.chain), so the load follows
the write path wherever the tables behind `balance_history` go. Then VACUUM ANALYZE (a
long-lived table has been vacuumed: no autovacuum starting mid-run) and a CHECKPOINT. Each
query runs once to warm up, then three times: the median and each run are printed. A README
query is sent as a client sends it (asyncpg's simple query protocol: the server's work and
the rows' trip over loopback, not decoded into Python objects), with the README's example
pair and time replaced by a loaded pair and the middle of the history.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from importlib import metadata
from itertools import accumulate, pairwise
from pathlib import Path
from typing import Any, Final, cast

import asyncpg
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch import logs
from balancewatch.daemon.service import Daemon
from balancewatch.devtools.localpg import LocalPostgres
from balancewatch.devtools.simulator import SimEvent, Simulator, balance_frame, text_frame
from balancewatch.domain import BASE58_PATTERN, EndReason, Pair, room_for
from balancewatch.pipeline.pair_ids import PairIds
from balancewatch.pipeline.records import balance_line, stamp_from_micros
from balancewatch.pipeline.replay import store_lines
from balancewatch.progress import Progress
from balancewatch.settings import Settings, parse_database_url
from balancewatch.store import chain, leases, migrate
from balancewatch.store.db import RawConnection, asyncpg_dsn, create_engine
from balancewatch.store.history import fetch, fetch_gaps
from balancewatch.store.reports import gather
from balancewatch.store.writes import BALANCE_COLUMNS

BENCH_KEY = "bench-key"
MINT = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"
_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_FRAMES_PER_WRITE = 1000
_POLL = 0.002
# The RPC rate of the chain stages: the default a provider's free plan allows.
CHAIN_RPS = 10.0
# The options of the other sections, which `--history` does not run.
_OTHER_OPTIONS = ("messages", "quick", "flush_interval", "uvloop")
_NOTIFY_CHANNEL = "balancewatch_bench_commit"
_INSTALL_TRIGGER = """
CREATE OR REPLACE FUNCTION bench_notify_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('balancewatch_bench_commit', (
        SELECT min(amount)::text || ',' || max(amount)::text || ',' || count(*)::text || ','
            || extract(epoch FROM min(received_at))::text
        FROM bench_new));
    RETURN NULL;
END $$;
CREATE TRIGGER bench_notify_commit AFTER INSERT ON balance_rows
    REFERENCING NEW TABLE AS bench_new FOR EACH STATEMENT EXECUTE FUNCTION bench_notify_commit();
"""
_DROP_TRIGGER = """
DROP TRIGGER IF EXISTS bench_notify_commit ON balance_rows;
DROP FUNCTION IF EXISTS bench_notify_commit();
"""


@dataclass(frozen=True, slots=True)
class Plan:
    messages: int
    rooms: int = 100
    naive_rows: int = 2_000
    latency_rate: float = 10_000.0
    latency_seconds: float = 30.0
    sync_changes: int = 1_000
    sync_txn_rows: int = 10_000
    scale_pairs: int = 100_000
    scale_sync_changes: int = 100  # single-row changes with scale_pairs watched
    check_interval: float = 2.0  # the chain stage's checks: the busiest a user would set
    flush_interval: float | None = None  # None: the daemon's default
    uvloop: bool = False  # run the bench's process (and the in-process daemon) on uvloop
    # Replicas a and b with this many pairs: b SIGKILLed, then SIGTERMed, this many times each;
    # then one SIGKILL with `takeover_pairs` (0: none), for the rooms re-joined per second.
    replica_pairs: int = 1_000
    failovers: int = 3
    handovers: int = 3
    takeover_pairs: int = 10_000
    lease_ttl: float | None = None  # None: the daemon's default

    @classmethod
    def quick(cls, messages: int, **options: Any) -> Plan:
        return cls(
            messages=messages,
            **options,
            rooms=20,
            naive_rows=200,
            latency_rate=1_000.0,
            latency_seconds=2.0,
            sync_changes=20,
            sync_txn_rows=300,
            scale_pairs=500,
            scale_sync_changes=10,
            replica_pairs=100,
            failovers=1,
            handovers=1,
            takeover_pairs=0,
            lease_ttl=3.0,
        )


@dataclass(frozen=True, slots=True)
class _Run:
    """What the in-process measurements share."""

    plan: Plan
    url: URL
    db: Any
    results: Results
    sim: Simulator
    daemon: Daemon
    pairs: list[tuple[str, str]]
    batch_size: int


@dataclass(slots=True)
class Results:
    lines: list[tuple[str, str, str, str]] = field(default_factory=list)

    def add(self, section: str, metric: str, value: str, target: str = "") -> None:
        self.lines.append((section, metric, value, target))
        print(f"  {section:<8} {metric:<44} {value:>18}  {target}", flush=True)


# -- the command -------------------------------------------------------------------------------


def command(args: argparse.Namespace) -> int:
    """`balancewatch bench`; with `--history N`, only the history section."""
    if args.history is not None:
        return _history_command(args)
    messages = args.messages if args.messages is not None else (3_000 if args.quick else 200_000)
    if messages <= 0:
        print("balancewatch bench: --messages must be positive", file=sys.stderr)
        return 2
    options: dict[str, Any] = {"flush_interval": args.flush_interval, "uvloop": args.uvloop}
    plan = Plan.quick(messages, **options) if args.quick else Plan(messages=messages, **options)
    return run_bench(plan, args.database_url)


def _history_command(args: argparse.Namespace) -> int:
    other = [f"--{name.replace('_', '-')}" for name in _OTHER_OPTIONS if getattr(args, name)]
    if other:
        print(
            f"balancewatch bench: --history runs alone, without {', '.join(other)}", file=sys.stderr
        )
        return 2
    return _on_a_server(args.database_url, lambda url: asyncio.run(_history(args.history, url)))


def run_bench(plan: Plan, database_url: str | None) -> int:
    return _on_a_server(database_url, lambda url: _run_loop(plan, url))


def _on_a_server(database_url: str | None, run: Callable[[URL], None]) -> int:
    """`run` on the server of `database_url`, or else of a throwaway cluster."""
    logs.configure(level="error")
    print(f"balancewatch bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores")
    if database_url is not None:
        print("  database: --database-url, as configured there")
        run(parse_database_url(database_url))
    else:
        print("  database: a throwaway cluster, fsync on")
        # Durable, like any database worth deploying next to: without fsync a commit costs
        # next to nothing, and the bench would flatter whatever commits often.
        with LocalPostgres(durable=True) as cluster:
            run(parse_database_url(cluster.url()))
    return 0


def _run_loop(plan: Plan, server_url: URL) -> None:
    if plan.uvloop:
        import uvloop  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415

        uvloop.run(_bench(plan, server_url))
    else:
        asyncio.run(_bench(plan, server_url))


async def _bench(plan: Plan, server_url: URL) -> None:
    results = Results()
    async with _migrated(server_url) as (url, _, db):
        print(f"  Postgres {db.get_server_version().major}; plan: {plan}", flush=True)
        await _simulator_ceiling(plan, results)
        await _in_process(plan, url, db, results)
        await _scale(plan, url, db, results)
        await _replicas(plan, url, db, results)
    print("done", flush=True)


async def _history(rows: int, server_url: URL) -> None:
    async with _migrated(server_url) as (_, engine, db):
        # The load's progress lines (info) on stderr, the table on stdout; set after the
        # migrations, whose own lines say nothing here.
        logs.configure(level="info", stream=sys.stderr)
        await _history_section(db, engine, rows, bench_pairs(HISTORY_PAIRS))
    print("done", flush=True)


@contextlib.asynccontextmanager
async def _migrated(server_url: URL) -> AsyncIterator[tuple[URL, AsyncEngine, Any]]:
    """A scratch database on the server, migrated: its URL, an engine and a connection."""
    async with _scratch_database(server_url) as url:
        engine = create_engine(url)
        try:
            await migrate.upgrade(engine)
            db = await asyncpg.connect(asyncpg_dsn(url))
            try:
                yield url, engine, db
            finally:
                await db.close()
        finally:
            await engine.dispose()


@contextlib.asynccontextmanager
async def _scratch_database(server_url: URL) -> AsyncIterator[URL]:
    name = f"bw_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield server_url.set(database=name)
    finally:
        admin = await asyncpg.connect(asyncpg_dsn(server_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


# -- the simulator's own ceiling -----------------------------------------------------------------


async def _simulator_ceiling(plan: Plan, results: Results) -> None:
    """Frames a second the fast path pushes to a client that reads raw bytes and discards them."""
    pairs = bench_pairs(plan.rooms)
    frames = _prebuilt(pairs, plan.messages, lambda seq: f"{seq}.123456")
    total = sum(len(chunk) for chunk in frames)
    async with Simulator(api_key=BENCH_KEY, ping_interval=None) as sim:
        reader, writer = await _raw_websocket(sim.port)
        try:
            await sim.wait_for(lambda: sim.live_connections == 1)
            got = 0

            async def discard() -> None:
                nonlocal got
                while got < total:
                    chunk = await reader.read(1 << 20)
                    if not chunk:
                        raise ConnectionError("the simulator closed the connection")
                    got += len(chunk)

            started = time.perf_counter()
            reading = asyncio.create_task(discard())
            for chunk in frames:
                await sim.write_prebuilt(chunk)
            await reading
            elapsed = time.perf_counter() - started
        finally:
            writer.close()
    results.add(
        "sim",
        f"simulator ceiling ({plan.messages:,} frames, raw reader)",
        f"{plan.messages / elapsed:,.0f} frames/s",
    )


async def _raw_websocket(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            f"GET /{BENCH_KEY} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise ConnectionError(f"no websocket handshake: {head[:80]!r}")
    return reader, writer


# -- ingest, latency and sync: the daemon in this process ------------------------------------------


async def _in_process(plan: Plan, url: URL, db: Any, results: Results) -> None:
    async with _daemon_in_process(plan, url, db, results, checks=None) as run:
        await _ingest(run)
        await _latency(run)
        await _sync(plan, run.sim, db, results)
    async with _daemon_in_process(plan, url, db, results, checks=plan.check_interval) as run:
        await _snapshots_and_drift(run)
    await _ingest_with_checks(plan, url, db, results)


async def _ingest_with_checks(plan: Plan, url: URL, db: Any, results: Results) -> None:
    """Ingest with no RPC, with checks at the default interval, and with checks every
    `plan.check_interval` (the busiest a user would set), each run three times in turn with a
    fresh daemon: one run of each on a shared, noisy machine says little."""
    default = Settings.model_fields["balance_check_interval"].default
    schedules: dict[str, float | None] = {
        "no RPC": None,
        f"checks every {default:g} s": default,
        f"checks every {plan.check_interval:g} s": plan.check_interval,
    }
    rates: dict[str, list[float]] = {name: [] for name in schedules}
    for _ in range(3):
        for name, checks in schedules.items():
            async with _daemon_in_process(plan, url, db, results, checks=checks) as run:
                await _settle(db)
                rates[name].append(await _daemon_rate(run))
    base = statistics.median(rates["no RPC"])
    for name, runs in rates.items():
        each = " / ".join(f"{rate / 1000:.0f}k" for rate in runs)
        median = statistics.median(runs)
        results.add("chain", f"ingest, {name} ({each})", f"{median:,.0f} rows/s")
        if runs is not rates["no RPC"]:
            results.add("chain", f"  {name} / no RPC", f"{median / base:.2f}x", "target >= 0.95x")


async def _settle(db: Any) -> None:
    """The same start for every run: an empty history (it grows by each run's rows, and every
    run was slower than the one before it, whatever it measured) and a checkpoint taken (else
    one lands in some runs and not others)."""
    await db.execute("TRUNCATE balance_rows")
    await _checkpoint(db)


async def _checkpoint(db: Any) -> None:
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):  # --database-url, no superuser
        await db.execute("CHECKPOINT")


@contextlib.asynccontextmanager
async def _daemon_in_process(
    plan: Plan, url: URL, db: Any, results: Results, *, checks: float | None
) -> AsyncIterator[_Run]:
    """A daemon in this process with the bench's rooms joined; with `checks` (seconds), reading
    balances from the simulator's chain too: snapshots, and checks at that interval."""
    pairs = bench_pairs(plan.rooms)
    scratch = Path(tempfile.mkdtemp(prefix="balancewatch-bench-"))
    await db.execute("DELETE FROM watchlist")
    await db.executemany("INSERT INTO watchlist (wallet, token) VALUES ($1, $2)", pairs)
    async with Simulator(api_key=BENCH_KEY, ping_interval=None) as sim:
        overrides = _daemon_overrides(plan)
        if checks is not None:
            overrides |= {
                "rpc_url": sim.rpc_url,
                "rpc_max_rps": CHAIN_RPS,
                "balance_check_interval": checks,
            }
        settings = Settings(
            database_url=url.render_as_string(hide_password=False),
            datastream_url=sim.url,
            api_key=BENCH_KEY,
            spool_dir=scratch / "spool",
            http_port=0,  # any free port: the bench must not need 8080
            log_level="error",
            **overrides,
        )
        stop = asyncio.Event()
        try:
            async with Daemon.open(settings) as daemon:
                task = asyncio.create_task(daemon.run(stop))
                try:
                    rooms = {room_for(*pair) for pair in pairs}
                    await sim.wait_for(lambda: rooms <= sim.joined_rooms(), timeout=30)
                    yield _Run(plan, url, db, results, sim, daemon, pairs, settings.batch_size)
                finally:
                    stop.set()
                    await asyncio.wait_for(task, timeout=60)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


async def _ingest(run: _Run) -> None:
    """The daemon's ingest rate beside its ceilings."""
    plan, db, pairs, results = run.plan, run.db, run.pairs, run.results
    daemon_rate = await _daemon_rate(run)
    amounts = _amounts()

    # The ceiling: the same rows as typed values, copied the plain asyncpg way into a twin;
    # each with an epoch, as the daemon's rows carry their shard's (any bigint will do here).
    await db.execute("CREATE TABLE bench_twin (LIKE balance_history INCLUDING ALL)")
    now = datetime.now(UTC)
    rows: list[tuple[str, str, Decimal, datetime, int]] = [
        (*pairs[seq % len(pairs)], Decimal(amounts[seq % len(amounts)]), now, 1)
        for seq in range(plan.messages)
    ]
    batch = run.batch_size
    started = time.perf_counter()
    for first in range(0, len(rows), batch):
        await db.copy_records_to_table(
            "bench_twin", records=rows[first : first + batch], columns=BALANCE_COLUMNS
        )
    copy_rate = plan.messages / (time.perf_counter() - started)

    sample = rows[: plan.naive_rows]
    started = time.perf_counter()
    for row in sample:
        async with db.transaction():
            await db.execute(
                "INSERT INTO bench_twin (wallet, token, amount, received_at, epoch)"
                " VALUES ($1, $2, $3, $4, $5)",
                *row,
            )
    naive_rate = len(sample) / (time.perf_counter() - started)
    await db.execute("DROP TABLE bench_twin")

    n = f"{plan.messages:,} msgs"
    results.add(
        "ingest", f"daemon end to end ({n}, {plan.rooms} rooms)", f"{daemon_rate:,.0f} rows/s"
    )
    results.add("ingest", f"raw asyncpg COPY, batches of {batch}", f"{copy_rate:,.0f} rows/s")
    results.add(
        "ingest", f"naive INSERT+commit per row ({len(sample):,})", f"{naive_rate:,.0f} rows/s"
    )
    results.add("ingest", "daemon / raw COPY", f"{daemon_rate / copy_rate:.2f}x", "target >= 0.6x")
    results.add("ingest", "daemon / naive", f"{daemon_rate / naive_rate:.1f}x", "target >= 50x")


def _amounts() -> list[str]:
    rng = random.Random(7)  # the same amounts in both ingest runs
    return [f"{rng.randint(0, 10**9)}.{rng.randint(0, 999_999):06d}" for _ in range(997)]


async def _daemon_rate(run: _Run) -> float:
    """Rows a second, from the first frame written to the socket until the last row of
    `plan.messages` is committed."""
    amounts = _amounts()
    frames = _prebuilt(run.pairs, run.plan.messages, lambda seq: amounts[seq % len(amounts)])
    target = run.daemon.writer.rows_written + run.plan.messages
    started = time.perf_counter()
    for chunk in frames:
        await run.sim.write_prebuilt(chunk)
    # The writer's count of committed rows is the only sign of a commit; no event to wait on.
    while run.daemon.writer.rows_written < target:  # noqa: ASYNC110
        await asyncio.sleep(_POLL)
    return run.plan.messages / (time.perf_counter() - started)


async def _latency(run: _Run) -> None:
    plan, sim, url, db, pairs, results = run.plan, run.sim, run.url, run.db, run.pairs, run.results
    count = int(plan.latency_rate * plan.latency_seconds)
    # The amount is the message's number: a committed batch names its rows by min and max.
    frames = [text_frame(balance_frame(*pairs[seq % len(pairs)], str(seq))) for seq in range(count)]
    sent = [0.0] * count
    committed = [0.0] * count
    ages: list[float] = []
    seen = 0
    done = asyncio.Event()

    def on_commit(_conn: object, _pid: int, _channel: str, payload: object) -> None:
        assert isinstance(payload, str)
        nonlocal seen
        at, wall = time.perf_counter(), time.time()
        lo, hi, rows, oldest = payload.split(",")
        first, last = int(Decimal(lo)), int(Decimal(hi))
        if last - first + 1 != int(rows):
            raise AssertionError(f"a batch is not one run of messages: {payload}")
        committed[first : last + 1] = [at] * (last - first + 1)
        ages.append(wall - float(oldest))
        seen += int(rows)
        if seen >= count:
            done.set()

    await db.execute(_INSTALL_TRIGGER)
    listener = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await listener.add_listener(_NOTIFY_CHANNEL, on_commit)
        started = time.perf_counter()
        next_seq = 0
        tick = 0.005
        while next_seq < count:
            due = min(count, int((time.perf_counter() - started) * plan.latency_rate) + 1)
            if due > next_seq:
                at = time.perf_counter()
                await sim.write_prebuilt(b"".join(frames[next_seq:due]))
                sent[next_seq:due] = [at] * (due - next_seq)
                next_seq = due
            await asyncio.sleep(tick)
        # A daemon that fell behind still gets to catch up: its backlog is the measurement.
        await asyncio.wait_for(done.wait(), timeout=120)
    finally:
        await listener.close()
        await db.execute(_DROP_TRIGGER)
    latencies = sorted((c - s) * 1000 for c, s in zip(committed, sent, strict=True))
    rate = f"{plan.latency_rate:,.0f}/s for {plan.latency_seconds:g} s"
    results.add(
        "latency", f"frame sent -> row committed p50 ({rate})", f"{_pct(latencies, 50):.1f} ms"
    )
    results.add(
        "latency",
        "frame sent -> row committed p99",
        f"{_pct(latencies, 99):.1f} ms",
        "target <= 100 ms",
    )
    results.add("latency", "frame sent -> row committed max", f"{latencies[-1]:.1f} ms")
    results.add(
        "latency",
        "oldest row at commit (now - received_at)",
        f"{max(ages) * 1000:.1f} ms",
        "target <= 1000 ms",
    )


Seen = dict[tuple[str, str], float]  # (join or leave, room) -> when the simulator read it


def _recorder(seen: Seen) -> Callable[[SimEvent], None]:
    def record(event: SimEvent) -> None:
        if event.kind in ("join", "leave") and event.room is not None:
            seen[(event.kind, event.room)] = event.at

    return record


async def _single_row_delays(
    sim: Simulator, db: Any, pairs: list[tuple[str, str]], seen: Seen
) -> list[float]:
    """Each pair INSERTed then DELETEd, one autocommit statement at a time: milliseconds from
    each commit to its join or leave at the simulator, sorted."""
    delays: list[float] = []
    for wallet, token in pairs:
        room = room_for(wallet, token)
        for kind, sql in (
            ("join", "INSERT INTO watchlist (wallet, token) VALUES ($1, $2)"),
            ("leave", "DELETE FROM watchlist WHERE wallet = $1 AND token = $2"),
        ):
            await db.execute(sql, wallet, token)
            at = time.monotonic()
            await sim.wait_for(lambda k=kind, r=room: (k, r) in seen, timeout=10)  # type: ignore[misc]
            delays.append((seen[(kind, room)] - at) * 1000)
    return sorted(delays)


async def _sync(plan: Plan, sim: Simulator, db: Any, results: Results) -> None:
    seen: Seen = {}
    record = _recorder(seen)
    sim.listeners.append(record)
    try:
        fresh = bench_pairs(plan.sync_changes // 2 + plan.sync_txn_rows, start=1_000_000)
        singles, bulk = fresh[: plan.sync_changes // 2], fresh[plan.sync_changes // 2 :]
        delays = await _single_row_delays(sim, db, singles, seen)
        results.add(
            "sync",
            f"commit -> frame at simulator p50 ({len(delays):,} changes)",
            f"{_pct(delays, 50):.1f} ms",
        )
        results.add(
            "sync",
            "commit -> frame at simulator p99",
            f"{_pct(delays, 99):.1f} ms",
            "target <= 100 ms",
        )

        rooms = {room_for(*pair) for pair in bulk}
        async with db.transaction():
            await db.copy_records_to_table("watchlist", records=bulk, columns=("wallet", "token"))
        at = time.monotonic()
        await sim.wait_for(lambda: all(("join", r) in seen for r in rooms), timeout=60)
        last = max(seen[("join", r)] for r in rooms)
        results.add(
            "sync",
            f"one txn of {len(bulk):,} rows -> last join at simulator",
            f"{(last - at) * 1000:.0f} ms",
            "target <= 2000 ms",
        )
    finally:
        sim.listeners.remove(record)


# -- balances read from the chain: snapshots, checks, drift ----------------------------------------


async def _snapshots_and_drift(run: _Run) -> None:
    delays = await _ack_to_snapshot(run, run.pairs)
    results = run.results
    results.add(
        "chain",
        f"join ack -> snapshot row stored p50 ({len(delays)} pairs at once)",
        f"{_pct(delays, 50):.0f} ms",
    )
    results.add("chain", "join ack -> snapshot row stored max", f"{delays[-1]:.0f} ms")
    late = bench_pairs(5, start=2_000_000)
    one_by_one = []
    for pair in late:
        await run.db.execute("INSERT INTO watchlist (wallet, token) VALUES ($1, $2)", *pair)
        one_by_one += await _ack_to_snapshot(run, [pair])
    results.add(
        "chain",
        f"join ack -> snapshot row, one pair added ({len(late)} times), median",
        f"{statistics.median(one_by_one):.0f} ms",
    )
    injected, found, false = await _drift(run)
    results.add(
        "chain",
        "drift injected -> found (false)",
        f"{injected} -> {found} ({false})",
        "target: all (0)",
    )


# The pairs whose newest row is a snapshot: one probe of the pair index each, so that polling
# costs the database next to nothing (a scan of the history would slow what it measures).
_NEWEST_IS_A_SNAPSHOT = """
SELECT p.wallet, p.token FROM unnest($1::text[], $2::text[]) AS p(wallet, token)
CROSS JOIN LATERAL (
    SELECT source FROM balance_history b WHERE b.wallet = p.wallet AND b.token = p.token
    ORDER BY b.received_at DESC LIMIT 1
) h
WHERE h.source = 'snapshot'
"""


async def _ack_to_snapshot(run: _Run, pairs: list[tuple[str, str]]) -> list[float]:
    """For each pair, ms from its period's start (the join's ack; the newest period: an earlier
    daemon listened too) until its snapshot row is seen committed; sorted."""
    seen: dict[tuple[str, str], float] = {}
    wanted = set(pairs)
    deadline = time.monotonic() + 60
    while len(seen) < len(wanted) and time.monotonic() < deadline:
        waiting = [pair for pair in wanted if pair not in seen]
        rows = await run.db.fetch(_NEWEST_IS_A_SNAPSHOT, *map(list, zip(*waiting, strict=True)))
        now = time.time()
        for row in rows:
            seen.setdefault((row["wallet"], row["token"]), now)
        await asyncio.sleep(_POLL)
    starts = {
        (row["wallet"], row["token"]): row["started"].timestamp()
        for row in await run.db.fetch(
            "SELECT wallet, token, max(started_at) AS started FROM coverage GROUP BY 1, 2"
        )
    }
    return sorted((at - starts[pair]) * 1000 for pair, at in seen.items() if pair in starts)


async def _drift(run: _Run) -> tuple[int, int, int]:
    """Set the chain to what is stored, let a round pass, then change some balances on the
    chain without a message: (changed, found as drift, drift found on an unchanged pair)."""
    reads = run.daemon.chain_reads
    assert reads is not None
    newest = await run.db.fetch(
        "SELECT DISTINCT ON (wallet, token) wallet, token, amount FROM balance_history "
        "ORDER BY wallet, token, received_at DESC, id DESC"
    )
    for row in newest:
        run.sim.chain.set_balance(row["wallet"], row["token"], row["amount"])
    settle = run.plan.check_interval + 3.0  # a round, and a second look at a difference
    await asyncio.sleep(settle)
    since = await run.db.fetchval("SELECT now()")
    changed = run.pairs[: max(1, len(run.pairs) // 5)]
    for wallet, token in changed:
        run.sim.chain.set_balance(wallet, token, run.sim.chain.balance(wallet, token) + 1)
    await asyncio.sleep(settle + run.plan.check_interval)
    found = {
        (row["wallet"], row["token"])
        for row in await run.db.fetch(
            "SELECT wallet, token FROM balance_history WHERE source = 'check' AND received_at > $1",
            since,
        )
    }
    return len(changed), len(found & set(changed)), len(found - set(changed))


# -- scale: the daemon as a subprocess -------------------------------------------------------------


async def _scale(plan: Plan, url: URL, db: Any, results: Results) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="balancewatch-bench-"))
    pairs = bench_pairs(plan.scale_pairs, start=5_000_000)
    await _watch_only(db, pairs)
    async with Simulator(api_key=BENCH_KEY, ping_interval=None) as sim:
        sim.coalesce_acks = True
        env = _scale_env(plan, url, sim, scratch)
        joined: set[str] = set()

        def count_join(event: SimEvent) -> None:
            if event.kind == "join" and event.room is not None:
                joined.add(event.room)

        sim.listeners.append(count_join)
        baseline = await db.fetchval(_SNAPSHOTS_STORED)
        started = time.monotonic()
        try:
            async with _daemon_process(env) as process:
                await sim.wait_for(lambda: len(joined) >= len(pairs), timeout=120)
                all_sent = time.monotonic() - started

                async def all_acked() -> bool:
                    acked = await db.fetchval(
                        "SELECT count(*) FROM subscription_status WHERE state = 'joined'"
                    )
                    return bool(acked >= len(pairs))

                await _until(all_acked, "every pair 'joined'", timeout=120, processes=[process])
                all_joined = time.monotonic() - started
                peak = _peak_rss_mb(process.pid)
                seen: Seen = {}
                sim.listeners.append(_recorder(seen))
                changes = bench_pairs(plan.scale_sync_changes // 2, start=9_000_000)
                delays = await _single_row_delays(sim, db, changes, seen)
                snapshots_stored = (
                    await _snapshot_round(db, baseline + len(pairs), process) - started
                )
                snapshot_peak = _peak_rss_mb(process.pid)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    results.add(
        "scale", f"{len(pairs):,} pairs: start -> every join at simulator", f"{all_sent:.1f} s"
    )
    results.add(
        "scale",
        "start -> all 'joined' in subscription_status",
        f"{all_joined:.1f} s",
        "target <= 30 s",
    )
    results.add("scale", "daemon peak RSS (VmHWM)", f"{peak:.0f} MB", "target <= 250 MB")
    results.add(
        "scale",
        f"then commit -> frame p50 ({len(delays)} single-row changes)",
        f"{_pct(delays, 50):.1f} ms",
    )
    results.add("scale", "then commit -> frame p99", f"{_pct(delays, 99):.1f} ms")
    requests = len(sim.chain.requests)
    results.add(
        "scale",
        f"start -> every snapshot stored ({requests:,} RPC requests at {CHAIN_RPS:g}/s)",
        f"{snapshots_stored:.1f} s",
    )
    results.add("scale", "daemon peak RSS after the snapshots", f"{snapshot_peak:.0f} MB")


_SNAPSHOTS_STORED = """
SELECT coalesce(sum(reads), 0) FROM chain_reads WHERE kind = 'snapshot' AND result = 'stored'
"""


async def _snapshot_round(db: Any, total: int, process: asyncio.subprocess.Process) -> float:
    """When (monotonic) chain_reads counted `total` snapshots stored (the daemon adds to it
    with every write of their rows)."""

    async def all_stored() -> bool:
        return bool(await db.fetchval(_SNAPSHOTS_STORED) >= total)

    await _until(
        all_stored, f"{total:,} snapshots stored", timeout=600, processes=[process], every=0.5
    )
    return time.monotonic()


async def _watch_only(db: Any, pairs: list[tuple[str, str]]) -> None:
    """These pairs in the watchlist and no other; no pair state left from an earlier daemon."""
    await db.execute("DELETE FROM watchlist; DELETE FROM subscription_status")
    await db.copy_records_to_table("watchlist", records=pairs, columns=("wallet", "token"))


@contextlib.asynccontextmanager
async def _daemon_process(env: dict[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m balancewatch run` with `env`, stopped with SIGTERM on the way out (unless it
    has exited already: killed, or stopped by the caller)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "balancewatch", "run", env=env, stdout=subprocess.DEVNULL
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), timeout=30)


async def _until(
    done: Callable[[], Awaitable[bool]],
    what: str,
    *,
    timeout: float,
    processes: Sequence[asyncio.subprocess.Process] = (),
    every: float = 0.05,
) -> None:
    """Look at `done` every `every` seconds until it is true; an error if one of `processes`
    exits first, or once `timeout` has passed (`what` names what was awaited)."""
    deadline = time.monotonic() + timeout
    while not await done():
        for process in processes:
            if process.returncode is not None:
                raise RuntimeError(f"a daemon exited with {process.returncode}: not {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not {what} after {timeout:g} s")
        await asyncio.sleep(every)


def _scale_env(plan: Plan, url: URL, sim: Simulator, scratch: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "BALANCEWATCH_DATABASE_URL": url.render_as_string(hide_password=False),
        "BALANCEWATCH_DATASTREAM_URL": sim.url,
        "BALANCEWATCH_API_KEY": BENCH_KEY,
        "BALANCEWATCH_SPOOL_DIR": str(scratch / "scale-spool"),
        "BALANCEWATCH_HTTP_PORT": "0",
        "BALANCEWATCH_LOG_LEVEL": "error",
        "BALANCEWATCH_LOG_FORMAT": "json",
        "BALANCEWATCH_RPC_URL": sim.rpc_url,
        "BALANCEWATCH_RPC_MAX_RPS": str(CHAIN_RPS),
    }
    env.pop("BALANCEWATCH_CONFIG", None)
    return env | {
        f"BALANCEWATCH_{name.upper()}": str(v) for name, v in _daemon_overrides(plan).items()
    }


def _daemon_overrides(plan: Plan) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if plan.flush_interval is not None:
        overrides["flush_interval"] = plan.flush_interval
    return overrides


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/PID/status")


# -- replicas: two daemons as subprocesses, one of them killed or stopped --------------------------


async def _replicas(plan: Plan, url: URL, db: Any, results: Results) -> None:
    ttl = plan.lease_ttl or Settings.model_fields["lease_ttl"].default
    target = f"target <= {ttl + ttl / 3:g} s"
    kills, stops = await _replica_runs(
        plan, url, db, plan.replica_pairs, kills=plan.failovers, stops=plan.handovers, ttl=ttl
    )
    count = f"{plan.replica_pairs:,} pairs"
    failover = [kill.last for kill in kills]
    results.add(
        "replicas",
        f"{count}, b SIGKILLed -> a holds every room{_each(failover, '{:.1f}')}",
        f"{statistics.median(failover):.1f} s",
        target,
    )
    rates = [kill.rate for kill in kills]
    results.add(
        "replicas",
        f"  b's rooms re-joined by a, first to last{_each(rates, '{:,.0f}')}",
        f"{statistics.median(rates):,.0f} rooms/s",
    )
    handover = [stop.last for stop in stops]
    results.add(
        "replicas",
        f"{count}, b SIGTERMed -> a holds every room{_each(handover, '{:.2f}')}",
        f"{statistics.median(handover):.2f} s",
        "target about 1 s",
    )
    if plan.takeover_pairs:
        (kill,), _ = await _replica_runs(
            plan, url, db, plan.takeover_pairs, kills=1, stops=0, ttl=ttl
        )
        results.add(
            "replicas",
            f"{plan.takeover_pairs:,} pairs, b SIGKILLed -> a holds every room",
            f"{kill.last:.1f} s",
            target,
        )
        results.add(
            "replicas",
            f"  b's {kill.rooms:,} rooms re-joined by a, first to last",
            f"{kill.rate:,.0f} rooms/s",
        )


async def _replica_runs(
    plan: Plan, url: URL, db: Any, count: int, *, kills: int, stops: int, ttl: float
) -> tuple[list[Takeover], list[Takeover]]:
    """`count` pairs watched by replicas a and b (b started again after each stop): b SIGKILLed
    `kills` times, then SIGTERMed `stops` times. Kill k comes k/`kills` of a renew interval
    after the rooms are shared (just after both renewed their leases), so that the kills fall
    at different points of b's renewal cycle."""
    pairs = bench_pairs(count, start=12_000_000)
    await _watch_only(db, pairs)
    rooms = [room_for(*pair) for pair in pairs]
    scratch = Path(tempfile.mkdtemp(prefix="balancewatch-bench-"))
    killed: list[Takeover] = []
    stopped: list[Takeover] = []
    try:
        # Any key is taken: each replica's own names its connection (`room_holders`).
        async with Simulator(ping_interval=None) as sim:
            sim.coalesce_acks = True
            env = {name: _replica_env(plan, url, sim, scratch, name=name, ttl=ttl) for name in "ab"}
            async with _daemon_process(env["a"]) as a:
                for kill in range(kills):
                    async with _daemon_process(env["b"]) as b:
                        wait = ttl / 3 * kill / kills
                        killed.append(
                            await _taken_over(sim, rooms, a, b, signum=signal.SIGKILL, wait=wait)
                        )
                for _ in range(stops):
                    async with _daemon_process(env["b"]) as b:
                        stopped.append(await _taken_over(sim, rooms, a, b, signum=signal.SIGTERM))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return killed, stopped


def _each(values: Sequence[float], form: str) -> str:
    """Each of several runs' values, for a metric's name; nothing for a single run."""
    return f" ({' / '.join(form.format(value) for value in values)})" if len(values) > 1 else ""


@dataclass(frozen=True, slots=True)
class Takeover:
    rooms: int  # b's, when it was signalled
    first: float  # seconds from the signal to a's first join of one of them
    last: float  # ... to a's last: every room held by a again

    @property
    def rate(self) -> float:
        """Rooms joined a second, from a's first join of b's rooms to its last."""
        return self.rooms / (self.last - self.first)


async def _taken_over(
    sim: Simulator,
    rooms: list[str],
    a: asyncio.subprocess.Process,
    b: asyncio.subprocess.Process,
    *,
    signum: int,
    wait: float = 0.0,
) -> Takeover:
    """Once a and b share every room (each held once), wait `wait` seconds, signal b; then
    until a holds them all."""

    async def shared() -> bool:
        return _held_once(sim, rooms, {"key-a", "key-b"})

    await _until(shared, "every room held once, by a and b", timeout=120, processes=[a, b])
    await asyncio.sleep(wait)
    theirs = {room for room in rooms if sim.room_holders(room) == {"key-b"}}
    joins: dict[str, float] = {}

    def record(event: SimEvent) -> None:
        if event.kind == "join" and event.client == "key-a" and event.room in theirs:
            joins.setdefault(event.room, event.at)

    sim.listeners.append(record)
    try:
        signalled = time.monotonic()
        b.send_signal(signum)

        async def all_joined() -> bool:
            return len(joins) == len(theirs)

        await _until(all_joined, "every room of b's joined by a", timeout=120, processes=[a])
    finally:
        sim.listeners.remove(record)
    # The join that completed the set is the moment every room was held again (the simulator
    # holds a room, then records its join), unless a left one of its own meanwhile.
    if not _held_once(sim, rooms, {"key-a"}):
        raise RuntimeError("a joined b's rooms, but some room is not held once by a alone")
    return Takeover(len(theirs), min(joins.values()) - signalled, max(joins.values()) - signalled)


def _held_once(sim: Simulator, rooms: list[str], clients: set[str]) -> bool:
    """Every room held by exactly one client, and those are exactly `clients`."""
    holders = [sim.room_holders(room) for room in rooms]
    return all(len(h) == 1 for h in holders) and set().union(*holders) == clients


def _replica_env(
    plan: Plan, url: URL, sim: Simulator, scratch: Path, *, name: str, ttl: float
) -> dict[str, str]:
    """The scale section's daemon, as replica `name`: a key, a spool directory of its own."""
    return _scale_env(plan, url, sim, scratch) | {
        "BALANCEWATCH_API_KEY": f"key-{name}",
        "BALANCEWATCH_REPLICA_ID": name,
        "BALANCEWATCH_SPOOL_DIR": str(scratch / f"replica-{name}"),
        "BALANCEWATCH_LEASE_TTL": f"{ttl:g}",
    }


# -- history: the README's queries on a large history (--history N, alone) -------------------------

HISTORY_PAIRS: Final = 10_000
HISTORY_SPAN: Final = timedelta(days=60)
# When every pair's listening period ended, back from the newest row; why; and for how long
# nothing was listened to. A restart ("shutdown") hands the next periods to a new process.
OUTAGES: Final[tuple[tuple[timedelta, EndReason, timedelta], ...]] = (
    (timedelta(days=45), "disconnected", timedelta(seconds=40)),
    (timedelta(days=20), "shutdown", timedelta(seconds=90)),
    (timedelta(hours=3), "disconnected", timedelta(seconds=25)),
)
# The newest hour at one change a pair a minute, the premise (10,000 pairs: 600,000
# rows): what `status` counts and the last hour's queries read on a busy watchlist. At most a
# sixteenth of the rows, as in the issue's own history (10 million rows over 16 hours).
BUSY_HOUR: Final = timedelta(hours=1)
BUSY_ROWS_PER_PAIR: Final = 60
# A snapshot of each pair at each period's start, as a daemon reading the chain takes; at most
# one row in this many, so a small N stays mostly stream rows (10 million: every pair's).
ROWS_PER_SNAPSHOT: Final = 250
# The snapshots of a period's start, spread over this long (the RPC's rate limit).
SNAPSHOT_SPREAD: Final = timedelta(seconds=10)
TIMED_RUNS: Final = 3
HISTORY_LIMIT: Final = 50  # `balancewatch history`'s default (cli.HISTORY_LIMIT)
_ROWS_PER_COPY: Final = 50_000
_COPY_TIMEOUT: Final = 600.0
_MICROS: Final = 1_000_000
_SLOTS_PER_SECOND: Final = 2.5  # Solana's pace, for the snapshots' slots
_HISTORY_SHARD: Final = 0
_TITLE: Final = 60  # characters of a README query's title in the table
# The README's example time, and an address in a query (the pattern, unanchored).
_EXAMPLE_TIME: Final = re.compile(r"'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00'")
_ADDRESS: Final = BASE58_PATTERN.strip("^$")
_DAILY: Final = "SELECT * FROM balance_daily WHERE day >= current_date - 30"
# The relations behind one: a view's, those its query reads (its rewrite rule depends on
# them); a partitioned table's, its partitions; each in turn, down to those holding rows.
_BEHIND: Final = """
WITH RECURSIVE behind(oid) AS (
    SELECT to_regclass($1)::oid
    UNION
    SELECT found.oid FROM behind CROSS JOIN LATERAL (
        SELECT d.refobjid FROM pg_rewrite r
        JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
        WHERE r.ev_class = behind.oid AND d.refclassid = 'pg_class'::regclass
          AND d.refobjid <> behind.oid
        UNION ALL
        SELECT i.inhrelid FROM pg_inherits i WHERE i.inhparent = behind.oid
    ) found(oid)
)
SELECT coalesce(sum(pg_table_size(oid)), 0)::bigint AS table_bytes,
       coalesce(sum(pg_indexes_size(oid)), 0)::bigint AS index_bytes
FROM behind
"""


@dataclass(frozen=True, slots=True)
class Period:
    """A stretch every pair was listened to, by one process (`holder`)."""

    start: datetime
    end: datetime | None  # None: still listening
    reason: EndReason | None
    holder: str


@dataclass(frozen=True, slots=True)
class Stretch:
    """A stretch of time listened to, and the stream rows received in it."""

    start: datetime
    end: datetime
    rows: int
    opens: Period | None  # the period it starts, whose snapshots come first


@dataclass(frozen=True, slots=True)
class Timing:
    name: str
    runs: tuple[float, ...] = ()  # ms; none: not measured, for `note`
    rows: int | None = None  # returned by the last run, when it returns rows
    note: str = ""


async def _history_section(
    db: RawConnection, engine: AsyncEngine, count: int, pairs: Sequence[Pair]
) -> None:
    """Load `count` rows over `pairs` into the migrated database behind `db` and `engine`, and
    print what the history takes on disk and each query's time."""
    await _describe_server(db, count, len(pairs))
    newest = datetime.now(UTC)
    periods = listening(newest)
    await _watch(db, pairs, periods, newest)
    sample = await _load(db, count, pairs, periods, newest)
    await _vacuumed(db)
    await _print_size(db, count)
    at = newest - HISTORY_SPAN / 2
    print(f"  in the README's queries: {' '.join(sample)} and {_literal(at)}", flush=True)
    queries = on_pair(numbered_queries(readme_text()), sample, at)
    timings = [
        await _time(f"README {title(query)}", _statement(db, query))
        for _, query in sorted(queries.items())
    ]
    timings += await _other_timings(db, engine, sample)
    print("\n".join(report(timings)), flush=True)


async def _describe_server(db: RawConnection, count: int, pairs: int) -> None:
    version = await db.fetchval("SHOW server_version")
    settings = [
        f"{name} {await db.fetchval(f'SHOW {name}')}"
        for name in ("shared_buffers", "work_mem", "jit")
    ]
    print(f"  Postgres {version}; {', '.join(settings)}", flush=True)
    print(
        f"  history: {count:,} rows over {pairs:,} pairs, the last {HISTORY_SPAN.days} days",
        flush=True,
    )


# -- history: the rows and periods loaded ----------------------------------------------------------


def listening(newest: datetime) -> list[Period]:
    """The listening periods from `HISTORY_SPAN` before `newest` on, between the outages."""
    periods, start, process = [], newest - HISTORY_SPAN, 1
    for ago, reason, lasted in OUTAGES:
        periods.append(Period(start, newest - ago, reason, f"bench/{process}"))
        process += reason == "shutdown"
        start = newest - ago + lasted
    return [*periods, Period(start, None, None, f"bench/{process}")]


def stretches(periods: Sequence[Period], count: int, busy: int, newest: datetime) -> list[Stretch]:
    """The time listened to, oldest first, cut where the newest hour begins (inside the last
    period): `busy` stream rows in that hour, the other `count - busy` before it, shared in
    proportion to the length of each stretch."""
    cut = newest - BUSY_HOUR
    quiet = [(period.start, period.end or cut, period) for period in periods]
    ends = list(accumulate(end - start for start, end, _ in quiet))
    bounds = [round((count - busy) * (end / ends[-1])) for end in ends]
    rows = [high - low for low, high in pairwise([0, *bounds])]
    return [
        *(
            Stretch(start, end, n, period)
            for (start, end, period), n in zip(quiet, rows, strict=True)
        ),
        Stretch(cut, newest, busy, None),
    ]


async def _watch(
    db: RawConnection, pairs: Sequence[Pair], periods: Sequence[Period], newest: datetime
) -> None:
    """The watchlist, each pair's state, its listening periods and their processes."""
    await db.copy_records_to_table("watchlist", records=pairs, columns=("wallet", "token"))
    await db.copy_records_to_table(
        "subscription_status",
        records=[(*pair, "joined", periods[-1].start, newest) for pair in pairs],
        columns=("wallet", "token", "state", "since", "updated_at"),
    )
    holders: dict[str, tuple[datetime, datetime]] = {}
    for period in periods:
        first = holders.get(period.holder, (period.start, period.start))[0]
        holders[period.holder] = (first, period.end or newest)
    await db.copy_records_to_table(
        "coverage_holders",
        records=[(holder, *times) for holder, times in holders.items()],
        columns=("holder", "started_at", "confirmed_at"),
    )
    await db.copy_records_to_table(
        "coverage",
        records=[
            (uuid.uuid4(), *pair, period.start, period.end, period.reason, period.holder)
            for period in periods
            for pair in pairs
        ],
        columns=("id", "wallet", "token", "started_at", "ended_at", "end_reason", "holder"),
    )


async def _load(
    db: RawConnection,
    count: int,
    pairs: Sequence[Pair],
    periods: Sequence[Period],
    newest: datetime,
) -> Pair:
    """COPY `count` rows, stretch by stretch: the snapshots of the period it opens, then its
    stream rows in chunks. Returns the pair of the newest stream row: one that has rows, for
    the per-pair queries."""
    per_start = min(len(pairs), count // ROWS_PER_SNAPSHOT // len(periods))
    busy = min(len(pairs) * BUSY_ROWS_PER_PAIR, count // 16)
    amounts = _Walk(len(pairs))
    epoch = await _hold_a_shard(db)
    pair_ids = PairIds()  # the writer's own: each pair's id put in place of its addresses
    progress = Progress("bench_history_loading")
    progress.start()
    started, loaded, last = time.perf_counter(), 0, 0
    for stretch in stretches(periods, count - per_start * len(periods), busy, newest):
        if stretch.opens is not None:
            snapshots = _snapshots(pairs[:per_start], stretch.start, amounts)
            await chain.copy_chain_rows(db, snapshots, _COPY_TIMEOUT)
            loaded += len(snapshots)
        for times in _spread(stretch):
            lines, last = _stream_lines(times, pairs, amounts, epoch)
            store = partial(store_lines, db, lines, pair_ids, _COPY_TIMEOUT)
            await pair_ids.known_for(db, store, _COPY_TIMEOUT)
            loaded += len(lines)
            progress.update(rows=loaded, of=count)
    seconds = time.perf_counter() - started
    progress.finish("bench_history_loaded", rows=loaded)
    print(f"  loaded in {seconds:.1f} s ({loaded / seconds:,.0f} rows/s)", flush=True)
    return pairs[last]


async def _hold_a_shard(db: RawConnection) -> int:
    """A tenure of one shard for the whole load: the stream rows carry its epoch, as the
    daemon's carry their shard's (8 bytes of every row), and the fencing trigger checks them."""
    async with db.transaction():
        epochs = await leases.claim(
            db, "bench-history", [_HISTORY_SHARD], HISTORY_SPAN.total_seconds(), 30.0
        )
    return epochs[_HISTORY_SHARD]


class _Walk:
    """Each pair's balance in millionths, a random walk; and which pair the next row is of.
    The same every run."""

    def __init__(self, pairs: int) -> None:
        self._random = random.Random(13)
        self._balances = [self._random.randrange(10**12) for _ in range(pairs)]

    def step(self, pair: int) -> str:
        balance = abs(self._balances[pair] + self._random.randint(-(10**9), 10**9))
        self._balances[pair] = balance
        return f"{balance // _MICROS}.{balance % _MICROS:06d}"

    def pair(self, pairs: int) -> int:
        return self._random.randrange(pairs)


def _snapshots(pairs: Sequence[Pair], start: datetime, amounts: _Walk) -> list[chain.ChainRow]:
    """A snapshot of each of `pairs`, spread over `SNAPSHOT_SPREAD` from `start`."""
    gap = SNAPSHOT_SPREAD / max(len(pairs), 1)
    rows: list[chain.ChainRow] = []
    for index, (wallet, token) in enumerate(pairs):
        at = start + gap * index
        slot = int(at.timestamp() * _SLOTS_PER_SECOND)
        rows.append((wallet, token, Decimal(amounts.step(index)), at, "snapshot", slot))
    return rows


def _spread(stretch: Stretch) -> Iterator[list[int]]:
    """Its rows' times, evenly over it, in microseconds since the epoch, in lists of
    `_ROWS_PER_COPY`."""
    start = _micros(stretch.start)
    step = (_micros(stretch.end) - start) / max(stretch.rows, 1)
    for first in range(0, stretch.rows, _ROWS_PER_COPY):
        last = min(stretch.rows, first + _ROWS_PER_COPY)
        yield [start + int(step * (n + 0.5)) for n in range(first, last)]


def _stream_lines(
    times: Sequence[int], pairs: Sequence[Pair], amounts: _Walk, epoch: int
) -> tuple[list[bytes], int]:
    """The daemon's COPY lines, one at each time, each of a random pair; and the last one's."""
    lines, pair = [], 0
    for moment in times:
        pair = amounts.pair(len(pairs))
        wallet, token = pairs[pair]
        stamp = stamp_from_micros(moment)
        lines.append(balance_line(wallet, token, amounts.step(pair), stamp, epoch))
    return lines, pair


async def _vacuumed(db: RawConnection) -> None:
    started = time.perf_counter()
    await db.execute("VACUUM ANALYZE")
    await _checkpoint(db)
    print(f"  VACUUM ANALYZE and CHECKPOINT in {time.perf_counter() - started:.1f} s", flush=True)


def _micros(moment: datetime) -> int:
    return int(moment.timestamp() * _MICROS)


# -- history: what is timed ------------------------------------------------------------------------


def on_pair(queries: Mapping[int, str], pair: Pair, at: datetime) -> dict[int, str]:
    """The README's queries with its example pair (the addresses it compares `wallet` and
    `token` with) replaced by `pair` wherever they appear, and its example time by `at`."""
    text = "\n".join(queries.values())
    examples = {
        found.group(1): mine
        for column, mine in zip(("wallet", "token"), pair, strict=True)
        if (found := re.search(rf"{column} = '({_ADDRESS})'", text))
    }

    def swapped(query: str) -> str:
        for example, mine in examples.items():
            query = query.replace(f"'{example}'", f"'{mine}'")
        return _EXAMPLE_TIME.sub(_literal(at), query)

    return {number: swapped(query) for number, query in queries.items()}


def title(query: str) -> str:
    """Its title, from its first line ("3. Every change in the last hour, ..."), cut to fit
    the table."""
    line = query.splitlines()[0].removeprefix("-- ")
    return line if len(line) <= _TITLE else line[: _TITLE - 3] + "..."


async def _other_timings(db: RawConnection, engine: AsyncEngine, pair: Pair) -> list[Timing]:
    return [
        await _time("latest_balance, every pair", _statement(db, "SELECT * FROM latest_balance")),
        await _daily(db),
        await _time("status (store.reports.gather)", _status(engine)),
        await _time(
            f"history of one pair (newest {HISTORY_LIMIT}, gaps)", _one_pairs_history(engine, pair)
        ),
    ]


async def _daily(db: RawConnection) -> Timing:
    """The daily rollups of the last 30 days, where the schema has them (issue 13's)."""
    name = "balance_daily, the last 30 days"
    if not await db.fetchval("SELECT to_regclass('balance_daily') IS NOT NULL"):
        return Timing(name, note="not in this schema")
    return await _time(name, _statement(db, _DAILY))


def _statement(db: RawConnection, sql: str) -> Callable[[], Awaitable[int]]:
    async def run() -> int:
        # The simple query protocol: rows come back as text, not decoded; the status
        # ("SELECT 42") counts them.
        status: str = await db.execute(sql)
        return int(status.rsplit(" ", 1)[1])

    return run


def _status(engine: AsyncEngine) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await gather(engine)

    return run


def _one_pairs_history(engine: AsyncEngine, pair: Pair) -> Callable[[], Awaitable[int]]:
    """What `balancewatch history WALLET TOKEN` reads: the newest rows, and the gaps in
    listening since the oldest of them."""

    async def run() -> int:
        rows = await fetch(engine, *pair, limit=HISTORY_LIMIT)
        since = rows[-1].received_at
        gaps = await fetch_gaps(engine, *pair, since=since, until=datetime.now(UTC))
        return len(rows) + len(gaps)

    return run


async def _time(name: str, run: Callable[[], Awaitable[int | None]]) -> Timing:
    """Once to warm up (the cache and the catalog, as a query a user repeats has them), then
    `TIMED_RUNS` times."""
    await run()
    runs, rows = [], None
    for _ in range(TIMED_RUNS):
        started = time.perf_counter()
        rows = await run()
        runs.append((time.perf_counter() - started) * 1000)
    return Timing(name, tuple(runs), rows)


# -- history: sizes and the table ------------------------------------------------------------------


async def relation_bytes(db: RawConnection, name: str) -> tuple[int, int]:
    """The bytes on disk of a relation's table (with its TOAST) and of its indexes; of a view,
    those of every relation it reads; of a partitioned table, those of its partitions."""
    (row,) = await db.fetch(_BEHIND, name)
    return row["table_bytes"], row["index_bytes"]


async def _print_size(db: RawConnection, count: int) -> None:
    table, indexes = await relation_bytes(db, "balance_history")
    print(
        f"  balance_history on disk: {_mb(table + indexes)} (table {_mb(table)}, indexes "
        f"{_mb(indexes)}): {(table + indexes) / count:,.0f} bytes per row",
        flush=True,
    )


def report(timings: Sequence[Timing]) -> list[str]:
    """Each timing's median and runs in ms and the rows it returned, as a table."""
    width = max(len(timing.name) for timing in timings)
    lines = [f"  {'query':<{width}}  {'median ms':>10}  {'rows':>9}  runs (ms)"]
    for timing in timings:
        if not timing.runs:
            lines.append(f"  {timing.name:<{width}}  {timing.note}")
            continue
        rows = "-" if timing.rows is None else f"{timing.rows:,}"
        median = statistics.median(timing.runs)
        each = " / ".join(f"{run:,.1f}" for run in timing.runs)
        lines.append(f"  {timing.name:<{width}}  {median:>10,.1f}  {rows:>9}  {each}")
    return lines


def _literal(moment: datetime) -> str:
    return f"'{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}+00'"


def _mb(size: int) -> str:
    return f"{size / 2**20:,.0f} MB"


# -- helpers ---------------------------------------------------------------------------------------


def bench_pairs(count: int, *, start: int = 0) -> list[tuple[str, str]]:
    """`count` distinct (wallet, token) pairs of valid base58 addresses, the same every run."""
    return [(_address(start + index), MINT) for index in range(count)]


def _address(number: int) -> str:
    digits = ""
    while True:
        number, digit = divmod(number, len(_ALPHABET))
        digits = _ALPHABET[digit] + digits
        if number == 0:
            break
    return "Bench" + digits.rjust(39, "1")


def _prebuilt(
    pairs: Sequence[tuple[str, str]], count: int, amount: Callable[[int], str]
) -> list[bytes]:
    """`count` frames over `pairs` in turn, joined `_FRAMES_PER_WRITE` to a socket write."""
    frames = [
        text_frame(balance_frame(*pairs[seq % len(pairs)], amount(seq))) for seq in range(count)
    ]
    return [
        b"".join(frames[first : first + _FRAMES_PER_WRITE])
        for first in range(0, count, _FRAMES_PER_WRITE)
    ]


def _pct(ordered: Sequence[float], percent: float) -> float:
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(percent) - 1]


# -- the README's SQL: what the history section times, and the test suite runs ---------------------

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_text() -> str:
    """The checkout's README.md; in an installed wheel, which has none, the README the package
    was built with (its metadata's description)."""
    if README.is_file():
        return README.read_text()
    # One field, so a str; the type says `str | list[str]` for the fields that repeat.
    return cast(str, metadata.metadata("balancewatch").json["description"])


def sql_blocks(text: str) -> list[str]:
    return re.findall(r"```sql\n(.*?)```", text, flags=re.DOTALL)


def numbered_queries(text: str) -> dict[int, str]:
    """The `-- N. ` blocks of the "Querying" section, by number."""
    found: dict[int, str] = {}
    for block in sql_blocks(text):
        match = re.match(r"-- (\d+)\. ", block)
        if match:
            found[int(match.group(1))] = block
    return found
