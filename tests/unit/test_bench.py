"""The simulator's prebuilt frames, which the benchmark sends; the replicas section's sums and
its quick plan; the history section's argument, queries, history and table; the CPU section's
reading of /proc and of a profile."""

from __future__ import annotations

import argparse
import os
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from balancewatch import cli
from balancewatch.cli import row_count
from balancewatch.devtools import bench, bench_cpu, bench_history
from balancewatch.devtools.bench import Plan, Takeover, command
from balancewatch.devtools.bench_history import (
    BUSY_HOUR,
    HISTORY_SPAN,
    OUTAGES,
    Timing,
    listening,
    numbered_queries,
    on_pair,
    readme_text,
    report,
    stretches,
    title,
)
from balancewatch.devtools.benchkit import bench_pairs
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


# -- the history section: its argument, its queries, its history and its table --------------------

README_QUERIES = numbered_queries(readme_text())
PAIR = bench_pairs(1)[0]
AT = datetime(2026, 10, 31, 12, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "rows"),
    [("20000", 20_000), ("1_000_000", 1_000_000), ("500k", 500_000), ("10m", 10**7), ("1M", 10**6)],
)
def test_the_history_takes_a_plain_number_of_rows_or_thousands_or_millions(
    text: str, rows: int
) -> None:
    assert row_count(text) == rows


@pytest.mark.parametrize("text", ["0", "-5", "1.5m", "10g", "1__000", "", "m"])
def test_a_number_of_rows_that_is_not_a_positive_whole_number_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a number of rows"):
        row_count(text)


def test_history_alone_is_ten_million_rows_and_without_it_the_bench_runs_as_before() -> None:
    assert cli._parser().parse_args(["bench", "--history"]).history == 10_000_000
    assert cli._parser().parse_args(["bench", "--history", "2m"]).history == 2_000_000
    assert cli._parser().parse_args(["bench"]).history is None


def test_history_is_refused_beside_the_options_of_the_other_sections(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = cli._parser().parse_args(["bench", "--history", "20k", "--quick", "--messages", "9"])
    assert command(args) == 2
    assert "--history runs alone, without --messages, --quick" in capsys.readouterr().err


def test_every_readme_query_naming_the_example_pair_names_the_loaded_pair_instead() -> None:
    queries = on_pair(README_QUERIES, PAIR, AT)
    assert sorted(queries) == sorted(README_QUERIES)
    examples = re.findall(r"wallet = '(\w+)'|token = '(\w+)'", "".join(README_QUERIES.values()))
    addresses = {address for found in examples for address in found if address}
    assert len(addresses) == 2  # the README's example wallet and token
    naming = [n for n, query in README_QUERIES.items() if any(a in query for a in addresses)]
    assert len(naming) >= 5
    for number in naming:
        assert not any(address in queries[number] for address in addresses), number
        assert f"'{PAIR[0]}'" in queries[number]
        assert f"'{PAIR[1]}'" in queries[number]
    assert f"wallet = '{PAIR[0]}'" in queries[4]
    assert f"token = '{PAIR[1]}'" in queries[4]


def test_the_readme_example_time_becomes_the_middle_of_the_history_and_nothing_else_changes() -> (
    None
):
    queries = on_pair(README_QUERIES, PAIR, AT)
    dated = [n for n, query in README_QUERIES.items() if "'2025-01-01 00:00:00+00'" in query]
    assert dated
    for number in dated:
        assert "2025-01-01" not in queries[number]
        assert "'2026-10-31 12:30:00+00'" in queries[number]
    assert queries[1] == README_QUERIES[1]  # no pair, no time: as written
    assert queries[3] == README_QUERIES[3]


def test_the_readme_is_read_from_the_installed_package_where_there_is_no_checkout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    in_checkout = numbered_queries(readme_text())
    monkeypatch.setattr(bench_history, "README", tmp_path / "README.md")
    assert "## Querying" in readme_text()
    assert sorted(numbered_queries(readme_text())) == sorted(in_checkout)


def test_a_query_is_named_by_its_readme_title_cut_to_fit_the_table() -> None:
    assert title(README_QUERIES[1]) == "1. The latest balance of every pair"
    long = title(README_QUERIES[8])
    assert len(long) == 60
    assert long.startswith("8. Each pair's first, last")
    assert long.endswith("...")


def test_every_pair_is_listened_to_for_the_whole_span_but_the_outages() -> None:
    newest = datetime(2026, 11, 30, tzinfo=UTC)
    periods = listening(newest)
    assert len(periods) == len(OUTAGES) + 1
    assert periods[0].start == newest - HISTORY_SPAN
    assert (periods[-1].end, periods[-1].reason) == (None, None)  # still listening
    for before, after, (ago, reason, lasted) in zip(periods, periods[1:], OUTAGES, strict=False):
        assert before.end == newest - ago
        assert before.reason == reason
        assert after.start - before.end == lasted
        assert (after.holder != before.holder) == (reason == "shutdown")  # a restart
    assert any(p.end is not None and newest - p.end < timedelta(hours=24) for p in periods)


def test_the_newest_hour_is_busy_and_the_rest_shared_in_proportion_to_the_time_listened() -> None:
    newest = datetime(2026, 11, 30, tzinfo=UTC)
    periods = listening(newest)
    cut = newest - BUSY_HOUR
    found = stretches(periods, 10_000_000, 600_000, newest)
    assert sum(stretch.rows for stretch in found) == 10_000_000
    assert [stretch.opens for stretch in found] == [*periods, None]  # the busy hour opens none
    assert (found[-1].start, found[-1].end, found[-1].rows) == (cut, newest, 600_000)
    assert found[-2].end == cut  # the last period, up to the busy hour
    quiet = HISTORY_SPAN - BUSY_HOUR - sum((lasted for _, _, lasted in OUTAGES), timedelta())
    for stretch, period in zip(found, periods, strict=False):  # one a period, then the busy hour
        assert stretch.start == period.start
        share = 9_400_000 * ((stretch.end - stretch.start) / quiet)
        assert stretch.rows == pytest.approx(share, abs=1)
    assert sum(stretch.rows for stretch in stretches(periods, 7, 1, newest)) == 7


def test_the_table_gives_each_query_its_median_rows_and_runs_or_why_it_was_not_timed() -> None:
    lines = report(
        [
            Timing("README 1. The latest balance of every pair", (12.5, 1234.5, 30.0), 10_000),
            Timing("status (store.reports.gather)", (0.41, 0.4, 0.5)),
            Timing("balance_daily, the last 30 days", note="not in this schema"),
        ]
    )
    assert lines[0].split() == ["query", "median", "ms", "rows", "runs", "(ms)"]
    assert lines[1].split()[-7:] == ["30.0", "10,000", "12.5", "/", "1,234.5", "/", "30.0"]
    assert lines[2].split()[-7:] == ["0.4", "-", "0.4", "/", "0.4", "/", "0.5"]
    assert lines[3].split()[-4:] == ["not", "in", "this", "schema"]
    # The medians in one column, under its heading.
    column = lines[0].index("median ms") + len("median ms")
    assert lines[1].index("30.0 ") + len("30.0") == column
    assert lines[2].index("0.4 ") + len("0.4") == column


def test_pairs_joined_runs_the_scale_section_alone_with_that_many_pairs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli._parser().parse_args(["bench", "--pairs-joined", "1m"]).pairs_joined == 1_000_000
    args = cli._parser().parse_args(["bench", "--pairs-joined", "1m", "--quick"])
    assert command(args) == 2
    assert "--pairs-joined runs alone, without --quick" in capsys.readouterr().err


def test_cpu_only_runs_the_full_size_cpu_section_and_refuses_the_quick_plan(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plans: list[Plan] = []

    def run(plan: Plan, _url: str | None) -> int:
        plans.append(plan)
        return 0

    monkeypatch.setattr(bench, "run_bench", run)
    assert command(cli._parser().parse_args(["bench", "--cpu-only"])) == 0
    assert plans == [Plan(messages=200_000, cpu_only=True)]
    assert command(cli._parser().parse_args(["bench", "--cpu-only", "--quick"])) == 2
    assert "--cpu-only runs alone, without --quick" in capsys.readouterr().err


def test_a_profile_is_summed_per_function_its_own_time_and_with_what_it_calls() -> None:
    collapsed = "\n".join(
        [
            "<module> (a/run.py:1);_read (d/datastream.py:300);text (d/ingest.py:90) 6",
            "<module> (a/run.py:1);_read (d/datastream.py:301) 3",
            "<module> (a/run.py:1);write (x/selector_events.py:9) 1",
            "not a stack line",
        ]
    )
    spots = {spot.function: spot for spot in bench_cpu.hotspots(collapsed)}
    # Two lines of _read are one function; a share is of all ten samples.
    assert spots["_read (datastream.py)"] == bench_cpu.Hotspot("_read (datastream.py)", 0.3, 0.9)
    assert spots["text (ingest.py)"].own == pytest.approx(0.6)
    assert spots["<module> (run.py)"].total == pytest.approx(1.0)
    assert [spot.function for spot in bench_cpu.top_own(list(spots.values()), 2)] == [
        "text (ingest.py)",
        "_read (datastream.py)",
    ]
    assert bench_cpu.hotspots("") == []


def test_cpu_seconds_reads_this_process_from_proc() -> None:
    before = bench_cpu.cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    assert bench_cpu.cpu_seconds(os.getpid()) >= before + 0.01
