"""Kept light: what every tier shares. The Postgres and simulator fixtures live in
tests/fixtures.py, registered here for the integration and system tiers (pytest_plugins is only
allowed in this top-level conftest); the unit tier refuses them (tests/unit/conftest.py)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.helpers import SCRATCH_ROOT
from tests.processes import DaemonProcess, StartDaemon, started

pytest_plugins = ["tests.fixtures"]


@pytest.fixture(scope="session", autouse=True)
def scratch_root() -> Iterator[None]:
    yield
    shutil.rmtree(SCRATCH_ROOT, ignore_errors=True)


@pytest.fixture
async def start_daemon() -> AsyncIterator[StartDaemon]:
    """Starts `python -m balancewatch ARGS` (`run` by default) with the environment given; any
    still running at teardown is killed."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(env: dict[str, str], *args: str) -> DaemonProcess:
            return await stack.enter_async_context(started(env, *args))

        yield start
