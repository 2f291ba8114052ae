"""Writers and spools for tests of the write path, made from known rows, and closed after each
test by the `writers_closed` fixture (tests/integration/conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from balancewatch.pipeline.records import BalanceLine, balance_line, stamp_from_micros
from balancewatch.pipeline.spool import Spool
from balancewatch.pipeline.writer import Writer, WriterConfig
from tests.helpers import SOL, TOKEN, WALLET, WALLET2, make_settings, scratch_dir

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PAIR = (WALLET, TOKEN)
PAIR2 = (WALLET2, SOL)


_spools: list[Spool] = []
_writers: list[Writer] = []


async def close_writers_and_spools() -> None:
    """A writer keeps its connection from flush to flush: closed before the database goes."""
    while _writers:
        await _writers.pop().close()
    while _spools:
        _spools.pop().close()


def keep_open_until_the_test_ends(spool: Spool) -> Spool:
    _spools.append(spool)
    return spool


def open_test_spool() -> Spool:
    spool = Spool(scratch_dir("spool"))
    spool.open()
    return keep_open_until_the_test_ends(spool)


def make_writer(
    engine: AsyncEngine,
    batch_size: int = 1000,
    flush_interval: float = 60.0,
    spool: Spool | None = None,
    clock: Callable[[], float] = time.monotonic,
    **extra: Any,
) -> Writer:
    """A writer configured as the daemon's, but for the batching under test."""
    settings = make_settings(engine.url, "ws://127.0.0.1:1")
    config = replace(
        WriterConfig.from_settings(settings),
        batch_size=batch_size,
        flush_interval=flush_interval,
        **extra,
    )
    writer = Writer(engine.url, spool or open_test_spool(), config, clock=clock)
    _writers.append(writer)
    return writer


def make_line(wallet: str, token: str, amount: str, received_at: datetime) -> BalanceLine:
    micros = (received_at - EPOCH) // timedelta(microseconds=1)
    return balance_line(wallet, token, amount, stamp_from_micros(micros))


def make_rows(count: int, start: int = 0) -> list[BalanceLine]:
    return [
        make_line(WALLET, TOKEN, str(Decimal(i)), T0 + timedelta(microseconds=i))
        for i in range(start, start + count)
    ]
