"""What the daemon exports to Prometheus, and the metric names a PromQL expression reads: for
the tests that hold the shipped alert rules and dashboards to the daemon's real metrics."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from balancewatch.daemon.metrics import (
    ChainCounts,
    DaemonCollector,
    ShardCounts,
    Snapshot,
    WriteMetrics,
)

# The series of a family, by its type, as the text format names them.
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
# PromQL words that look like a metric name but are not one.
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan"}


def exported_series() -> set[str]:
    """Every series name the daemon's /metrics can show: its registry built as
    service.Daemon builds it, with a snapshot in which every optional part is present."""
    registry = CollectorRegistry()
    WriteMetrics(registry)
    everything = Snapshot(
        messages=1,
        rows_written=1,
        rejected={"not_json": 1},
        rejected_dropped=0,
        bookkeeping_failures={},
        bookkeeping_pending={},
        pairs_listening=1,
        watch_counts={},
        connected=True,
        connections=1,
        pending_in_memory=0,
        pending_in_spool=0,
        spool_bytes=0,
        reading_paused=False,
        newest_stored=datetime.now(UTC),
        database_up=True,
        shards=ShardCounts(
            held=1, total=64, alone=True, rounds={}, handovers={}, fenced={"ingest": 0}
        ),
        chain=ChainCounts(results={}, refused={}, requests={}, snapshot_queue=0),
        default_partition_rows=0,
        ready=True,
    )
    registry.register(DaemonCollector(lambda: everything))
    # By family: a labelled counter with no value yet has no sample, yet is still exported.
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in _SUFFIXES.get(family.type, ("",))
    }


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression: what is left once strings, label matchers,
    ranges, grouping clauses, function calls and keywords are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    words = re.findall(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", text)
    return {word for word in words if word.lower() not in _KEYWORDS}
