"""The lease loop: every third of a lease's length (and at once when another replica NOTIFYs),
one transaction heartbeats this process, renews its leases, reads everyone's, and claims the
free shards that are its by right (shards.py decides); then the rooms follow (sharding.py).

Trust in a lease is measured on this process's monotonic clock from the moment the round was
sent: it ends one renew interval before the lease can expire in the database's clock, so a
replica cut off from the database (or frozen) stops storing, and leaves its rooms, before any
other replica may take them. A replica that was the only live one at its last round keeps
them: nobody is there to take over, and a lone daemon rides out a database outage
(sharding.py).

A shard another live replica should hold is handed over: its rooms left, the rows received
flushed, the lease released, and a NOTIFY sent, so the new owner claims it at once instead of
waiting for an expiry. A clean stop releases every lease the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.engine import URL

from balancewatch.aio import wait_first
from balancewatch.daemon.sharding import ShardedRooms
from balancewatch.daemon.shards import Lease, plan
from balancewatch.logs import describe_error, get_logger
from balancewatch.store import leases
from balancewatch.store.db import DB_ERRORS, RawConnection, connect_raw
from balancewatch.store.leases import Member
from balancewatch.store.models import SHARDS_CHANNEL

log = get_logger(__name__)

RoundResult = Literal["renewed", "failed"]
Handover = Literal["claimed", "released", "lost"]

# After a failed round, the next one comes this soon (never later than the interval).
_RETRY_AFTER = 1.0
# The most a handover waits for its leaves to be taken in and its rows stored.
_SETTLE_MAX = 2.0
# A round due at another process's lease expiry comes this long after it, so that the lease
# has expired in the database's clock too.
_AFTER_EXPIRY = 0.05


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    ttl: float
    timeout: float  # for connecting and for each statement

    @property
    def interval(self) -> float:
        return self.ttl / 3

    @property
    def trusted_for(self) -> float:
        """From the moment a round is sent: one renew interval short of the lease's length."""
        return self.ttl - self.interval


class LeaseKeeper:
    def __init__(
        self,
        url: URL,
        rooms: ShardedRooms,
        member: Member,
        config: LeaseConfig,
        *,
        # Once a handover's rooms are left: until the server has taken the leaves in and the
        # rows received before are stored, or the seconds given pass; the lease goes last.
        settle: Callable[[float], Awaitable[None]],
        pairs_held: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._rooms = rooms
        self._member = member
        self._config = config
        self._settle = settle
        self._pairs_held = pairs_held
        self._clock = clock
        self._epochs: dict[int, int] = {}  # held as of the last round
        self._wake = asyncio.Event()
        self.renewals: Counter[RoundResult] = Counter()
        self.handovers: Counter[Handover] = Counter()

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds until `stop`; the leases stay held (a clean stop calls `retire` once the rows
        received are stored)."""
        while not stop.is_set():
            try:
                connection = await connect_raw(
                    self._url, role="leases", timeout=self._config.timeout
                )
            except DB_ERRORS as exc:
                self._failed(exc)
                await self._pause(stop, _RETRY_AFTER)
                continue
            try:
                await self._rounds(connection, stop)
            except (*DB_ERRORS, TimeoutError) as exc:
                self._failed(exc)
                await self._pause(stop, _RETRY_AFTER)
            finally:
                connection.terminate()

    async def retire(self) -> None:
        """Release every lease and leave the membership, so the other replicas take the shards
        now; tried three times (River's resign), since a stop is when it matters most."""
        for attempt in range(3):
            try:
                connection = await connect_raw(
                    self._url, role="leases", timeout=self._config.timeout
                )
                try:
                    released = await leases.retire(
                        connection, self._member.instance, self._config.timeout
                    )
                finally:
                    await connection.close(timeout=self._config.timeout)
            except (*DB_ERRORS, TimeoutError) as exc:
                log.warning("leases.retire_failed", attempt=attempt + 1, error=describe_error(exc))
                continue
            self.handovers["released"] += released
            log.info("leases.retired", shards_released=released)
            return

    async def _rounds(self, connection: RawConnection, stop: asyncio.Event) -> None:
        closed = asyncio.Event()
        connection.add_termination_listener(lambda _: closed.set())
        await connection.add_listener(SHARDS_CHANNEL, lambda *_: self._wake.set())
        while not stop.is_set():
            self._wake.clear()
            next_round = await self._round(connection)
            self.renewals["renewed"] += 1
            await self._pause(stop, max(0.0, next_round - self._clock()), closed)
            if closed.is_set():
                raise ConnectionError("the lease connection closed")

    async def _round(self, connection: RawConnection) -> float:
        """One round; returns when the next one is due on the monotonic clock: an interval
        from now, or just after another process's lease expires, if that comes first (a dead
        replica's shards are then taken over at its expiry, not up to an interval later)."""
        sent_at = self._clock()
        timeout = self._config.timeout
        member = self._member
        # Bounded: a round that cannot finish within an interval is a failed one. The rooms'
        # joins and a handover's waits come after, outside the bound and the transaction.
        pairs_held = self._pairs_held()
        async with asyncio.timeout(self._config.interval), connection.transaction():
            state = await leases.heartbeat_and_renew(
                connection, member, self._config.ttl, pairs_held, timeout
            )
            view = {shard: Lease(row.owner, row.expired) for shard, row in state.leases.items()}
            decided = plan(member.replica_id, state.live, view, state.renewed.keys())
            claimed = await leases.claim(
                connection, member.instance, decided.claim, self._config.ttl, timeout
            )
        self._count_changes(state.renewed, claimed)
        self._epochs = {**state.renewed, **claimed}
        alone = state.live <= {member.replica_id}
        await self._rooms.hold(self._epochs, sent_at + self._config.trusted_for, alone=alone)
        if state.joined:
            await leases.announce(connection, "joined", timeout)
        if decided.release:
            await self._hand_over(connection, decided.release)
        if self._pairs_held() != pairs_held:
            await leases.report_pairs(connection, member.instance, self._pairs_held(), timeout)
        next_round = self._clock() + self._config.interval
        if state.next_expiry is not None:
            next_round = min(next_round, sent_at + state.next_expiry + _AFTER_EXPIRY)
        return next_round

    async def _hand_over(self, connection: RawConnection, shards: frozenset[int]) -> None:
        self._epochs = {s: e for s, e in self._epochs.items() if s not in shards}
        await self._rooms.hand_over(shards)
        # Within half the time the leases are still trusted: the rounds must go on.
        trusted = float("inf") if self._rooms.alone else self._rooms.deadline - self._clock()
        await self._settle(max(0.0, min(_SETTLE_MAX, trusted / 2)))
        await leases.release(connection, self._member.instance, shards, self._config.timeout)
        self._rooms.released()
        self.handovers["released"] += len(shards)
        log.info("leases.handed_over", shards=sorted(shards), held=len(self._epochs))

    def _count_changes(self, renewed: dict[int, int], claimed: dict[int, int]) -> None:
        lost = self._epochs.keys() - renewed.keys()
        if lost:
            self.handovers["lost"] += len(lost)
            log.warning("leases.lost", shards=sorted(lost))
        if claimed:
            self.handovers["claimed"] += len(claimed)
            log.info("leases.claimed", shards=sorted(claimed), held=len(renewed) + len(claimed))

    async def _pause(
        self, stop: asyncio.Event, seconds: float, closed: asyncio.Event | None = None
    ) -> None:
        """Wait for the next round, a NOTIFY or `stop`; and if the leases' trusted time runs
        out meanwhile, let go of every room at that moment, not at the next round."""
        events = [stop, self._wake] + ([closed] if closed is not None else [])
        until = self._clock() + seconds
        while not any(event.is_set() for event in events) and self._clock() < until:
            expiring = bool(self._epochs) and not self._rooms.alone and self._rooms.deadline < until
            end = self._rooms.deadline if expiring else until
            await wait_first(*events, timeout=max(0.0, end - self._clock()))
            if expiring and self._clock() >= self._rooms.deadline:
                await self._let_go()

    async def _let_go(self) -> None:
        log.error(
            "leases.expired",
            shards=len(self._epochs),
            message="the leases could not be renewed in time: every room is left, and frames "
            "received from now on are not stored, until the database answers again",
        )
        self.handovers["lost"] += len(self._epochs)
        self._epochs = {}
        await self._rooms.hold({}, self._rooms.deadline)

    def _failed(self, exc: BaseException) -> None:
        self.renewals["failed"] += 1
        log.warning("leases.round_failed", error=describe_error(exc), held=len(self._epochs))
