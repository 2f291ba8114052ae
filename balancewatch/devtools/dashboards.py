"""The Grafana dashboards shipped in config/grafana/dashboards/, generated from code with the
Grafana Foundation SDK, so that a panel is reviewed as code and the tests can read every query
out of the result. `python -m balancewatch.devtools.dashboards` writes them; a unit test fails
when the committed JSON and this code disagree.

*Operations* reads the daemon's metrics from Prometheus; *Balances* reads the history from
Postgres. The SDK has no builder for Postgres queries, so `Sql` is one (the panel JSON Grafana's
SQL data sources read: `rawSql`, `format`).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    DynamicConfigValue,
    VariableRefresh,
    VariableSort,
)

DASHBOARDS_DIR: Final = Path("config/grafana/dashboards")

PROMETHEUS_TYPE: Final = "prometheus"
# The id Grafana 10.3+ gives its Postgres plugin (the older "postgres" is an alias of it).
POSTGRES_TYPE: Final = "grafana-postgresql-datasource"
# Each dashboard picks its data source from a variable: the provisioned one by default, any
# other of the same type (another Prometheus, a replica of the database) by a click.
PROMETHEUS: Final = DataSourceRef(type_val=PROMETHEUS_TYPE, uid="${prometheus}")
POSTGRES: Final = DataSourceRef(type_val=POSTGRES_TYPE, uid="${postgres}")

# Every Operations query is per replica, and the replicas shown are a variable.
INSTANCE: Final = 'instance=~"$instance"'

SqlFormat = Literal["time_series", "table"]


class SqlQuery(cogvariants.Dataquery):
    """A query of Grafana's SQL data sources, in the code editor (raw SQL)."""

    def __init__(self, ref_id: str, raw_sql: str, format_: SqlFormat) -> None:
        self.ref_id = ref_id
        self.raw_sql = raw_sql
        self.format = format_

    def to_json(self) -> dict[str, object]:
        return {
            "datasource": POSTGRES.to_json(),
            "editorMode": "code",
            "format": self.format,
            "rawQuery": True,
            "rawSql": self.raw_sql,
            "refId": self.ref_id,
        }


class Sql(cogbuilder.Builder[cogvariants.Dataquery]):
    def __init__(self, raw_sql: str, format_: SqlFormat = "table", ref_id: str = "A") -> None:
        self._query = SqlQuery(ref_id, raw_sql.strip(), format_)

    def build(self) -> SqlQuery:
        return self._query


def promql(expr: str, legend: str, ref_id: str = "A") -> prometheus.Dataquery:
    return (
        prometheus.Dataquery()
        .datasource(PROMETHEUS)
        .expr(expr)
        .legend_format(legend)
        .ref_id(ref_id)
    )


def rate(metric: str, by: str = "instance", selector: str = "") -> str:
    labels = f"{INSTANCE}, {selector}" if selector else INSTANCE
    return f"sum by ({by}) (rate({metric}{{{labels}}}[$__rate_interval]))"


def graph(
    title: str, description: str, unit: str, *queries: prometheus.Dataquery, width: int = 12
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .unit(unit)
        .height(8)
        .span(width)
        .fill_opacity(10)
    )
    for query in queries:
        panel.with_target(query)
    return panel


# -- Operations ------------------------------------------------------------------------------


def _latency(quantile: str) -> prometheus.Dataquery:
    expr = (
        f"histogram_quantile({quantile}, sum by (instance, le) "
        f"(rate(balancewatch_write_seconds_bucket{{{INSTANCE}}}[$__rate_interval])))"
    )
    return promql(expr, f"p{quantile[2:]} {{{{instance}}}}", ref_id=f"P{quantile[2:]}")


def operations() -> dash.Dashboard:
    throughput = graph(
        "Messages and rows per second",
        "Balance messages received and rows committed to the history, per second. The two "
        "lines part when writes fall behind (see pending rows).",
        "ops",
        promql(rate("balancewatch_messages_received_total"), "received {{instance}}"),
        promql(rate("balancewatch_rows_written_total"), "written {{instance}}", ref_id="B"),
    )
    pending = graph(
        "Pending rows",
        "Rows received and not stored yet: in memory, then in the spool once memory is full "
        "or the database is away. A spool that stays above 0 means the database does not "
        "keep up or does not answer.",
        "short",
        promql(f"balancewatch_pending_rows{{{INSTANCE}}}", "{{where}} {{instance}}"),
    )
    reconnects = graph(
        "Websocket reconnects",
        "Connections opened after the first, per interval; 'connected' is 1 while the "
        "websocket is open. Reconnects in a loop: the key, the network or the Datastream.",
        "short",
        promql(
            f"sum by (instance) (increase(balancewatch_websocket_reconnects_total"
            f"{{{INSTANCE}}}[$__rate_interval]))",
            "reconnects {{instance}}",
        ),
        promql(
            f"balancewatch_websocket_connected{{{INSTANCE}}}", "connected {{instance}}", ref_id="B"
        ),
    )
    pairs = graph(
        "Pairs by state",
        "Watchlist pairs by subscription state, over every replica. Anything but 'joined' "
        "(or 'covered', through a wallet's room) for long is worth a look in `status`.",
        "short",
        promql(f"sum by (state) (balancewatch_pairs{{{INSTANCE}}})", "{{state}}"),
    ).stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    latency = graph(
        "Write latency",
        "Seconds per committed write transaction: the median and the 99th percentile, from "
        "the balancewatch_write_seconds histogram.",
        "s",
        _latency("0.5"),
        _latency("0.99"),
    )
    snapshots = graph(
        "Snapshots",
        "Balances read from the chain as a listening period started, by result, per second. "
        "Absent without an RPC URL.",
        "ops",
        promql(rate("balancewatch_snapshots_total", by="result"), "{{result}}"),
        promql(f"sum(balancewatch_snapshot_queue{{{INSTANCE}}})", "waiting (queue)", ref_id="B"),
        width=8,
    )
    checks = graph(
        "Checks",
        "Stored balances checked against the chain, by result, per second: match, drift, "
        "in_flight (a message came meanwhile), failed.",
        "ops",
        promql(rate("balancewatch_balance_checks_total", by="result"), "{{result}}"),
        width=8,
    )
    drift = (
        stat.Panel()
        .title("Drift found")
        .description(
            "Checks that found the stored balance wrong in the time range (each wrote a "
            "`check` row with the chain's balance). Above 0: messages were missed."
        )
        .datasource(PROMETHEUS)
        .unit("short")
        .height(8)
        .span(8)
        .with_target(
            promql(
                f'sum(increase(balancewatch_balance_checks_total{{{INSTANCE}, result="drift"}}'
                "[$__range]))",
                "drift",
            )
        )
    )
    shards = graph(
        "Shards held",
        "Shards whose lease each replica holds, against the shard count: the held add up to "
        "the count when every shard has a live owner.",
        "short",
        promql(f"balancewatch_shards_held{{{INSTANCE}}}", "held {{instance}}"),
        promql(f"max(balancewatch_shard_count{{{INSTANCE}}})", "shards", ref_id="B"),
    )
    lease_failures = graph(
        "Lease round failures",
        "Lease rounds (heartbeat, renewals, claims) that failed, per interval. A replica "
        "that cannot renew stops trusting its leases and its shards move to another.",
        "short",
        promql(
            f"sum by (instance) (increase(balancewatch_lease_rounds_total"
            f'{{{INSTANCE}, result="failed"}}[$__rate_interval]))',
            "failed {{instance}}",
        ),
    )
    history = graph(
        "History partitions",
        "Rows in balance_rows_default (of a time no day partition covers: normally 0) and the "
        "partitions the retention dropped, per interval (BALANCEWATCH_RETENTION).",
        "short",
        promql(f"max(balancewatch_default_partition_rows{{{INSTANCE}}})", "in the default"),
        promql(
            f"sum(increase(balancewatch_partitions_dropped_total{{{INSTANCE}}}[$__rate_interval]))",
            "dropped",
            ref_id="B",
        ),
    )
    return (
        dash.Dashboard("balancewatch: Operations")
        .uid("balancewatch-operations")
        .description(
            "The daemon's metrics: ingest, writes, subscriptions, chain reads, shards, history."
        )
        .tags(["balancewatch"])
        .time("now-6h", "now")
        .refresh("30s")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .with_variable(
            dash.DatasourceVariable("prometheus").label("Prometheus").type(PROMETHEUS_TYPE)
        )
        .with_variable(
            dash.QueryVariable("instance")
            .label("Replica")
            .datasource(PROMETHEUS)
            .query("label_values(balancewatch_websocket_connected, instance)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
        .with_panel(throughput)
        .with_panel(pending)
        .with_panel(reconnects)
        .with_panel(pairs)
        .with_panel(latency)
        .with_panel(lease_failures)
        .with_panel(snapshots)
        .with_panel(checks)
        .with_panel(drift)
        .with_panel(shards)
        .with_panel(history)
    )


# -- Balances --------------------------------------------------------------------------------

# The chosen wallet's tokens: those with rows, and those watched that have none yet.
WALLET_TOKENS_SQL: Final = """
SELECT token FROM pairs WHERE wallet = '$wallet'
UNION
SELECT token FROM watchlist WHERE wallet = '$wallet' AND token IS NOT NULL
"""

# The balance just before the window (so the line starts at its left edge), then the window's
# rows: the pair's index, read over the window's partitions only.
BALANCE_SQL: Final = """
SELECT time, balance
FROM (
    SELECT $__timeFrom()::timestamptz AS time, 0 AS id,
           balance_at('$wallet', '$token', $__timeFrom()) AS balance
    UNION ALL
    SELECT received_at, id, amount
    FROM balance_history
    WHERE wallet = '$wallet' AND token = '$token' AND $__timeFilter(received_at)
) points
WHERE balance IS NOT NULL
ORDER BY time, id
"""

# README query 12 over the window: each time not listened to becomes 1 at its start and 0 at
# its end, drawn as a step on a hidden axis over the balance.
GAPS_SQL: Final = """
SELECT edge.time, edge.not_listening
FROM (
    SELECT greatest(ended_at, $__timeFrom()::timestamptz) AS gap_from,
           least(coalesce(next_start, now()), $__timeTo()::timestamptz) AS gap_until
    FROM (
        SELECT ended_at, lead(started_at) OVER (ORDER BY started_at) AS next_start
        FROM coverage
        WHERE wallet = '$wallet'
          AND (token = '$token' OR token IS NULL)  -- listened to through the wallet's room
    ) periods
    WHERE ended_at IS NOT NULL
      AND (next_start IS NULL OR next_start > ended_at)
      AND ended_at < $__timeTo()
      AND coalesce(next_start, 'infinity') > $__timeFrom()
) gaps
CROSS JOIN LATERAL (VALUES (gap_from, 1), (gap_until, 0)) AS edge(time, not_listening)
ORDER BY edge.time, edge.not_listening DESC
"""

LATEST_SQL: Final = """
SELECT token, amount, received_at
FROM latest_balance
WHERE wallet = '$wallet'
ORDER BY token
"""

# README query 6 over the chosen time range rather than the last 24 hours: the balance at its
# end against the balance at its start, for the pairs with a row after its start.
MOVERS_SQL: Final = """
SELECT l.wallet, l.token, ends.at_start, ends.at_end, ends.at_end - ends.at_start AS change
FROM latest_balance l
CROSS JOIN LATERAL (
    SELECT balance_at(l.wallet, l.token, $__timeFrom()) AS at_start,
           balance_at(l.wallet, l.token, $__timeTo()) AS at_end
) ends
WHERE l.received_at > $__timeFrom()
ORDER BY abs(ends.at_end - ends.at_start) DESC NULLS LAST, l.wallet, l.token
LIMIT 10
"""

# The share of the last 24 hours each token of the wallet was listened to: its periods and
# its wallet room's, merged where they overlap (a range_agg), an open one up to now.
COVERAGE_SQL: Final = f"""
SELECT t.token,
       round(100 * extract(epoch FROM listened.total) / 86400, 1) AS listened_percent,
       listened.periods
FROM ({WALLET_TOKENS_SQL.strip()}) t
CROSS JOIN LATERAL (
    SELECT coalesce(sum(upper(r) - lower(r)), interval '0') AS total, count(r) AS periods
    FROM unnest((
        SELECT range_agg(tstzrange(greatest(c.started_at, now() - interval '24 hours'),
                                   coalesce(c.ended_at, now())))
        FROM coverage c
        WHERE c.wallet = '$wallet'
          AND (c.token = t.token OR c.token IS NULL)
          AND coalesce(c.ended_at, 'infinity') > now() - interval '24 hours'
    )) r
) listened
ORDER BY listened_percent, t.token
"""  # noqa: S608 (made of this module's constants, no input)


def _percent_of_day(panel: table.Panel) -> table.Panel:
    return panel.override_by_name(
        "listened_percent",
        [
            DynamicConfigValue(id_val="unit", value="percent"),
            DynamicConfigValue(id_val="displayName", value="listened, last 24 h"),
        ],
    )


def balances() -> dash.Dashboard:
    chart = (
        timeseries.Panel()
        .title("Balance of $wallet / $token")
        .description(
            "The chosen pair's balance over the time range, as a step (a balance holds until "
            "the next message). The red band is when no daemon was listening to the pair "
            "(from `coverage`): a change then may be missing from the history."
        )
        .datasource(POSTGRES)
        .height(10)
        .span(24)
        .line_interpolation(common.LineInterpolation.STEP_AFTER)
        .with_target(Sql(BALANCE_SQL, "time_series"))
        .with_target(Sql(GAPS_SQL, "time_series", ref_id="B"))
        .override_by_name(
            "not_listening",
            [
                DynamicConfigValue(id_val="displayName", value="not listening"),
                DynamicConfigValue(id_val="custom.axisPlacement", value="hidden"),
                DynamicConfigValue(id_val="custom.fillOpacity", value=30),
                DynamicConfigValue(id_val="custom.lineWidth", value=0),
                DynamicConfigValue(id_val="max", value=1),
                DynamicConfigValue(id_val="min", value=0),
                DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "red"}),
            ],
        )
    )
    latest = (
        table.Panel()
        .title("Latest balances of $wallet")
        .description("Each token's newest amount and when it came (`latest_balance`).")
        .datasource(POSTGRES)
        .height(9)
        .span(8)
        .with_target(Sql(LATEST_SQL))
    )
    movers = (
        table.Panel()
        .title("Biggest movers")
        .description(
            "The ten pairs whose balance changed most over the time range: at its end "
            "against at its start (`balance_at`). at_start is empty for a pair first heard "
            "of within the range."
        )
        .datasource(POSTGRES)
        .height(9)
        .span(9)
        .with_target(Sql(MOVERS_SQL))
    )
    coverage = _percent_of_day(
        table.Panel()
        .title("Listening coverage of $wallet, last 24 h")
        .description(
            "The share of the last 24 hours a daemon was listening to each token of the "
            "wallet (its own room or the wallet's), and in how many stretches; least first."
        )
        .datasource(POSTGRES)
        .height(9)
        .span(7)
        .with_target(Sql(COVERAGE_SQL))
    )
    return (
        dash.Dashboard("balancewatch: Balances")
        .uid("balancewatch-balances")
        .description("The stored history: one pair over time, latest balances, movers.")
        .tags(["balancewatch"])
        .time("now-24h", "now")
        .with_variable(dash.DatasourceVariable("postgres").label("Database").type(POSTGRES_TYPE))
        .with_variable(
            dash.QueryVariable("wallet")
            .label("Wallet")
            .datasource(POSTGRES)
            .query("SELECT DISTINCT wallet FROM watchlist ORDER BY 1")
            .refresh(VariableRefresh.ON_DASHBOARD_LOAD)
        )
        .with_variable(
            dash.QueryVariable("token")
            .label("Token")
            .datasource(POSTGRES)
            .query(WALLET_TOKENS_SQL.strip() + "\nORDER BY 1")
            .refresh(VariableRefresh.ON_DASHBOARD_LOAD)
        )
        .with_panel(chart)
        .with_panel(latest)
        .with_panel(movers)
        .with_panel(coverage)
    )


# -- reading them back, and Grafana's macros (what the checks run) ----------------------------

Dashboard = dict[str, Any]

_MACRO: Final = re.compile(r"\$__(\w+)(?:\(([^()]*)\))?")
_VARIABLE: Final = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def load(name: str, directory: Path = DASHBOARDS_DIR) -> Dashboard:
    loaded: Dashboard = json.loads((directory / name).read_text())
    return loaded


def queries(dashboard: Dashboard) -> dict[str, str]:
    """Every query of a dashboard, by where it is: "panel title/refId" or "variable name"
    (PromQL or SQL, as the dashboard's data source reads it)."""
    found: dict[str, str] = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found[f"variable {variable['name']}"] = variable["query"]
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found[f"{panel['title']}/{target['refId']}"] = target.get("expr", target.get("rawSql"))
    return found


_LABEL_VALUES: Final = re.compile(r"label_values\((.+),\s*\w+\)")


def promql_of(query: str) -> str:
    """The PromQL in a Prometheus query: a variable's `label_values(EXPR, label)` reads EXPR."""
    label_values = _LABEL_VALUES.fullmatch(query.strip())
    return label_values.group(1) if label_values else query


def _grafana_time(at: datetime) -> str:
    """As Grafana's SQL data sources write a time: RFC 3339 in UTC, to the second."""
    return "'" + at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") + "'"


def _variables(text: str, values: Mapping[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise ValueError(f"no value given for the variable ${name}")
        return values[name]

    return _VARIABLE.sub(value, text)


def expand_sql(
    sql: str,
    time_from: datetime,
    time_to: datetime,
    variables: Mapping[str, str],
    interval: timedelta = timedelta(minutes=1),
) -> str:
    """`sql` as Grafana's Postgres data source sends it: its macros expanded for the time range
    and interval, then its template variables put in as they are (a single value is not
    quoted by Grafana: the query quotes it). A macro Grafana has and this does not fails."""

    def macro(match: re.Match[str]) -> str:
        name, argument = match.group(1), match.group(2)
        if name == "timeFilter" and argument:
            column = argument.strip()
            return f"{column} BETWEEN {_grafana_time(time_from)} AND {_grafana_time(time_to)}"
        simple = {
            "timeFrom": _grafana_time(time_from),
            "timeTo": _grafana_time(time_to),
            "interval": f"{int(interval.total_seconds())}s",
            "interval_ms": str(int(interval.total_seconds() * 1000)),
        }
        if name in simple and (argument is None or not argument.strip()):
            return simple[name]
        raise ValueError(f"the macro $__{name} is not expanded here: {match.group(0)}")

    return _variables(_MACRO.sub(macro, sql), variables)


def expand_promql(expr: str, variables: Mapping[str, str], step: str = "1m") -> str:
    """`expr` as Grafana's Prometheus data source sends it, for one step: the interval
    variables ($__rate_interval, $__interval, $__range) as a duration, then the template
    variables."""

    def interval(match: re.Match[str]) -> str:
        if match.group(1) in ("rate_interval", "interval", "range") and match.group(2) is None:
            return step
        raise ValueError(f"the variable $__{match.group(1)} is not expanded here")

    return _variables(_MACRO.sub(interval, expr), variables)


# -- the files -------------------------------------------------------------------------------

DASHBOARDS: Final = {"operations.json": operations, "balances.json": balances}


def render(builder: dash.Dashboard) -> str:
    return json.dumps(builder.build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def rendered() -> dict[str, str]:
    """File name -> the JSON this code makes now."""
    return {name: render(make()) for name, make in DASHBOARDS.items()}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    directory = Path(args[0]) if args else DASHBOARDS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in rendered().items():
        (directory / name).write_text(text)
        print(directory / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
