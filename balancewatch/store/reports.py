"""What `balancewatch status` reads from the database, each query cheap on a large history.

The newest row is found in `latest_rows` (a row per pair); "rows in the last hour" sums the
hour's minutes in `minute_rows` and counts only the rows of its first, partial minute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from balancewatch.store.history import gaps_query

PROBLEMS_SHOWN: Final = 20


@dataclass(frozen=True, slots=True)
class Problem:
    wallet: str
    token: str | None  # None: the wallet's all-tokens row
    state: str
    since: datetime | None
    error: str | None


@dataclass(slots=True)
class Watches:
    """The watchlist rows of one kind: pairs, or whole wallets (token NULL)."""

    states: dict[str, int] = field(default_factory=dict)  # the enabled ones by state
    disabled: int = 0
    listening: int = 0  # enabled, in an open listening period (a pair's own, or its wallet's)


@dataclass(slots=True)
class Report:
    now: datetime
    pairs: Watches = field(default_factory=Watches)
    wallets: Watches = field(default_factory=Watches)
    problems: list[Problem] = field(default_factory=list)
    more_problems: int = 0
    rows_last_minute: int = 0
    rows_last_hour: int = 0
    newest_age: timedelta | None = None
    rejected: list[tuple[str, int, datetime]] = field(default_factory=list)  # last 24 h
    gapped: int = 0  # enabled rows with a gap in their listening in the last 24 h
    uncovered: timedelta = timedelta(0)  # those gaps' time within the 24 h, added up
    snapshot_queue: int = 0  # pairs waiting for a snapshot, in the daemons confirming now
    chain_reads: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, result)
    rpc_failures: list[tuple[str, int, datetime]] = field(default_factory=list)  # last 24 h
    replicas: list[Replica] = field(default_factory=list)  # the live ones
    shards: int = 0
    unowned_shards: list[int] = field(default_factory=list)  # no live owner now


@dataclass(frozen=True, slots=True)
class Replica:
    replica_id: str
    instance: str
    heard: timedelta  # since its last heartbeat
    shards: int
    pairs: int


# A row's status is joined on (wallet, coalesce(token, '')), subscription_status's unique key,
# so that a whole wallet (token NULL) finds its own: a join on that key hashes, where IS NOT
# DISTINCT FROM compared every row of a wallet with every other.
_WATCHES = """
SELECT w.token IS NULL AS whole_wallet, w.enabled, coalesce(s.state, 'not seen') AS state,
       count(*) AS n
FROM watchlist w LEFT JOIN subscription_status s
  ON s.wallet = w.wallet AND coalesce(s.token, '') = coalesce(w.token, '')
GROUP BY 1, 2, 3
"""
_PROBLEMS = """
SELECT w.wallet, w.token, s.state, s.since, s.last_error, count(*) OVER () AS total
FROM watchlist w JOIN subscription_status s
  ON s.wallet = w.wallet AND coalesce(s.token, '') = coalesce(w.token, '')
WHERE w.enabled
  AND (s.state IN ('error', 'invalid') OR (s.state = 'joining' AND s.last_error IS NOT NULL))
ORDER BY s.since LIMIT :limit
"""
# An enabled row is listened to through its own room; a pair also through its wallet's (then
# `covered`). Two EXISTS, not one with an OR: each is a hashed subplan of the open periods
# (coverage_open_idx), probed once a row, with no DISTINCT of the rooms to join.
_LISTENING = """
SELECT count(*) FILTER (WHERE w.token IS NOT NULL) AS pairs,
       count(*) FILTER (WHERE w.token IS NULL) AS wallets
FROM watchlist w
WHERE w.enabled AND (
    EXISTS (SELECT FROM coverage c
            WHERE c.ended_at IS NULL AND c.wallet = w.wallet AND c.token = w.token)
    OR EXISTS (SELECT FROM coverage c
               WHERE c.ended_at IS NULL AND c.wallet = w.wallet AND c.token IS NULL)
)
"""
# A gap: when an enabled row was listened to neither through its own room nor (a pair)
# through its wallet's, the part of it inside the last 24 hours. Only the periods still open or
# ended in them are read (coverage_open_idx and a range of coverage_ended_at_idx), never every
# period kept; each join reads them itself (cheaper than keeping them in a CTE for both).
#
# Of the periods that ended before the 24 hours only whether there was one matters: a gap from
# the end of the last of them to a later start counts from the 24 hours' start whatever that
# end was, and it cannot reach further than that start, where a period of the 24 hours ends.
# Nor does it matter for a row with a period of the 24 hours begun by their start (the gap
# before it ended before them): only the rows without one (none, while they are listened to)
# look for an earlier period, in coverage_pair_started_at_idx, and get one ending at the 24
# hours' start in its place.
_GAPS = gaps_query(
    """
    WITH watched AS (
        SELECT w.id AS watch, c.started_at, c.ended_at
        FROM watchlist w JOIN coverage c ON c.wallet = w.wallet AND c.token = w.token
        WHERE w.enabled AND (c.ended_at IS NULL OR c.ended_at > now() - interval '24 hours')
        UNION ALL
        SELECT w.id, c.started_at, c.ended_at
        FROM watchlist w JOIN coverage c ON c.wallet = w.wallet AND c.token IS NULL
        WHERE w.enabled AND (c.ended_at IS NULL OR c.ended_at > now() - interval '24 hours')
    ),
    unseen AS MATERIALIZED (
        SELECT w.id, w.wallet, w.token FROM watchlist w
        WHERE w.enabled AND NOT EXISTS (
            SELECT FROM watched x
            WHERE x.watch = w.id AND x.started_at <= now() - interval '24 hours'
        )
    )
    SELECT watch, started_at, coalesce(ended_at, 'infinity') AS ended_at, NULL AS end_reason
    FROM watched
    UNION ALL
    SELECT u.id, '-infinity', now() - interval '24 hours', NULL
    FROM unseen u CROSS JOIN LATERAL (
        SELECT FROM coverage c
        WHERE c.wallet = u.wallet AND (c.token = u.token OR c.token IS NULL)
          AND c.ended_at <= now() - interval '24 hours'
        LIMIT 1
    ) earlier
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
_SNAPSHOT_QUEUE = """
SELECT coalesce(sum(snapshot_queue), 0) FROM coverage_holders
WHERE confirmed_at > now() - interval '30 seconds'
"""
# Whole hours: the last 24 h counts are those of the hours that began since then.
_CHAIN_READS = """
SELECT kind, result, sum(reads) AS n FROM chain_reads
WHERE hour > now() - interval '24 hours' GROUP BY kind, result
"""
_RPC_FAILURES = """
SELECT reason, count(*) AS n, max(received_at) AS last FROM rpc_failures
WHERE received_at > now() - interval '24 hours' GROUP BY reason ORDER BY n DESC, reason
"""
_REPLICAS = """
SELECT r.replica_id, r.instance, now() - r.heartbeat_at AS heard, r.pairs_held,
       (SELECT count(*) FROM shard_leases l
        WHERE l.owner = r.instance AND l.expires_at > now()) AS shards
FROM replicas r WHERE r.heartbeat_at > now() - r.lease_ttl ORDER BY r.replica_id, r.instance
"""
# No live owner: released, expired, or held by a process that stopped heartbeating.
_UNOWNED = """
SELECT l.shard FROM shard_leases l
WHERE l.owner IS NULL OR l.expires_at <= now() OR NOT EXISTS (
    SELECT 1 FROM replicas r
    WHERE r.instance = l.owner AND r.heartbeat_at > now() - r.lease_ttl
)
ORDER BY l.shard
"""
_REJECTED = """
SELECT reason, count(*) AS n, max(received_at) AS last FROM rejected_messages
WHERE received_at > now() - interval '24 hours' GROUP BY reason ORDER BY n DESC, reason
"""


async def gather(engine: AsyncEngine) -> Report:
    async with engine.connect() as connection:
        # Small plans over thousands of rows, which the planner may price above JIT's threshold
        # (the gaps query's probes, for rows it cannot tell are few): compiling them would
        # cost more than running them. For this transaction only.
        now: datetime = (
            await connection.execute(text("SELECT now(), set_config('jit', 'off', true)"))
        ).scalar_one()
        report = Report(now=now)
        await _watches(connection, report)
        rows = (await connection.execute(text(_PROBLEMS), {"limit": PROBLEMS_SHOWN})).all()
        report.problems = [Problem(r.wallet, r.token, r.state, r.since, r.last_error) for r in rows]
        report.more_problems = max(0, (rows[0].total if rows else 0) - len(rows))
        newest = await newest_row(connection, now)
        report.newest_age = None if newest is None else now - newest
        report.rows_last_minute, report.rows_last_hour = await rows_since(
            connection, now - timedelta(minutes=1), now - timedelta(hours=1)
        )
        report.rejected = [
            (row.reason, row.n, row.last) for row in await connection.execute(text(_REJECTED))
        ]
        gaps = (await connection.execute(_GAPS)).one()
        report.gapped, report.uncovered = gaps.watches, gaps.uncovered
        await _chain(connection, report)
        await _replicas(connection, report)
        return report


async def _watches(connection: AsyncConnection, report: Report) -> None:
    """The watchlist's pairs and whole wallets by state, and how many are listened to."""
    for row in await connection.execute(text(_WATCHES)):
        watches = report.wallets if row.whole_wallet else report.pairs
        if row.enabled:
            watches.states[row.state] = row.n
        else:
            watches.disabled += row.n
    listening = (await connection.execute(text(_LISTENING))).one()
    report.pairs.listening, report.wallets.listening = listening.pairs, listening.wallets


async def _replicas(connection: AsyncConnection, report: Report) -> None:
    report.replicas = [
        Replica(row.replica_id, row.instance, row.heard, row.shards, row.pairs_held)
        for row in await connection.execute(text(_REPLICAS))
    ]
    report.shards = (
        await connection.execute(text("SELECT count(*) FROM shard_leases"))
    ).scalar_one()
    report.unowned_shards = list((await connection.execute(text(_UNOWNED))).scalars())


async def _chain(connection: AsyncConnection, report: Report) -> None:
    """What was read from the chain: the snapshot queue, reads by result, refused answers."""
    report.snapshot_queue = (await connection.execute(text(_SNAPSHOT_QUEUE))).scalar_one()
    for row in await connection.execute(text(_CHAIN_READS)):
        report.chain_reads[row.kind, row.result] = int(row.n)
    report.rpc_failures = [
        (row.reason, row.n, row.last) for row in await connection.execute(text(_RPC_FAILURES))
    ]


# Rows received after a cutoff: the whole minutes after it from minute_rows (kept by the
# triggers of migration 0021), and the rows of the cutoff's own minute after it from the
# history (a minute's range of the BRIN index, in one partition). minute_rows counts the rows
# received in the last two hours of the writer's clock; a cutoff more than 90 minutes back
# counts the rows themselves. Each count is an init plan: only the branch taken runs.
_MINUTE_END = (
    "date_bin('1 minute', CAST(:{cut} AS timestamptz), TIMESTAMPTZ '2000-01-01 00:00:00+00')"
    " + interval '1 minute'"
)
_ROWS_SINCE = """CASE WHEN :{cut} >= now() - interval '90 minutes' THEN
    (SELECT coalesce(sum(rows), 0)::bigint FROM minute_rows WHERE minute >= {end})
    + (SELECT count(*) FROM balance_rows WHERE received_at > :{cut} AND received_at < {end})
ELSE (SELECT count(*) FROM balance_rows WHERE received_at > :{cut}) END"""


async def rows_since(connection: AsyncConnection, *cutoffs: datetime) -> list[int]:
    """Rows of the history received after each cutoff, as count(*) would give them, from the
    per-minute counts for a cutoff in the last 90 minutes."""
    counts = ", ".join(
        _ROWS_SINCE.format(cut=f"cut{n}", end=_MINUTE_END.format(cut=f"cut{n}"))
        for n in range(len(cutoffs))
    )
    bound = {f"cut{n}": cutoff for n, cutoff in enumerate(cutoffs)}
    row = (await connection.execute(text(f"SELECT {counts}"), bound)).one()
    return list(row)


async def newest_row(connection: AsyncConnection, now: datetime) -> datetime | None:
    """When the newest row up to `now` was received, from each pair's newest row: a pair whose
    newest row is after `now` (a clock ahead) is left out, not looked up further back."""
    newest: datetime | None = (
        await connection.execute(
            text("SELECT max(received_at) FROM latest_rows WHERE received_at <= :now"),
            {"now": now},
        )
    ).scalar_one()
    return newest
