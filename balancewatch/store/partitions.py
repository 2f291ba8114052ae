"""The day partitions of balance_rows: which exist, creating those that do not, rolling the
closed days up into daily_rows, and dropping the old ones.

Each goes through a function of the owner of balance_rows (`create_balance_partition`,
migration 0009; `roll_up_day` and `drop_balance_partition`, 0011), so the daemon's role needs
no right to create, read or drop tables. Each runs under a transaction-scoped advisory lock
(the last two take it themselves): several replicas may do it at once, one after the other,
and each does only what is still to do. A day rolled up or dropped is a transaction of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.store.models import PARTITION_PREFIX

_LOCK_KEY: Final = 0x62777074  # "bwpt"
_DAY_FORMAT: Final = "%Y%m%d"
_LIVE_FROM: Final = "SELECT live_from FROM rollup_state"
_PARTITIONS: Final = """
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'balance_rows'::regclass
"""


async def existing_days(engine: AsyncEngine) -> set[date]:
    """The days that have a partition (the default partition is no day)."""
    async with engine.connect() as connection:
        names = (await connection.execute(text(_PARTITIONS))).scalars()
        return {day for name in names if (day := _day_of(name)) is not None}


async def create(engine: AsyncEngine, days: Sequence[date]) -> dict[date, str]:
    """Each day's partition created if missing: what became of each day, 'created', 'exists',
    or 'default_has_rows' (left alone: the default partition holds rows of that day)."""
    async with engine.begin() as connection:
        await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        create_one = text("SELECT create_balance_partition(:day)")
        return {
            day: (await connection.execute(create_one, {"day": day})).scalar_one() for day in days
        }


@dataclass(frozen=True, slots=True)
class RollupState:
    live_from: date  # the first day not rolled up: balance_daily is live from there
    invalid: frozenset[date]  # closed days that received rows since (or before) their rollup


async def rollup_state(engine: AsyncEngine) -> RollupState:
    async with engine.connect() as connection:
        live_from = (await connection.execute(text(_LIVE_FROM))).scalar_one()
        invalid = (await connection.execute(text("SELECT day FROM rollup_invalid"))).scalars()
        return RollupState(live_from, frozenset(invalid))


async def roll_up(engine: AsyncEngine, day: date) -> str:
    """The day's figures computed again from its rows: 'rolled_up', or why not ('not_next',
    'rolled_up_already', 'final': its rows were dropped, its rollup stays)."""
    return await _call(engine, "SELECT roll_up_day(:day)", day)


async def drop(engine: AsyncEngine, day: date) -> str:
    """The day's partition detached and dropped: 'dropped', or why not ('missing',
    'not_rolled_up')."""
    return await _call(engine, "SELECT drop_balance_partition(:day)", day)


async def _call(engine: AsyncEngine, statement: str, day: date) -> str:
    async with engine.begin() as connection:
        outcome: str = (await connection.execute(text(statement), {"day": day})).scalar_one()
        return outcome


def _day_of(name: str) -> date | None:
    suffix = name.removeprefix(PARTITION_PREFIX)
    try:
        return datetime.strptime(suffix, _DAY_FORMAT).date()
    except ValueError:
        return None
