"""The store as the numbered in-code migrations left it (1 to 5), made or completed.

An empty database gets every table. A store made by the numbered migrations keeps its
tables and rows; what an older one lacks is added (`bill_on_demand.backend`, the event
tables, the hub's owner columns, 64-bit outbox keys on PostgreSQL).

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    tables = set(sa.inspect(bind).get_table_names())
    if "bill_on_demand" not in tables:
        _create_bill_on_demand()
    elif "backend" not in _columns("bill_on_demand"):
        op.add_column("bill_on_demand", sa.Column("backend", sa.String(60)))
    if "hub" not in tables:
        _create_hub()
    else:
        present = _columns("hub")
        if "owner" not in present:
            op.add_column("hub", sa.Column("owner", sa.String(200)))
        if "owner_accounts" not in present:
            op.add_column("hub", sa.Column("owner_accounts", sa.Text()))
    if "outbox" not in tables:
        _create_outbox()
    elif bind.dialect.name == "postgresql":
        # Early PostgreSQL stores made `outbox.seq` a 32-bit serial, which a busy outbox
        # outgrows (idempotent on a store whose key is 64 bits already).
        op.execute("ALTER TABLE outbox ALTER COLUMN seq TYPE BIGINT")
        sequence = bind.execute(sa.text("SELECT pg_get_serial_sequence('outbox', 'seq')"))
        op.execute(f"ALTER SEQUENCE {sequence.scalar_one()} AS BIGINT")
    if "seen_state" not in tables:
        op.create_table(
            "seen_state",
            sa.Column("resource", sa.String(40), primary_key=True),
            sa.Column("key", sa.String(64), primary_key=True),
            sa.Column("state", sa.String(40)),
        )
    if "watermark" not in tables:
        op.create_table(
            "watermark",
            sa.Column("name", sa.String(60), primary_key=True),
            sa.Column("value", sa.Text(), nullable=False),
        )


def downgrade() -> None:
    for table in ("watermark", "seen_state", "outbox", "hub", "bill_on_demand"):
        op.drop_table(table)


def _columns(table: str) -> set[str]:
    return {column["name"] for column in sa.inspect(op.get_bind()).get_columns(table)}


def _create_bill_on_demand() -> None:
    op.create_table(
        "bill_on_demand",
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("id", sa.String(36), nullable=False, unique=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("billing_account_id", sa.String(64), nullable=False),
        sa.Column("billing_account_name", sa.String(200)),
        sa.Column("name", sa.String(200)),
        sa.Column("description", sa.Text()),
        sa.Column("related_party", sa.Text()),
        sa.Column("customer_bill_id", sa.String(64)),
        sa.Column("created_at", sa.String(20), nullable=False),
        sa.Column("updated_at", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(36)),
        sa.Column("lease_until", sa.Float()),
        sa.Column("backend", sa.String(60)),
    )
    for column in ("state", "billing_account_id", "lease_until"):
        op.create_index(f"ix_bill_on_demand_{column}", "bill_on_demand", [column])


def _create_hub() -> None:
    op.create_table(
        "hub",
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("id", sa.String(36), nullable=False, unique=True),
        sa.Column("callback", sa.Text(), nullable=False),
        sa.Column("query", sa.Text()),
        sa.Column("created_at", sa.String(20), nullable=False),
        sa.Column("owner", sa.String(200)),
        sa.Column("owner_accounts", sa.Text()),
    )


def _create_outbox() -> None:
    op.create_table(
        "outbox",
        # SQLite's INTEGER key is 64 bits already, and only INTEGER makes it the row id.
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("hub_id", sa.String(36), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("event_type", sa.String(60), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("due_at", sa.Float(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_error", sa.Text()),
    )
    op.create_index("ix_outbox_hub_id", "outbox", ["hub_id"])
    op.create_index("ix_outbox_due", "outbox", ["state", "due_at"])
