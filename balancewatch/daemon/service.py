"""The composition root: builds every piece of the daemon, wires them, runs them, stops them.

Reading stops first (the websocket and the watchlist sync); then the writer flushes what was
read and returns. If any long-lived task dies, the others are stopped and the error reaches
the caller, so the process exits instead of running half-alive (the container restarts it);
the writer still drains what it holds on the way out. The HTTP endpoints (health, readiness,
metrics) are one more reader; their address is bound before anything starts, so a port in use
stops the daemon before it reads a frame.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.daemon.datastream import DatastreamClient, StreamConfig
from balancewatch.daemon.http import DatabaseProbe, HttpServer, Readiness
from balancewatch.daemon.ingest import Ingest
from balancewatch.daemon.metrics import DaemonCollector, PairStates, Snapshot, WriteMetrics
from balancewatch.daemon.subscriptions import RoomSender, Subscriptions
from balancewatch.daemon.sync import SyncConfig, WatchlistSync
from balancewatch.domain import SETTLED_STATES, pair_for
from balancewatch.logs import get_logger
from balancewatch.pipeline.spool import Spool
from balancewatch.pipeline.writer import Writer, WriterConfig
from balancewatch.settings import Settings
from balancewatch.store import migrate
from balancewatch.store.db import create_engine, describe

log = get_logger(__name__)


class SchemaNotReady(RuntimeError):
    pass


class Daemon:
    """The pieces of a running balancewatch, built from the settings."""

    def __init__(self, settings: Settings, engine: AsyncEngine, spool: Spool) -> None:
        self.spool = spool
        self.registry = CollectorRegistry()
        self.write_metrics = WriteMetrics(self.registry)
        self.writer = Writer(engine, spool, writer_config(settings), self.write_metrics.observe)
        # Between the subscriptions and the writer: the last state of each pair, in memory.
        self.pair_states = PairStates(self.writer)
        self.subscriptions = Subscriptions(
            self.pair_states,
            join_ack_timeout=settings.join_ack_timeout,
            join_retry_max=settings.backoff_max,
        )
        self.sync = WatchlistSync(
            engine,
            settings.sqlalchemy_url,
            self.subscriptions,
            SyncConfig(
                reconcile_interval=settings.reconcile_interval,
                backoff_initial=settings.backoff_initial,
                backoff_max=settings.backoff_max,
                connect_timeout=settings.connect_timeout,
            ),
        )
        self.ingest = Ingest(
            self.subscriptions,
            self.writer,
            max_frame_bytes=settings.max_frame_bytes,
            rejected_frame_chars=settings.rejected_frame_chars,
        )
        self.client = DatastreamClient(
            StreamConfig(
                base_url=settings.datastream_url,
                backoff_initial=settings.backoff_initial,
                backoff_max=settings.backoff_max,
                backoff_reset_after=settings.backoff_reset_after,
                connect_timeout=settings.connect_timeout,
                keepalive_interval=settings.keepalive_interval,
                idle_timeout=settings.idle_timeout,
                max_frame_bytes=settings.max_frame_bytes,
            ),
            settings.datastream_key,
            self.ingest,
            on_connected=self._connected,
            on_disconnected=self.subscriptions.disconnected,
            while_connected=self.subscriptions.retry_unacked_joins,
            may_read=self.writer.room,
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

    async def _connected(self, sender: RoomSender) -> None:
        self.sync.request_reconcile()
        await self.subscriptions.connected(sender)

    def readiness(self) -> Readiness:
        wanted = self.subscriptions.wanted
        states = self.pair_states.states
        pending = 0
        for room in wanted:
            pair = pair_for(room)
            if pair is None or states.get(pair) not in SETTLED_STATES:
                pending += 1
        return Readiness(
            websocket_connected=self.client.connected,
            watchlist_read=self.sync.reconciles > 0,
            pairs_wanted=len(wanted),
            pairs_pending=pending,
        )

    def snapshot(self) -> Snapshot:
        return Snapshot(
            messages=self.ingest.messages,
            rows_written=self.writer.rows_written,
            rejected=dict(self.ingest.rejected),
            rejected_dropped=self.writer.rejected_dropped,
            pair_counts=dict(self.pair_states.counts),
            connected=self.client.connected,
            connections=self.client.connections,
            pending_in_memory=self.writer.pending_in_memory,
            pending_in_spool=self.writer.pending_rows - self.writer.pending_in_memory,
            spool_bytes=self.spool.total_bytes,
            reading_paused=not self.writer.room.is_set(),
            newest_stored=self.write_metrics.newest_stored,
            database_up=self.database.up,
        )

    async def run(self, stop: asyncio.Event) -> None:
        # Bound first: an address in use stops the daemon before it reads anything.
        await self.http.start()
        drain = asyncio.Event()
        # The writer runs outside the readers' task group: whatever ends the readers, even a
        # crash, it still gets to write what they read. A dead writer stops the readers.
        writer = asyncio.create_task(self.writer.run(drain))
        writer.add_done_callback(lambda _: stop.set())
        try:
            async with asyncio.TaskGroup() as readers:
                readers.create_task(self.client.run(stop))
                readers.create_task(self.sync.run(stop))
                readers.create_task(self.http.serve(stop))
        finally:
            drain.set()
            await writer
        log.info(
            "daemon.stopped",
            messages=self.ingest.messages,
            rows_written=self.writer.rows_written,
            rejected=dict(self.ingest.rejected),
        )


def writer_config(settings: Settings) -> WriterConfig:
    return WriterConfig(
        batch_size=settings.batch_size,
        flush_interval=settings.flush_interval,
        # The websocket's closing handshake takes up to 2 s of the same budget.
        drain_timeout=max(1.0, settings.shutdown_timeout - 2.0),
        write_timeout=settings.write_timeout,
        max_memory_rows=settings.max_buffered_rows,
        durable=settings.spool_mode == "durable",
        spool_max_bytes=settings.spool_max_bytes,
        spool_fsync_interval=settings.spool_fsync_interval,
    )


def open_spool(settings: Settings) -> Spool:
    # Several segments fit in the bound, so a replay frees space as it goes.
    spool = Spool(
        settings.spool_dir, segment_bytes=min(64 * 1024 * 1024, settings.spool_max_bytes // 8)
    )
    spool.open()
    return spool


async def run(settings: Settings, stop: asyncio.Event) -> None:
    engine = create_engine(settings.sqlalchemy_url)
    spool = open_spool(settings)
    try:
        await check_schema(engine)
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
        await Daemon(settings, engine, spool).run(stop)
    finally:
        spool.close()
        await engine.dispose()


async def check_schema(engine: AsyncEngine) -> None:
    current = await migrate.current_revision(engine)
    head = migrate.head_revision()
    if current != head:
        raise SchemaNotReady(
            f"the database schema is at revision {current or 'none'}, not {head}: "
            "run `balancewatch migrate` first"
        )
