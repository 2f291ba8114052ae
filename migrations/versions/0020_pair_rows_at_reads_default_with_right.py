"""`pair_rows_at` reads `balance_rows_default` by its name only for a role that may: the rows
older than the pair's first rolled-up day are in the default partition alone, and 0017 read it
directly, which takes `SELECT` on that partition (a grant on `balance_rows` covers its
partitions only through `balance_rows`). A role with `SELECT` on `balance_rows` alone (the
README's read-only roles) now reads those rows through `balance_rows`, probing the older
partitions too: the same answer, a few milliseconds slower.

It showed once 0018 marked fewer days (none when no row came in below the seal): 0017 reads
the default partition by name only when no day is marked.

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from balancewatch.store.migration_sql import earlier_migration

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


_BEFORE = earlier_migration(__file__, "0017_pair_rows_at.py")._PAIR_ROWS_AT.replace(
    "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"
)
_DEFAULT_BY_NAME = "        below := 'balance_rows_default';\n"
_AFTER = _BEFORE.replace(
    _DEFAULT_BY_NAME,
    "        IF has_table_privilege('balance_rows_default', 'SELECT') THEN\n"
    f"    {_DEFAULT_BY_NAME}"
    "        END IF;\n",
)


def upgrade() -> None:
    if _AFTER == _BEFORE:  # 0017's text changed: this one would do nothing
        raise RuntimeError("0020: pair_rows_at's text is not 0017's")
    op.execute(_AFTER)


def downgrade() -> None:
    op.execute(_BEFORE)
