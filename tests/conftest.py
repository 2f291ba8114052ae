"""Kept light: what every tier shares. The Postgres and simulator fixtures live in
tests/fixtures.py, registered here for the integration and system tiers (pytest_plugins is only
allowed in this top-level conftest); the unit tier refuses them (tests/unit/conftest.py).

A plain `pytest` runs every tier, the unit tier first: the quickest to fail is seen first."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import SCRATCH_ROOT

pytest_plugins = ["tests.fixtures"]

TIERS = ("unit", "integration", "system")


@pytest.fixture(scope="session", autouse=True)
def scratch_root() -> Iterator[None]:
    yield
    shutil.rmtree(SCRATCH_ROOT, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tiers in TIERS order (not the directories' alphabetical one); within a tier, the
    order of collection."""

    def tier(item: pytest.Item) -> int:
        top = item.path.relative_to(Path(__file__).parent).parts[0]
        return TIERS.index(top) if top in TIERS else len(TIERS)

    items.sort(key=tier)
