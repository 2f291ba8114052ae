"""The partitions of balance_rows (a day or a week each): which exist, creating those that do
not, rolling the closed days up into daily_rows, packing the closed partitions' indexes,
dropping the old partitions, and counting the rows in the default partition.

Each goes through a function of the owner of balance_rows (`create_balance_partition`,
`drop_balance_partition` and `default_partition_rows`, migration 0013; `roll_up_day`, 0011;
`pack_balance_partition`, 0014; `roll_up_to`, 0015; `seal_rollup`, 0018), so the daemon's
role needs no right to create, read or drop tables. The creation, the rollups, the seal, the
pack and the drop run under a transaction-scoped advisory lock (all but the creation take it
themselves): several replicas may do them at once, one after the other, and each does only
what is still to do. A day rolled up, a partition packed or dropped is a transaction of its
own.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Final, NamedTuple

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

_LOCK_KEY: Final = 0x62777074  # "bwpt"
_STATE: Final = "SELECT live_from, rolled_until, sealed_until FROM rollup_state"
_BOUNDS: Final = "SELECT first_day, end_day FROM balance_partition_bounds()"
_CREATE: Final = "SELECT create_balance_partition(:first, :days)"


class Span(NamedTuple):
    """The days of a partition: from `first` to the day before `end`."""

    first: date
    end: date


async def existing(engine: AsyncEngine) -> list[Span]:
    """The partitions' days (the default partition has none), in order."""
    async with engine.connect() as connection:
        return await _existing(connection)


async def _existing(connection: AsyncConnection) -> list[Span]:
    rows = await connection.execute(text(_BOUNDS))
    return sorted(Span(first, end) for first, end in rows)


async def create(
    engine: AsyncEngine, missing: Callable[[Collection[Span]], Sequence[Span]]
) -> dict[date, str]:
    """The partitions `missing` finds missing from those that exist, created: what became of
    each (by its first day), 'created', 'exists', or 'default_has_rows' (left alone: the
    default partition holds rows of its days). The partitions are read under the lock, so
    that replicas making partitions of different widths never make two that overlap."""
    async with engine.begin() as connection:
        await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        outcomes = {}
        for span in missing(await _existing(connection)):
            days = (span.end - span.first).days
            outcome = await connection.execute(text(_CREATE), {"first": span.first, "days": days})
            outcomes[span.first] = outcome.scalar_one()
        return outcomes


@dataclass(frozen=True, slots=True)
class RollupState:
    live_from: date  # the first day not complete in daily_rows: the watermark's
    rolled_until: datetime  # the watermark: every row before it is in daily_rows
    sealed_until: datetime  # a row stored before it marks its day; the watermark's bound
    invalid: frozenset[date]  # days that received old rows since (or before) their rollup


async def rollup_state(engine: AsyncEngine) -> RollupState:
    async with engine.connect() as connection:
        live_from, rolled_until, sealed_until = (await connection.execute(text(_STATE))).one()
        invalid = (await connection.execute(text("SELECT day FROM rollup_invalid"))).scalars()
        return RollupState(live_from, rolled_until, sealed_until, frozenset(invalid))


async def seal(engine: AsyncEngine, until: datetime) -> datetime | None:
    """The seal moved up to `until` (never back, never closer to the database's clock than
    its grace) once the writes in flight have committed: from then on, a row stored before it
    marks its day. The new seal; None when writers held the lock for every try (a long
    insert), and the seal stays where it was."""
    async with engine.begin() as connection:
        statement = text("SELECT seal_rollup(:until)")
        sealed: datetime | None = (await connection.execute(statement, {"until": until})).scalar()
        return sealed


async def roll_up(engine: AsyncEngine, day: date) -> str:
    """A marked day's figures computed again from its rows: 'rolled_up', or why not
    ('not_next': after the watermark's day, 'rolled_up_already': not marked)."""
    return await _call(engine, "SELECT roll_up_day(:day)", day)


async def roll_up_to(engine: AsyncEngine, until: datetime) -> datetime:
    """The watermark moved towards `until`, at most to the end of its day and to the seal: the
    rows passed added to their day's figures. The new watermark (the old one when there was
    nothing to do)."""
    async with engine.begin() as connection:
        statement = text("SELECT roll_up_to(:until)")
        moved: datetime = (await connection.execute(statement, {"until": until})).scalar_one()
        return moved


async def drop(engine: AsyncEngine, first: date) -> str:
    """The partition starting on `first` detached and dropped: 'dropped', or why not
    ('missing', 'not_rolled_up': some day of it is not rolled up)."""
    return await _call(engine, "SELECT drop_balance_partition(:day)", first)


async def pack(engine: AsyncEngine, first: date) -> str:
    """The index of the closed partition starting on `first` built again, packed, and the one
    that grew with its days dropped: 'packed', or why not ('packed_already', 'not_closed',
    'missing', 'busy': readers held the partition; the packed index is kept, the next call
    drops the other)."""
    return await _call(engine, "SELECT pack_balance_partition(:day)", first)


async def default_rows(engine: AsyncEngine) -> int:
    """Rows in the default partition: of a time no partition covers."""
    async with engine.connect() as connection:
        rows: int = (await connection.execute(text("SELECT default_partition_rows()"))).scalar_one()
        return rows


async def _call(engine: AsyncEngine, statement: str, day: date) -> str:
    async with engine.begin() as connection:
        outcome: str = (await connection.execute(text(statement), {"day": day})).scalar_one()
        return outcome
