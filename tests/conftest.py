"""Kept light: what every tier shares. The Postgres and simulator fixtures live in
tests/fixtures.py, registered here for the integration and system tiers (pytest_plugins is only
allowed in this top-level conftest); the unit tier refuses them (tests/unit/conftest.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.helpers import SCRATCH_ROOT

pytest_plugins = ["tests.fixtures"]


@pytest.fixture(scope="session", autouse=True)
def scratch_root() -> Iterator[None]:
    yield
    shutil.rmtree(SCRATCH_ROOT, ignore_errors=True)
