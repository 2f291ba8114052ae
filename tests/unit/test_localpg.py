"""LocalPostgres without a cluster: its URL, and where it looks for the server programs."""

from __future__ import annotations

from pathlib import Path

import pytest

from balancewatch.devtools.localpg import (
    BINDIR_ENV,
    LocalPostgres,
    PostgresNotFound,
    find_bindir,
)


def test_url_names_the_loopback_port_and_database(tmp_path: Path) -> None:
    pg = LocalPostgres(bindir=tmp_path, base_dir=tmp_path, port=54999)

    assert pg.url() == "postgresql://postgres@127.0.0.1:54999/postgres"
    assert pg.url("bw_test") == "postgresql://postgres@127.0.0.1:54999/bw_test"


def test_find_bindir_rejects_an_override_without_server_programs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(BINDIR_ENV, str(tmp_path))

    with pytest.raises(PostgresNotFound, match=f"{BINDIR_ENV} is set to .* no initdb, pg_ctl"):
        find_bindir()
