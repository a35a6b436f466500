"""Alembic's entry point: migrate on the connection the gateway passes (see __init__.py)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("run the store's migrations with `tmf678-gateway migrate`")
# The caller holds the migration lock in its transaction: the upgrade runs inside it.
context.configure(connection=connection, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
