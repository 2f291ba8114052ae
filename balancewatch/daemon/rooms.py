"""Pure decisions about rooms: which rooms the watchlist asks for, and what to join and leave."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass

from balancewatch.domain import Pair, address_problems, room_for


@dataclass(frozen=True, slots=True)
class RoomDiff:
    join: frozenset[str]
    leave: frozenset[str]


def diff_rooms(desired: Set[str], joined: Set[str]) -> RoomDiff:
    """Join what is wanted and not held, leave what is held and not wanted: never a re-join."""
    return RoomDiff(join=frozenset(desired - joined), leave=frozenset(joined - desired))


@dataclass(frozen=True, slots=True)
class Wanted:
    rooms: Mapping[str, Pair]  # room -> (wallet, token), for every valid enabled row
    invalid: Mapping[Pair, str]  # rows that can never be joined, with the reason


def wanted_rooms(enabled_pairs: Iterable[Pair]) -> Wanted:
    """The rooms this process should hold, given the enabled watchlist rows.

    The database CHECK refuses malformed addresses, but a constraint can be dropped by hand:
    such a row is never sent as a join, it is reported instead.
    """
    rooms: dict[str, Pair] = {}
    invalid: dict[Pair, str] = {}
    for wallet, token in enabled_pairs:
        problems = address_problems(wallet=wallet, token=token)
        if problems:
            invalid[(wallet, token)] = "; ".join(problems)
        else:
            rooms[room_for(wallet, token)] = (wallet, token)
    return Wanted(rooms=rooms, invalid=invalid)
