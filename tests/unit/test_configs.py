"""Each component's config is built from Settings by field name: a renamed field or setting
must fail here, not fall back to a default that drifted from the one in Settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from balancewatch.daemon.datastream import StreamConfig
from balancewatch.daemon.sync import SyncConfig
from balancewatch.pipeline.bookkeeping import BookkeepingConfig
from balancewatch.pipeline.writer import WriterConfig
from balancewatch.settings import Settings, config_from


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"database_url": "postgresql://h/db", "spool_dir": Path("/x")}
    return Settings(**values | overrides)  # type: ignore[arg-type]


@pytest.mark.parametrize("config", [StreamConfig, SyncConfig])
def test_a_config_takes_every_field_from_the_setting_of_its_name(
    config: type[StreamConfig | SyncConfig],
) -> None:
    given = settings(connect_timeout=3.5, backoff_max=42.0, reconcile_interval=7.0)
    built: StreamConfig | SyncConfig = config_from(given, config)
    for field in dataclasses.fields(built):
        assert getattr(built, field.name) == getattr(given, field.name), field.name


def test_the_writer_config_follows_the_settings_and_derives_the_rest() -> None:
    given = settings(batch_size=123, max_buffered_rows=456, spool_mode="durable")
    built = WriterConfig.from_settings(given)
    assert (built.batch_size, built.max_buffered_rows, built.durable) == (123, 456, True)
    assert built.drain_timeout == given.drain_timeout
    assert WriterConfig.from_settings(settings()).durable is False


def test_the_bookkeeping_gathers_for_the_flush_interval() -> None:
    built = BookkeepingConfig.from_settings(settings(flush_interval=0.5, write_timeout=9.0))
    assert (built.gather, built.write_timeout) == (0.5, 9.0)


def test_a_field_with_no_setting_and_no_default_is_an_error() -> None:
    @dataclasses.dataclass
    class Misnamed:
        batch_size: int
        batch_sise: int

    with pytest.raises(TypeError, match="batch_sise"):
        config_from(settings(), Misnamed)
