"""Kept light: what every tier shares. The Postgres and simulator fixtures live in
tests/fixtures.py, registered here for the integration and system tiers (pytest_plugins is only
allowed in this top-level conftest); the unit tier refuses them (tests/unit/conftest.py).

A plain `pytest` runs every tier, the unit tier first: the quickest to fail is seen first.

It runs them in WORKERS processes (pytest-xdist, `-n auto --dist load` in pyproject.toml):
most of the integration and system tiers' time is spent waiting on real clocks (outages,
leases, keepalives, processes starting), which another worker fills. Each worker is a pytest
session of its own, so it has its own Postgres cluster, template database and scratch root
(SCRATCH_ROOT carries its pid); nothing is shared between them but loopback and the CPU.
`--dist load` hands tests out in the order below, a few at a time, so the workers start on the
unit tier together and the tiers still come in order. A run of the unit tier alone stays in
this process: starting workers costs about what they would save there."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import SCRATCH_ROOT

pytest_plugins = ["tests.fixtures"]

TIERS = ("unit", "integration", "system")

# Two, even on a bigger machine: the timings that tests assert (handovers within a third of a
# lease, a SIGTERM drained within its deadline) are written for a 2-core machine, and there
# four workers were no quicker than two (379 s against 402 s for the whole suite) while single
# tests stretched towards their timeouts (the quick bench from 31 s to 86 s).
WORKERS = 2


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """How many workers `-n auto` starts: none for a run of the unit tier alone, WORKERS for
    anything else; PYTEST_XDIST_AUTO_NUM_WORKERS, if set, is left to pytest-xdist."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    unit = Path(__file__).parent / "unit"
    given = [
        Path(config.invocation_params.dir, arg.split("::")[0]).resolve() for arg in config.args
    ]
    if given and all(path.is_relative_to(unit) for path in given):
        return 0
    return WORKERS


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
