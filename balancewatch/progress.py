"""Progress of long work: log lines, or a bar when a person watches it on a terminal.

`Progress` logs at most one line per `interval` seconds, and none for work that ends within
the first one, so the cost per step is a clock read and a comparison, and a small job stays
quiet. The daemon's own long work (joining a large watchlist, replaying a spool) only ever logs.

`shown` is for commands a person starts (`watch import`, `bench --history`, the demo, a long
migration): on a terminal it draws a rich bar instead of the lines, which a terminal shows
better and a log collector cannot read at all. rich is imported there, only when a bar is
drawn; structlog loads part of it in every process all the same (`structlog.dev` imports
`rich.console` and `rich.traceback` whenever rich is installed: 8.5 MB of the daemon's memory).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Protocol, TextIO

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


class Step(Protocol):
    def __call__(self, completed: float, /, **fields: object) -> None:
        """`completed` of the total moves the bar; `fields` are what a log line says."""


def on_a_terminal(stream: TextIO | None = None) -> bool:
    """Whether a bar would be drawn: on stderr, where it never mixes with a command's output."""
    return (sys.stderr if stream is None else stream).isatty()


@contextlib.contextmanager
def shown(
    lines: Progress, description: str, total: float | None, *, stream: TextIO | None = None
) -> Iterator[Step]:
    """Long work's progress: a bar of `total` on `stream` (stderr) when it is a terminal, else
    `lines` (started here). Either way the caller ends with `lines.finish(...)`, which logs
    only where lines were logged."""
    out = sys.stderr if stream is None else stream
    if not out.isatty():
        lines.start()

        def log_line(_: float, /, **fields: object) -> None:
            lines.update(**fields)

        yield log_line
        return
    from rich.console import Console  # noqa: PLC0415  (only a command that draws loads rich)
    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as Bar  # noqa: PLC0415

    # print() to a terminal stdout goes above the bar rather than through it; a piped stdout
    # is left alone, so a command's output never ends up on the terminal instead.
    with Bar(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(file=out),
        redirect_stdout=sys.stdout.isatty(),
        redirect_stderr=False,
    ) as bar:
        task = bar.add_task(description, total=total)

        def move(completed: float, /, **_: object) -> None:
            bar.update(task, completed=completed)

        yield move
