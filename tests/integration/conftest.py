"""The integration tier: real Postgres, the daemon in-process, real sockets on loopback. The
Postgres and simulator fixtures come from tests/fixtures.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests import writing


@pytest.fixture
async def writers_closed(engine: AsyncEngine) -> AsyncIterator[None]:
    """Closes what tests.writing opened, after the test and before `engine` goes."""
    yield
    await writing.close_writers_and_spools()
