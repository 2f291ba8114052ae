"""`balancewatch bench`: how fast the daemon is, against a real Postgres and a real websocket.

Six measurements, printed as one table:

- ingest: N balance frames over 100 rooms, sent as fast as the simulator can, from the first
  frame written to the socket until the daemon's writer has committed the last row; beside it,
  the same rows COPYed straight into a twin of `balance_rows` with asyncpg's binary COPY, in
  batches of the daemon's size and all in one COPY (the faster is the ceiling), and one
  INSERT + commit per row (the naive baseline).
- cpu: the ingest run again, to `python -m balancewatch run` as its own process: its CPU time
  (user + system, from /proc) per message, and a py-spy profile of where it goes
  (`bench_cpu`).
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

With `--cpu-only` the bench runs the raw COPY ceiling and the cpu section alone: a change to
the ingest path compared in a minute, not the whole bench's many. With `--history N` it runs
one other section instead, alone: that of `bench_history`. What both share (the server, the
scratch database, the pairs) is in `benchkit`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import asyncpg
from sqlalchemy.engine import URL

from balancewatch.daemon.service import Daemon
from balancewatch.devtools import bench_cpu, bench_history
from balancewatch.devtools.benchkit import bench_pairs, checkpoint, migrated, on_a_server
from balancewatch.devtools.simulator import SimEvent, Simulator, balance_frame, text_frame
from balancewatch.domain import room_for
from balancewatch.settings import Settings
from balancewatch.store.db import asyncpg_dsn
from balancewatch.store.writes import ROW_COLUMNS

BENCH_KEY = "bench-key"
_FRAMES_PER_WRITE = 1000
_POLL = 0.002
# The RPC rate of the chain stages: the default a provider's free plan allows.
CHAIN_RPS = 10.0
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
    # After the snapshot round, the daemon holding scale_pairs quiet pairs: its CPU over this.
    idle_seconds: float = 60.0
    # `--pairs-joined N`: the scale section alone, up to every pair joined and the peak RSS.
    joins_only: bool = False
    # `--cpu-only`: the raw COPY ceiling and the cpu section alone.
    cpu_only: bool = False
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
    cpu_runs: int = 3  # ingest runs to the daemon as a subprocess, for its CPU per message
    profile_top: int = 15  # functions printed from the profile of one more such run

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
            idle_seconds=2.0,
            replica_pairs=100,
            failovers=1,
            handovers=1,
            takeover_pairs=0,
            lease_ttl=3.0,
            cpu_runs=1,
            profile_top=5,
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
    ceiling: float | None = None  # rows/s: the faster raw COPY of the ingest section

    def add(self, section: str, metric: str, value: str, target: str = "") -> None:
        self.lines.append((section, metric, value, target))
        print(f"  {section:<8} {metric:<44} {value:>18}  {target}", flush=True)


# -- the command -------------------------------------------------------------------------------


def command(args: argparse.Namespace) -> int:
    """`balancewatch bench`; with `--history N`, only the history section (`bench_history`)."""
    if args.history is not None:
        return bench_history.command(args)
    history_only = [name for name in ("pairs", "partition") if getattr(args, name) is not None]
    if history_only:
        print(f"balancewatch bench: --{history_only[0]} goes with --history", file=sys.stderr)
        return 2
    if args.pairs_joined is not None:
        return _joins_only(args)
    if args.cpu_only and args.quick:
        print("balancewatch bench: --cpu-only runs alone, without --quick", file=sys.stderr)
        return 2
    messages = args.messages if args.messages is not None else (3_000 if args.quick else 200_000)
    if messages <= 0:
        print("balancewatch bench: --messages must be positive", file=sys.stderr)
        return 2
    options: dict[str, Any] = {
        "flush_interval": args.flush_interval,
        "uvloop": args.uvloop,
        "cpu_only": args.cpu_only,
    }
    plan = Plan.quick(messages, **options) if args.quick else Plan(messages=messages, **options)
    return run_bench(plan, args.database_url)


def _joins_only(args: argparse.Namespace) -> int:
    """`--pairs-joined N`: the scale section alone, with N pairs, up to every pair joined."""
    other = [f"--{name.replace('_', '-')}" for name in ("messages", "quick") if getattr(args, name)]
    if other:
        print(
            f"balancewatch bench: --pairs-joined runs alone, without {', '.join(other)}",
            file=sys.stderr,
        )
        return 2
    options: dict[str, Any] = {"flush_interval": args.flush_interval, "uvloop": args.uvloop}
    plan = Plan(messages=1, scale_pairs=args.pairs_joined, joins_only=True, **options)
    return run_bench(plan, args.database_url)


def run_bench(plan: Plan, database_url: str | None) -> int:
    return on_a_server(database_url, lambda url: _run_loop(plan, url))


def _run_loop(plan: Plan, server_url: URL) -> None:
    if plan.uvloop:
        import uvloop  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415

        uvloop.run(_bench(plan, server_url))
    else:
        asyncio.run(_bench(plan, server_url))


async def _bench(plan: Plan, server_url: URL) -> None:
    results = Results()
    async with migrated(server_url) as (url, _, db):
        print(f"  Postgres {db.get_server_version().major}; plan: {plan}", flush=True)
        if plan.joins_only:
            await _scale(plan, url, db, results)
            print("done", flush=True)
            return
        if plan.cpu_only:
            await _ceiling_alone(plan, db, results)
            await _ingest_cpu(plan, url, db, results)
            print("done", flush=True)
            return
        await _simulator_ceiling(plan, results)
        await _in_process(plan, url, db, results)
        await _ingest_cpu(plan, url, db, results)
        await _scale(plan, url, db, results)
        await _replicas(plan, url, db, results)
    print("done", flush=True)


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
    await checkpoint(db)


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
    rows = _ceiling_rows(plan, pairs)
    batch = run.batch_size
    await db.execute(_CREATE_TWIN)
    batched_rate, one_copy_rate = await _copy_rates(db, rows, batch)
    ceiling = run.results.ceiling = max(batched_rate, one_copy_rate)

    sample = rows[: plan.naive_rows]
    started = time.perf_counter()
    for row in sample:
        async with db.transaction():
            await db.execute(
                "INSERT INTO bench_twin (pair_id, amount, received_at, epoch)"
                " VALUES ($1, $2, $3, $4)",
                *row,
            )
    naive_rate = len(sample) / (time.perf_counter() - started)
    await db.execute("DROP TABLE bench_twin")

    n = f"{plan.messages:,} msgs"
    results.add(
        "ingest", f"daemon end to end ({n}, {plan.rooms} rooms)", f"{daemon_rate:,.0f} rows/s"
    )
    results.add(
        "ingest", f"raw asyncpg COPY, binary, batches of {batch}", f"{batched_rate:,.0f} rows/s"
    )
    results.add("ingest", f"raw asyncpg COPY, binary, {n} in one", f"{one_copy_rate:,.0f} rows/s")
    results.add(
        "ingest", f"naive INSERT+commit per row ({len(sample):,})", f"{naive_rate:,.0f} rows/s"
    )
    results.add(
        "ingest",
        "daemon / raw COPY ceiling (the higher)",
        f"{daemon_rate / ceiling:.2f}x",
        "target >= 0.6x",
    )
    results.add("ingest", "daemon / naive", f"{daemon_rate / naive_rate:.1f}x", "target >= 50x")


# The ceiling: the same rows as typed values, copied the plain asyncpg way into a twin of the
# table the daemon writes (its columns and its index; neither its partitions nor its triggers,
# which are the daemon's own cost): a pair's id, as the writer sends it, and an epoch, as the
# daemon's rows carry their shard's (any bigint will do here). Twice: in batches of the
# daemon's size, and all in one COPY (the fastest a Python program loads them: asyncpg's binary
# COPY, one statement, one commit); the higher is the ceiling.
# Each partition's index is its own since 0014, not balance_rows': LIKE no longer copies it.
_CREATE_TWIN = """
CREATE TABLE bench_twin (LIKE balance_rows INCLUDING ALL);
CREATE INDEX ON bench_twin (pair_id, received_at, id);
"""


def _ceiling_rows(
    plan: Plan, pairs: list[tuple[str, str]]
) -> list[tuple[int, Decimal, datetime, int]]:
    amounts = _amounts()
    now = datetime.now(UTC)
    return [
        (seq % len(pairs) + 1, Decimal(amounts[seq % len(amounts)]), now, 1)
        for seq in range(plan.messages)
    ]


async def _copy_rates(
    db: Any, rows: list[tuple[int, Decimal, datetime, int]], batch: int
) -> tuple[float, float]:
    """Rows a second into `bench_twin`: in batches of `batch`, and in one COPY."""
    batches = [rows[first : first + batch] for first in range(0, len(rows), batch)]
    return await _copy_rate(db, batches), await _copy_rate(db, [rows])


async def _ceiling_alone(plan: Plan, db: Any, results: Results) -> None:
    """`--cpu-only`: the ingest section's ceiling without its daemon, for the cpu section's
    ratio (in batches of the daemon's default size)."""
    batch = Settings.model_fields["batch_size"].default
    await db.execute(_CREATE_TWIN)
    try:
        batched, one_copy = await _copy_rates(
            db, _ceiling_rows(plan, bench_pairs(plan.rooms)), batch
        )
    finally:
        await db.execute("DROP TABLE bench_twin")
    results.ceiling = max(batched, one_copy)
    n = f"{plan.messages:,} msgs"
    results.add("ingest", f"raw asyncpg COPY, binary, batches of {batch}", f"{batched:,.0f} rows/s")
    results.add("ingest", f"raw asyncpg COPY, binary, {n} in one", f"{one_copy:,.0f} rows/s")


async def _copy_rate(db: Any, statements: list[list[tuple[int, Decimal, datetime, int]]]) -> float:
    """Rows a second COPYed into an empty `bench_twin`, one autocommit COPY per list, from a
    checkpoint (so that none lands in one run and not the other)."""
    await db.execute("TRUNCATE bench_twin")
    await checkpoint(db)
    started = time.perf_counter()
    for records in statements:
        await db.copy_records_to_table("bench_twin", records=records, columns=ROW_COLUMNS)
    return sum(map(len, statements)) / (time.perf_counter() - started)


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


# -- CPU per message: the daemon as a subprocess ---------------------------------------------------


async def _ingest_cpu(plan: Plan, url: URL, db: Any, results: Results) -> None:
    """The ingest run again, to `python -m balancewatch run` (the daemon alone in its process,
    with its default settings and no RPC, as in the ingest section), `plan.cpu_runs` times from
    an empty history: its CPU time (user + system) per message, its rate; then once more under
    py-spy, for where the CPU goes."""
    pairs = bench_pairs(plan.rooms)
    await _watch_only(db, pairs)
    amounts = _amounts()
    frames = _prebuilt(pairs, plan.messages, lambda seq: amounts[seq % len(amounts)])
    scratch = Path(tempfile.mkdtemp(prefix="balancewatch-bench-"))
    cpu: list[float] = []
    rates: list[float] = []
    spots: list[bench_cpu.Hotspot] = []
    spy = bench_cpu.py_spy()
    try:
        async with Simulator(api_key=BENCH_KEY, ping_interval=None) as sim:
            env = _scale_env(plan, url, sim, scratch)
            for name in ("BALANCEWATCH_RPC_URL", "BALANCEWATCH_RPC_MAX_RPS"):
                env.pop(name)
            await db.execute(_INSTALL_TRIGGER)
            async with _daemon_process(env) as process:
                rooms = {room_for(*pair) for pair in pairs}
                await sim.wait_for(lambda: rooms <= sim.joined_rooms(), timeout=60)
                for _ in range(plan.cpu_runs):
                    seconds, rate = await _subprocess_run(plan, sim, db, frames, process)
                    cpu.append(seconds / plan.messages * 1e6)
                    rates.append(rate)
                if spy is not None:
                    async with bench_cpu.profiled(process.pid, spy) as spots:
                        await _subprocess_run(plan, sim, db, frames, process)
    finally:
        await db.execute(_DROP_TRIGGER)
        shutil.rmtree(scratch, ignore_errors=True)
    rate = statistics.median(rates)
    results.add(
        "cpu",
        f"daemon as its own process, end to end{_each(rates, '{:,.0f}')}",
        f"{rate:,.0f} rows/s",
    )
    if results.ceiling is not None:
        results.add("cpu", "  / raw COPY ceiling", f"{rate / results.ceiling:.2f}x")
    results.add(
        "cpu",
        f"daemon CPU (user+sys) per message{_each(cpu, '{:.2f}')}",
        f"{statistics.median(cpu):.2f} us",
        "target <= 4 us",
    )
    if spy is None:
        print("  cpu      where it goes: py-spy is not installed (pip install py-spy)", flush=True)
        return
    print(
        f"  cpu      where it goes (py-spy, {bench_cpu.PROFILE_RATE} Hz, busy samples;"
        " own % / with callees %):",
        flush=True,
    )
    for spot in bench_cpu.top_own(spots, plan.profile_top):
        print(f"             {spot.own:6.1%} {spot.total:6.1%}  {spot.function}", flush=True)


async def _subprocess_run(
    plan: Plan, sim: Simulator, db: Any, frames: list[bytes], process: asyncio.subprocess.Process
) -> tuple[float, float]:
    """One ingest run to the daemon subprocess, from an empty history: its CPU seconds and
    rows a second, from the first frame written until the commit of the last row (the latency
    section's statement trigger NOTIFYs each COPY's row count, delivered at commit)."""
    await _settle(db)
    await asyncio.sleep(0.2)  # the daemon idle again after the TRUNCATE's wait
    stored = 0
    done = asyncio.Event()

    def on_commit(_conn: object, _pid: int, _channel: str, payload: object) -> None:
        nonlocal stored
        stored += int(str(payload).split(",")[2])  # min, max, count, oldest
        if stored >= plan.messages:
            done.set()

    await db.add_listener(_NOTIFY_CHANNEL, on_commit)
    try:
        cpu = bench_cpu.cpu_seconds(process.pid)
        started = time.perf_counter()
        for chunk in frames:
            await sim.write_prebuilt(chunk)

        async def all_stored() -> bool:
            return done.is_set()

        await _until(all_stored, "every row stored", timeout=120, processes=[process], every=_POLL)
        elapsed = time.perf_counter() - started
        return bench_cpu.cpu_seconds(process.pid) - cpu, plan.messages / elapsed
    finally:
        await db.remove_listener(_NOTIFY_CHANNEL, on_commit)


# -- scale: the daemon as a subprocess -------------------------------------------------------------


async def _scale(plan: Plan, url: URL, db: Any, results: Results) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="balancewatch-bench-"))
    pairs = bench_pairs(plan.scale_pairs, start=5_000_000)
    await _watch_only(db, pairs)
    # 120 s at least; a million pairs take longer than that to join (and to stop) when slow.
    patience = max(120.0, len(pairs) / 2_000)
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
            async with _daemon_process(env, stop_within=patience) as process:
                await sim.wait_for(lambda: len(joined) >= len(pairs), timeout=patience)
                all_sent = time.monotonic() - started

                async def all_acked() -> bool:
                    acked = await db.fetchval(
                        "SELECT count(*) FROM subscription_status WHERE state = 'joined'"
                    )
                    return bool(acked >= len(pairs))

                await _until(
                    all_acked, "every pair 'joined'", timeout=patience, processes=[process]
                )
                all_joined = time.monotonic() - started
                peak = _peak_rss_mb(process.pid)
                if not plan.joins_only:
                    after = await _after_the_joins(plan, sim, db, baseline + len(pairs), process)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    results.add(
        "scale", f"{len(pairs):,} pairs: start -> every join at simulator", f"{all_sent:.1f} s"
    )
    results.add(
        "scale",
        "start -> all 'joined' in subscription_status",
        f"{all_joined:.1f} s",
        "target <= 30 s" if len(pairs) <= 100_000 else "target <= 60 s (1,000,000)",
    )
    results.add(
        "scale",
        "daemon peak RSS (VmHWM)",
        f"{peak:.0f} MB",
        "target <= 120 MB (100,000)" if len(pairs) <= 100_000 else "target <= 1 GB (1,000,000)",
    )
    if plan.joins_only:
        return
    delays, snapshots_stored, snapshot_peak, idle = after
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
        f"{snapshots_stored - started:.1f} s",
    )
    results.add("scale", "daemon peak RSS after the snapshots", f"{snapshot_peak:.0f} MB")
    results.add(
        "scale",
        f"then idle, {len(pairs):,} quiet pairs: CPU over {plan.idle_seconds:g} s",
        f"{idle:.2f} % of a core",
        "target < 1 %",
    )


async def _after_the_joins(
    plan: Plan, sim: Simulator, db: Any, snapshots: int, process: asyncio.subprocess.Process
) -> tuple[list[float], float, float, float]:
    """With every pair joined: single-row changes (their delays), the snapshot round (when it
    was stored, monotonic), the peak RSS then, and the CPU of the daemon, quiet, after it."""
    seen: Seen = {}
    sim.listeners.append(_recorder(seen))
    changes = bench_pairs(plan.scale_sync_changes // 2, start=9_000_000)
    delays = await _single_row_delays(sim, db, changes, seen)
    stored = await _snapshot_round(db, snapshots, process)
    snapshot_peak = _peak_rss_mb(process.pid)
    idle = await _idle_cpu(process.pid, plan.idle_seconds)
    return delays, stored, snapshot_peak, idle


async def _idle_cpu(pid: int, seconds: float) -> float:
    """The process's CPU (user + system, from /proc/PID/stat) over `seconds`, in % of a core."""
    before, at = _cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return 100 * (_cpu_seconds(pid) - before) / (time.monotonic() - at)


def _cpu_seconds(pid: int) -> float:
    # The command name (field 2) may hold spaces: the fields after its ')' are split.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


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
async def _daemon_process(
    env: dict[str, str], *, stop_within: float = 30.0
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m balancewatch run` with `env`, stopped with SIGTERM on the way out (unless it
    has exited already: killed, or stopped by the caller), given `stop_within` s to exit."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "balancewatch", "run", env=env, stdout=subprocess.DEVNULL
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), timeout=stop_within)


_LOOK_SHARE: Final = 4.0  # a slow look waits 4 times its own length before the next


async def _until(
    done: Callable[[], Awaitable[bool]],
    what: str,
    *,
    timeout: float,
    processes: Sequence[asyncio.subprocess.Process] = (),
    every: float = 0.05,
) -> None:
    """Look at `done` every `every` seconds (or, for a slow look, 4 times its length) until
    it is true; an error if one of `processes` exits first, or once `timeout` has passed
    (`what` names what was awaited)."""
    deadline = time.monotonic() + timeout
    while True:
        asked = time.monotonic()
        if await done():
            return
        for process in processes:
            if process.returncode is not None:
                raise RuntimeError(f"a daemon exited with {process.returncode}: not {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not {what} after {timeout:g} s")
        # A slow look (a count over a million rows) is not repeated back to back: it would
        # keep one of the 2 cores busy, taken from the daemon being measured. What it waits
        # for is then seen late by up to 5 looks' time, never early.
        await asyncio.sleep(max(every, _LOOK_SHARE * (time.monotonic() - asked)))


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


# -- helpers ---------------------------------------------------------------------------------------


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
