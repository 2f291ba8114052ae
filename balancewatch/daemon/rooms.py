"""Pure decisions about rooms: which rooms the watchlist asks for, and what to join and leave."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field

from balancewatch.domain import Watch, address_problems, room_for


@dataclass(frozen=True, slots=True)
class RoomDiff:
    join: Set[str]
    leave: Set[str]


def diff_rooms(desired: Set[str], joined: Set[str]) -> RoomDiff:
    """Join what is wanted and not held, leave what is held and not wanted: never a re-join.
    Each side is a new set, not frozen: a copy of 100,000 rooms would be 4 MB more."""
    return RoomDiff(join=desired - joined, leave=joined - desired)


@dataclass(frozen=True, slots=True)
class Wanted:
    rooms: Mapping[str, Watch]  # room -> (wallet, token|None), for every room to hold
    invalid: Mapping[Watch, str]  # rows that can never be joined, with the reason
    # The rooms of token rows whose wallet has an enabled all-tokens row: their messages come
    # through the wallet's room, so they are not joined themselves (room -> its watch).
    covered: Mapping[str, Watch] = field(default_factory=dict)


def all_tokens_wallets(enabled: Iterable[Watch]) -> set[str]:
    """The wallets with an enabled all-tokens row."""
    return {wallet for wallet, token in enabled if token is None}


def wanted_rooms(enabled: Iterable[Watch], whole: Set[str] | None = None) -> Wanted:
    """The rooms this process should hold, given the enabled watchlist rows.

    A wallet with an enabled all-tokens row is held through its wallet room alone: holding its
    token rooms too would bring each of their changes twice. So one INSERT or DELETE of that
    row moves the whole wallet in one diff.

    The database CHECK refuses malformed addresses, but a constraint can be dropped by hand:
    such a row is never sent as a join, it is reported instead. `whole`: the wallets with an
    all-tokens row, when `enabled` is only a part of the rows.
    """
    rows = list(enabled)
    whole = all_tokens_wallets(rows) if whole is None else whole
    rooms: dict[str, Watch] = {}
    invalid: dict[Watch, str] = {}
    covered: dict[str, Watch] = {}
    for watch in rows:
        wallet, token = watch
        problems = address_problems(wallet=wallet, token=token)
        # Not interned: the interpreter's table of interned strings would keep an entry for
        # each (37 MB at 1,000,000 rooms). Every structure keyed by room takes its keys from
        # one read (Subscriptions re-keys the rooms it holds), so each exists once anyway.
        room = room_for(wallet, token)
        if problems:
            invalid[watch] = "; ".join(problems)
        elif token is not None and wallet in whole:
            covered[room] = watch
        else:
            rooms[room] = watch
    return Wanted(rooms=rooms, invalid=invalid, covered=covered)
