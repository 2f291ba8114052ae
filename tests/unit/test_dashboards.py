"""The Grafana dashboards in config/grafana/dashboards: what the generator makes now, each
panel on the data source of its kind, and PromQL that names only metrics the daemon exports.
That every query runs (promtool, Postgres) is tests/integration/test_dashboard_queries.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from balancewatch.devtools import dashboards
from tests.files import REPO
from tests.promql import exported_series, metric_names

DIRECTORY = REPO / dashboards.DASHBOARDS_DIR
KINDS = {
    "operations.json": dashboards.PROMETHEUS_TYPE,
    "balances.json": dashboards.POSTGRES_TYPE,
}


def prometheus_expressions() -> dict[str, str]:
    queries = dashboards.queries(dashboards.load("operations.json", DIRECTORY))
    return {where: dashboards.promql_of(query) for where, query in queries.items()}


def test_the_committed_dashboards_are_what_the_generator_makes() -> None:
    generated = dashboards.rendered()
    assert sorted(generated) == sorted(path.name for path in DIRECTORY.glob("*.json"))
    for name, text in generated.items():
        assert (DIRECTORY / name).read_text() == text, (
            f"{name} differs: run `python -m balancewatch.devtools.dashboards`"
        )


@pytest.mark.parametrize(("name", "kind"), sorted(KINDS.items()))
def test_every_panel_and_query_reads_a_data_source_of_its_dashboards_kind(
    name: str, kind: str
) -> None:
    dashboard = dashboards.load(name, DIRECTORY)
    (picker,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert picker["query"] == kind
    expected = {"type": kind, "uid": "${" + picker["name"] + "}"}
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"], panel["title"]
        assert [target["datasource"] for target in panel["targets"]] == [expected] * len(
            panel["targets"]
        ), panel["title"]
        assert panel["description"], f"{panel['title']} says nothing of what it shows"
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == expected, variable["name"]


def test_every_promql_expression_names_only_metrics_the_daemon_exports() -> None:
    exported = exported_series()
    assert "balancewatch_write_seconds_bucket" in exported  # the suffixes are applied
    named: set[str] = set()
    for where, expr in prometheus_expressions().items():
        metrics = metric_names(expr)
        assert metrics, f"{where}: no metric found in {expr!r}"
        assert metrics <= exported, f"{where}: {sorted(metrics - exported)} not exported"
        named |= metrics
    # The panels the operator was promised.
    for metric in (
        "balancewatch_messages_received_total",
        "balancewatch_rows_written_total",
        "balancewatch_pending_rows",
        "balancewatch_websocket_reconnects_total",
        "balancewatch_pairs",
        "balancewatch_write_seconds_bucket",
        "balancewatch_snapshots_total",
        "balancewatch_balance_checks_total",
        "balancewatch_shards_held",
        "balancewatch_shard_count",
        "balancewatch_lease_rounds_total",
    ):
        assert metric in named


def test_a_renamed_metric_would_be_caught() -> None:
    """The check above can fail: a name the daemon does not export is found as a metric."""
    expr = 'sum(rate(balancewatch_messages_total{instance=~".*"}[5m]))'
    assert metric_names(expr) - exported_series() == {"balancewatch_messages_total"}


def test_a_variables_label_values_is_checked_as_the_expression_it_reads() -> None:
    query = "label_values(balancewatch_websocket_connected, instance)"
    assert dashboards.promql_of(query) == "balancewatch_websocket_connected"
    assert dashboards.promql_of("sum(up)") == "sum(up)"


# -- Grafana's macros, as the checks expand them -----------------------------------------------

FROM = datetime(2026, 11, 20, 12, 0, 0, 250_000, tzinfo=UTC)
TO = FROM + timedelta(hours=6)


def test_sql_time_macros_become_utc_literals_to_the_second() -> None:
    sql = "SELECT $__timeFrom(), $__timeTo() WHERE $__timeFilter( received_at )"
    assert dashboards.expand_sql(sql, FROM, TO, {}) == (
        "SELECT '2026-11-20T12:00:00Z', '2026-11-20T18:00:00Z' "
        "WHERE received_at BETWEEN '2026-11-20T12:00:00Z' AND '2026-11-20T18:00:00Z'"
    )


def test_sql_interval_macros_and_variables_in_both_spellings() -> None:
    sql = "$__interval $__interval_ms '$wallet' '${token}'"
    expanded = dashboards.expand_sql(
        sql, FROM, TO, {"wallet": "W", "token": "T"}, interval=timedelta(seconds=30)
    )
    assert expanded == "30s 30000 'W' 'T'"


def test_a_time_given_in_another_zone_is_written_in_utc() -> None:
    paris = FROM.astimezone(timezone(timedelta(hours=1)))
    assert dashboards.expand_sql("$__timeFrom()", paris, TO, {}) == "'2026-11-20T12:00:00Z'"


@pytest.mark.parametrize(
    ("sql", "error"),
    [
        ("SELECT $__timeGroup(received_at, '1m')", r"\$__timeGroup"),
        ("SELECT $__unixEpochFilter(t)", r"\$__unixEpochFilter"),
        ("SELECT $__timeFilter()", r"\$__timeFilter"),
        ("WHERE wallet = '$wallet'", r"\$wallet"),
    ],
)
def test_a_macro_or_variable_not_expanded_fails_rather_than_reaching_postgres(
    sql: str, error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        dashboards.expand_sql(sql, FROM, TO, {})


def test_promql_interval_variables_become_a_duration() -> None:
    expr = 'rate(m{instance=~"$instance"}[$__rate_interval]) + increase(m[$__range])'
    assert dashboards.expand_promql(expr, {"instance": ".*"}, step="2m") == (
        'rate(m{instance=~".*"}[2m]) + increase(m[2m])'
    )
    with pytest.raises(ValueError, match=r"\$__name"):
        dashboards.expand_promql("m[$__name]", {})
