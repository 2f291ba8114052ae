"""One typed settings object, from `BALANCEWATCH_*` environment variables and an optional TOML file.

The TOML file is named by `BALANCEWATCH_CONFIG`; its keys are the field names below. The
environment wins over the file. Every problem is reported as one line that names the setting
and never echoes its value (a value may be a key or a password).
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, TypeVar
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from balancewatch.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    Config = TypeVar("Config", bound=DataclassInstance)

ENV_PREFIX = "BALANCEWATCH_"
CONFIG_ENV = "BALANCEWATCH_CONFIG"
_DRIVERS = {"postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg"}
# A path segment or a query value this long may be a provider's key (keys are 32 or more
# characters at the usual providers; "rpc", "v1", "mainnet" are not keys).
_KEY_SEGMENT_CHARS = 16
_KEY_VALUE_CHARS = 8
# A retention: whole days or weeks, since the history is dropped a day partition at a time.
_RETENTION = re.compile(r"\s*([1-9][0-9]{0,5})\s*([dw])\s*", re.IGNORECASE)
_RETENTION_UNITS = {"d": 1, "w": 7}
_RETENTION_FORMAT = "must be a whole number of days or weeks, like 400d or 12w"
# A partition's width, in days: a day, or a week from Monday. A week by default, as
# TimescaleDB's chunks: a query with no time bound on the history (a pair's, through the
# view) plans and probes every partition, so their number is what it costs.
PARTITION_DAYS: Final = {"1d": 1, "7d": 7}
DEFAULT_PARTITION: Final = "7d"
_PARTITION_FORMAT = "must be 1d (a partition a day) or 7d (a week from Monday, UTC)"


def parse_database_url(raw: str) -> URL:
    """Accept the psql form (`postgresql://`, `postgres://`) and `postgresql+asyncpg://`."""
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ValueError("is not a URL of the form postgresql://user:pass@host:port/db") from None
    drivername = _DRIVERS.get(url.drivername, url.drivername)
    if drivername != "postgresql+asyncpg":
        raise ValueError(f"must start with postgresql:// (got the scheme {url.drivername!r})")
    if not url.database:
        raise ValueError("names no database (postgresql://user:pass@host:port/DATABASE)")
    return url.set(drivername=drivername)


def default_spool_dir() -> Path:
    """The per-user state directory (XDG), so the default never depends on where the process
    was started (under systemd that is `/`); the image sets /var/lib/balancewatch/spool."""
    state = os.environ.get("XDG_STATE_HOME", "")
    # The XDG spec says a relative value is invalid and is to be ignored.
    base = Path(state) if Path(state).is_absolute() else Path.home() / ".local" / "state"
    return base / "balancewatch" / "spool"


def default_replica_id() -> str:
    """The host name and the process id: unique among live processes, and readable."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    database_url: SecretStr
    datastream_url: str = "wss://datastream.solanatracker.io"
    api_key: SecretStr | None = None
    api_key_file: Path | None = None

    batch_size: int = Field(default=5000, ge=1, le=1_000_000)
    flush_interval: float = Field(default=0.02, gt=0, le=60)
    reconcile_interval: float = Field(default=30.0, gt=0)
    backoff_initial: float = Field(default=0.5, gt=0)
    backoff_max: float = Field(default=30.0, gt=0)
    backoff_reset_after: float = Field(default=30.0, ge=0)
    connect_timeout: float = Field(default=10.0, gt=0)
    keepalive_interval: float = Field(default=20.0, gt=0)
    idle_timeout: float = Field(default=90.0, gt=0)
    max_frame_bytes: int = Field(default=64 * 1024, ge=1024)
    rejected_frame_chars: int = Field(default=4096, ge=64)
    join_ack_timeout: float = Field(default=10.0, gt=0)
    shutdown_timeout: float = Field(default=8.0, gt=0, le=60)

    spool_dir: Path = Field(default_factory=default_spool_dir)
    spool_mode: Literal["overflow", "durable"] = "overflow"
    max_buffered_rows: int = Field(default=100_000, ge=1)
    spool_max_bytes: int = Field(default=1024**3, ge=1024 * 1024)
    spool_fsync_interval: float = Field(default=1.0, gt=0)
    write_timeout: float = Field(default=30.0, gt=0)

    # The health, readiness and metrics endpoints. Loopback by default: outside a container
    # nothing else should reach them unless asked to; the image sets 0.0.0.0, since a
    # container's own network is private and a Prometheus scraper must reach it. Port 0: the
    # system picks a free one (logged in `http.listening`).
    http_host: str = Field(default="127.0.0.1", min_length=1)
    http_port: int = Field(default=8080, ge=0, le=65535)

    # Solana JSON-RPC, for the balances read from the chain (snapshots and checks). The URL
    # often carries the provider's key, so it is a secret as a whole. Unset: neither happens.
    rpc_url: SecretStr | None = None
    rpc_url_file: Path | None = None
    rpc_max_rps: float = Field(default=10.0, gt=0, le=10_000)
    rpc_batch_size: int = Field(default=100, ge=1, le=1000)
    rpc_timeout: float = Field(default=10.0, gt=0, le=300)
    balance_check_interval: float = Field(default=3600.0, ge=0)

    # Replicas: this process's name among them (stable across restarts, so a restarted replica
    # wins back the same shards), and how long a shard's lease lasts in the database's clock.
    replica_id: str = Field(
        default_factory=default_replica_id, min_length=1, max_length=200, pattern=r"^[\w.:@-]+$"
    )
    lease_ttl: float = Field(default=15.0, ge=3, le=600)

    # How long the raw history is kept, in whole days or weeks (`400d`, `12w`); older day
    # partitions are dropped once rolled up (the daily rollups are kept). None: keep everything.
    retention: timedelta | None = None
    # How much of the history each partition made from now on holds: a day or a week from
    # Monday (`1d`, `7d`). The partitions that exist keep theirs; new ones fill the days around.
    partition: Literal["1d", "7d"] = DEFAULT_PARTITION

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003  (signature is fixed)
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = os.environ.get(CONFIG_ENV)
        sources = [init_settings, env_settings]
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @field_validator("database_url")
    @classmethod
    def _valid_database_url(cls, value: SecretStr) -> SecretStr:
        parse_database_url(value.get_secret_value())
        return value

    @field_validator("datastream_url")
    @classmethod
    def _valid_datastream_url(cls, value: str) -> str:
        if not value.startswith(("wss://", "ws://")):
            raise ValueError("must start with wss:// (or ws:// for a local simulator)")
        return value.rstrip("/")

    @field_validator("rpc_url")
    @classmethod
    def _valid_rpc_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None  # an empty variable is the same as none
        return SecretStr(check_rpc_url(value.get_secret_value()))

    @field_validator("retention", mode="before")
    @classmethod
    def _retention_in_days(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_retention(value)
        if value is None or isinstance(value, timedelta):
            return value
        raise ValueError(_RETENTION_FORMAT)  # a bare number: of seconds? days? say which

    @field_validator("partition", mode="before")
    @classmethod
    def _partition_width(cls, value: object) -> object:
        width = value.strip().lower() if isinstance(value, str) else None
        if width not in PARTITION_DAYS:
            raise ValueError(_PARTITION_FORMAT)  # a bare 7 too: days? weeks? say which
        return width

    @field_validator("backoff_max")
    @classmethod
    def _backoff_in_order(cls, value: float, info: ValidationInfo) -> float:
        if value < info.data.get("backoff_initial", 0):
            raise ValueError("must not be smaller than backoff_initial")
        return value

    @field_validator("spool_dir")
    @classmethod
    def _spool_dir_expanded(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def drain_timeout(self) -> float:
        """Seconds the writers get to store what they hold on the way out: the websocket's
        closing handshake takes up to 2 s of the same shutdown budget."""
        return max(1.0, self.shutdown_timeout - 2.0)

    @property
    def partition_days(self) -> int:
        return PARTITION_DAYS[self.partition]

    @property
    def sqlalchemy_url(self) -> URL:
        return parse_database_url(self.database_url.get_secret_value())

    def datastream_key(self) -> str:
        """The key itself; read from the file each call, so a rotated secret is picked up."""
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_file is not None:
            return read_key_file(self.api_key_file)
        raise ConfigError(
            "BALANCEWATCH_API_KEY: not set (set it, or BALANCEWATCH_API_KEY_FILE to a file "
            "that holds the key)"
        )

    def secrets(self) -> list[str]:
        """Every secret value known, for scrubbing them from all output."""
        found = [str(self.sqlalchemy_url.password or "")]
        if self.api_key is not None or self.api_key_file is not None:
            found.append(self.datastream_key())
        rpc_url = self.rpc_endpoint()
        if rpc_url is not None:
            found.extend(rpc_url_secrets(rpc_url))
        return [secret for secret in found if secret]

    def rpc_endpoint(self) -> str | None:
        """The RPC URL, if any: the setting, or read from its file each call (an empty file is
        none, as compose makes from an unset variable)."""
        if self.rpc_url is not None:
            return self.rpc_url.get_secret_value()
        if self.rpc_url_file is None:
            return None
        name = f"{ENV_PREFIX}RPC_URL_FILE"
        try:
            url = self.rpc_url_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{name}: cannot read {self.rpc_url_file}: {exc.strerror}") from None
        try:
            return check_rpc_url(url) if url else None
        except ValueError as exc:
            raise ConfigError(f"{name}: the URL in {self.rpc_url_file} {exc}") from None


def parse_retention(raw: str) -> timedelta | None:
    """`400d` or `12w` as a timedelta; an empty value is no retention."""
    if not raw.strip():
        return None
    match = _RETENTION.fullmatch(raw)
    if match is None:
        raise ValueError(_RETENTION_FORMAT)
    count, unit = match.groups()
    return timedelta(days=int(count) * _RETENTION_UNITS[unit.lower()])


def check_rpc_url(url: str) -> str:
    """The URL, stripped; a ValueError that never quotes it if it is not an RPC endpoint's."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL of a Solana JSON-RPC endpoint")
    return url.strip()


def rpc_url_secrets(url: str) -> list[str]:
    """The parts of an RPC URL that may be a key, with the whole URL and its path and query, the
    whole first so that a scrub takes it entire: long path segments, long query values, a
    password. A plain `http://host:port/rpc` has none (and nothing of it is hidden)."""
    parts = urlsplit(url)
    found = [segment for segment in parts.path.split("/") if len(segment) >= _KEY_SEGMENT_CHARS]
    found += [value for _, value in parse_qsl(parts.query) if len(value) >= _KEY_VALUE_CHARS]
    found += [parts.password] if parts.password else []
    if not found:
        return []
    tail = parts.path + ("?" + parts.query if parts.query else "")
    return sorted({url, tail, *found}, key=len, reverse=True)


def config_from(settings: Settings, config: type[Config], **given: object) -> Config:
    """A component's config dataclass, each field taken from the setting of the same name
    unless `given`: a default lives in Settings alone, and nothing is copied by hand."""
    values = {
        field.name: getattr(settings, field.name)
        for field in dataclasses.fields(config)
        if field.init and field.name not in given and hasattr(settings, field.name)
    }
    return config(**values, **given)


def read_key_file(path: Path) -> str:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"BALANCEWATCH_API_KEY_FILE: cannot read {path}: {exc.strerror}"
        ) from None
    if not key:
        raise ConfigError(f"BALANCEWATCH_API_KEY_FILE: {path} is empty")
    return key


def load_settings(*, need_key: bool, **overrides: object) -> Settings:
    """Build and validate the settings, turning every failure into one readable ConfigError.

    Only the daemon needs the Datastream key; `migrate` and `watch` run without one.
    """
    config_file = os.environ.get(CONFIG_ENV)
    if config_file and not Path(config_file).is_file():
        raise ConfigError(f"{CONFIG_ENV}: no such file: {config_file}")
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except ValueError as exc:  # a TOML syntax error surfaces as a ValueError subclass
        raise ConfigError(f"{CONFIG_ENV}: {exc}") from None
    if need_key:
        settings.datastream_key()
    settings.rpc_endpoint()  # a file that cannot be read, or holds no URL, stops the start
    return settings


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        name = ".".join(str(part) for part in error["loc"])
        where = f"{ENV_PREFIX}{name.upper()}" if name else "settings"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = f"unknown setting {name!r} in the config file"
            where = CONFIG_ENV
        lines.append(f"{where}: {message}")
    return "; ".join(lines)
