"""Security against an in-process daemon and real Postgres:

- Neither the Datastream key nor the database password is in the repr of the settings or the
  client, nor in what a refused handshake logs.
- The daemon works with only the privileges that the README's least-privilege role grants, and
  that role cannot rewrite the history or the watchlist.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from balancewatch.daemon import datastream
from balancewatch.daemon.partitions import PartitionKeeper
from balancewatch.daemon.service import check_schema
from balancewatch.devtools.simulator import Simulator
from balancewatch.store.db import asyncpg_dsn, create_engine
from tests.data import insert
from tests.files import README
from tests.fixtures import secrets_in
from tests.helpers import (
    API_KEY,
    SOL,
    TOKEN,
    WALLET,
    history_count,
    make_settings,
    room,
    running_daemon,
    wait_until,
    watch,
)


async def state_of(db: Any) -> str | None:
    state: str | None = await db.fetchval(
        "SELECT state FROM subscription_status WHERE wallet = $1 AND token = $2", WALLET, TOKEN
    )
    return state


# -- secrets -----------------------------------------------------------------------------------


async def test_reprs_and_a_refused_handshake_reveal_no_secret(
    secret_url: URL, engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    settings = make_settings(secret_url, simulator.url, spool_dir=tmp_path / "spool")
    simulator.refuse_status = 401
    with capture_logs() as logs:
        async with running_daemon(settings) as running:
            await wait_until(
                lambda: sum(e["event"] == "datastream.key_rejected" for e in logs) >= 2,
                what="two refused handshakes",
            )
            simulator.refuse_status = 500
            await wait_until(
                lambda: any(e["event"] == "datastream.handshake_failed" for e in logs),
                what="a handshake refused with another status",
            )
            # aiohttp's WSServerHandshakeError names the URL, and so the key: the client must
            # keep it to itself, and it does: nothing escaped, the daemon keeps retrying.
            assert not running.task.done()
            client = running.daemon.client
            shown = [
                repr(settings),
                str(settings),
                settings.model_dump_json(),
                repr(settings.model_dump()),
                repr(settings.sqlalchemy_url),
                str(settings.sqlalchemy_url),
                repr(client),
                str(client),
                repr(vars(client)),
            ]
    assert next(e for e in logs if e["event"] == "datastream.key_rejected")["status"] == 401
    for secret in secrets_in(secret_url):
        assert [text for text in shown if secret in text] == []
        assert secret not in repr(logs)


async def test_the_exception_of_a_refused_handshake_is_described_without_the_key(
    simulator: Simulator,
) -> None:
    """aiohttp's error for a refused handshake names the URL, so the key; the client logs only
    its status, and describes any other aiohttp response error without the URL."""
    simulator.refuse_status = 403
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{simulator.url}/{API_KEY}")
    assert refused.value.status == 403
    assert API_KEY not in datastream._describe(refused.value)


# -- least privilege ---------------------------------------------------------------------------

# The README's role, as written there; the test substitutes a role of its own.
README_ROLE = "balancewatch_daemon"
README_PASSWORD = "'change-me'"
README_DATABASE = "DATABASE balancewatch "


def least_privilege_sql(role: str, password: str, database: str) -> str:
    """The README's `sql-admin` block (not run by test_readme.py), for this role and database."""
    blocks: list[str] = re.findall(r"```sql-admin\n(.*?)```", README.read_text(), re.DOTALL)
    (block,) = blocks
    for placeholder in (README_ROLE, README_PASSWORD, README_DATABASE):
        assert placeholder in block, f"the README's grants no longer name {placeholder!r}"
    return (
        block.replace(README_PASSWORD, f"'{password}'")
        .replace(README_DATABASE, f'DATABASE "{database}" ')
        .replace(README_ROLE, role)
    )


@pytest.fixture
async def daemon_url(database_url: URL, db: Any) -> AsyncIterator[URL]:
    """The URL of a new role with exactly the README's grants (roles are cluster-wide: the
    name is unique, and the role is dropped afterwards)."""
    role = f"bw_daemon_{uuid.uuid4().hex[:12]}"
    password = uuid.uuid4().hex
    assert database_url.database is not None
    await db.execute(least_privilege_sql(role, password, database_url.database))
    yield database_url.set(username=role, password=password)
    await db.execute(f"DROP OWNED BY {role}")
    await db.execute(f"DROP ROLE {role}")


@pytest.mark.parametrize("spool_mode", ["overflow", "durable"])
async def test_the_daemon_works_with_only_the_readme_grants(
    spool_mode: str, daemon_url: URL, db: Any, simulator: Simulator, tmp_path: Path
) -> None:
    await watch(db)
    engine = create_engine(daemon_url)
    try:
        await check_schema(engine)  # reads alembic_version
        settings = make_settings(
            daemon_url, simulator.url, spool_dir=tmp_path / "spool", spool_mode=spool_mode
        )
        with capture_logs() as logs:
            async with running_daemon(settings):
                await simulator.wait_for(lambda: room() in simulator.joined_rooms())
                await wait_until(lambda: _is(state_of(db), "joined"), what="state joined")
                for amount in ("1", "2.5", "0"):
                    await simulator.send_balance(WALLET, TOKEN, amount)
                await simulator.send_raw('{"type":"message"}')  # rejected, kept for inspection
                await wait_until(lambda: _is(history_count(db), 3), what="three rows")
                await db.execute("UPDATE watchlist SET enabled = false")
                await wait_until(lambda: _is(state_of(db), "left"), what="state left")
    finally:
        await engine.dispose()
    denied = [e for e in logs if re.search(r"permission denied|InsufficientPrivilege", repr(e))]
    assert denied == []
    assert [e for e in logs if e["event"] == "writer.flush_failed"] == []
    if spool_mode == "durable":  # every row went through the spool and its checkpoint
        assert await db.fetchval("SELECT count(*) FROM spool_checkpoint") == 1


async def test_without_its_grant_on_subscription_status_balance_rows_are_still_stored(
    daemon_url: URL, db: Any, simulator: Simulator, tmp_path: Path
) -> None:
    await db.execute(f'REVOKE ALL ON subscription_status FROM "{daemon_url.username}"')
    await watch(db)
    settings = make_settings(daemon_url, simulator.url, spool_dir=tmp_path / "spool")
    async with running_daemon(settings) as running:
        await simulator.wait_for(lambda: room() in simulator.joined_rooms())
        for amount in ("1", "2.5", "0"):
            await simulator.send_balance(WALLET, TOKEN, amount)
        await wait_until(lambda: _is(history_count(db), 3), what="three rows")
        book = running.daemon.bookkeeping
        await wait_until(lambda: book.failures["subscription_status"] >= 2, what="retries")
        failures = running.daemon.registry.get_sample_value(
            "balancewatch_bookkeeping_write_failures_total", {"table": "subscription_status"}
        )
        assert failures is not None
        assert failures >= 2
        assert running.daemon.writer.rows_written == 3
    assert await db.fetchval("SELECT count(*) FROM subscription_status") == 0


@pytest.mark.parametrize("whole", [False, True], ids=["pair", "wallet"])
async def test_snapshots_checks_and_refused_answers_work_with_only_the_readme_grants(
    whole: bool, daemon_url: URL, db: Any, simulator: Simulator, tmp_path: Path
) -> None:
    snapshots = [(TOKEN, 5)]
    if whole:
        # In the history, not on chain: its 0 row needs newest_amounts_of, through its grant.
        await insert(db, [(WALLET, SOL, "5", await db.fetchval("SELECT now() - interval '1 h'"))])
        await db.execute("INSERT INTO watchlist (wallet) VALUES ($1)", WALLET)
        snapshots.append((SOL, 0))
    else:
        await watch(db)
    simulator.chain.set_balance(WALLET, TOKEN, "5")
    settings = make_settings(
        daemon_url,
        simulator.url,
        spool_dir=tmp_path / "spool",
        rpc_url=simulator.rpc_url,
        balance_check_interval=0.5,
    )
    with capture_logs() as logs:
        async with running_daemon(settings) as running:
            reads = running.daemon.chain_reads
            assert reads is not None
            await wait_until(
                lambda: reads.results["snapshot", "stored"] == len(snapshots), what="snapshots"
            )
            simulator.chain.set_balance(WALLET, TOKEN, "6")  # no message: drift
            await wait_until(lambda: reads.results["check", "drift"] == 1, timeout=10, what="drift")
            simulator.chain.fail_next("wrong_owner", times=50)
            await wait_until(lambda: reads.refused["wrong_owner"] >= 1, timeout=10, what="refusal")
            book = running.daemon.bookkeeping
            await wait_until(lambda: sum(book.pending.values()) == 0, what="all written")
    denied = [e for e in logs if re.search(r"permission denied|InsufficientPrivilege", repr(e))]
    assert denied == []
    stored = await db.fetch("SELECT token, amount FROM balance_history WHERE source = 'snapshot'")
    assert sorted(tuple(row) for row in stored) == sorted(snapshots)
    assert await db.fetchval("SELECT count(*) FROM balance_history WHERE source = 'check'") == 1
    assert await db.fetchval("SELECT count(*) FROM rpc_failures") >= 1
    assert await db.fetchval("SELECT sum(reads) FROM chain_reads WHERE result = 'drift'") == 1


# balance_history is a view over a join: nobody can UPDATE, DELETE or TRUNCATE it; its table is
# balance_rows.
DENIED = [
    "SELECT * FROM balance_history",
    "UPDATE balance_rows SET amount = 0",
    "DELETE FROM balance_rows",
    "TRUNCATE balance_rows",
    "SELECT * FROM balance_rows",
    "SELECT * FROM pairs",
    "DELETE FROM pairs",
    # The history's functions run with the caller's rights (migration 0014).
    "SELECT * FROM balance_changes('-infinity')",
    f"SELECT * FROM pair_history('{WALLET}', '{TOKEN}')",
    f"INSERT INTO watchlist (wallet, token) VALUES ('{WALLET}', '{TOKEN}')",
    "UPDATE watchlist SET enabled = false",
    "DELETE FROM watchlist",
    "DELETE FROM subscription_status",
    "SELECT * FROM rejected_messages",
    "DELETE FROM rejected_messages",
    "DELETE FROM spool_checkpoint",
    "SELECT * FROM rpc_failures",
    "DELETE FROM rpc_failures",
    "DELETE FROM chain_reads",
    "DELETE FROM coverage",
    "DELETE FROM coverage_holders",
    "UPDATE alembic_version SET version_num = 'x'",
    "DROP VIEW balance_history",
    "DROP TABLE balance_rows",
    "ALTER TABLE watchlist DISABLE TRIGGER ALL",
    "SELECT * FROM daily_rows",
    "DELETE FROM daily_rows",
    "UPDATE rollup_state SET rolled_until = '-infinity'",
    "DELETE FROM rollup_invalid",
    "DROP TABLE balance_rows_default",
]


async def test_the_readme_role_cannot_rewrite_the_history_or_the_watchlist(
    daemon_url: URL,
) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(daemon_url))
    allowed = []
    try:
        for statement in DENIED:
            try:
                await connection.execute(statement)
            except asyncpg.InsufficientPrivilegeError:
                continue
            allowed.append(statement)
    finally:
        await connection.close()
    assert allowed == []


async def test_the_readme_role_rolls_up_packs_and_drops_old_partitions(
    daemon_url: URL, db: Any
) -> None:
    """The maintenance with only the README's grants: a day rolled up and its partition's
    index packed, then the partition dropped by the retention; the rollup kept."""
    old = datetime.now(UTC) - timedelta(days=30)
    await db.execute("SELECT create_balance_partition($1, 1)", old.date())
    await insert(db, [(WALLET, TOKEN, "5", old)])
    packed = f"balance_rows_{old:%Y%m%d}_packed_idx"
    engine = create_engine(daemon_url)
    try:
        with capture_logs() as logs:
            await PartitionKeeper(engine).maintain()
            assert await db.fetchval("SELECT to_regclass($1)::text", packed) == packed
            keeper = PartitionKeeper(engine, retention=timedelta(days=7))
            await keeper.maintain()
    finally:
        await engine.dispose()
    assert [e for e in logs if e["event"] == "partitions.failed"] == []
    assert keeper.dropped == 1
    assert await db.fetchval("SELECT count(*) FROM balance_history") == 0
    assert await db.fetchval("SELECT messages FROM balance_daily WHERE day = $1", old.date()) == 1


async def _is(value: Awaitable[object], expected: object) -> bool:
    return await value == expected
