"""The README's layout table names every module of the package, and only modules that exist."""

from __future__ import annotations

import re

from tests.files import REPO

PACKAGE = REPO / "balancewatch"


def layout_section() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("## How the code is laid out", 1)[1].split("\n## ", 1)[0]


def test_the_readme_layout_table_names_every_module_and_no_other() -> None:
    table = "\n".join(line for line in layout_section().splitlines() if line.startswith("| "))
    named = set(re.findall(r"`(\w+\.py)`", table))
    modules = {
        path.name
        for path in PACKAGE.rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py") and "_migrations" not in path.parts
    }
    assert sorted(modules - named) == []
    assert sorted(named - modules) == []
