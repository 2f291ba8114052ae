"""The schema as SQLAlchemy Core tables. Alembic migrations create it; a test checks they agree."""

from __future__ import annotations

from typing import Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Interval,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
    true,
)
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.types import UserDefinedType

from balancewatch.domain import BASE58_PATTERN, CHAIN_READ_KINDS, PAIR_STATES, ROW_SOURCE_CODES

# NOTIFY channel of the watchlist trigger (created by the migrations, not here).
WATCHLIST_CHANNEL: Final = "balancewatch_watchlist"
# NOTIFY channel of the replicas: one joined, or one released shards.
SHARDS_CHANNEL: Final = "balancewatch_shards"

metadata = MetaData()

watchlist = Table(
    "watchlist",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("wallet", Text, nullable=False),
    Column("token", Text, nullable=True),  # NULL: every token of the wallet (its room)
    Column("enabled", Boolean, nullable=False, server_default=true()),
    Column("label", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("wallet", "token", name="watchlist_wallet_token_key"),
    CheckConstraint(f"wallet ~ '{BASE58_PATTERN}'", name="watchlist_wallet_is_base58_address"),
    CheckConstraint(
        f"token IS NULL OR token ~ '{BASE58_PATTERN}'", name="watchlist_token_is_base58_address"
    ),
)
# One all-tokens row per wallet (UNIQUE above lets any number of NULL tokens in).
Index(
    "watchlist_wallet_all_tokens_key",
    watchlist.c.wallet,
    unique=True,
    postgresql_where=watchlist.c.token.is_(None),
)

# Each pair that has a row, once: the history stores its small id instead of two addresses.
pairs = Table(
    "pairs",
    metadata,
    Column("pair_id", Integer, Identity(), primary_key=True),
    Column("wallet", Text, nullable=False),
    Column("token", Text, nullable=False),
    UniqueConstraint("wallet", "token", name="pairs_wallet_token_key"),
)


class PgChar(UserDefinedType[str]):
    """Postgres' one-byte "char" (not char(1), which is padded text)."""

    cache_ok = True

    def get_col_spec(self, **_: object) -> str:
        return '"char"'


# Reflected as itself, not as a String, so that the schema test compares like with like.
ischema_names['"char"'] = PgChar


# The history, partitioned by day of received_at (balance_rows_YYYYMMDD, and
# balance_rows_default for a row no day's partition takes); users read it through the
# balance_history view (wallet, token, the source spelled out). Columns widest first: no
# padding. No index on id alone: nothing looks a row up by it.
PARTITION_PREFIX: Final = "balance_rows_"
balance_rows = Table(
    "balance_rows",
    metadata,
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("id", BigInteger, Identity(), nullable=False),
    # The shard tenure a stream row was received under (shard_tenures.epoch).
    Column("epoch", BigInteger, nullable=True),
    Column("slot", BigInteger, nullable=True),  # the RPC answer's context.slot
    Column("pair_id", Integer, nullable=False),
    # ROW_SOURCE_CODES: s(tream) a Datastream message; (s)n(apshot) read from the chain when a
    # listening period started; c(heck) read by a check that found the stored balance wrong.
    Column("source", PgChar(), nullable=False, server_default=text("'s'")),
    Column("amount", Numeric, nullable=False),
    CheckConstraint(
        f"source IN ({', '.join(repr(code) for code in ROW_SOURCE_CODES.values())})",
        name="balance_rows_source_known",
    ),
    postgresql_partition_by="RANGE (received_at)",
)
# "The history of one pair, newest first" is a backward scan of each partition's own index on
# (pair_id, received_at, id), made with the partition (migration 0014) and packed once its days
# have closed: not inherited from balance_rows, so that it can be rebuilt and swapped alone.
# "The rows of the last hour": rows arrive in time order, so a block range is a narrow stretch.
Index("balance_rows_received_at_brin", balance_rows.c.received_at, postgresql_using="brin")

# Each pair's newest row of balance_rows (the highest received_at, then id), kept by its
# statement triggers on every write (migration 0010); latest_balance reads it.
latest_rows = Table(
    "latest_rows",
    metadata,
    Column("pair_id", Integer, primary_key=True, autoincrement=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("id", BigInteger, nullable=False),
    Column("amount", Numeric, nullable=False),
    Column("source", PgChar(), nullable=False),
    Column("slot", BigInteger, nullable=True),
    Column("epoch", BigInteger, nullable=True),
    postgresql_with={"fillfactor": 50},
)

# How many rows of balance_rows each writer (a backend's process id) stored per minute of
# received_at, for the last two hours, kept by its statement triggers (migration 0021);
# `status` sums them.
minute_rows = Table(
    "minute_rows",
    metadata,
    Column("minute", DateTime(timezone=True), primary_key=True),
    Column("writer", Integer, primary_key=True, autoincrement=False),
    Column("rows", BigInteger, nullable=False),
    postgresql_with={"fillfactor": 50},
)

# Each pair's day (UTC) in figures, for the closed days (migration 0011); users read them
# through the balance_daily view, which adds the days not rolled up yet from the raw rows.
daily_rows = Table(
    "daily_rows",
    metadata,
    Column("pair_id", Integer, primary_key=True),
    Column("day", Date, primary_key=True),
    Column("first", Numeric, nullable=False),
    Column("last", Numeric, nullable=False),
    Column("low", Numeric, nullable=False),
    Column("high", Numeric, nullable=False),
    Column("messages", Integer, nullable=False),
)
Index("daily_rows_day_idx", daily_rows.c.day)
# One row: daily_rows counts every row before rolled_until (the watermark), so the days
# before live_from (its day) completely; the raw rows of the days before kept_from were
# dropped by the retention.
rollup_state = Table(
    "rollup_state",
    metadata,
    Column("one_row", Boolean, primary_key=True, server_default=true()),
    Column("kept_from", Date, nullable=False, server_default=text("'-infinity'::date")),
    Column("rolled_until", DateTime(timezone=True), nullable=False),
    Column(
        "live_from",
        Date,
        Computed("((rolled_until AT TIME ZONE 'UTC'::text))::date", persisted=True),
        nullable=False,
    ),
    # A row stored before it marks its day (0018); the watermark never passes it.
    Column("sealed_until", DateTime(timezone=True), nullable=False),
    CheckConstraint("one_row", name="rollup_state_one_row"),
    CheckConstraint("sealed_until >= rolled_until", name="rollup_state_sealed_after_rolled"),
)
# Days that received old rows after they were rolled up (or before), to compute again.
rollup_invalid = Table(
    "rollup_invalid",
    metadata,
    Column("day", Date, primary_key=True),
    Column(
        "marked_at", DateTime(timezone=True), nullable=False, server_default=func.clock_timestamp()
    ),
)

subscription_status = Table(
    "subscription_status",
    metadata,
    Column("wallet", Text, nullable=False),
    Column("token", Text, nullable=True),  # NULL: the wallet's own room
    Column("state", Text, nullable=False),
    Column("since", DateTime(timezone=True), nullable=False),
    Column("last_error", Text, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    CheckConstraint(
        f"state IN ({', '.join(repr(state) for state in PAIR_STATES)})",
        name="subscription_status_state_known",
    ),
)
# One status per watch; a primary key could not hold the wallet room's NULL token.
Index(
    "subscription_status_watch_key",
    subscription_status.c.wallet,
    func.coalesce(subscription_status.c.token, ""),
    unique=True,
)

# Every frame that was not stored as a balance, so nothing is lost silently.
rejected_messages = Table(
    "rejected_messages",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("reason", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Column("room", Text, nullable=True),
    Column("frame", Text, nullable=False),  # the raw frame, truncated, secrets scrubbed
    Column("frame_size", Integer, nullable=False),  # the size before truncation
)
Index("rejected_messages_received_at_idx", rejected_messages.c.received_at)

# How far each spool has been written to the history, committed in the same transaction
# as the rows: a replay after a crash starts exactly there, so no row is stored twice.
spool_checkpoint = Table(
    "spool_checkpoint",
    metadata,
    Column("spool_id", Uuid, primary_key=True),
    Column("segment", BigInteger, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# One row per daemon process; its last confirmation bounds the certainty of its open periods.
coverage_holders = Table(
    "coverage_holders",
    metadata,
    Column("holder", Text, primary_key=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("confirmed_at", DateTime(timezone=True), nullable=False),
    # Pairs waiting for their snapshot at the last confirmation.
    Column("snapshot_queue", Integer, nullable=False, server_default=text("0")),
)

# One row per period during which a daemon was listening to a pair.
coverage = Table(
    "coverage",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("wallet", Text, nullable=False),
    Column("token", Text, nullable=True),  # NULL: the wallet room, covering every token
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True), nullable=True),
    Column("end_reason", Text, nullable=True),
    Column(
        "holder",
        Text,
        ForeignKey("coverage_holders.holder", name="coverage_holder_fkey"),
        nullable=False,
    ),
    CheckConstraint(
        "ended_at IS NULL OR ended_at >= started_at", name="coverage_ends_after_it_starts"
    ),
)
Index("coverage_pair_started_at_idx", coverage.c.wallet, coverage.c.token, coverage.c.started_at)
Index("coverage_open_idx", coverage.c.holder, postgresql_where=coverage.c.ended_at.is_(None))
Index("coverage_ended_at_idx", coverage.c.ended_at)

# How many balances were read from the chain each hour, by kind and result.
chain_reads = Table(
    "chain_reads",
    metadata,
    Column("hour", DateTime(timezone=True), nullable=False),
    Column("kind", Text, nullable=False),
    Column("result", Text, nullable=False),
    Column("reads", BigInteger, nullable=False),
    PrimaryKeyConstraint("hour", "kind", "result", name="chain_reads_pkey"),
    CheckConstraint(
        f"kind IN ({', '.join(repr(kind) for kind in CHAIN_READ_KINDS)})",
        name="chain_reads_kind_known",
    ),
)

# Every RPC answer that was not taken as a balance.
rpc_failures = Table(
    "rpc_failures",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("wallet", Text, nullable=False),
    Column("token", Text, nullable=True),  # NULL: a whole wallet's snapshot
    Column("reason", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Column("answer", Text, nullable=True),  # an excerpt of the answer, secrets scrubbed
)
Index("rpc_failures_received_at_idx", rpc_failures.c.received_at)


# How many shards the pairs are spread over (one row).
shard_config = Table(
    "shard_config",
    metadata,
    Column("singleton", Boolean, primary_key=True, server_default=true()),
    Column("shards", SmallInteger, nullable=False),
    CheckConstraint("singleton", name="shard_config_one_row"),
    CheckConstraint("shards BETWEEN 1 AND 4096", name="shard_config_shards_in_range"),
)

# Each running process (instance) under its replica id, and when it was last heard from.
replicas = Table(
    "replicas",
    metadata,
    Column("instance", Text, primary_key=True),
    Column("replica_id", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
    Column("lease_ttl", Interval, nullable=False),
    Column("host", Text, nullable=False),
    Column("spool_dir", Text, nullable=False),
    Column("pairs_held", Integer, nullable=False, server_default=text("0")),
)

# Each shard's lease: its holder, its fencing epoch and its expiry in the database's clock.
shard_leases = Table(
    "shard_leases",
    metadata,
    Column("shard", SmallInteger, primary_key=True, autoincrement=False),
    Column("owner", Text, nullable=True),
    Column("epoch", BigInteger, nullable=False, server_default=text("0")),
    Column(
        "expires_at", DateTime(timezone=True), nullable=False, server_default=text("'-infinity'")
    ),
)

# One row per tenure of a shard: the epoch drawn when it was claimed, until it ended.
shard_tenures = Table(
    "shard_tenures",
    metadata,
    Column("epoch", BigInteger, primary_key=True, autoincrement=False),
    Column("shard", SmallInteger, nullable=False),
    Column("owner", Text, nullable=False),
    Column("granted_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True), nullable=True),
)
Index("shard_tenures_shard_idx", shard_tenures.c.shard, shard_tenures.c.granted_at)


def include_object(
    item: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """For Alembic's comparison: leave out balance_rows' partitions and their indexes (made by
    the daemon day by day, not by the models)."""
    table = getattr(item, "table", item) if type_ == "index" else item
    table_name = getattr(table, "name", name) or ""
    return not (reflected and compare_to is None and table_name.startswith(PARTITION_PREFIX))
