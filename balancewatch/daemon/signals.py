"""SIGTERM and SIGINT only set the stop event; a second one forces the exit."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from balancewatch.logs import get_logger

log = get_logger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORCED_EXIT_CODE = 130


@contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()

    def handle(signum: int) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.error("signals.forced_exit", signal=name)
            os._exit(FORCED_EXIT_CODE)
        log.info("signals.stopping", signal=name)
        stop.set()

    for signum in _SIGNALS:
        loop.add_signal_handler(signum, handle, signum)
    try:
        yield
    finally:
        for signum in _SIGNALS:
            loop.remove_signal_handler(signum)
