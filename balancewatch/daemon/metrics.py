"""What the daemon tells about itself: the state of every pair and whole wallet, and the
Prometheus metrics.

Nothing here runs per message. The counters the pieces keep anyway (`Ingest.messages`,
`Writer.rows_written`, `DatastreamClient.connections`...) are read by a collector when
`/metrics` is scraped; the write histograms are observed once per committed write. Each daemon
has a registry of its own (never the global one), so a test can run several.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from balancewatch.chain.answers import FailureReason
from balancewatch.chain.rpc import RequestOutcome
from balancewatch.daemon.leases import Handover, RoundResult
from balancewatch.domain import (
    CHAIN_READ_RESULTS,
    PAIR_STATES,
    ChainReadKind,
    ChainReadResult,
    PairState,
    Watch,
)
from balancewatch.pipeline.bookkeeping import TABLES as BOOKKEEPING_TABLES
from balancewatch.pipeline.bookkeeping import Table
from balancewatch.progress import Progress

Label = TypeVar("Label", bound=str)

# What a watch is: one token of a wallet, or every token of it (token None). Counted apart.
WatchKind = Literal["pair", "wallet"]


def kind_of(watch: Watch) -> WatchKind:
    return "pair" if watch[1] is not None else "wallet"


_BATCH_ROWS_BUCKETS: Final = (1, 10, 50, 100, 500, 1000, 2500, 5000, 10_000, 50_000)
_WRITE_SECONDS_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class StatusSink(Protocol):
    def set_status(
        self, pairs: Iterable[Watch], state: PairState, error: str | None = None
    ) -> None: ...


class PairStates:
    """The last state of every watch (pair or whole wallet), kept as the subscriptions record
    it (each change is passed on to the writer, which stores it in subscription_status), and
    how many of each kind are in each state. One dict update per state change, never per
    message. Logs the progress of a large join."""

    def __init__(self, sink: StatusSink) -> None:
        self._sink = sink
        self.states: dict[Watch, PairState] = {}
        self.counts: Counter[tuple[WatchKind, PairState]] = Counter()
        self._joins = Progress("subscriptions.join_progress")

    def set_status(
        self, pairs: Collection[Watch], state: PairState, error: str | None = None
    ) -> None:
        self._sink.set_status(pairs, state, error)
        for pair in pairs:
            previous = self.states.get(pair)
            if previous != state:
                kind = kind_of(pair)
                if previous is not None:
                    self.counts[kind, previous] -= 1
                self.counts[kind, state] += 1
                self.states[pair] = state
        self._join_progress()

    def _in(self, state: PairState) -> int:
        """Watches of either kind in `state`: a wallet's room is joined as a pair's is."""
        return self.counts["pair", state] + self.counts["wallet", state]

    def _join_progress(self) -> None:
        joining = self._in("joining")
        if not self._joins.active:
            if joining:
                self._joins.start()
            return
        settled = self._in("joined") + self._in("error")
        if joining:
            self._joins.update(joined=settled, of=settled + joining)
        else:
            self._joins.finish("subscriptions.join_done", joined=settled)


class WriteMetrics:
    """The write histograms and the newest stored row, observed once per committed write."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.batch_rows = Histogram(
            "balancewatch_write_batch_rows",
            "Balance rows per committed write (writes of status or rejects only are left out).",
            buckets=_BATCH_ROWS_BUCKETS,
            registry=registry,
        )
        self.seconds = Histogram(
            "balancewatch_write_seconds",
            "Seconds per committed write transaction.",
            buckets=_WRITE_SECONDS_BUCKETS,
            registry=registry,
        )
        self.newest_stored: datetime | None = None

    def observe(self, rows: int, seconds: float, newest: datetime | None) -> None:
        self.seconds.observe(seconds)
        if rows:
            self.batch_rows.observe(rows)
        if newest is not None and (self.newest_stored is None or newest > self.newest_stored):
            self.newest_stored = newest


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The daemon's plain counters at one moment (built by supervisor.Daemon.snapshot)."""

    messages: int
    rows_written: int
    rejected: Mapping[str, int]
    rejected_dropped: int
    bookkeeping_failures: Mapping[Table, int]
    bookkeeping_pending: Mapping[Table, int]
    pairs_listening: int
    watch_counts: Mapping[tuple[WatchKind, PairState], int]  # pairs and whole wallets, by state
    connected: bool
    connections: int
    pending_in_memory: int
    pending_in_spool: int
    spool_bytes: int
    reading_paused: bool
    newest_stored: datetime | None
    database_up: bool | None
    shards: ShardCounts | None = None
    chain: ChainCounts | None = None  # None: no RPC URL, nothing read from the chain
    partitions_dropped: int = 0  # partitions dropped by the retention
    default_partition_rows: int | None = None  # None: not counted yet
    ready: bool | None = None  # what /readyz would answer; None: the database not checked yet


@dataclass(frozen=True, slots=True)
class ShardCounts:
    """This replica's leases, and what they did since the start."""

    held: int
    total: int
    alone: bool  # the only live replica at the last round
    rounds: Mapping[RoundResult, int]
    handovers: Mapping[Handover, int]
    fenced: Mapping[str, int]  # messages refused by each fencing layer


@dataclass(frozen=True, slots=True)
class ChainCounts:
    """What the chain reads did since the start."""

    results: Mapping[tuple[ChainReadKind, ChainReadResult], int]
    refused: Mapping[FailureReason, int]  # RPC answers not taken, by reason
    requests: Mapping[RequestOutcome, int]  # RPC requests, by outcome
    snapshot_queue: int


class DaemonCollector(Collector):
    """Reads the daemon's plain counters at scrape time."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        c = self._snapshot()
        yield _counter("messages_received", "Balance messages received and queued.", c.messages)
        yield _counter("rows_written", "Balance rows committed to balance_history.", c.rows_written)
        yield _labelled(
            CounterMetricFamily,
            "frames_rejected",
            "Frames not stored as a balance.",
            "reason",
            c.rejected,
        )
        yield _counter(
            "rejected_frames_dropped",
            "Rejected frames dropped unstored (too many waiting for the database).",
            c.rejected_dropped,
        )
        yield _by_table(
            CounterMetricFamily,
            "bookkeeping_write_failures",
            "Failed writes of subscription states or rejected frames (retried; balance rows "
            "are written regardless).",
            c.bookkeeping_failures,
        )
        yield _by_table(
            GaugeMetricFamily,
            "bookkeeping_pending",
            "Subscription states or rejected frames waiting to be written.",
            c.bookkeeping_pending,
        )
        yield _states("pairs", "Watchlist pairs by subscription state.", "pair", c.watch_counts)
        yield _states(
            "wallets",
            "Whole wallets (all-tokens watchlist rows) by subscription state.",
            "wallet",
            c.watch_counts,
        )
        yield _gauge(
            "pairs_listening",
            "Pairs in a listening period now (their join acknowledged on the open connection).",
            c.pairs_listening,
        )
        yield _gauge("websocket_connected", "1 while the websocket is open.", int(c.connected))
        yield _counter("websocket_connections", "Websocket connections opened.", c.connections)
        yield _counter(
            "websocket_reconnects",
            "Websocket connections opened after the first.",
            max(0, c.connections - 1),
        )
        pending = GaugeMetricFamily(
            "balancewatch_pending_rows", "Rows received and not stored yet.", labels=["where"]
        )
        pending.add_metric(["memory"], c.pending_in_memory)
        pending.add_metric(["spool"], c.pending_in_spool)
        yield pending
        yield _gauge("spool_bytes", "Bytes in the spool.", c.spool_bytes)
        yield _gauge(
            "reading_paused", "1 while reading waits for the spool to drain.", int(c.reading_paused)
        )
        if c.newest_stored is not None:
            age = (datetime.now(UTC) - c.newest_stored).total_seconds()
            yield _gauge(
                "newest_row_age_seconds",
                "Seconds since the newest row this process stored was received.",
                max(0.0, age),
            )
        if c.database_up is not None:
            yield _gauge(
                "database_up", "1 if the database answered the last check.", int(c.database_up)
            )
        if c.ready is not None:
            # An alert on readiness needs it as a series: Prometheus cannot probe /readyz.
            yield _gauge("ready", "1 while /readyz answers 200 (ready).", int(c.ready))
        yield _counter(
            "partitions_dropped",
            "Partitions of the history dropped by the retention (rollups kept).",
            c.partitions_dropped,
        )
        if c.default_partition_rows is not None:
            yield _gauge(
                "default_partition_rows",
                "Rows in the history's default partition: of a time no partition covers (a "
                "clock far off, or partitions not made ahead). Normally 0.",
                c.default_partition_rows,
            )
        yield _gauge(
            "rpc_configured",
            "1 if an RPC URL is set (snapshots, checks).",
            int(c.chain is not None),
        )
        if c.shards is not None:
            yield from _shard_metrics(c.shards)
        if c.chain is not None:
            yield from _chain_metrics(c.chain)


def _shard_metrics(shards: ShardCounts) -> Iterable[Metric]:
    yield _gauge("shards_held", "Shards whose lease this replica holds.", shards.held)
    yield _gauge("shard_count", "Shards the pairs are spread over.", shards.total)
    yield _gauge(
        "replica_alone",
        "1 if this replica was the only live one at its last lease round.",
        int(shards.alone),
    )
    yield _labelled(
        CounterMetricFamily,
        "lease_rounds",
        "Lease rounds (heartbeat, renewals, claims), renewed or failed.",
        "result",
        shards.rounds,
    )
    yield _labelled(
        CounterMetricFamily,
        "shard_handovers",
        "Shards claimed, released to another replica, or lost (not renewed in time).",
        "kind",
        shards.handovers,
    )
    yield _labelled(
        CounterMetricFamily,
        "messages_fenced",
        "Messages not stored because their shard's lease had been lost: refused on arrival "
        "(ingest) or in the write transaction (database).",
        "layer",
        shards.fenced,
    )


def _chain_metrics(chain: ChainCounts) -> Iterable[Metric]:
    kinds: tuple[tuple[ChainReadKind, str, str], ...] = (
        ("snapshot", "snapshots", "Balances read from the chain as a listening period started."),
        ("check", "balance_checks", "Stored balances checked against the chain (drift: wrong)."),
    )
    for kind, name, documentation in kinds:
        family = CounterMetricFamily(f"balancewatch_{name}", documentation, labels=["result"])
        for result in CHAIN_READ_RESULTS:
            if kind == "check" or result in ("stored", "failed"):
                family.add_metric([result], chain.results.get((kind, result), 0))
        yield family
    yield _gauge("snapshot_queue", "Pairs waiting for their snapshot.", chain.snapshot_queue)
    yield _labelled(
        CounterMetricFamily, "rpc_requests", "RPC requests, by outcome.", "outcome", chain.requests
    )
    yield _labelled(
        CounterMetricFamily,
        "rpc_answers_refused",
        "RPC answers not taken as a balance, by reason (kept in rpc_failures).",
        "reason",
        chain.refused,
    )


def _states(
    name: str,
    documentation: str,
    kind: WatchKind,
    counts: Mapping[tuple[WatchKind, PairState], int],
) -> Metric:
    """Every state, 0 included, so that a dashboard's series never vanish."""
    metric = GaugeMetricFamily(f"balancewatch_{name}", documentation, labels=["state"])
    for state in PAIR_STATES:
        metric.add_metric([state], counts.get((kind, state), 0))
    return metric


def _labelled(
    family: type[CounterMetricFamily | GaugeMetricFamily],
    name: str,
    documentation: str,
    label: str,
    values: Mapping[Label, int],
) -> Metric:
    metric = family(f"balancewatch_{name}", documentation, labels=[label])
    for value, count in sorted(values.items()):
        metric.add_metric([value], count)
    return metric


def _by_table(
    family: type[CounterMetricFamily | GaugeMetricFamily],
    name: str,
    documentation: str,
    values: Mapping[Table, int],
) -> Metric:
    metric = family(f"balancewatch_{name}", documentation, labels=["table"])
    for table in BOOKKEEPING_TABLES:
        metric.add_metric([table], values.get(table, 0))
    return metric


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"balancewatch_{name}", documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"balancewatch_{name}", documentation, value=value)
