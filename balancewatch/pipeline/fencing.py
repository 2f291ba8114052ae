"""What is stored of a batch the database's fencing refused (Temporal's check, for a batch).

Every COPY of balance rows is checked by a trigger on balance_history, in its own transaction
(the migrations' 0007): it refuses the batch whole if one of its rows was received after its
shard tenure ended. A replica that was frozen past its lease, and woke up believing it still
held it, so can never store what it received after another took over. What it received while
it did hold the lease is a true observation, stored however late: this module picks those
rows out, in a transaction that holds the leases FOR SHARE, and the rest are counted.
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
