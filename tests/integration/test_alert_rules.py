"""The shipped alert rules (config/prometheus/) checked and unit-tested by the real `promtool`,
and their expressions held to the metrics the daemon really exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.files import REPO
from tests.promql import exported_series, metric_names
from tests.tools import tool

RULES = REPO / "config" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "config" / "prometheus" / "alerts.test.yml"
EXAMPLE_CONFIG = REPO / "config" / "prometheus" / "prometheus.yml"


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool", "prometheus"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def alerts() -> dict[str, dict[str, Any]]:
    """alerts.yml's alerting rules, by name."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def test_promtool_finds_the_rules_valid() -> None:
    checked = promtool("check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout


def test_every_alert_fires_and_stays_quiet_in_promtools_unit_tests() -> None:
    tested = promtool("test", "rules", RULE_TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    firing, quiet = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        sources = [_labels(series["series"]) for series in case["input_series"]]
        for check in case["alert_rule_test"]:
            name, expected = check["alertname"], check.get("exp_alerts") or []
            fired = [alert["exp_labels"] for alert in expected]
            if fired:
                firing.add(name)
            # Quiet: nothing fires at this time, or a series fed (another replica, job, reason...)
            # is left out.
            if any(not _fired_for(source, fired) for source in sources):
                quiet.add(name)
    assert firing == set(alerts()), "alerts without a test where they fire"
    assert quiet == set(alerts()), "alerts without a test where they stay quiet"


def _labels(series: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', series))


def _fired_for(source: dict[str, str], fired: list[dict[str, str]]) -> bool:
    """Some alert expected carries this series' labels (those of them the alert has: a sum
    by job has no instance)."""
    return any(all(alert[k] == source[k] for k in alert.keys() & source.keys()) for alert in fired)


def test_every_alert_has_a_severity_a_summary_and_what_to_do() -> None:
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["annotations"]["summary"], name
        assert len(rule["annotations"]["description"]) > 80, name


def test_the_rules_name_only_metrics_the_daemon_exports() -> None:
    exported = exported_series() | {"up"}
    for name, rule in alerts().items():
        used = metric_names(rule["expr"])
        assert used, name
        assert used <= exported, f"{name}: {sorted(used - exported)} not exported"


def test_a_counter_is_only_ever_read_through_rate_or_increase() -> None:
    counters = {name for name in exported_series() if name.endswith("_total")}
    for name, rule in alerts().items():
        for counter in metric_names(rule["expr"]) & counters:
            assert re.search(rf"\b(?:rate|increase)\(\s*{counter}\b", rule["expr"]), name


def test_the_metric_name_reader_sees_through_promql() -> None:
    expr = (
        'sum by (job, instance) (rate(a_total{reason=~"x|y"}[5m] offset 1h)) / b > 0.5 '
        "and on (job) c_seconds == bool 1 unless up"
    )
    assert metric_names(expr) == {"a_total", "b", "c_seconds", "up"}


def test_the_example_prometheus_config_loads_the_shipped_rules(tmp_path: Path) -> None:
    # As compose mounts them: the rules next to the config, at the path the config names.
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "balancewatch"  # what BalancewatchDown's `up` selects
    shutil.copy(RULES, tmp_path / "alerts.yml")
    config["rule_files"] = [str(tmp_path / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    checked = promtool("check", "config", tmp_path / "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout
