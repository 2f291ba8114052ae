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


def test_the_daemon_and_a_command_that_draws_nothing_load_no_bar_or_live_screen() -> None:
    # structlog loads rich's console when rich is installed (for its tracebacks); what must
    # stay out is what draws, imported by progress.shown and status --watch on a terminal only.
    for module in ("balancewatch.daemon.service", "balancewatch.ops.watchfile"):
        loaded = loaded_by(module)
        assert "balancewatch.progress" in loaded
        assert sorted(m for m in loaded if m in ("rich.progress", "rich.live")) == [], module
