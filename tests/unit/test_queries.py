"""The README's "Querying" section has its thirteen numbered queries."""

from __future__ import annotations

from tests.files import numbered_queries

QUERIES = numbered_queries()


def test_the_readme_has_thirteen_numbered_queries() -> None:
    assert sorted(QUERIES) == list(range(1, 14))
