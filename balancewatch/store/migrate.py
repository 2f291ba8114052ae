"""Schema upgrades through Alembic's programmatic API: idempotent, safe on every container start."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic (and Mako, and Pygments under it) is imported by what migrates, not by the daemon:
# `run` only compares two revisions, and the import was 10 MB of its resident memory.

# Several replicas may start at once: the first to take this lock migrates, the others wait and
# then find nothing left to do. A session lock, not a transaction's: some migrations commit
# part way (0009 copies the history in chunks, each its own transaction).
_MIGRATION_LOCK_KEY = 0x62616C77  # "balw"


def migrations_dir() -> Path:
    """Installed wheels carry the scripts inside the package; a source checkout has them on top."""
    package = Path(__file__).parents[1]
    packaged = package / "_migrations"
    return packaged if packaged.is_dir() else package.parent / "migrations"


def alembic_config() -> Config:
    from alembic.config import Config  # noqa: PLC0415

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


_REVISION = re.compile(r"""^(down_revision|revision)\b[^=\n]*=\s*(?:["']([^"']+)["']|None)""", re.M)


def head_revision() -> str | None:
    """The newest migration's revision: the one no other migration names as its parent (the
    scripts read as text, as Alembic finds them; tests check both agree)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (migrations_dir() / "versions").glob("*.py"):
        found = dict(_REVISION.findall(script.read_text()))
        if found.get("revision"):
            revisions.add(found["revision"])
            parents.add(found.get("down_revision", ""))
    heads = revisions - parents
    if len(heads) > 1:
        raise RuntimeError(f"the migrations have several heads: {sorted(heads)}")
    return next(iter(heads), None)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Alembic gets the connection outside a transaction, so that it can begin and commit its
    own (one per migration, see env.py)."""
    async with engine.connect() as connection:
        await connection.execute(
            text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
        )
        await connection.commit()
        try:
            await connection.run_sync(_upgrade, revision)
        finally:
            # Closing the session releases its lock, also after a failure that left the
            # connection unusable for an unlock.
            await connection.invalidate()


def _upgrade(connection: Connection, revision: str) -> None:
    from alembic import command  # noqa: PLC0415

    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


_CURRENT = "SELECT version_num FROM alembic_version"


async def current_revision(engine: AsyncEngine) -> str | None:
    """The database's revision, None before the first migration (what Alembic's
    MigrationContext.get_current_revision answers, without importing Alembic)."""
    async with engine.connect() as connection:
        table = await connection.scalar(text("SELECT to_regclass('alembic_version')"))
        if table is None:
            return None
        rows = (await connection.execute(text(_CURRENT))).scalars().all()
    if len(rows) > 1:
        raise RuntimeError(f"the database is at several revisions: {sorted(rows)}")
    return str(rows[0]) if rows else None
