"""The system tier: balancewatch in real subprocesses, real signals, real outages. The Postgres
and simulator fixtures come from tests/fixtures.py."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from tests.processes import DaemonProcess, StartDaemon, started


@pytest.fixture
async def start_daemon() -> AsyncIterator[StartDaemon]:
    """Starts `python -m balancewatch ARGS` (`run` by default) with the environment given; any
    still running at teardown is killed."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(env: dict[str, str], *args: str) -> DaemonProcess:
            return await stack.enter_async_context(started(env, *args))

        yield start
