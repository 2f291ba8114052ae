"""Progress of long work (joining a large watchlist, replaying a spool) as log lines.

At most one line per `interval` seconds, and none for work that ends within the first one, so
the cost per step is a clock read and a comparison, and a small job stays quiet.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from balancewatch.logs import get_logger

log = get_logger(__name__)


class Progress:
    def __init__(
        self, event: str, *, interval: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._event = event
        self._interval = interval
        self._clock = clock
        self._started: float | None = None
        self._last = 0.0
        self._logged = False

    @property
    def active(self) -> bool:
        return self._started is not None

    def start(self) -> None:
        self._started = self._last = self._clock()
        self._logged = False

    def update(self, **fields: object) -> None:
        """Log `fields` if `interval` has passed since the start or the last line."""
        if self._started is None:
            return
        now = self._clock()
        if now - self._last >= self._interval:
            self._last = now
            self._logged = True
            log.info(self._event, seconds=round(now - self._started, 1), **fields)

    def finish(self, event: str, **fields: object) -> None:
        """End the work; `event` is logged only if progress was (a long job's last line)."""
        if self._started is not None and self._logged:
            log.info(event, seconds=round(self._clock() - self._started, 1), **fields)
        self._started = None
