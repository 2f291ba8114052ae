"""Which replica should hold which shard, and what one replica does about it: pure decisions,
no I/O (the lease loop, leases.py, runs them against the database's view).

Rendezvous hashing (highest random weight): each shard goes to the live replica whose hash with
it is highest. Every replica computes the same answer from the same list, and when a replica
joins or leaves only the shards it wins or held change hands.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass


def weight(replica: str, shard: int) -> int:
    digest = hashlib.blake2b(f"{replica}:{shard}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner_of(shard: int, replicas: Collection[str]) -> str | None:
    """The replica that should hold `shard` among the live `replicas` (None if there is none)."""
    return max(replicas, key=lambda replica: (weight(replica, shard), replica), default=None)


def assignment(shards: int, replicas: Collection[str]) -> dict[int, str]:
    """Every shard's rightful replica (empty when no replica is live)."""
    if not replicas:
        return {}
    return {shard: owner_of(shard, replicas) or "" for shard in range(shards)}


@dataclass(frozen=True, slots=True)
class Lease:
    """A shard's lease as the database sees it at the start of a round."""

    owner: str | None  # the holding process (its instance name), None once released
    expired: bool  # past its expiry in the database's clock: free to claim


@dataclass(frozen=True, slots=True)
class Plan:
    claim: frozenset[int]  # free or expired, and ours by right
    release: frozenset[int]  # ours now, another live replica's by right: handed over


def plan(
    replica: str,
    live: Collection[str],
    leases: Mapping[int, Lease],
    held: Collection[int],
) -> Plan:
    """What `replica` does in one round. `live`: the replica ids heard from within a lease's
    length; `held`: the shards whose leases this process renewed in this round.

    A shard is claimed only when it is free (released, or its lease expired): a live owner's
    lease is never taken, only handed over by that owner. A held shard is released only to a
    replica that is live, so a shard is never let go with nobody to take it."""
    rightful = assignment(len(leases), {*live, replica})
    claim = {
        shard
        for shard, lease in leases.items()
        if rightful.get(shard) == replica
        and shard not in held
        and (lease.owner is None or lease.expired)
    }
    release = {shard for shard in held if rightful.get(shard, replica) != replica}
    return Plan(claim=frozenset(claim), release=frozenset(release))
