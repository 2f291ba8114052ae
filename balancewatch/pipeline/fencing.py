"""The fencing check in the database (Temporal's, for a batch): inside the transaction that
stores a batch of balance rows, each row's shard tenure is checked, and a row is stored only if
it was received before its tenure ended. A replica that was frozen past its lease, and woke up
believing it still held it, so can never store what it received after another took over; what
it received while it did hold the lease is a true observation, stored however late.

The check costs one statement per batch: it names the batch's distinct epochs, and only when
one of them has ended are the rows themselves looked at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from balancewatch.pipeline.records import NO_EPOCH_BYTES, BalanceLine, received_at
from balancewatch.store import writes
from balancewatch.store.db import RawConnection


@dataclass(frozen=True, slots=True)
class Fenced:
    kept: list[BalanceLine]
    refused: int  # received after their tenure ended, or under a tenure the database never had


def split(
    lines: Sequence[BalanceLine], ends: Mapping[bytes, datetime | None], checked_at: datetime
) -> Fenced:
    """The rows that may be stored, given when each epoch's tenure ended (`ends`, by the
    epoch's text as in the lines; None for a tenure still current). A row of an epoch missing
    from it is refused; a row without one is kept (it was received before replicas)."""
    ended = {epoch for epoch, until in ends.items() if until is not None and until <= checked_at}
    if not ended and epochs_in(lines) <= ends.keys():
        return Fenced(list(lines), 0)
    kept = [line for line in lines if _may_store(line, ends, ended)]
    return Fenced(kept, len(lines) - len(kept))


def epochs_in(lines: Sequence[BalanceLine]) -> set[bytes]:
    """The distinct epochs of a batch, as their text (rows without one left out)."""
    tails = {_tail(line) for line in lines}
    tails.discard(NO_EPOCH_BYTES)
    return tails


async def fence(raw: RawConnection, lines: Sequence[BalanceLine], timeout: float) -> Fenced:
    """The rows of `lines` that may be stored; to be called inside the transaction that
    stores them."""
    epochs = epochs_in(lines)
    if not epochs:
        return Fenced(list(lines), 0)
    found, checked_at = await writes.tenure_ends(raw, sorted(map(int, epochs)), timeout)
    ends = {str(epoch).encode(): until for epoch, until in found.items()}
    return split(lines, ends, checked_at)


def _tail(line: BalanceLine) -> bytes:
    return line[line.rindex(b"\t") + 1 : -1]


def _may_store(line: BalanceLine, ends: Mapping[bytes, datetime | None], ended: set[bytes]) -> bool:
    epoch = _tail(line)
    if epoch == NO_EPOCH_BYTES or (epoch in ends and epoch not in ended):
        return True
    if epoch not in ends:
        return False
    until = ends[epoch]
    return until is None or received_at(line) <= until
