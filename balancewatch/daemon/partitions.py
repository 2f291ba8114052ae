"""The partitions' upkeep, at start and every five minutes, and the rollups every minute;
every replica does it, the database's advisory lock taking them one at a time:

- Partitions ahead: balance_rows has a partition covering today and each of the next days
  before any row of theirs arrives, so no row lands in the default partition in normal
  operation (and a partition is never created while rows pour into its range). A partition
  is a day, or a week from Monday (BALANCEWATCH_PARTITION): the setting decides the width of
  the partitions made from now on; those that exist keep theirs, and the new ones fill the
  days around them, so widths may mix and never overlap.
- Rollups: the rows up to two minutes ago (today's too), once sealed, added to their day's
  figures in daily_rows, a day per transaction; a day that received old rows after its
  rollup computed again.
- Packing: each partition whose days have all closed gets its index built again, packed
  (an index that grew with the day is about half empty), once.
- Retention: with BALANCEWATCH_RETENTION, the partitions whose days are all older than that,
  once rolled up, detached and dropped (never a DELETE; never the default partition).
- The rows in the default partition counted, for a metric: normally none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable
from datetime import UTC, date, datetime, time, timedelta
from typing import Final

from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.aio import wait_first
from balancewatch.logs import describe_error, get_logger
from balancewatch.settings import DEFAULT_PARTITION, PARTITION_DAYS
from balancewatch.store import partitions
from balancewatch.store.db import DB_ERRORS
from balancewatch.store.partitions import Span

log = get_logger(__name__)

PREMAKE_DAYS: Final = 7
# The rollups: often enough that balance_daily has a minute or two of raw rows to aggregate
# live. The rest of the upkeep every UPKEEP_TURNS turns (five minutes): making partitions a
# week ahead, packing, dropping, and counting the default partition's rows (a scan of them,
# should a clock far off have put many there).
CHECK_INTERVAL: Final = 60.0
UPKEEP_TURNS: Final = 5
# The rollup is sealed up to this long ago (migration 0018): a row stored later than that after
# it was received, a spool replay after an outage, marks its day, which is then computed
# again. The database holds to it too.
ROLLUP_GRACE: Final = timedelta(minutes=2)
# A partition is packed this long after its last day ends (pack_balance_partition's own).
PACK_GRACE: Final = timedelta(hours=1)
# What pack_balance_partition answers when there is nothing left to do for a partition
# ('busy' and 'not_closed', a clock ahead of the database's, are tried again).
_PACK_SETTLED: Final = frozenset({"packed", "packed_already", "missing"})


def missing_spans(
    today: date, existing: Collection[Span], width: int, ahead: int = PREMAKE_DAYS
) -> list[Span]:
    """The partitions to make, in order, so that every day from today to `ahead` days on has
    one. Each is the `width` days' period of its day (a week starts on Monday), cut to start
    no earlier than today and to stay clear of the partitions that exist."""
    made: list[Span] = []
    for day in (today + timedelta(days=n) for n in range(ahead + 1)):
        if any(span.first <= day < span.end for span in (*existing, *made)):
            continue
        period = day - timedelta(days=day.weekday() % width)  # width 1: the day itself
        first = max([period, today, *(span.end for span in existing if span.end <= day)])
        end = min([period + timedelta(days=width), *(s.first for s in existing if s.first > day)])
        made.append(Span(first, end))
    return made


def days_to_redo(live_from: date, invalid: Collection[date]) -> list[date]:
    """The marked days before the watermark's, oldest first: computed again from their rows.
    The watermark's day, or a later one, is computed from its start when the watermark next
    moves, or gets there."""
    return sorted(day for day in invalid if day < live_from)


def days_completed(before: datetime, after: datetime) -> list[date]:
    """The days whose end the watermark passed in moving from `before` to `after` (UTC)."""
    first, last = before.astimezone(UTC).date(), after.astimezone(UTC).date()
    return [first + timedelta(days=n) for n in range((last - first).days)]


def spans_to_pack(now: datetime, existing: Iterable[Span], packed: Collection[date]) -> list[Span]:
    """The partitions whose last day ended more than the grace ago, not known to be packed."""
    return [
        span
        for span in existing
        if _start_of(span.end) + PACK_GRACE <= now and span.first not in packed
    ]


def spans_to_drop(
    now: datetime, existing: Iterable[Span], retention: timedelta | None
) -> list[Span]:
    """The partitions that ended more than `retention` ago, oldest first; none without a
    retention. (The database drops one only once all its days are rolled up.)"""
    if retention is None:
        return []
    return sorted(span for span in existing if _start_of(span.end) <= now - retention)


def _start_of(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


class PartitionKeeper:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        interval: float = CHECK_INTERVAL,
        width: int = PARTITION_DAYS[DEFAULT_PARTITION],
        retention: timedelta | None = None,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._engine = engine
        self._interval = interval
        self._width = width  # days a partition made from now on spans
        self._retention = retention
        self._now = now
        self.left_to_default = 0  # partitions not created because the default one has rows
        self.dropped = 0  # partitions dropped by the retention
        self._packed: set[date] = set()  # first days of the partitions known to be packed
        self.default_rows: int | None = None  # rows in the default partition, once counted

    async def run(self, stop: asyncio.Event) -> None:
        turn = 0
        while not stop.is_set():
            try:
                await (self.maintain() if turn % UPKEEP_TURNS == 0 else self.roll_up())
            except DB_ERRORS as exc:  # tried again at the next turn; a week is in hand
                log.warning("partitions.failed", error=describe_error(exc))
            turn += 1
            await wait_first(stop, timeout=self._interval)

    async def maintain(self) -> None:
        await self.make_ahead()
        await self.roll_up()
        await self.pack()
        await self.drop_old()
        self.default_rows = await partitions.default_rows(self._engine)

    async def make_ahead(self) -> dict[date, str]:
        """Create the partitions missing from today to PREMAKE_DAYS ahead; what became of each,
        by its first day."""
        today = self._now().date()
        outcomes = await partitions.create(
            self._engine, lambda existing: missing_spans(today, existing, self._width)
        )
        created = [str(day) for day, outcome in outcomes.items() if outcome == "created"]
        if created:
            log.info("partitions.created", days=created)
        for day, outcome in outcomes.items():
            if outcome == "default_has_rows":
                self.left_to_default += 1
                log.warning(
                    "partitions.default_has_rows",
                    day=str(day),
                    message="rows of its days are in balance_rows_default: no partition made "
                    "for them; they stay queryable there",
                )
        return outcomes

    async def roll_up(self) -> list[date]:
        """Compute the marked days again, seal up to the grace, then move the watermark up to
        the seal, a day per transaction; the days done (marked, or completed)."""
        state = await partitions.rollup_state(self._engine)
        done = []
        for day in days_to_redo(state.live_from, state.invalid):
            if await partitions.roll_up(self._engine, day) == "rolled_up":
                done.append(day)
        sealed = await partitions.seal(self._engine, self._now() - ROLLUP_GRACE)
        if sealed is None:  # up to the old seal: what was left of it
            log.info("partitions.seal_busy", sealed_until=state.sealed_until.isoformat())
        watermark, target = state.rolled_until, sealed or state.sealed_until
        while watermark < target:
            moved = await partitions.roll_up_to(self._engine, target)
            if moved <= watermark:  # nothing below the seal left to roll up
                break
            done += days_completed(watermark, moved)
            watermark = moved
        if done:
            log.info("partitions.rolled_up", days=len(done), first=str(done[0]), last=str(done[-1]))
        return done

    async def pack(self) -> list[date]:
        """Pack the indexes of the closed partitions not packed yet; their first days. Each is
        asked once per process: the first turn learns which are packed already."""
        existing = await partitions.existing(self._engine)
        done = []
        for span in spans_to_pack(self._now(), existing, self._packed):
            outcome = await partitions.pack(self._engine, span.first)
            if outcome in _PACK_SETTLED:
                self._packed.add(span.first)
            if outcome == "packed":
                done.append(span.first)
            elif outcome == "busy":  # readers held the partition: the next turn finishes it
                log.info("partitions.pack_busy", day=str(span.first))
        if done:
            log.info("partitions.packed", days=[str(day) for day in done])
        return done

    async def drop_old(self) -> list[date]:
        """Drop the partitions older than the retention, oldest first, up to the first that is
        not rolled up (the days before the oldest kept are final); their first days."""
        existing = await partitions.existing(self._engine)
        dropped = []
        for span in spans_to_drop(self._now(), existing, self._retention):
            if await partitions.drop(self._engine, span.first) != "dropped":
                break
            dropped.append(span.first)
        if dropped:
            self.dropped += len(dropped)
            log.info("partitions.dropped", days=[str(day) for day in dropped])
        return dropped
