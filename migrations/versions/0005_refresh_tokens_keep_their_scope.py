"""Refresh tokens keep their scope when a refresh narrows the access token (RFC 6749 §6).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 10:03:29.999872
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("refresh_scope", sa.String(length=1024), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_column("refresh_scope")
