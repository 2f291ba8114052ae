"""Constants and helpers shared by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
from alembic import command
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.daemon.coverage import Coverage
from balancewatch.daemon.service import Daemon
from balancewatch.domain import room_for
from balancewatch.pipeline.records import BalanceLine, PairKey, Tail
from balancewatch.settings import Settings
from balancewatch.store import migrate
from balancewatch.store.db import asyncpg_dsn
from balancewatch.store.writes import PeriodEnd, PeriodStart

API_KEY = "test-key-5f3a9c1e0b7d4e2a"
WALLET = "FV1r15rbNKkJanXLheoJA7fXEq6NDuMJ3bukXuhJWyV1"
TOKEN = "Es9vMFrzaCERmJfrF4H2FYD4KCoNkY11McCe8BenwNYB"
SOL = "So11111111111111111111111111111111111111112"
WALLET2 = "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU"


async def watch(db: Any, wallet: str = WALLET, token: str | None = TOKEN) -> None:
    """Watch one token of a wallet, or (token None) every token of it."""
    await db.execute("INSERT INTO watchlist (wallet, token) VALUES ($1, $2)", wallet, token)


async def history_count(db: Any) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM balance_history")
    return count


def room(wallet: str = WALLET, token: str | None = TOKEN) -> str:
    return room_for(wallet, token)


@dataclass
class RecordedPeriods:
    """Where Coverage sends listening periods, kept for a test to look at."""

    started: list[PeriodStart] = field(default_factory=list)
    ended: list[PeriodEnd] = field(default_factory=list)
    confirmed: list[datetime | None] = field(default_factory=list)

    def period_started(self, start: PeriodStart) -> None:
        self.started.append(start)

    def period_ended(self, end: PeriodEnd) -> None:
        self.ended.append(end)

    def confirm(self, listening_until: datetime | None, silent_since: datetime) -> None:
        self.confirmed.append(listening_until)


def unrecorded_coverage() -> Coverage:
    """Coverage for a test that does not look at listening periods."""
    return Coverage(RecordedPeriods())


SCRATCH_ROOT = Path(tempfile.gettempdir()) / f"balancewatch-tests-{os.getpid()}"


def scratch_dir(prefix: str) -> Path:
    """A fresh directory under this test run's scratch root (removed when the run ends)."""
    SCRATCH_ROOT.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=SCRATCH_ROOT))


# The tests' own Postgres clusters live in memory when the machine has a tmpfs with room to
# spare. They never fsync (LocalPostgres), but on a disk their writes still wait behind every
# other writer's dirty pages: on a busy machine, an integration test's setup (mostly cloning
# the template) took 0.47 s there and 0.08 s here (medians), and the tier half the time. What
# the tests prove does not change: no test pulls the plug on the machine, and the outages stop
# and start the same server as on a disk.
_MEMORY_FS = Path("/dev/shm")
_MEMORY_FS_MIN_FREE = 2 * 1024**3


def cluster_base_dir() -> Path | None:
    """A fresh directory for a test cluster (LocalPostgres(base_dir=...), which deletes it at
    cleanup), on /dev/shm if it has room; else None, for LocalPostgres's own temporary one."""
    if not _MEMORY_FS.is_dir() or shutil.disk_usage(_MEMORY_FS).free < _MEMORY_FS_MIN_FREE:
        return None
    return Path(tempfile.mkdtemp(prefix="balancewatch-pg-", dir=_MEMORY_FS))


def make_settings(database_url: URL, datastream_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url.render_as_string(hide_password=False),
        "datastream_url": datastream_url,
        "api_key": API_KEY,
        "flush_interval": 0.05,
        "reconcile_interval": 5.0,
        "backoff_initial": 0.05,
        "backoff_max": 0.5,
        "connect_timeout": 2.0,
        "shutdown_timeout": 5.0,
        "spool_dir": scratch_dir("spool"),
        "http_port": 0,  # a free port each: several daemons may run at once
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class RunningDaemon:
    daemon: Daemon
    stop_event: asyncio.Event
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, timeout=15)


@contextlib.asynccontextmanager
async def running_daemon(settings: Settings) -> AsyncIterator[RunningDaemon]:
    """A daemon built as `balancewatch run` builds it, running in this process."""
    async with Daemon.open(settings) as daemon:
        stop = asyncio.Event()
        running = RunningDaemon(daemon, stop, asyncio.create_task(daemon.run(stop)))
        try:
            yield running
        finally:
            if not running.task.done():
                await running.stop()
            else:
                running.task.result()  # surface a crash


async def wait_until(predicate: Any, timeout: float = 5.0, what: str = "condition") -> None:
    """Poll an async or plain predicate until it is true; fail with `what` after timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Take the schema back to `revision` (the app itself only ever upgrades)."""

    def run(connection: Connection) -> None:
        config = migrate.alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, revision)

    async with engine.begin() as connection:
        await connection.run_sync(run)


# -- short-lived connections, for a database that may come and go under the test -------------


async def connect(url: URL) -> Any:
    return await asyncpg.connect(asyncpg_dsn(url))


async def scalar(url: URL, sql: str, *args: Any) -> Any:
    """One value from a short-lived connection (the cluster comes and goes under these tests)."""
    connection = await connect(url)
    try:
        return await connection.fetchval(sql, *args)
    finally:
        await connection.close()


async def stored_amounts(url: URL) -> list[int]:
    connection = await connect(url)
    try:
        rows = await connection.fetch("SELECT amount FROM balance_history ORDER BY id")
    finally:
        await connection.close()
    return [int(row["amount"]) for row in rows]


async def count_is(url: URL, expected: int) -> bool:
    """Whether balance_history holds `expected` rows; false while the database is away."""
    with contextlib.suppress(OSError, asyncpg.PostgresError):
        return bool(await scalar(url, "SELECT count(*) FROM balance_history") == expected)
    return False


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(text: str) -> Samples:
    """Every sample of a Prometheus text page, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def cut(line: BalanceLine) -> tuple[PairKey, Tail]:
    """A row's line as the writer takes it: its pair's key and its tail (records.py)."""
    end = line.index(b"\t", line.index(b"\t") + 1)
    return line[:end], line[end:]
