"""Outbox indexes for in-order claims per hub.

A claim takes a hub's oldest due events, none past its first pending event that is not
due (claimed, or waiting for its retry). `ix_outbox_hub_order` (hub, state, seq) reads
the hub's pending events in order and stops at the batch size, with no sort;
`ix_outbox_hub_due` (hub, state, due_at) finds its events that are not due without reading
the due ones. The first replaces `ix_outbox_hub_id` (its leading column serves the same
look-ups), so a write updates one index more, not two.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_outbox_hub_order", "outbox", ["hub_id", "state", "seq"])
    op.create_index("ix_outbox_hub_due", "outbox", ["hub_id", "state", "due_at"])
    op.drop_index("ix_outbox_hub_id", table_name="outbox")


def downgrade() -> None:
    op.create_index("ix_outbox_hub_id", "outbox", ["hub_id"])
    op.drop_index("ix_outbox_hub_due", table_name="outbox")
    op.drop_index("ix_outbox_hub_order", table_name="outbox")
