"""Between the watchlist and the subscriptions: of every room the watchlist wants, only those of
the shards this process holds a lease on are passed on to be joined, and the epoch each room's
rows are stored under.

The watchlist sync hands every enabled pair here (it does not know about shards); the lease
loop says which shards are held, under which epochs, and until when on this process's
monotonic clock (a safety margin before the database would let another replica take them).
Past that moment no room has an epoch: the ingest refuses its frames, even before the lease
loop has had a turn to leave the rooms. Unless this replica was the only live one at its last
round: then nobody else is there to take over, and it goes on listening through a database
outage, as a lone daemon always has (what it stores is still fenced in the database, should
one appear and take a shard meanwhile).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping

from balancewatch.daemon.rooms import Wanted
from balancewatch.daemon.subscriptions import Subscriptions
from balancewatch.domain import Watch, room_for, shard_of


class ShardedRooms:
    def __init__(
        self,
        subscriptions: Subscriptions,
        shards: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._subscriptions = subscriptions
        self._shards = shards
        self._clock = clock
        self._rooms: dict[str, Watch] = {}  # every room the watchlist wants
        self._invalid: Mapping[Watch, str] = {}
        self._covered: dict[str, Watch] = {}  # token rooms their wallet room covers
        self._shard: dict[str, int] = {}  # room -> shard, for every room in _rooms
        self._epochs: dict[int, int] = {}  # held shard -> epoch
        # Being handed over: their rooms are left, but a message the server sent before it
        # took the leave in is still this replica's to store, until the lease is released.
        self._draining: set[int] = set()
        self._epoch_text: dict[int, str] = {}  # held or draining shard -> its epoch, as text
        self._deadline = float("-inf")
        self._alone = False
        subscriptions.elsewhere = self.held_elsewhere

    @property
    def subscriptions(self) -> Subscriptions:
        return self._subscriptions

    @property
    def shards(self) -> int:
        return self._shards

    @property
    def held(self) -> Mapping[int, int]:
        """The shards this process holds, with their epochs (empty past the deadline)."""
        return self._epochs if self.trusted else {}

    @property
    def alone(self) -> bool:
        return self._alone

    @property
    def deadline(self) -> float:
        return self._deadline

    def epoch_for(self, room: str) -> str | None:
        """The epoch a message of `room` is stored under (as the text its row carries), or
        None: its shard is not held, or the lease can no longer be trusted (the frame is then
        refused). Runs for every message: two look-ups and a clock read."""
        if not (self._alone or self._clock() < self._deadline):
            return None
        shard = self._shard.get(room)
        if shard is None:
            return self._switching_epoch(room)
        return self._epoch_text.get(shard)

    def _switching_epoch(self, room: str) -> str | None:
        """A room no longer wanted, but still accepted for a switch (its wallet moved between
        its token rooms and its wallet room): the epoch of its wallet's shard."""
        watch = self._subscriptions.switching(room)
        return None if watch is None else self._epoch_text.get(shard_of(watch, self._shards))

    def held_elsewhere(self, room: str) -> bool:
        """Wanted by the watchlist (or covered by a wallet room), but its shard is not held
        here: another replica's."""
        shard = self._shard.get(room)
        if shard is None and (watch := self._covered.get(room)) is not None:
            shard = shard_of(watch, self._shards)
        return shard is not None and shard not in self._epochs

    async def want(self, wanted: Wanted) -> None:
        """The whole watchlist, read again. Its dicts are taken, not copied: the sync builds
        them for each whole read and keeps none (a copy of 100,000 rooms is 4 MB more)."""
        self._rooms = _owned(wanted.rooms)
        self._invalid = wanted.invalid
        self._covered = _owned(wanted.covered)
        known = self._shard
        self._shard = {
            room: known[room] if room in known else shard_of(pair, self._shards)
            for room, pair in self._rooms.items()
        }
        await self._subscriptions.want(self._here())

    async def update(self, checked: Collection[Watch], wanted: Wanted) -> None:
        """Only these rows were read again."""
        for room in {room_for(*watch) for watch in checked} | wanted.covered.keys():
            self._rooms.pop(room, None)
            self._covered.pop(room, None)
            self._shard.pop(room, None)
        self._rooms.update(wanted.rooms)
        self._covered.update(wanted.covered)
        for room, pair in wanted.rooms.items():
            self._shard[room] = shard_of(pair, self._shards)
        self._invalid = {
            pair: reason for pair, reason in self._invalid.items() if pair not in checked
        } | dict(wanted.invalid)
        await self._subscriptions.update(checked, self._mine(wanted))

    async def hold(
        self, epochs: Mapping[int, int], deadline: float, *, alone: bool = False
    ) -> None:
        """The lease loop's word: these shards are held, under these epochs, until `deadline`
        (for ever if this replica is `alone`). Rooms of shards no longer held are left, those of
        newly held shards joined."""
        changed = epochs.keys() != self._epochs.keys()
        self._epochs = dict(epochs)
        self._draining = set()
        self._deadline = deadline
        self._alone = alone
        self._epoch_text = {shard: str(epoch) for shard, epoch in epochs.items()}
        if changed:
            await self._subscriptions.want(self._here())

    async def hand_over(self, shards: Collection[int]) -> None:
        """Leave the rooms of these shards; their messages still in flight are stored under
        their epochs until `released`."""
        for shard in shards:
            del self._epochs[shard]
        self._draining = set(shards)
        await self._subscriptions.want(self._here())

    def released(self) -> None:
        for shard in self._draining:
            self._epoch_text.pop(shard, None)
        self._draining = set()

    @property
    def trusted(self) -> bool:
        """The leases held are still trusted (never before the first lease round)."""
        return self._alone or self._clock() < self._deadline

    def _here(self) -> Wanted:
        return self._mine(Wanted(rooms=self._rooms, invalid=self._invalid, covered=self._covered))

    def _mine(self, wanted: Wanted) -> Wanted:
        epochs = self._epochs
        if len(epochs) == self._shards:
            return wanted  # every shard is held here (a lone replica): nothing to filter
        rooms = {room: pair for room, pair in wanted.rooms.items() if self._shard[room] in epochs}
        invalid = {
            pair: reason
            for pair, reason in wanted.invalid.items()
            if shard_of(pair, self._shards) in epochs
        }
        covered = {
            room: watch
            for room, watch in wanted.covered.items()
            if shard_of(watch, self._shards) in epochs
        }
        return Wanted(rooms=rooms, invalid=invalid, covered=covered)


def _owned(rooms: Mapping[str, Watch]) -> dict[str, Watch]:
    return rooms if isinstance(rooms, dict) else dict(rooms)
