"""`balancewatch bench --history N`: the README's queries on a large history.

Run alone, instead of the other sections (`bench`): how long the README's numbered
queries, `latest_balance`, `balance_daily` (where the schema has it), `status` and
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
import random
import re
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from importlib import metadata
from itertools import accumulate, pairwise
from pathlib import Path
from typing import Final, cast

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch import logs
from balancewatch.daemon.partitions import CHECK_INTERVAL, PartitionKeeper, missing_spans
from balancewatch.devtools.benchkit import bench_pairs, checkpoint, migrated, on_a_server
from balancewatch.domain import BASE58_PATTERN, EndReason, Pair
from balancewatch.pipeline.pair_ids import PairIds
from balancewatch.pipeline.records import balance_line, stamp_from_micros
from balancewatch.pipeline.replay import store_lines
from balancewatch.progress import Progress, shown
from balancewatch.settings import DEFAULT_PARTITION, PARTITION_DAYS
from balancewatch.store import chain, leases, partitions
from balancewatch.store.db import RawConnection
from balancewatch.store.history import fetch, fetch_gaps
from balancewatch.store.reports import gather

# -- the command -------------------------------------------------------------------------------

# The options of the other sections, which `--history` does not run.
_OTHER_OPTIONS = ("messages", "quick", "flush_interval", "uvloop", "pairs_joined")


def command(args: argparse.Namespace) -> int:
    """`balancewatch bench --history N`: only the history section, alone."""
    other = [f"--{name.replace('_', '-')}" for name in _OTHER_OPTIONS if getattr(args, name)]
    if other:
        print(
            f"balancewatch bench: --history runs alone, without {', '.join(other)}", file=sys.stderr
        )
        return 2
    pairs = HISTORY_PAIRS if args.pairs is None else args.pairs
    width = PARTITION_DAYS.get(args.partition or DEFAULT_PARTITION)
    if width is None:
        print("balancewatch bench: --partition must be 1d or 7d", file=sys.stderr)
        return 2
    return on_a_server(
        args.database_url, lambda url: asyncio.run(_history(args.history, pairs, width, url))
    )


async def _history(rows: int, pairs: int, width: int, server_url: URL) -> None:
    async with migrated(server_url) as (_, engine, db):
        # The load's progress lines (info) on stderr, the table on stdout; set after the
        # migrations, whose own lines say nothing here.
        logs.configure(level="info", stream=sys.stderr)
        await _history_section(db, engine, rows, bench_pairs(pairs), width)
    print("done", flush=True)


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
_DAILY_ROWS: Final = (
    "SELECT p.wallet, p.token, d.day, d.first, d.last, d.low, d.high, d.messages "
    "FROM daily_rows d JOIN pairs p USING (pair_id) WHERE d.day >= current_date - 30"
)
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
    db: RawConnection, engine: AsyncEngine, count: int, pairs: Sequence[Pair], width: int
) -> None:
    """Load `count` rows over `pairs` into the migrated database behind `db` and `engine`, in
    partitions `width` days wide, and print what the history takes on disk and each query's
    time."""
    await _describe_server(db, count, len(pairs), width)
    newest = datetime.now(UTC)
    periods = listening(newest)
    await _watch(db, pairs, periods, newest)
    await _made_ahead(engine, newest, width)
    sample = await _load(db, count, pairs, periods, newest)
    await _kept(engine, newest)
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


async def _made_ahead(engine: AsyncEngine, newest: datetime, width: int) -> None:
    """The partitions of the history's days, as the partitions keeper of a daemon running
    through those days would have made them ahead: without them, every row before today would
    land in the default partition. The days the migrations made partitions of keep those."""
    first = (newest - HISTORY_SPAN).date()
    ahead = (newest.date() - first).days
    await partitions.create(engine, lambda existing: missing_spans(first, existing, width, ahead))


async def _kept(engine: AsyncEngine, newest: datetime) -> None:
    """The history rolled up and the closed partitions' indexes packed, as a daemon running
    through those days would have done (its partitions keeper), whose last turn was a turn's
    interval before the newest row: the most raw rows `balance_daily` reads live (its grace
    and an interval's)."""
    last_turn = newest - timedelta(seconds=CHECK_INTERVAL)
    keeper = PartitionKeeper(engine, now=lambda: last_turn)
    started = time.monotonic()
    days = await keeper.roll_up()
    print(f"  {len(days)} closed days rolled up in {time.monotonic() - started:.1f} s", flush=True)
    started = time.monotonic()
    packed = await keeper.pack()
    print(f"  {len(packed)} partitions packed in {time.monotonic() - started:.1f} s", flush=True)


async def _describe_server(db: RawConnection, count: int, pairs: int, width: int) -> None:
    version = await db.fetchval("SHOW server_version")
    settings = [
        f"{name} {await db.fetchval(f'SHOW {name}')}"
        for name in ("shared_buffers", "work_mem", "jit")
    ]
    print(f"  Postgres {version}; {', '.join(settings)}", flush=True)
    print(
        f"  history: {count:,} rows over {pairs:,} pairs, the last {HISTORY_SPAN.days} days, "
        f"in partitions of {width} {'day' if width == 1 else 'days'}",
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
    started, loaded, last = time.perf_counter(), 0, 0
    with shown(progress, f"loading {count:,} rows", count) as step:
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
                step(loaded, rows=loaded, of=count)
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
    await checkpoint(db)
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
        *await _daily(db),
        await _time("status (store.reports.gather)", _status(engine)),
        await _time(
            f"history of one pair (newest {HISTORY_LIMIT}, gaps)", _one_pairs_history(engine, pair)
        ),
    ]


async def _daily(db: RawConnection) -> list[Timing]:
    """The daily rollups of the last 30 days, where the schema has them (issue 13's): sent to
    the client; run in the server only; and, for scale, as many rows sent from a plain join
    of the rollup table (what no view of them can go under)."""
    name = "balance_daily, the last 30 days"
    if not await db.fetchval("SELECT to_regclass('balance_daily') IS NOT NULL"):
        return [Timing(name, note="not in this schema")]
    return [
        await _time(name, _statement(db, _DAILY)),
        await _time("  the same, in the server (EXPLAIN ANALYZE)", _in_the_server(db, _DAILY)),
        await _time("  as many rows of daily_rows JOIN pairs, sent", _statement(db, _DAILY_ROWS)),
    ]


def _in_the_server(db: RawConnection, sql: str) -> Callable[[], Awaitable[None]]:
    """`sql` run to its end, its rows left in the server: the query's own time."""

    async def run() -> None:
        await db.execute(f"EXPLAIN (ANALYZE, TIMING OFF) {sql}")

    return run


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
