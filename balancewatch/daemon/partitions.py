"""Partitions ahead: balance_rows has a partition for today and each of the next days before
any row of theirs arrives, so no row lands in the default partition in normal operation (and
a partition is never created while rows pour into its range). Checked at start and hourly;
every replica does it, the database's advisory lock taking them one at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from datetime import UTC, date, datetime, timedelta
from typing import Final

from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.aio import wait_first
from balancewatch.logs import describe_error, get_logger
from balancewatch.store import partitions
from balancewatch.store.db import DB_ERRORS

log = get_logger(__name__)

PREMAKE_DAYS: Final = 7
CHECK_INTERVAL: Final = 3600.0


def missing_days(today: date, existing: Collection[date], ahead: int = PREMAKE_DAYS) -> list[date]:
    """The days from today to `ahead` days on that have no partition yet, in order."""
    wanted = (today + timedelta(days=n) for n in range(ahead + 1))
    return [day for day in wanted if day not in existing]


def utc_today() -> date:
    return datetime.now(UTC).date()


class PartitionKeeper:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        interval: float = CHECK_INTERVAL,
        today: Callable[[], date] = utc_today,
    ) -> None:
        self._engine = engine
        self._interval = interval
        self._today = today
        self.left_to_default = 0  # days not created because the default partition has rows

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.make_ahead()
            except DB_ERRORS as exc:  # tried again at the next turn; a week is in hand
                log.warning("partitions.failed", error=describe_error(exc))
            await wait_first(stop, timeout=self._interval)

    async def make_ahead(self) -> dict[date, str]:
        """Create the partitions missing from today to PREMAKE_DAYS ahead; what became of each."""
        missing = missing_days(self._today(), await partitions.existing_days(self._engine))
        if not missing:
            return {}
        outcomes = await partitions.create(self._engine, missing)
        created = [str(day) for day, outcome in outcomes.items() if outcome == "created"]
        if created:
            log.info("partitions.created", days=created)
        for day, outcome in outcomes.items():
            if outcome == "default_has_rows":
                self.left_to_default += 1
                log.warning(
                    "partitions.default_has_rows",
                    day=str(day),
                    message="rows of that day are in balance_rows_default: no partition made "
                    "for it; they stay queryable there",
                )
        return outcomes
