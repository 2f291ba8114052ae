"""The layers hold at run time too: `balancewatch run` loads no tool and no operator command,
and the CLI loads none of the heavy libraries before a command is chosen."""

from __future__ import annotations

import json
import subprocess
import sys

import grimp

_LOADED = "import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"


def loaded_by(module: str) -> set[str]:
    """Every module a fresh interpreter holds after importing `module`."""
    result = subprocess.run(
        [sys.executable, "-c", _LOADED.format(module=module)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(json.loads(result.stdout))


def test_the_daemon_imports_no_devtools_and_no_operator_command() -> None:
    graph = grimp.build_graph("balancewatch")
    imported = graph.find_upstream_modules("balancewatch.daemon.service")
    assert "balancewatch.pipeline.writer" in imported  # the graph is the daemon's
    assert (
        sorted(m for m in imported if m.startswith(("balancewatch.devtools", "balancewatch.ops")))
        == []
    )
    loaded = loaded_by("balancewatch.daemon.service")
    assert "balancewatch.pipeline.writer" in loaded
    assert (
        sorted(m for m in loaded if m.startswith(("balancewatch.devtools", "balancewatch.ops")))
        == []
    )


def test_importing_the_cli_loads_no_database_web_or_settings_library() -> None:
    loaded = loaded_by("balancewatch.cli")
    heavy = ("sqlalchemy", "asyncpg", "aiohttp", "pydantic", "alembic", "prometheus_client")
    assert sorted(m for m in loaded if m.split(".")[0] in heavy) == []
    assert sorted(m for m in loaded if m.startswith("balancewatch.")) == [
        "balancewatch.cli",
        "balancewatch.errors",
    ]
