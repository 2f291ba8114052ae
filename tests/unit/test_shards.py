"""Pure decisions of the replicas: a pair's shard, who should hold each shard (rendezvous
hashing), and what one lease round claims and hands over."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from balancewatch.daemon.shards import Lease, assignment, owner_of, plan
from balancewatch.devtools.benchkit import bench_pairs
from balancewatch.domain import DEFAULT_SHARDS, shard_of
from tests.helpers import SOL, TOKEN, WALLET, WALLET2

SHARDS = DEFAULT_SHARDS
names = st.text(alphabet="abcdefghij-0123456789", min_size=1, max_size=12)
FREE = Lease(owner=None, expired=True)


def free_leases() -> dict[int, Lease]:
    return dict.fromkeys(range(SHARDS), FREE)


def test_a_pairs_shard_never_changes_between_processes_or_versions() -> None:
    # Replicas of different versions share the leases: these values are a contract. (Python's
    # hash() would give other values in every process.)
    pairs = [(WALLET, TOKEN), (WALLET, SOL), (WALLET2, TOKEN), (WALLET2, SOL)]
    assert [shard_of(pair, 64) for pair in pairs] == [26, 26, 42, 42]
    assert shard_of((WALLET, TOKEN), 7) == 6


@given(names, names, names)
def test_every_room_of_one_wallet_is_in_one_shard(wallet: str, token: str, other: str) -> None:
    assert shard_of((wallet, token), SHARDS) == shard_of((wallet, other), SHARDS)


def test_wallets_spread_evenly_over_the_shards() -> None:
    counts = [0] * SHARDS
    for wallet, token in bench_pairs(6400):
        counts[shard_of((wallet, token), SHARDS)] += 1
    assert min(counts) >= 60  # 100 each if perfectly even
    assert max(counts) <= 140


@given(st.sets(names, min_size=1, max_size=6))
def test_every_replica_computes_the_same_owner_whatever_the_order(replicas: set[str]) -> None:
    forward = assignment(SHARDS, sorted(replicas))
    backward = assignment(SHARDS, sorted(replicas, reverse=True))
    assert forward == backward
    assert set(forward.values()) <= replicas


@given(st.sets(names, min_size=2, max_size=6), st.data())
def test_a_replica_leaving_moves_only_the_shards_it_held(
    replicas: set[str], data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(sorted(replicas)))
    before = assignment(SHARDS, replicas)
    after = assignment(SHARDS, replicas - {gone})
    moved = {shard for shard in range(SHARDS) if before[shard] != after[shard]}
    assert moved == {shard for shard, owner in before.items() if owner == gone}


@given(st.sets(names, min_size=1, max_size=5), names)
def test_a_replica_joining_takes_shards_only_from_others_never_between_them(
    replicas: set[str], newcomer: str
) -> None:
    before = assignment(SHARDS, replicas)
    after = assignment(SHARDS, replicas | {newcomer})
    for shard in range(SHARDS):
        assert after[shard] in (before[shard], newcomer)


def test_two_or_three_replicas_get_an_even_share_within_a_few_shards() -> None:
    for replicas in (["balancewatch-a", "balancewatch-b"], ["r1", "r2", "r3"]):
        owners = list(assignment(SHARDS, replicas).values())
        shares = [owners.count(replica) for replica in replicas]
        even = SHARDS / len(replicas)
        assert all(abs(share - even) <= 0.35 * even for share in shares), shares


def test_no_replica_no_owner() -> None:
    assert owner_of(3, []) is None
    assert assignment(SHARDS, []) == {}


def test_a_lone_replica_claims_every_free_shard_and_releases_nothing() -> None:
    decided = plan("a", {"a"}, free_leases(), held=())
    assert decided.claim == frozenset(range(SHARDS))
    assert decided.release == frozenset()


def test_a_live_owners_lease_is_never_claimed_only_handed_over() -> None:
    leases = dict.fromkeys(range(SHARDS), Lease(owner="a/1", expired=False))
    decided = plan("b", {"a", "b"}, leases, held=())
    assert decided.claim == frozenset()
    # ...and "a", in its own round, hands over exactly the shards "b" wins.
    handed = plan("a", {"a", "b"}, leases, held=range(SHARDS))
    assert handed.release == {
        s for s, owner in assignment(SHARDS, {"a", "b"}).items() if owner == "b"
    }
    assert handed.claim == frozenset()


def test_expired_leases_of_a_dead_replica_go_to_the_survivor() -> None:
    leases = dict.fromkeys(range(SHARDS), Lease(owner="a/1", expired=True))
    rightful = assignment(SHARDS, {"a", "b"})
    held = [shard for shard, owner in rightful.items() if owner == "b"]
    leases.update(dict.fromkeys(held, Lease(owner="b/1", expired=False)))
    decided = plan("b", {"b"}, leases, held=held)
    assert decided.claim == frozenset(range(SHARDS)) - set(held)
    assert decided.release == frozenset()


def test_a_shard_is_never_released_to_a_replica_that_is_not_live() -> None:
    decided = plan("a", {"a"}, free_leases(), held=range(SHARDS))
    assert decided.release == frozenset()


@given(st.sets(names, min_size=1, max_size=4), st.data())
def test_after_every_replica_has_run_a_round_each_shard_is_claimed_by_exactly_one(
    replicas: set[str], data: st.DataObject
) -> None:
    order = data.draw(st.permutations(sorted(replicas)))
    leases = free_leases()
    held: dict[str, set[int]] = {replica: set() for replica in replicas}
    for replica in order:
        decided = plan(replica, replicas, leases, held=held[replica])
        for shard in decided.claim:
            assert leases[shard].owner is None
            leases[shard] = Lease(owner=replica, expired=False)
        held[replica] |= decided.claim
    claimed = [shard for shards in held.values() for shard in shards]
    assert sorted(claimed) == list(range(SHARDS))
