"""Pending flows record when their resume URL issued its code.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 06:54:27.651631
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("pending_flows", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("resumed_at", app.db.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("pending_flows", schema=None) as batch_op:
        batch_op.drop_column("resumed_at")
