"""Several replicas on one watchlist: the live replicas, a lease per shard with its fencing
epoch, each owner's tenure of each shard, and the epoch every stream row was received under.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SHARDS = 64
TIMESTAMPTZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    # One row: how many shards the pairs are spread over. Kept here, not in each process's
    # settings, so replicas of different versions or configurations cannot disagree.
    op.create_table(
        "shard_config",
        sa.Column("singleton", sa.Boolean(), primary_key=True, server_default=sa.true()),
        sa.Column("shards", sa.SmallInteger(), nullable=False),
        sa.CheckConstraint("singleton", name="shard_config_one_row"),
        sa.CheckConstraint("shards BETWEEN 1 AND 4096", name="shard_config_shards_in_range"),
    )
    op.execute(
        sa.text("INSERT INTO shard_config (shards) VALUES (:shards)").bindparams(shards=SHARDS)
    )
    # Membership: each running process (its instance name) under its replica id, heard from
    # at heartbeat_at. Live: heard from within a lease's length.
    op.create_table(
        "replicas",
        sa.Column("instance", sa.Text(), primary_key=True),
        sa.Column("replica_id", sa.Text(), nullable=False),
        sa.Column("started_at", TIMESTAMPTZ, nullable=False),
        sa.Column("heartbeat_at", TIMESTAMPTZ, nullable=False),
        sa.Column("lease_ttl", sa.Interval(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("spool_dir", sa.Text(), nullable=False),
        sa.Column("pairs_held", sa.Integer(), nullable=False, server_default="0"),
    )
    # The fencing token: one sequence for every shard, so an epoch alone names one tenure.
    op.execute("CREATE SEQUENCE shard_epoch_seq AS bigint")
    # The lock of record: owner and expiry in the database's clock. A released shard keeps its
    # epoch and has no owner; the next claim draws a new epoch.
    op.create_table(
        "shard_leases",
        sa.Column("shard", sa.SmallInteger(), primary_key=True),
        sa.Column("owner", sa.Text(), nullable=True),
        sa.Column("epoch", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("expires_at", TIMESTAMPTZ, nullable=False, server_default="-infinity"),
    )
    op.execute(
        sa.text("INSERT INTO shard_leases (shard) SELECT generate_series(0, :last)").bindparams(
            last=SHARDS - 1
        )
    )
    # One row per tenure: which process held which shard under which epoch, from when to when.
    # A row received under an epoch is stored only if it was received before that tenure ended.
    op.create_table(
        "shard_tenures",
        sa.Column("epoch", sa.BigInteger(), primary_key=True),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("granted_at", TIMESTAMPTZ, nullable=False),
        sa.Column("ended_at", TIMESTAMPTZ, nullable=True),
    )
    op.create_index("shard_tenures_shard_idx", "shard_tenures", ["shard", "granted_at"])
    # NULL for rows stored before replicas, and for rows read from the chain.
    op.add_column("balance_history", sa.Column("epoch", sa.BigInteger(), nullable=True))
    # Temporal's check, made for a batch: the leases of the batch's shards locked FOR SHARE
    # (a claim or a release, which must UPDATE them, waits for the batch's commit), then each
    # epoch's end read in a statement of its own, so it sees whatever committed before the lock
    # was granted. A tenure still current has no end, NULL (its owner's rows cannot be anyone
    # else's, even late: nobody else can have stored that shard meanwhile); an earlier one
    # ended at ended_at.
    op.execute(
        """
        CREATE FUNCTION tenure_ends(epochs bigint[])
        RETURNS TABLE (epoch bigint, valid_until timestamptz, checked_at timestamptz)
        LANGUAGE plpgsql VOLATILE AS $$
        #variable_conflict use_column
        BEGIN
            PERFORM 1 FROM shard_leases l
            WHERE l.shard IN (
                SELECT t.shard FROM shard_tenures t WHERE t.epoch = ANY(tenure_ends.epochs)
            )
            FOR SHARE;
            RETURN QUERY
            SELECT t.epoch,
                   CASE WHEN l.epoch = t.epoch AND l.owner = t.owner THEN NULL
                        ELSE t.ended_at END,
                   clock_timestamp()
            FROM shard_tenures t JOIN shard_leases l ON l.shard = t.shard
            WHERE t.epoch = ANY(tenure_ends.epochs);
        END
        $$
        """
    )
    # The check of every statement that stores rows, in its own transaction: a plain COPY
    # (one round trip, as before replicas) is refused whole, with SQLSTATE BWF01, if one of its
    # rows was received after its tenure ended or under an epoch never granted; the writer then
    # stores the rows that pass (pipeline/fencing.py). Rows without an epoch are not checked.
    # All current (the common case): one look at each distinct epoch, no second pass.
    op.execute(
        """
        CREATE FUNCTION balance_history_fence() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE
            epochs bigint[] := ARRAY(
                SELECT DISTINCT n.epoch FROM new_rows n WHERE n.epoch IS NOT NULL
            );
            current integer;
        BEGIN
            IF cardinality(epochs) = 0 THEN
                RETURN NULL;
            END IF;
            SELECT count(*) FILTER (WHERE e.valid_until IS NULL) INTO current
            FROM tenure_ends(epochs) e;
            IF current = cardinality(epochs) THEN
                RETURN NULL;
            END IF;
            IF EXISTS (
                SELECT 1 FROM new_rows n LEFT JOIN tenure_ends(epochs) e ON e.epoch = n.epoch
                WHERE n.epoch IS NOT NULL
                  AND (e.epoch IS NULL OR n.received_at > e.valid_until)
            ) THEN
                RAISE EXCEPTION 'rows received after their shard tenure ended'
                    USING ERRCODE = 'BWF01';
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER balance_history_fence AFTER INSERT ON balance_history "
        "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
        "EXECUTE FUNCTION balance_history_fence()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER balance_history_fence ON balance_history")
    op.execute("DROP FUNCTION balance_history_fence()")
    op.execute("DROP FUNCTION tenure_ends(bigint[])")
    op.drop_column("balance_history", "epoch")
    op.drop_table("shard_tenures")
    op.drop_table("shard_leases")
    op.execute("DROP SEQUENCE shard_epoch_seq")
    op.drop_table("replicas")
    op.drop_table("shard_config")
