"""Leases for work shared by several gateways: named leases, and who holds an outbox claim.

`lease` holds one row per exclusive job (a back end's change detector, a hub's sender):
whoever holds an unexpired row does the job. `outbox.lease_owner` names the gateway whose
claim an event is under, so that a gateway shutting down can hand its claims back at once.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lease",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("owner", sa.String(36), nullable=False),
        sa.Column("until", sa.Float(), nullable=False),
    )
    op.add_column("outbox", sa.Column("lease_owner", sa.String(36)))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("lease_owner")
    op.drop_table("lease")
