"""Settings: environment over TOML file, one clear line per problem, secrets never echoed."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from balancewatch.errors import ConfigError
from balancewatch.settings import load_settings
from tests.files import REPO

SECRET = "hunter2-secret-key"
PASSWORD = "pa55-word-xyz"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "DATABASE_URL",
        "DATASTREAM_URL",
        "API_KEY",
        "API_KEY_FILE",
        "CONFIG",
        "BATCH_SIZE",
        "RPC_URL",
        "RPC_URL_FILE",
        "RPC_MAX_RPS",
        "BALANCE_CHECK_INTERVAL",
        "RETENTION",
    ):
        monkeypatch.delenv(f"BALANCEWATCH_{name}", raising=False)


def test_the_environment_wins_over_the_config_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "balancewatch.toml"
    config.write_text('database_url = "postgresql://file@h/db"\nbatch_size = 10\napi_key = "k"\n')
    monkeypatch.setenv("BALANCEWATCH_CONFIG", str(config))
    monkeypatch.setenv("BALANCEWATCH_BATCH_SIZE", "20")
    settings = load_settings(need_key=True)
    assert settings.batch_size == 20
    assert settings.sqlalchemy_url.username == "file"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p@h:5433/db",
        "postgres://u:p@h:5433/db",
        "postgresql+asyncpg://u:p@h:5433/db",
    ],
)
def test_the_psql_url_forms_are_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("BALANCEWATCH_DATABASE_URL", url)
    settings = load_settings(need_key=False)
    assert settings.sqlalchemy_url.drivername == "postgresql+asyncpg"
    assert settings.sqlalchemy_url.port == 5433


def test_a_missing_database_url_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="BALANCEWATCH_DATABASE_URL: Field required"):
        load_settings(need_key=False)


@pytest.mark.parametrize(
    "url", ["mysql://u:pa55-word-xyz@h/db", "not a url", "postgresql://u:pa55-word-xyz@h"]
)
def test_a_malformed_database_url_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("BALANCEWATCH_DATABASE_URL", url)
    with pytest.raises(ConfigError, match="BALANCEWATCH_DATABASE_URL") as caught:
        load_settings(need_key=False)
    assert PASSWORD not in str(caught.value)


def test_the_daemon_refuses_to_start_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALANCEWATCH_DATABASE_URL", "postgresql://h/db")
    assert load_settings(need_key=False).api_key is None
    with pytest.raises(ConfigError, match="BALANCEWATCH_API_KEY"):
        load_settings(need_key=True)


def test_the_key_can_come_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(f"{SECRET}\n")
    monkeypatch.setenv("BALANCEWATCH_DATABASE_URL", f"postgresql://u:{PASSWORD}@h/db")
    monkeypatch.setenv("BALANCEWATCH_API_KEY_FILE", str(key_file))
    settings = load_settings(need_key=True)
    assert settings.datastream_key() == SECRET
    assert set(settings.secrets()) == {SECRET, PASSWORD}
    assert SECRET not in repr(settings)
    assert PASSWORD not in repr(settings)


def test_an_unreadable_key_file_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BALANCEWATCH_DATABASE_URL", "postgresql://h/db")
    monkeypatch.setenv("BALANCEWATCH_API_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="BALANCEWATCH_API_KEY_FILE: cannot read"):
        load_settings(need_key=True)


def test_an_unknown_key_in_the_config_file_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('database_url = "postgresql://h/db"\nbatch_sise = 5\n')
    monkeypatch.setenv("BALANCEWATCH_CONFIG", str(config))
    with pytest.raises(ConfigError, match="unknown setting 'batch_sise'"):
        load_settings(need_key=False)


def test_a_wrong_type_in_the_config_file_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('database_url = "postgresql://h/db"\nbatch_size = "many"\n')
    monkeypatch.setenv("BALANCEWATCH_CONFIG", str(config))
    with pytest.raises(
        ConfigError, match="BALANCEWATCH_BATCH_SIZE: Input should be a valid integer"
    ):
        load_settings(need_key=False)


def test_a_missing_config_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BALANCEWATCH_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="BALANCEWATCH_CONFIG: no such file"):
        load_settings(need_key=False)


def test_the_shipped_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    example = REPO / "config" / "balancewatch.example.toml"
    monkeypatch.setenv("BALANCEWATCH_CONFIG", str(example))
    monkeypatch.setenv("BALANCEWATCH_API_KEY", SECRET)
    settings = load_settings(need_key=True)
    assert settings.datastream_url == "wss://datastream.solanatracker.io"


def test_the_spool_defaults_to_the_users_state_directory_wherever_it_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BALANCEWATCH_DATABASE_URL", "postgresql://h/db")
    monkeypatch.delenv("BALANCEWATCH_SPOOL_DIR", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    expected = tmp_path / "home" / ".local" / "state" / "balancewatch" / "spool"
    assert load_settings(need_key=False).spool_dir == expected
    monkeypatch.chdir("/")
    assert load_settings(need_key=False).spool_dir == expected


def test_an_absolute_xdg_state_home_is_used_and_a_relative_one_ignored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BALANCEWATCH_DATABASE_URL", "postgresql://h/db")
    monkeypatch.delenv("BALANCEWATCH_SPOOL_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert load_settings(need_key=False).spool_dir == tmp_path / "state" / "balancewatch" / "spool"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")  # invalid per the spec
    home_default = tmp_path / "home" / ".local" / "state" / "balancewatch" / "spool"
    assert load_settings(need_key=False).spool_dir == home_default


def test_a_spool_dir_given_with_a_tilde_is_expanded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BALANCEWATCH_DATABASE_URL", "postgresql://h/db")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("BALANCEWATCH_SPOOL_DIR", "~/bw-spool")
    assert load_settings(need_key=False).spool_dir == tmp_path / "bw-spool"


def test_without_an_rpc_url_nothing_is_read_from_the_chain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BALANCEWATCH_DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("BALANCEWATCH_RPC_URL", "")
    settings = load_settings(need_key=False)
    assert settings.rpc_url is None
    assert (settings.rpc_max_rps, settings.balance_check_interval) == (10.0, 3600.0)


def test_an_rpc_url_that_is_not_http_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BALANCEWATCH_DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("BALANCEWATCH_RPC_URL", f"wss://rpc.example/{SECRET}")
    with pytest.raises(ConfigError, match="BALANCEWATCH_RPC_URL: must be an http") as caught:
        load_settings(need_key=False)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RPC_MAX_RPS", "0"),
        ("BALANCE_CHECK_INTERVAL", "-1"),
        ("RPC_BATCH_SIZE", "5000"),
        ("LEASE_TTL", "1"),  # renewed every third of a second: a lease loop that never rests
        ("LEASE_TTL", "nan"),
        ("REPLICA_ID", "a/b"),  # the instance name is the id, a slash and a random part
        ("REPLICA_ID", "two words"),
        ("REPLICA_ID", ""),
    ],
)
def test_limits_out_of_range_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv("BALANCEWATCH_DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv(f"BALANCEWATCH_{name}", value)
    with pytest.raises(ConfigError, match=f"BALANCEWATCH_{name}: "):
        load_settings(need_key=False)


@pytest.mark.parametrize(("value", "days"), [("400d", 400), ("12w", 84), (" 30D ", 30), ("", None)])
def test_a_retention_is_days_or_weeks_and_none_keeps_everything(
    monkeypatch: pytest.MonkeyPatch, value: str, days: int | None
) -> None:
    monkeypatch.setenv("BALANCEWATCH_DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("BALANCEWATCH_RETENTION", value)
    retention = load_settings(need_key=False).retention
    assert (retention.days if retention else None) == days
    monkeypatch.delenv("BALANCEWATCH_RETENTION")
    assert load_settings(need_key=False).retention is None


@pytest.mark.parametrize(("value", "days"), [("1d", 1), ("7d", 7), (" 7D ", 7), (None, 7)])
def test_a_partition_is_a_day_or_a_week_and_a_week_by_default(
    monkeypatch: pytest.MonkeyPatch, value: str | None, days: int
) -> None:
    monkeypatch.setenv("BALANCEWATCH_DATABASE_URL", "postgresql://u@h/db")
    if value is not None:
        monkeypatch.setenv("BALANCEWATCH_PARTITION", value)
    assert load_settings(need_key=False).partition_days == days


RETENTION_FORM = "must be a whole number of days or weeks, like 400d or 12w"
PARTITION_FORM = "must be 1d (a partition a day) or 7d (a week from Monday, UTC)"
BAD_RETENTIONS = ("400", "1y", "0d", "-5d", "1.5d", "400 days", "d")


@pytest.mark.parametrize(
    ("name", "value", "form"),
    [
        *(("RETENTION", value, RETENTION_FORM) for value in BAD_RETENTIONS),
        *(("PARTITION", value, PARTITION_FORM) for value in ("1w", "2d", "7", "", "day", "week")),
    ],
)
def test_a_bad_retention_or_partition_is_refused_with_the_form_it_takes(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, form: str
) -> None:
    monkeypatch.setenv("BALANCEWATCH_DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv(f"BALANCEWATCH_{name}", value)
    with pytest.raises(ConfigError) as refused:
        load_settings(need_key=False)
    assert str(refused.value) == f"BALANCEWATCH_{name}: {form}"


@pytest.mark.parametrize(
    ("name", "form"), [("retention", RETENTION_FORM), ("partition", PARTITION_FORM)]
)
def test_a_bare_number_of_days_in_the_config_file_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, form: str
) -> None:
    config = tmp_path / "balancewatch.toml"
    config.write_text(f'database_url = "postgresql://u@h/db"\n{name} = 7\n')
    monkeypatch.setenv("BALANCEWATCH_CONFIG", str(config))
    with pytest.raises(ConfigError) as refused:
        load_settings(need_key=False)
    assert str(refused.value) == f"BALANCEWATCH_{name.upper()}: {form}"


def test_every_part_of_the_rpc_url_that_may_be_a_key_is_a_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BALANCEWATCH_DATABASE_URL", "postgresql://u@h/db")
    url = f"https://rpc.example/v1/{SECRET}?api-key={PASSWORD}&cluster=mainnet"
    monkeypatch.setenv("BALANCEWATCH_RPC_URL", url)
    secrets = load_settings(need_key=False).secrets()
    assert {url, SECRET, PASSWORD} <= set(secrets)
    assert "v1" not in secrets
    assert secrets.index(url) < secrets.index(SECRET)  # the whole before its parts


def test_the_rpc_url_may_come_from_a_file_and_an_empty_one_means_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BALANCEWATCH_DATABASE_URL", "postgresql://u@h/db")
    url_file = tmp_path / "rpc_url"
    monkeypatch.setenv("BALANCEWATCH_RPC_URL_FILE", str(url_file))
    url_file.write_text(f"https://rpc.example/{SECRET}\n")
    settings = load_settings(need_key=False)
    assert settings.rpc_endpoint() == f"https://rpc.example/{SECRET}"
    assert SECRET in settings.secrets()
    url_file.write_text("")
    assert load_settings(need_key=False).rpc_endpoint() is None
    url_file.write_text(f"ftp://{SECRET}")
    with pytest.raises(ConfigError, match="BALANCEWATCH_RPC_URL_FILE: the URL in") as caught:
        load_settings(need_key=False)
    assert SECRET not in str(caught.value)


def test_the_default_replica_id_names_the_host_and_the_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BALANCEWATCH_DATABASE_URL", "postgresql://u@h/db")
    settings = load_settings(need_key=False)
    assert settings.replica_id == f"{socket.gethostname()}-{os.getpid()}"
    assert settings.lease_ttl == 15
