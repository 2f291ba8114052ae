"""The test suite's own rules: every test module lives in a tier, no test module imports another,
and the unit tier's guard does refuse sockets, subprocesses and the Postgres fixtures."""

from __future__ import annotations

import ast
import asyncio
import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.files import REPO
from tests.unit.guard import Guard, TierViolation

TESTS = REPO / "tests"
TIERS = ("unit", "integration", "system")


def modules_of_tests() -> list[Path]:
    return sorted(TESTS.rglob("test_*.py"))


def imported_modules(tree: ast.AST) -> list[str]:
    """Every module an import statement names, with each name a `from` import takes from it
    (`from tests import test_cli` names tests.test_cli)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            found += [module, *(f"{module}.{alias.name}" for alias in node.names)]
    return found


def test_every_test_module_lives_in_a_tier() -> None:
    modules = modules_of_tests()
    assert {path.relative_to(TESTS).parts[0] for path in modules} == set(TIERS)
    for tier in TIERS:
        assert (TESTS / tier / "__init__.py").is_file()


def test_no_test_module_imports_another_test_module() -> None:
    modules = modules_of_tests()
    assert len(modules) > 30
    offenders = [
        f"{path.relative_to(REPO)}: {name}"
        for path in modules
        for name in imported_modules(ast.parse(path.read_text(), filename=str(path)))
        if any(part.startswith("test_") for part in name.split("."))
    ]
    assert offenders == [], "share it through a helper module (tests/helpers.py and the like)"


def test_the_import_check_sees_every_form_of_import() -> None:
    tree = ast.parse(
        "import tests.system.test_cli\n"
        "from tests.system.test_cli import balancewatch\n"
        "from tests.system import test_cli\n"
        "from .test_cli import balancewatch\n"
        "def f():\n    from tests.helpers import WALLET\n"
    )
    names = imported_modules(tree)
    assert names.count("tests.system.test_cli") == 3
    assert ".test_cli" in names
    assert "tests.helpers" in names


# -- the guard ---------------------------------------------------------------------------------


def test_a_unit_test_cannot_open_a_socket(tier_guard: Guard) -> None:
    with pytest.raises(TierViolation, match="open a socket"):
        socket.socket()
    with pytest.raises(TierViolation, match="open a connection"):
        socket.create_connection(("127.0.0.1", 9))
    with pytest.raises(TierViolation, match="resolve a host name"):
        socket.getaddrinfo("localhost", 80)
    assert len(tier_guard.violations) == 3
    tier_guard.violations.clear()


def test_a_unit_test_cannot_start_a_subprocess(tier_guard: Guard) -> None:
    with pytest.raises(TierViolation, match="start a subprocess"):
        subprocess.run(["true"], check=False)
    with pytest.raises(TierViolation, match="start a process"):
        os.system("true")
    assert len(tier_guard.violations) == 2
    tier_guard.violations.clear()


async def test_nor_through_asyncio(tier_guard: Guard) -> None:
    with pytest.raises(TierViolation, match="open a connection"):
        await asyncio.open_connection("127.0.0.1", 9)
    with pytest.raises(TierViolation, match="listen on a socket"):
        await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    with pytest.raises(TierViolation, match="start a subprocess"):
        await asyncio.create_subprocess_exec("true")
    assert len(tier_guard.violations) == 3
    tier_guard.violations.clear()


async def test_an_event_loop_is_still_allowed_its_own_socket_pair() -> None:
    a, b = socket.socketpair()
    a.close()
    b.close()
    await asyncio.sleep(0)


@pytest.mark.parametrize("name", ["server_url", "database_url", "engine", "db", "simulator"])
def test_a_unit_test_gets_no_postgres_and_no_simulator(
    request: pytest.FixtureRequest, name: str
) -> None:
    with pytest.raises(pytest.fail.Exception, match=f"the unit tier has no `{name}`"):
        request.getfixturevalue(name)
