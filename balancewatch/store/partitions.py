"""The day partitions of balance_rows: which exist, and creating those that do not.

Creation goes through `create_balance_partition` (migration 0009), a function of the owner of
balance_rows, so the daemon's role needs no right to create tables. It runs under a
transaction-scoped advisory lock: several replicas may do it at once, one after the other,
and each creates only what is still missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.store.models import PARTITION_PREFIX

_LOCK_KEY: Final = 0x62777074  # "bwpt"
_DAY_FORMAT: Final = "%Y%m%d"
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


def _day_of(name: str) -> date | None:
    suffix = name.removeprefix(PARTITION_PREFIX)
    try:
        return datetime.strptime(suffix, _DAY_FORMAT).date()
    except ValueError:
        return None
