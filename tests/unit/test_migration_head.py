"""The head revision the daemon checks the database against, read from the scripts as text
(the daemon does not import Alembic), is the one Alembic finds."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from balancewatch.store import migrate


def test_the_head_read_from_the_scripts_is_alembics() -> None:
    alembic_head = ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()
    assert migrate.head_revision() == alembic_head


def _script(folder: Path, revision: str, parent: str | None) -> None:
    down = "None" if parent is None else f'"{parent}"'
    (folder / f"{revision}_x.py").write_text(
        f'"""x"""\n\nrevision: str = "{revision}"\ndown_revision: str | None = {down}\n'
    )


def test_the_head_is_the_revision_no_other_names_and_two_heads_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    versions = tmp_path / "versions"
    versions.mkdir()
    monkeypatch.setattr(migrate, "migrations_dir", lambda: tmp_path)
    assert migrate.head_revision() is None
    _script(versions, "0001", None)
    _script(versions, "0002", "0001")
    assert migrate.head_revision() == "0002"
    _script(versions, "0003", "0001")
    with pytest.raises(RuntimeError, match="several heads"):
        migrate.head_revision()
