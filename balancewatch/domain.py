"""The words every layer shares: a pair, a watch, the states of its subscription, a Solana
address, a room.

Pure and cheap to import: no I/O and no third-party package, so the CLI, the store and the
daemon can all name these without pulling in each other.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Final, Literal, get_args

Pair = tuple[str, str]  # (wallet, token): what a balance row is of
# What a watchlist row asks for: one token of a wallet, or every token of it (token None, the
# wallet room). A message always names its token, so rows stay Pairs.
Watch = tuple[str, str | None]

# What the daemon last did with a watch's room; stored in subscription_status.state. `covered`:
# the pair is listened to through its wallet's room (an enabled all-tokens row), not its own.
PairState = Literal["joining", "joined", "leaving", "left", "error", "invalid", "covered"]
PAIR_STATES: Final[tuple[PairState, ...]] = get_args(PairState)
# A pair in one of these needs nothing more from the daemon: the server answered its join.
SETTLED_STATES: Final[frozenset[PairState]] = frozenset({"joined", "error"})

# Where a balance row came from: a Datastream message, or the chain (when a listening period
# started, or when a check found the stored balance wrong).
RowSource = Literal["stream", "snapshot", "check"]
ROW_SOURCES: Final[tuple[RowSource, ...]] = get_args(RowSource)
# Each source as balance_rows stores it, in one byte.
ROW_SOURCE_CODES: Final[dict[RowSource, str]] = {"stream": "s", "snapshot": "n", "check": "c"}

# A balance read from the chain: a snapshot when a listening period starts, or a check of the
# stored balance. What came of it: a snapshot row stored; the stored balance confirmed (match),
# found wrong (drift: a `check` row), or moved by a message meanwhile (in_flight); or no
# usable answer (failed).
ChainReadKind = Literal["snapshot", "check"]
CHAIN_READ_KINDS: Final[tuple[ChainReadKind, ...]] = get_args(ChainReadKind)
ChainReadResult = Literal["stored", "match", "drift", "in_flight", "failed"]
CHAIN_READ_RESULTS: Final[tuple[ChainReadResult, ...]] = get_args(ChainReadResult)

# Why a listening period ended: the pair was left (removed, disabled, or the server refused
# it), its shard went to another replica or its lease could no longer be trusted, the
# connection went, the daemon stopped, or its process stopped confirming it.
EndReason = Literal["left", "error", "handover", "disconnected", "shutdown", "lost"]

BASE58_PATTERN: Final = r"^[1-9A-HJ-NP-Za-km-z]{32,44}$"
_BASE58 = re.compile(BASE58_PATTERN)
# A token's room, `wallet:{WALLET}:{MINT}:balance`, or a whole wallet's, `wallet:{WALLET}:balance`.
_ROOM = re.compile(
    r"^wallet:([1-9A-HJ-NP-Za-km-z]{32,44})(?::([1-9A-HJ-NP-Za-km-z]{32,44}))?:balance$"
)


def is_address(text: str) -> bool:
    """True for a base58 string of 32 to 44 characters, the shape of a Solana address."""
    return _BASE58.fullmatch(text) is not None


def address_problems(**named: str | None) -> list[str]:
    """Why each named value is not an address (`wallet=..., token=...`); empty if all are.
    None is no value, not a bad one (the token of an all-tokens watch)."""
    return [
        f"{name} {value!r} is not a base58 address of 32 to 44 characters"
        for name, value in named.items()
        if value is not None and not is_address(value)
    ]


def room_for(wallet: str, token: str | None) -> str:
    """The room of one token of a wallet, or of every token of it (token None)."""
    if token is None:
        return f"wallet:{wallet}:balance"
    return f"wallet:{wallet}:{token}:balance"


def watch_for(room: str) -> Watch | None:
    """The (wallet, token) of a balance room (token None for a wallet's room), or None if the
    text is not such a room."""
    match = _ROOM.fullmatch(room)
    return (match.group(1), match.group(2)) if match else None


# The same few rooms come back in message after message: their check is remembered.
# Either kind of room.
@functools.lru_cache(maxsize=16_384)
def is_room(text: str) -> bool:
    return _ROOM.fullmatch(text) is not None


# Pairs are spread over this many shards unless the database records another count (its
# `shard_config`): the unit a replica holds, hands over and fences.
DEFAULT_SHARDS: Final = 64


def shard_of(pair: Watch, shards: int) -> int:
    """The shard a pair belongs to: that of its wallet, so that every room of one wallet (each
    token's, and the whole wallet's) is held by one replica, which alone decides which of them
    to join. The same in every process and every version (blake2b, never `hash()`, which
    Python salts per process)."""
    digest = hashlib.blake2b(pair[0].encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards
