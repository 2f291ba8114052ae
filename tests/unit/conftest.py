"""The unit tier: no Postgres, no sockets, no subprocesses; the whole tier runs in seconds.

Checked, not hoped for: every test runs with tests/unit/guard.py installed, and each fixture
of tests/fixtures.py (Postgres, the simulator) is replaced here by one that fails the test."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any, NoReturn

import pytest

from tests.fixtures import SERVICE_FIXTURES
from tests.unit.guard import Guard, install

_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, Any]:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


@pytest.fixture(autouse=True)
def tier_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Guard]:
    guard = Guard()
    install(guard, monkeypatch)
    yield guard
    # A test that passed although it tried: the code under test swallowed the TierViolation.
    if guard.violations and not request.node.stash.get(_FAILED, True):
        pytest.fail(
            f"this unit test tried to {', then '.join(guard.violations)} and swallowed the "
            "error: a test that needs that belongs in tests/integration or tests/system",
            pytrace=False,
        )


def _refused(name: str) -> Any:
    @pytest.fixture(name=name)
    def refused() -> NoReturn:
        pytest.fail(
            f"the unit tier has no `{name}`: a test that needs Postgres or the simulator "
            "belongs in tests/integration or tests/system",
            pytrace=False,
        )

    return refused


for _name in SERVICE_FIXTURES:
    globals()[f"refused_{_name}"] = _refused(_name)
