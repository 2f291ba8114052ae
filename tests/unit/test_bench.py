"""The simulator's prebuilt frames, which the benchmark sends; the replicas section's sums and
its quick plan; where the README's queries are read from."""

from __future__ import annotations

from pathlib import Path

import pytest

from balancewatch.devtools import bench
from balancewatch.devtools.bench import Plan, Takeover, numbered_queries, readme_text
from balancewatch.devtools.simulator import text_frame
from balancewatch.settings import Settings


def test_text_frame_headers() -> None:
    assert text_frame("ab") == b"\x81\x02ab"
    assert text_frame("x" * 200)[:4] == b"\x81\x7e\x00\xc8"
    assert text_frame("x" * 70_000)[:10] == b"\x81\x7f" + (70_000).to_bytes(8, "big")


def test_a_takeover_counts_the_rooms_joined_a_second_from_the_first_join_to_the_last() -> None:
    takeover = Takeover(rooms=500, first=14.99, last=15.0)
    assert takeover.rate == pytest.approx(50_000)
    assert takeover.rate > 0


def test_the_quick_plan_runs_replicas_small_on_the_shortest_lease_the_daemon_takes() -> None:
    quick, full = Plan.quick(2_000), Plan(messages=2_000)
    assert full.lease_ttl is None  # the daemon's default, 15 s
    assert quick.lease_ttl is not None
    assert quick.lease_ttl < Settings.model_fields["lease_ttl"].default
    settings = Settings(
        database_url="postgresql://u@h/db",
        datastream_url="ws://127.0.0.1:1",
        api_key="k",
        lease_ttl=quick.lease_ttl,
    )
    assert settings.lease_ttl == quick.lease_ttl
    assert quick.replica_pairs <= 100 < full.replica_pairs
    assert quick.failovers == quick.handovers == 1
    assert quick.takeover_pairs == 0


def test_the_readme_is_read_from_the_installed_package_where_there_is_no_checkout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    in_checkout = numbered_queries(readme_text())
    monkeypatch.setattr(bench, "README", tmp_path / "README.md")
    assert "## Querying" in readme_text()
    assert sorted(numbered_queries(readme_text())) == sorted(in_checkout)
