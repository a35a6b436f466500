"""The store's schema, migrated by Alembic (scripts in versions/, shipped with the package).

Every gateway migrates its store at start-up and `tmf678-gateway migrate` does it alone.
Whoever runs them holds a lock for the whole upgrade, which is one transaction: on
PostgreSQL a transaction-level advisory lock, on SQLite `BEGIN IMMEDIATE` (the database's
write lock). Gateways starting together on an empty database therefore migrate one after
the other: the first creates the schema, the others find it at the head revision.

The first revision adopts stores made by the numbered in-code migrations that came before
Alembic (their `store_schema_version` table stays, unused): it creates what such a store
lacks and leaves what it has.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

#: Held (PostgreSQL) while migrating, so gateways starting together migrate one by one.
MIGRATION_LOCK = 678_000_001


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the store: the scripts here, on `connection`."""
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision: the schema this code expects."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


def current(connection: Connection) -> str | None:
    """The revision the store is at (None: never migrated by Alembic)."""
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(engine: AsyncEngine) -> str:
    """Bring the store to the head revision under the migration lock; that revision."""
    async with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            # The driver would begin only at the first write: take the write lock now, so
            # gateways starting together migrate one after the other.
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        await conn.run_sync(_upgrade)
        revision = await conn.run_sync(current)
    assert revision is not None
    return revision


def _upgrade(connection: Connection) -> None:
    command.upgrade(alembic_config(connection), "head")
