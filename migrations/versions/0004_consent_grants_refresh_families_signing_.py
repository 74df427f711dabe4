"""Consent grants, refresh-token families, resource indicators, signing keys,
and a stable OpenID Connect subject per user.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 09:24:34.625964
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "signing_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("alg", sa.String(length=16), nullable=False),
        sa.Column("private_jwk", sa.JSON(), nullable=False),
        sa.Column("public_jwk", sa.JSON(), nullable=False),
        sa.Column("created_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("retired_at", app.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signing_keys")),
        sa.UniqueConstraint("kid", name=op.f("uq_signing_keys_kid")),
    )
    op.create_table(
        "grants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("client_pk", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=1024), nullable=False),
        sa.Column("issued_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", app.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["client_pk"],
            ["clients.id"],
            name=op.f("fk_grants_client_pk_clients"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_grants_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_grants")),
        sa.UniqueConstraint("public_id", name=op.f("uq_grants_public_id")),
    )
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_grants_client_pk"), ["client_pk"], unique=False)
        batch_op.create_index(batch_op.f("ix_grants_expires_at"), ["expires_at"], unique=False)
        batch_op.create_index("ix_grants_user_id_client_pk", ["user_id", "client_pk"], unique=False)

    with op.batch_alter_table("authorization_codes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("grant_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("resource", sa.Text(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_authorization_codes_grant_id"), ["grant_id"], unique=False
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_authorization_codes_grant_id_grants"),
            "grants",
            ["grant_id"],
            ["id"],
            ondelete="CASCADE",
        )

    with op.batch_alter_table("pending_flows", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subject_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("decision", sa.String(length=16), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_pending_flows_subject_id"), ["subject_id"], unique=False
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_pending_flows_subject_id_users"),
            "users",
            ["subject_id"],
            ["id"],
            ondelete="CASCADE",
        )

    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("grant_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("family_id", sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column("refresh_expires_at", app.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("refreshed_at", app.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("resource", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("auth_time", app.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.create_index(batch_op.f("ix_tokens_family_id"), ["family_id"], unique=False)
    # Tokens issued before families existed each form their own family.
    op.execute(sa.text("UPDATE tokens SET family_id = CAST(id AS VARCHAR(32))"))
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.alter_column("family_id", existing_type=sa.String(length=32), nullable=False)
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tokens_grant_id"), ["grant_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_tokens_grant_id_grants"),
            "grants",
            ["grant_id"],
            ["id"],
            ondelete="CASCADE",
        )

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subject", sa.String(length=32), nullable=True))
    # Existing users get a random subject, as new users do.
    connection = op.get_bind()
    users = sa.table("users", sa.column("id", sa.Integer), sa.column("subject", sa.String))
    for (user_id,) in connection.execute(sa.select(users.c.id)).all():
        connection.execute(
            users.update().where(users.c.id == user_id).values(subject=secrets.token_hex(8))
        )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.alter_column("subject", existing_type=sa.String(length=32), nullable=False)
        batch_op.create_unique_constraint(batch_op.f("uq_users_subject"), ["subject"])


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_users_subject"), type_="unique")
        batch_op.drop_column("subject")

    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_tokens_grant_id_grants"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_tokens_grant_id"))
        batch_op.drop_index(batch_op.f("ix_tokens_family_id"))
        batch_op.drop_column("auth_time")
        batch_op.drop_column("resource")
        batch_op.drop_column("refreshed_at")
        batch_op.drop_column("refresh_expires_at")
        batch_op.drop_column("family_id")
        batch_op.drop_column("grant_id")

    with op.batch_alter_table("pending_flows", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_pending_flows_subject_id_users"), type_="foreignkey"
        )
        batch_op.drop_index(batch_op.f("ix_pending_flows_subject_id"))
        batch_op.drop_column("decision")
        batch_op.drop_column("subject_id")

    with op.batch_alter_table("authorization_codes", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_authorization_codes_grant_id_grants"), type_="foreignkey"
        )
        batch_op.drop_index(batch_op.f("ix_authorization_codes_grant_id"))
        batch_op.drop_column("resource")
        batch_op.drop_column("grant_id")

    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.drop_index("ix_grants_user_id_client_pk")
        batch_op.drop_index(batch_op.f("ix_grants_expires_at"))
        batch_op.drop_index(batch_op.f("ix_grants_client_pk"))

    op.drop_table("grants")
    op.drop_table("signing_keys")
