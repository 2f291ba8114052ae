"""The composition root: builds every piece of the daemon, wires them, runs them, stops them.

`Daemon.open` is the one way to build it. Reading stops first (the websocket and the
watchlist sync); then the writers (balance rows, and the bookkeeping of pair states and
rejected frames) store what was read and return. If any long-lived task dies, the others are
stopped and the error reaches the caller, so the process exits instead of running half-alive
(the container restarts it); the writers still drain what they hold on the way out. The HTTP
endpoints (health, readiness, metrics) are one more reader; their address is bound before
anything starts, so a port in use stops the daemon before it reads a frame. With an RPC URL,
the chain reads (a snapshot at each period's start, checks on a schedule) are one more: they
hand their rows to the bookkeeping, and the stream never waits for them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from decimal import Decimal

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch import logs
from balancewatch.aio import run_to_exit_code
from balancewatch.chain.rpc import RequestOutcome, RpcConfig, SolanaRpc
from balancewatch.daemon.chain_reads import BalanceReader, ChainReads, ChainReadsConfig
from balancewatch.daemon.coverage import Coverage, holder_name
from balancewatch.daemon.datastream import DatastreamClient, StreamConfig
from balancewatch.daemon.http import DatabaseProbe, HttpServer, Readiness
from balancewatch.daemon.ingest import Ingest, MessageWatch
from balancewatch.daemon.leases import LeaseConfig, LeaseKeeper
from balancewatch.daemon.metrics import (
    ChainCounts,
    DaemonCollector,
    PairStates,
    ShardCounts,
    Snapshot,
    WriteMetrics,
)
from balancewatch.daemon.partitions import PartitionKeeper
from balancewatch.daemon.sharding import ShardedRooms
from balancewatch.daemon.signals import stop_on_signals
from balancewatch.daemon.subscriptions import Subscriptions
from balancewatch.daemon.sync import SyncConfig, WatchlistSync
from balancewatch.domain import DEFAULT_SHARDS, SETTLED_STATES, Pair
from balancewatch.errors import StartupError
from balancewatch.logs import get_logger
from balancewatch.pipeline.bookkeeping import Bookkeeping, BookkeepingConfig
from balancewatch.pipeline.spool import Spool
from balancewatch.pipeline.writer import Writer, WriterConfig
from balancewatch.settings import Settings, config_from, load_settings
from balancewatch.store import chain, leases, migrate
from balancewatch.store.db import create_engine, describe
from balancewatch.store.leases import Member

log = get_logger(__name__)


class SchemaNotReady(StartupError):
    event = "daemon.schema_not_ready"


class Daemon:
    """The pieces of a running balancewatch, wired together; built by `Daemon.open`."""

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[Daemon]:
        """The one way to build a daemon (`run`, the demo, the bench and the tests all use it):
        its engine and spool opened, the schema checked, the start logged; closed on exit."""
        engine = create_engine(settings.sqlalchemy_url)
        rpc_requests: Counter[RequestOutcome] = Counter()
        try:
            await check_schema(engine)
            shards = await leases.shard_count(engine)
            with open_spool(settings) as spool:
                async with open_rpc(settings, rpc_requests) as rpc:
                    _log_start(settings, spool)
                    yield cls(settings, engine, spool, (rpc, rpc_requests), shards)
        finally:
            await engine.dispose()

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        spool: Spool,
        rpc: tuple[BalanceReader | None, Counter[RequestOutcome]],
        shards: int = DEFAULT_SHARDS,
    ) -> None:
        url = settings.sqlalchemy_url
        self.spool = spool
        self.registry = CollectorRegistry()
        self.write_metrics = WriteMetrics(self.registry)
        self.writer = Writer(
            url, spool, WriterConfig.from_settings(settings), self.write_metrics.observe
        )
        self.holder = holder_name(settings.replica_id)
        self.bookkeeping = Bookkeeping(
            url, BookkeepingConfig.from_settings(settings), holder=self.holder
        )
        # Between the subscriptions and the bookkeeping: the last state of each pair, in memory.
        self.pair_states = PairStates(self.bookkeeping)
        self.coverage = Coverage(self.bookkeeping)
        self.subscriptions = Subscriptions(
            self.pair_states,
            self.coverage,
            join_ack_timeout=settings.join_ack_timeout,
            join_retry_max=settings.backoff_max,
        )
        # Of the rooms the watchlist wants, the subscriptions get those of the shards held.
        self.rooms = ShardedRooms(self.subscriptions, shards)
        self.sync = WatchlistSync(engine, url, self.rooms, config_from(settings, SyncConfig))
        self.partitions = PartitionKeeper(
            engine, width=settings.partition_days, retention=settings.retention
        )
        self.leases = LeaseKeeper(
            url,
            self.rooms,
            Member(
                self.holder,
                settings.replica_id,
                socket.gethostname(),
                str(settings.spool_dir.resolve()),
            ),
            LeaseConfig(ttl=settings.lease_ttl, timeout=settings.connect_timeout),
            settle=self._settle_handover,
            pairs_held=lambda: self.subscriptions.wanted_count,
        )
        watch = MessageWatch()
        self.ingest = Ingest(
            self.subscriptions,
            self.writer,
            self.bookkeeping,
            max_frame_bytes=settings.max_frame_bytes,
            rejected_frame_chars=settings.rejected_frame_chars,
            watch=watch,
            epoch_for=self.rooms.epoch_for,
        )
        reader, self.rpc_requests = rpc
        self.chain_reads = (
            None if reader is None else self._chain_reads(settings, engine, reader, watch)
        )
        self.client = DatastreamClient(
            config_from(settings, StreamConfig),
            settings.datastream_key,
            self.ingest,
            # No read of the watchlist here: the wanted rooms follow the table whether or not
            # the websocket is up (sync.py), and at start that read came on top of the sync's
            # own first one, a second copy of a million rows while they were being joined.
            on_connected=self.subscriptions.connected,
            on_disconnected=self.subscriptions.disconnected,
            while_connected=self.subscriptions.retry_unacked_joins,
            before_close=self.subscriptions.leave_all,
            may_read=self.writer.may_read,
        )
        self.database = DatabaseProbe(engine)
        self.registry.register(DaemonCollector(self.snapshot))
        self.http = HttpServer(
            settings.http_host,
            settings.http_port,
            readiness=self.readiness,
            database=self.database,
            registry=self.registry,
        )

    def _chain_reads(
        self, settings: Settings, engine: AsyncEngine, reader: BalanceReader, watch: MessageWatch
    ) -> ChainReads:
        async def newest(pairs: Sequence[Pair]) -> dict[Pair, Decimal]:
            return await chain.newest_amounts(engine, pairs)

        async def newest_of(wallets: Sequence[str]) -> dict[Pair, Decimal]:
            return await chain.newest_amounts_of(engine, wallets)

        reads = ChainReads(
            reader,
            newest,
            newest_of,
            self.bookkeeping,
            ChainReadsConfig.from_settings(settings),
            listening=self.coverage.open_pairs,
            watch=watch,
        )
        self.coverage.watchers.append(reads)
        return reads

    async def _settle_handover(self, seconds: float) -> None:
        await self.client.round_trip(seconds / 2)
        await self.writer.caught_up(seconds / 2)

    def readiness(self) -> Readiness:
        # Read in place, not copied: a probe every few seconds, with 100,000 pairs wanted.
        wanted = self.subscriptions.wanted_watches
        states = self.pair_states.states
        pending = sum(states.get(pair) not in SETTLED_STATES for pair in wanted)
        return Readiness(
            websocket_connected=self.client.connected,
            watchlist_read=self.sync.reconciles > 0,
            pairs_wanted=len(wanted),
            pairs_pending=pending,
            leases_trusted=self.rooms.trusted,
        )

    def snapshot(self) -> Snapshot:
        return Snapshot(
            messages=self.ingest.messages,
            rows_written=self.writer.rows_written,
            rejected=dict(self.ingest.rejected),
            rejected_dropped=self.bookkeeping.rejected_dropped,
            bookkeeping_failures=dict(self.bookkeeping.failures),
            bookkeeping_pending=self.bookkeeping.pending,
            pairs_listening=self.coverage.listening,
            watch_counts=dict(self.pair_states.counts),
            connected=self.client.connected,
            connections=self.client.connections,
            pending_in_memory=self.writer.pending_in_memory,
            pending_in_spool=self.writer.pending_rows - self.writer.pending_in_memory,
            spool_bytes=self.spool.total_bytes,
            reading_paused=not self.writer.may_read.is_set(),
            newest_stored=self.write_metrics.newest_stored,
            database_up=self.database.up,
            shards=ShardCounts(
                held=len(self.rooms.held),
                total=self.rooms.shards,
                alone=self.rooms.alone,
                rounds=dict(self.leases.renewals),
                handovers=dict(self.leases.handovers),
                fenced={"ingest": self.ingest.fenced, "database": self.writer.rows_fenced},
            ),
            chain=self._chain_counts(),
            partitions_dropped=self.partitions.dropped,
            default_partition_rows=self.partitions.default_rows,
            ready=self._ready(),
        )

    def _ready(self) -> bool | None:
        """What /readyz would answer now, from the last database check (None before it)."""
        if self.database.up is None:
            return None
        return not self.readiness().failing(self.database.error)

    def _chain_counts(self) -> ChainCounts | None:
        reads = self.chain_reads
        if reads is None:
            return None
        return ChainCounts(
            results=dict(reads.results),
            refused=dict(reads.refused),
            requests=dict(self.rpc_requests),
            snapshot_queue=reads.snapshot_queue,
        )

    async def run(self, stop: asyncio.Event) -> None:
        # Bound first: an address in use stops the daemon before it reads anything.
        await self.http.start()
        drain = asyncio.Event()
        # The writers run outside the readers' task group: whatever ends the readers, even a
        # crash, they still get to write what was read. A dead writer stops the readers.
        writers = [
            asyncio.create_task(self.writer.run(drain)),
            asyncio.create_task(self.bookkeeping.run(drain)),
        ]
        for writer in writers:
            writer.add_done_callback(lambda _: stop.set())
        try:
            async with asyncio.TaskGroup() as readers:
                readers.create_task(self.client.run(stop))
                readers.create_task(self.sync.run(stop))
                readers.create_task(self.leases.run(stop))
                readers.create_task(self.partitions.run(stop))
                readers.create_task(self.http.serve(stop))
                readers.create_task(
                    self.coverage.confirm_until(stop, self.client.last_sign_of_life)
                )
                if self.chain_reads is not None:
                    readers.create_task(self.chain_reads.run(stop))
        finally:
            drain.set()
            await asyncio.wait(writers)  # both drain, even when one of them failed
            # What was received is stored: the other replicas may take the shards now.
            await self.leases.retire()
            for writer in writers:
                writer.result()
        log.info(
            "daemon.stopped",
            messages=self.ingest.messages,
            rows_written=self.writer.rows_written,
            rejected=dict(self.ingest.rejected),
        )


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run a daemon built from `settings` until `stop` is set: what `balancewatch run` does."""
    async with Daemon.open(settings) as daemon:
        await daemon.run(stop)


def run_command(_: argparse.Namespace) -> int:
    """`balancewatch run`: the daemon in the foreground until SIGTERM or SIGINT."""
    settings = load_settings(need_key=True)
    logs.configure(settings.log_level, settings.log_format, secrets=settings.secrets())

    async def daemon() -> None:
        stop = asyncio.Event()
        with stop_on_signals(stop):
            await serve(settings, stop)

    return run_to_exit_code(daemon)


async def check_schema(engine: AsyncEngine) -> None:
    current = await migrate.current_revision(engine)
    head = migrate.head_revision()
    if current != head:
        raise SchemaNotReady(
            f"the database schema is at revision {current or 'none'}, not {head}: "
            "run `balancewatch migrate` first"
        )


@contextlib.asynccontextmanager
async def open_rpc(
    settings: Settings, requests: Counter[RequestOutcome]
) -> AsyncIterator[SolanaRpc | None]:
    """The Solana RPC client, if a URL is set; each request's outcome counted in `requests`."""
    url = settings.rpc_endpoint()
    if url is None:
        log.warning(
            "daemon.no_rpc_url",
            message="BALANCEWATCH_RPC_URL is not set: no snapshots and no checks of balances "
            "against the chain; listening periods are still recorded",
        )
        yield None
        return

    def count(outcome: RequestOutcome) -> None:
        requests[outcome] += 1

    config = RpcConfig(
        url=url,
        max_rps=settings.rpc_max_rps,
        batch_size=settings.rpc_batch_size,
        timeout=settings.rpc_timeout,
    )
    async with SolanaRpc(config, on_request=count) as rpc:
        yield rpc


@contextlib.contextmanager
def open_spool(settings: Settings) -> Iterator[Spool]:
    # Several segments fit in the bound, so a replay frees space as it goes.
    spool = Spool(
        settings.spool_dir, segment_bytes=min(64 * 1024 * 1024, settings.spool_max_bytes // 8)
    )
    spool.open()
    try:
        yield spool
    finally:
        spool.close()


def _log_start(settings: Settings, spool: Spool) -> None:
    if settings.datastream_url.startswith("ws://"):
        log.warning(
            "daemon.plaintext_datastream",
            message="datastream_url is ws://, not wss://: the key travels unencrypted",
        )
    log.info(
        "daemon.starting",
        database=describe(settings.sqlalchemy_url),
        spool=str(settings.spool_dir),
        spool_mode=settings.spool_mode,
        spooled_bytes=spool.total_bytes,
    )
