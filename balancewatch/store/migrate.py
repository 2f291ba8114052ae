"""Schema upgrades through Alembic's programmatic API: idempotent, safe on every container start."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

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
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


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
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )
