"""Bad input to a real `balancewatch run`: a malformed config file stops the daemon with one
line."""

from __future__ import annotations

from pathlib import Path

from tests.processes import balancewatch


async def test_a_config_file_with_a_toml_syntax_error_stops_the_daemon_with_one_line(
    tmp_path: Path,
) -> None:
    config = tmp_path / "balancewatch.toml"
    config.write_text('database_url = "postgresql://u:hunter2pw@h/db"\nbatch_size = = 5\n')
    env = {"PATH": "/usr/bin:/bin", "BALANCEWATCH_CONFIG": str(config), "BALANCEWATCH_API_KEY": "k"}
    finished = await balancewatch("run", env=env)
    assert finished.code == 2
    assert finished.stdout == ""
    lines = finished.stderr.splitlines()
    assert len(lines) == 1
    assert "BALANCEWATCH_CONFIG" in lines[0]
    assert "line 2" in lines[0]
    assert "hunter2pw" not in lines[0]
