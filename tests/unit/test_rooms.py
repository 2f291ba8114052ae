"""Pure decisions: the room diff, the wanted rooms, the backoff."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from balancewatch.aio import Backoff
from balancewatch.daemon.rooms import diff_rooms, wanted_rooms
from tests.helpers import SOL, TOKEN, WALLET, WALLET2, room


def test_diff_joins_what_is_wanted_and_leaves_what_is_not() -> None:
    diff = diff_rooms({"a", "b"}, {"b", "c"})
    assert diff.join == {"a"}
    assert diff.leave == {"c"}


@given(st.sets(st.integers(0, 30)), st.sets(st.integers(0, 30)))
def test_applying_the_diff_reaches_the_wanted_set_without_rejoining(
    wanted: set[int], held: set[int]
) -> None:
    diff = diff_rooms({str(i) for i in wanted}, {str(i) for i in held})
    held_rooms = {str(i) for i in held}
    assert not diff.join & held_rooms
    assert (held_rooms - diff.leave) | diff.join == {str(i) for i in wanted}


def test_wanted_rooms_maps_each_valid_pair_to_its_room_and_reports_the_rest() -> None:
    wanted = wanted_rooms(
        [(WALLET, TOKEN), (WALLET2, SOL), ("bad wallet", TOKEN), (WALLET, "0" * 40)]
    )
    assert wanted.rooms == {room(): (WALLET, TOKEN), room(WALLET2, SOL): (WALLET2, SOL)}
    assert set(wanted.invalid) == {("bad wallet", TOKEN), (WALLET, "0" * 40)}
    assert "wallet" in wanted.invalid[("bad wallet", TOKEN)]
    assert "token" in wanted.invalid[(WALLET, "0" * 40)]


def test_backoff_grows_exponentially_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(initial=0.5, maximum=8.0, rng=random.Random(1))
    ceilings = []
    for _ in range(7):
        ceilings.append(backoff.ceiling())
        backoff.next_delay()
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.ceiling() == 0.5


@given(st.integers(0, 10_000), st.integers(0, 2**32))
def test_backoff_delay_is_full_jitter_within_the_ceiling(attempt: int, seed: int) -> None:
    backoff = Backoff(initial=0.5, maximum=30.0, attempt=attempt, rng=random.Random(seed))
    ceiling = backoff.ceiling()
    assert 0 <= backoff.next_delay() <= ceiling <= 30.0


def test_a_wallet_with_an_all_tokens_row_is_wanted_through_its_wallet_room_alone() -> None:
    wanted = wanted_rooms([(WALLET, TOKEN), (WALLET, None), (WALLET, SOL), (WALLET2, SOL)])
    assert wanted.rooms == {room(WALLET, None): (WALLET, None), room(WALLET2, SOL): (WALLET2, SOL)}
    assert wanted.covered == {
        room(WALLET, TOKEN): (WALLET, TOKEN),
        room(WALLET, SOL): (WALLET, SOL),
    }
    assert wanted.invalid == {}


def test_an_all_tokens_row_covers_rows_read_in_another_part() -> None:
    # The watchlist is read in steps: the wallet's all-tokens row may be in another one.
    wanted = wanted_rooms([(WALLET, TOKEN)], whole={WALLET})
    assert wanted.rooms == {}
    assert wanted.covered == {room(WALLET, TOKEN): (WALLET, TOKEN)}


def test_a_malformed_wallet_of_an_all_tokens_row_is_reported_not_joined() -> None:
    wanted = wanted_rooms([("bad wallet", None)])
    assert wanted.rooms == {}
    assert "wallet" in wanted.invalid[("bad wallet", None)]
