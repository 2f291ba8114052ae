"""The shard filter in front of the subscriptions: only the rooms of the shards held are joined,
each with its shard's epoch until the lease's trusted time runs out, and a room handed over is
left without touching its state (the new owner's to say)."""

from __future__ import annotations

from balancewatch.daemon.coverage import Coverage
from balancewatch.daemon.rooms import wanted_rooms
from balancewatch.daemon.sharding import ShardedRooms
from balancewatch.daemon.subscriptions import Subscriptions
from balancewatch.domain import Pair, shard_of
from tests.fakes import FakeClock, FakeSender, FakeStatus
from tests.helpers import SOL, TOKEN, WALLET, WALLET2, RecordedPeriods, room

SHARDS = 64
A: Pair = (WALLET, TOKEN)  # shard 26
B: Pair = (WALLET2, SOL)  # shard 42
C: Pair = (WALLET, SOL)  # A's wallet: A's shard
BAD: Pair = ("not-a-wallet-0OIl", TOKEN)


def shard(pair: Pair) -> int:
    return shard_of(pair, SHARDS)


async def sharded(
    clock: FakeClock,
) -> tuple[ShardedRooms, FakeSender, FakeStatus, RecordedPeriods]:
    status, periods, sender = FakeStatus(), RecordedPeriods(), FakeSender()
    subs = Subscriptions(status, Coverage(periods), clock=clock)
    rooms = ShardedRooms(subs, SHARDS, clock=clock)
    await subs.connected(sender)
    return rooms, sender, status, periods


async def test_only_the_rooms_of_held_shards_are_joined() -> None:
    clock = FakeClock()
    rooms, sender, _, _ = await sharded(clock)
    await rooms.want(wanted_rooms([A, B]))
    assert sender.joins() == []  # no lease yet: nothing joined
    await rooms.hold({shard(A): 7}, deadline=clock.now + 10)
    assert sender.holding() == {room(*A)}
    await rooms.hold({shard(A): 7, shard(B): 8}, deadline=clock.now + 10)
    assert sender.holding() == {room(*A), room(*B)}


async def test_a_room_has_its_shards_epoch_until_the_deadline_then_none() -> None:
    clock = FakeClock()
    rooms, _, _, _ = await sharded(clock)
    await rooms.want(wanted_rooms([A, B]))
    await rooms.hold({shard(A): 7}, deadline=clock.now + 10)
    assert rooms.epoch_for(room(*A)) == "7"
    assert rooms.epoch_for(room(*B)) is None  # another replica's shard
    assert rooms.epoch_for("wallet:unknown:room:balance") is None
    clock.now += 10
    assert rooms.epoch_for(room(*A)) is None  # the lease can no longer be trusted
    assert rooms.held == {}


async def test_a_shard_handed_over_is_left_with_its_period_ended_and_no_state_written() -> None:
    clock = FakeClock()
    rooms, sender, status, periods = await sharded(clock)
    subs = rooms.subscriptions
    await rooms.want(wanted_rooms([A, B]))
    await rooms.hold({shard(A): 7, shard(B): 8}, deadline=clock.now + 10)
    subs.joined(room(*B))  # the server's ack: B's listening period opens
    status.changes.clear()
    await rooms.hold({shard(A): 7}, deadline=clock.now + 10)
    assert sender.leaves() == [room(*B)]
    assert status.states(B) == []  # the new owner writes its state
    assert [end.reason for end in periods.ended] == ["handover"]


async def test_a_row_removed_from_the_watchlist_is_still_left_as_left() -> None:
    clock = FakeClock()
    rooms, sender, status, _ = await sharded(clock)
    await rooms.want(wanted_rooms([A]))
    await rooms.hold({shard(A): 7}, deadline=clock.now + 10)
    await rooms.update([A], wanted_rooms([]))
    assert sender.leaves() == [room(*A)]
    assert status.states(A)[-2:] == ["leaving", "left"]


async def test_an_update_of_a_pair_of_a_shard_not_held_sends_nothing() -> None:
    clock = FakeClock()
    rooms, sender, _, _ = await sharded(clock)
    await rooms.want(wanted_rooms([A]))
    await rooms.hold({shard(A): 7}, deadline=clock.now + 10)
    sender.frames.clear()
    await rooms.update([B], wanted_rooms([B]))
    assert sender.frames == []
    await rooms.hold({shard(A): 7, shard(B): 9}, deadline=clock.now + 10)
    assert sender.joins() == [room(*B)]  # remembered, and joined once its shard is held


async def test_an_invalid_row_is_reported_only_by_the_replica_holding_its_shard() -> None:
    clock = FakeClock()
    rooms, _, status, _ = await sharded(clock)
    await rooms.want(wanted_rooms([A, BAD]))
    assert status.states(BAD) == []
    await rooms.hold({shard(BAD): 3}, deadline=clock.now + 10)
    assert status.states(BAD) == ["invalid"]


async def test_losing_every_lease_leaves_every_room() -> None:
    clock = FakeClock()
    rooms, sender, _, _ = await sharded(clock)
    await rooms.want(wanted_rooms([A, B, C]))
    everything = {shard(pair): 1 for pair in (A, B, C)}
    await rooms.hold(everything, deadline=clock.now + 10)
    assert sender.holding() == {room(*p) for p in (A, B, C)}  # C with A, in one shard
    await rooms.hold({}, deadline=clock.now + 10)
    assert sender.holding() == set()
    assert sorted(sender.leaves()) == sorted(room(*p) for p in (A, B, C))


async def test_a_room_left_for_a_switch_keeps_its_wallets_epoch_until_the_switch_ends() -> None:
    clock = FakeClock()
    rooms, sender, _, _ = await sharded(clock)
    subs = rooms.subscriptions
    await rooms.want(wanted_rooms([A, C]))
    await rooms.hold({shard(A): 7}, deadline=clock.now + 10)
    await rooms.update([(WALLET, None)], wanted_rooms([A, C, (WALLET, None)]))
    assert sender.holding() == {room(WALLET, None)}
    # Sent before the server took the leave in: stored under the wallet's shard's epoch.
    assert rooms.epoch_for(room(*A)) == rooms.epoch_for(room(WALLET, None)) == "7"
    subs.joined(room(WALLET, None))
    assert rooms.epoch_for(room(*A)) is None


async def test_a_covered_row_of_another_replicas_shard_is_not_reported_here() -> None:
    clock = FakeClock()
    rooms, _, status, _ = await sharded(clock)
    await rooms.hold({shard(B): 8}, deadline=clock.now + 10)
    await rooms.want(wanted_rooms([A, (WALLET, None), B]))
    assert status.states(A) == []  # A's wallet is another replica's: its state is theirs


async def test_a_covered_row_of_a_shard_handed_over_keeps_its_state_for_the_new_owner() -> None:
    clock = FakeClock()
    rooms, _, status, _ = await sharded(clock)
    await rooms.want(wanted_rooms([A, (WALLET, None)]))
    await rooms.hold({shard(A): 7}, deadline=clock.now + 10)
    assert status.states(A) == ["covered"]
    await rooms.hold({}, deadline=clock.now + 10)
    assert status.states(A) == ["covered"]  # not `left`: the new owner says
