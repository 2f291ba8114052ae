"""The statements of the shard leases (River's elector, per shard): membership, renewal, claim
and release, all timed by the database's clock, never a replica's.

A replica renews only leases it holds (even expired, as long as nobody took them: its tenure
goes on); it claims only leases that are free or expired, drawing a new epoch (the fencing
token) and opening a tenure; it releases by ending its tenure and clearing the owner. Every
change of owner therefore goes through an UPDATE of the lease row, which waits for any batch of
rows being stored under that lease (the batch holds the row FOR SHARE: see `tenure_ends` in the
migrations).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.store.db import RawConnection
from balancewatch.store.models import SHARDS_CHANNEL, shard_config

_HEARTBEAT: Final = """
INSERT INTO replicas AS r
    (instance, replica_id, started_at, heartbeat_at, lease_ttl, host, spool_dir, pairs_held)
VALUES ($1, $2, now(), now(), $3, $4, $5, $6)
ON CONFLICT (instance) DO UPDATE
SET heartbeat_at = now(), lease_ttl = excluded.lease_ttl, pairs_held = excluded.pairs_held
RETURNING (xmax = 0) AS joined
"""
# River's re-election: a holder extends its own leases, even expired ones nobody took.
# A process on this host with this spool directory, before this one, whatever its replica id:
# it is dead, since this process holds the spool's lock, which the kernel gave back when it
# died. Its leases expire now instead of a TTL after its last renewal (a restart after a crash
# resumes at once, as a lone daemon always has).
_FORGET_PREDECESSORS: Final = """
WITH gone AS (
    DELETE FROM replicas
    WHERE host = $2 AND spool_dir = $3 AND instance <> $1
    RETURNING instance
)
UPDATE shard_leases SET expires_at = now() WHERE owner IN (SELECT instance FROM gone)
"""
_RENEW: Final = """
UPDATE shard_leases SET expires_at = now() + $2::interval
WHERE owner = $1
RETURNING shard, epoch
"""
_LEASES: Final = """
SELECT shard, owner, expires_at <= now() AS expired,
       CASE WHEN expires_at > now() THEN extract(epoch FROM expires_at - now())::float8 END
           AS remaining
FROM shard_leases
"""
# Live: heard from within its own lease length.
_LIVE: Final = """
SELECT DISTINCT replica_id FROM replicas WHERE heartbeat_at > now() - lease_ttl
"""
# FOR UPDATE re-checks the condition on the newest version of a row another claimer just
# changed: of two replicas claiming one free shard at once, the second finds it taken.
_LOCK_FREE: Final = """
SELECT shard, epoch, expires_at FROM shard_leases
WHERE shard = ANY($1::smallint[]) AND (owner IS NULL OR expires_at <= now())
FOR UPDATE
"""
# A tenure taken over after its lease expired ended at that expiry, not at the takeover.
_END_EXPIRED: Final = """
UPDATE shard_tenures AS t SET ended_at = e.expired_at
FROM unnest($1::bigint[], $2::timestamptz[]) AS e(epoch, expired_at)
WHERE t.epoch = e.epoch AND t.ended_at IS NULL
"""
_TAKE: Final = """
UPDATE shard_leases SET owner = $1, epoch = nextval('shard_epoch_seq'),
    expires_at = now() + $3::interval
WHERE shard = ANY($2::smallint[])
RETURNING shard, epoch
"""
_OPEN_TENURES: Final = """
INSERT INTO shard_tenures (epoch, shard, owner, granted_at)
SELECT t.epoch, t.shard, $1, now() FROM unnest($2::bigint[], $3::smallint[]) AS t(epoch, shard)
"""
_END_TENURES: Final = """
UPDATE shard_tenures SET ended_at = now()
WHERE owner = $1 AND shard = ANY($2::smallint[]) AND ended_at IS NULL
"""
_RELEASE: Final = """
UPDATE shard_leases SET owner = NULL, expires_at = now()
WHERE owner = $1 AND shard = ANY($2::smallint[])
"""
_OWNED: Final = "SELECT shard FROM shard_leases WHERE owner = $1"
_PAIRS_HELD: Final = "UPDATE replicas SET pairs_held = $2 WHERE instance = $1"
_RETIRE: Final = "DELETE FROM replicas WHERE instance = $1"


@dataclass(frozen=True, slots=True)
class Member:
    instance: str  # this process: unique, never reused
    replica_id: str  # its name among the replicas: stable across restarts
    host: str
    spool_dir: str  # locked by this process: see _FORGET_PREDECESSORS


@dataclass(frozen=True, slots=True)
class LeaseRow:
    owner: str | None
    expired: bool


@dataclass(frozen=True, slots=True)
class RoundState:
    joined: bool  # this process's first heartbeat
    renewed: dict[int, int]  # shard -> epoch, for every lease this process still holds
    leases: dict[int, LeaseRow]
    live: frozenset[str]  # replica ids
    # Seconds from the round's start until the first lease of another process expires: a
    # replica that stopped renewing loses it then, and the next round should not wait longer.
    next_expiry: float | None


async def heartbeat_and_renew(
    raw: RawConnection, member: Member, ttl: float, pairs_held: int, timeout: float
) -> RoundState:
    """Say this process is alive, extend each of its leases by `ttl` from the database's now,
    and read every lease and the live replicas. Inside the round's transaction."""
    length = timedelta(seconds=ttl)
    joined = await raw.fetchval(
        _HEARTBEAT,
        member.instance,
        member.replica_id,
        length,
        member.host,
        member.spool_dir,
        pairs_held,
        timeout=timeout,
    )
    if joined:
        await raw.execute(
            _FORGET_PREDECESSORS,
            member.instance,
            member.host,
            member.spool_dir,
            timeout=timeout,
        )
    renewed = await raw.fetch(_RENEW, member.instance, length, timeout=timeout)
    leases = await raw.fetch(_LEASES, timeout=timeout)
    live = await raw.fetch(_LIVE, timeout=timeout)
    others = [
        row["remaining"]
        for row in leases
        if row["owner"] not in (None, member.instance) and not row["expired"]
    ]
    return RoundState(
        joined=bool(joined),
        renewed={row["shard"]: row["epoch"] for row in renewed},
        leases={row["shard"]: LeaseRow(row["owner"], row["expired"]) for row in leases},
        live=frozenset(row["replica_id"] for row in live),
        next_expiry=min(others, default=None),
    )


async def claim(
    raw: RawConnection, instance: str, shards: Collection[int], ttl: float, timeout: float
) -> dict[int, int]:
    """Take those of `shards` that are still free or expired: shard -> its new epoch. Inside
    the round's transaction."""
    free = await raw.fetch(_LOCK_FREE, list(shards), timeout=timeout)
    if not free:
        return {}
    expired: list[tuple[int, datetime]] = [(row["epoch"], row["expires_at"]) for row in free]
    await raw.execute(
        _END_EXPIRED, [e for e, _ in expired], [at for _, at in expired], timeout=timeout
    )
    taken = await raw.fetch(
        _TAKE, instance, [row["shard"] for row in free], timedelta(seconds=ttl), timeout=timeout
    )
    epochs = {row["shard"]: row["epoch"] for row in taken}
    await raw.execute(_OPEN_TENURES, instance, list(epochs.values()), list(epochs), timeout=timeout)
    return epochs


async def release(
    raw: RawConnection, instance: str, shards: Collection[int], timeout: float
) -> None:
    """Give these shards up now (their tenures end), and tell the other replicas."""
    async with raw.transaction():
        await _release(raw, instance, list(shards), timeout)


async def retire(raw: RawConnection, instance: str, timeout: float) -> int:
    """Give up every shard and leave the membership (a clean stop); how many were released."""
    async with raw.transaction():
        shards = [row["shard"] for row in await raw.fetch(_OWNED, instance, timeout=timeout)]
        await _release(raw, instance, shards, timeout)
        await raw.execute(_RETIRE, instance, timeout=timeout)
    return len(shards)


async def report_pairs(raw: RawConnection, instance: str, pairs: int, timeout: float) -> None:
    """The pairs this process holds now (after a claim or a handover, for `status`)."""
    await raw.execute(_PAIRS_HELD, instance, pairs, timeout=timeout)


async def announce(raw: RawConnection, event: str, timeout: float) -> None:
    """NOTIFY the replicas (a member joined, or shards were released): they run a round now
    instead of at their next interval."""
    await raw.execute("SELECT pg_notify($1, $2)", SHARDS_CHANNEL, event, timeout=timeout)


async def _release(raw: RawConnection, instance: str, shards: list[int], timeout: float) -> None:
    await raw.execute(_END_TENURES, instance, shards, timeout=timeout)
    await raw.execute(_RELEASE, instance, shards, timeout=timeout)
    await announce(raw, "released", timeout)


async def shard_count(engine: AsyncEngine) -> int:
    """How many shards the pairs are spread over, as the database records it."""
    async with engine.connect() as connection:
        return int((await connection.execute(select(shard_config.c.shards))).scalar_one())
