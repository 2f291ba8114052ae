"""A smoke run of `balancewatch bench --quick`, and one of `--history` on a small history, so the
benchmark cannot rot.

It checks that every section runs and prints a number, never how fast anything was: the
figures live in BENCHMARKS.md, measured on purpose, not in a timed test.
"""

from __future__ import annotations

import os
import re

import pytest
from sqlalchemy.engine import URL

from tests.files import numbered_queries
from tests.processes import Finished, balancewatch

pytestmark = pytest.mark.timeout(120)

# section, metric, value, unit (and the target, if any, after it).
_ROW = re.compile(
    r"^\s+(sim|ingest|cpu|latency|sync|chain|scale|replicas)\s+(.+?)\s([\d,.]+)"
    r" ?(frames/s|rows/s|rooms/s|ms|us|s|MB|x)"
    r"\s*(?:target.*)?$",
    re.M,
)


async def bench(server_url: URL, *args: str, timeout: float) -> Finished:
    """`balancewatch bench ARGS` on the test server, its output unbuffered, exited with 0."""
    result = await balancewatch(
        "bench",
        *args,
        "--database-url",
        server_url.render_as_string(hide_password=False),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        timeout=timeout,
    )
    assert result.code == 0, result.stdout + result.stderr
    return result


async def test_quick_bench_prints_every_section(server_url: URL) -> None:
    result = await bench(server_url, "--quick", "--messages", "2000", timeout=110)
    rows = _ROW.findall(result.stdout)
    sections = {section for section, *_ in rows}
    assert sections == {"sim", "ingest", "cpu", "latency", "sync", "chain", "scale", "replicas"}, (
        result.stdout
    )
    metrics = {metric for _, metric, *_ in rows}
    for expected in (
        "simulator ceiling",
        "daemon end to end",
        "raw asyncpg COPY, binary, batches of",
        "msgs in one",
        "naive INSERT+commit",
        "daemon / raw COPY ceiling",
        "daemon as its own process",
        "daemon CPU (user+sys) per message",
        "daemon / naive",
        "row committed p50",
        "row committed p99",
        "oldest row at commit",
        "frame at simulator p99",
        "last join at simulator",
        "every join at simulator",
        "subscription_status",
        "peak RSS",
        "single-row changes",
        "join ack -> snapshot row stored p50",
        "checks every 3600 s / no RPC",
        "checks every 2 s / no RPC",
        "every snapshot stored",
        "b SIGKILLed -> a holds every room",
        "re-joined by a",
        "b SIGTERMed -> a holds every room",
    ):
        assert any(expected in metric for metric in metrics), (expected, result.stdout)
    # Each figure is a rate, a time, a size or a ratio of something that did happen: above zero
    # (the pattern above cannot match a minus sign, so `>= 0` could never fail).
    for _, metric, value, unit in rows:
        if unit == "us":  # CPU time counts in ticks (10 ms): 2,000 messages may take none
            assert float(value) >= 0, (metric, value, unit)
            continue
        assert float(value.replace(",", "")) > 0, (metric, value, unit)
    # Where the CPU goes: a profile's lines, when py-spy is installed (the dev extra has it).
    assert "where it goes" in result.stdout, result.stdout
    assert re.search(r"drift injected -> found \(false\)\s+\d+ -> \d+ \(\d+\)", result.stdout)
    assert result.stdout.rstrip().endswith("done")


# A timed line: name, median ms, rows (or -), the three runs in ms.
_TIMED = re.compile(
    r"^  (.+?)\s+([\d,]+\.\d)\s+([\d,]+|-)\s+([\d,]+\.\d) / ([\d,]+\.\d) / ([\d,]+\.\d)$", re.M
)


async def test_history_bench_times_every_readme_query_on_the_rows_it_loaded(
    server_url: URL,
) -> None:
    # Few pairs: the per-pair queries (README 5 and 6 ask for every pair) stay quick.
    result = await bench(server_url, "--history", "20k", "--pairs", "500", timeout=50)
    timed = {name: rows for name, _, rows, *_ in _TIMED.findall(result.stdout)}
    readme = {int(m.group(1)) for name in timed if (m := re.match(r"README (\d+)\. ", name))}
    assert readme == set(numbered_queries()), result.stdout
    assert timed["README 1. The latest balance of every pair"] not in ("0", "-")
    for name in ("latest_balance, every pair", "status (store.reports.gather)"):
        assert name in timed, result.stdout
    assert any(name.startswith("history of one pair") and timed[name] != "0" for name in timed)
    assert timed["balance_daily, the last 30 days"] not in ("0", "-"), result.stdout
    assert re.search(r"history: 20,000 rows over 500 pairs", result.stdout)
    bytes_per_row = re.search(r"balance_history on disk: .*: ([\d,]+) bytes per row", result.stdout)
    assert bytes_per_row, result.stdout
    assert int(bytes_per_row.group(1).replace(",", "")) > 100
    assert "simulator ceiling" not in result.stdout  # the other sections did not run
    assert result.stdout.rstrip().endswith("done")
