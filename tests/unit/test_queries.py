"""The README's "Querying" section has its twelve numbered queries."""

from __future__ import annotations

from tests.files import numbered_queries

QUERIES = numbered_queries()


def test_the_readme_has_twelve_numbered_queries() -> None:
    assert sorted(QUERIES) == list(range(1, 13))
