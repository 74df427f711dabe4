"""The schema. Migrations under ``migrations/`` are the only way it changes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, UTCDateTime
from app.tokens import new_public_id

HASH = String(64)  # hex SHA-256


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The OpenID Connect ``sub``: random, never reassigned, unlike an integer key.
    subject: Mapped[str] = mapped_column(String(32), unique=True, default=new_public_id)
    username: Mapped[str] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Client(Base):
    __tablename__ = "clients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    secret_hash: Mapped[str | None] = mapped_column(HASH)
    public: Mapped[bool] = mapped_column(Boolean)
    first_party: Mapped[bool] = mapped_column(Boolean, default=False)
    redirect_uris: Mapped[list[str]] = mapped_column(JSON)
    scope: Mapped[str] = mapped_column(String(1024))
    grant_types: Mapped[list[str]] = mapped_column(JSON)
    provenance: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class BrowserSession(Base):
    __tablename__ = "browser_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    id_hash: Mapped[str] = mapped_column(HASH, unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    flow_id: Mapped[int | None] = mapped_column(
        ForeignKey("pending_flows.id", ondelete="SET NULL"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))

    user: Mapped[User] = relationship(lazy="joined")


class PendingFlow(Base):
    __tablename__ = "pending_flows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    token_hash: Mapped[str] = mapped_column(HASH, unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    client_pk: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    redir_to: Mapped[str] = mapped_column(Text)
    binding_hash: Mapped[str | None] = mapped_column(HASH)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    consumed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the resume URL issued its authorization code: a second visit (the
    # back button) must not issue another one.
    resumed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    consumed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # A consent flow is for one signed-in user; only that user may answer it.
    subject_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    # The answer to a consent flow: "approved" or "denied".
    decision: Mapped[str | None] = mapped_column(String(16))
    requester_ip: Mapped[str | None] = mapped_column(String(64))
    requester_agent: Mapped[str | None] = mapped_column(String(512))

    client: Mapped[Client] = relationship(foreign_keys=[client_pk])


class Grant(Base):
    """What a user approved for a client: scopes, until ``expires_at``.

    Every code and token is issued under a grant; revoking the grant revokes them.
    """

    __tablename__ = "grants"
    __table_args__ = (Index("ix_grants_user_id_client_pk", "user_id", "client_pk"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    client_pk: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(String(1024))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The client asked for ``offline_access`` and the user left it out: no
    # refresh token under this grant until they approve it (OIDC Core §11).
    refresh_declined: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    client: Mapped[Client] = relationship()


class AuthorizationCode(Base):
    __tablename__ = "authorization_codes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code_hash: Mapped[str] = mapped_column(HASH, unique=True)
    client_pk: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    redirect_uri: Mapped[str | None] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(String(1024))
    code_challenge: Mapped[str | None] = mapped_column(String(128))
    code_challenge_method: Mapped[str | None] = mapped_column(String(16))
    nonce: Mapped[str | None] = mapped_column(String(255))
    auth_time: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    grant_id: Mapped[int | None] = mapped_column(
        ForeignKey("grants.id", ondelete="CASCADE"), index=True
    )
    # RFC 8707: the resource server the tokens are for (their audience).
    resource: Mapped[str | None] = mapped_column(Text)

    # authlib's AuthorizationCodeMixin (OAuth 2.0 and OpenID Connect) reads these.
    def get_redirect_uri(self) -> str | None:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return int(self.auth_time.timestamp())

    def get_acr(self) -> str | None:
        return None

    def get_amr(self) -> list[str] | None:
        return ["pwd"]


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    access_token_hash: Mapped[str] = mapped_column(HASH, unique=True)
    refresh_token_hash: Mapped[str | None] = mapped_column(HASH, unique=True)
    client_pk: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    code_id: Mapped[int | None] = mapped_column(
        ForeignKey("authorization_codes.id", ondelete="SET NULL"), index=True
    )
    scope: Mapped[str] = mapped_column(String(1024))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    grant_id: Mapped[int | None] = mapped_column(
        ForeignKey("grants.id", ondelete="CASCADE"), index=True
    )
    # Every token rotated from one code exchange shares its family: reuse of a
    # rotated refresh token revokes the whole family (OAuth 2.1 §4.3.1).
    family_id: Mapped[str] = mapped_column(String(32), index=True, default=new_public_id)
    refresh_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # RFC 6749 §6: a rotated refresh token keeps the scope of the one it
    # replaces, even when the access token of a refresh was narrowed.
    refresh_scope: Mapped[str | None] = mapped_column(String(1024))
    refreshed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # rotated: spent
    resource: Mapped[str | None] = mapped_column(Text)
    auth_time: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SigningKey(Base):
    """A key that signs ID tokens. The newest unretired key signs; retired keys
    stay published in the JWKS until every token they signed has expired."""

    __tablename__ = "signing_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kid: Mapped[str] = mapped_column(String(64), unique=True)
    alg: Mapped[str] = mapped_column(String(16))
    private_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LoginFailure(Base):
    """One failed login, counted against a username and against an IP address
    (``key``), so that every instance sees the same throttling state."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_key_occurred_at", "key", "occurred_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(80))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class AuditEvent(Base):
    """Who did what, when and from where. Never a password, token or code."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    event: Mapped[str] = mapped_column(String(64), index=True)
    actor: Mapped[str] = mapped_column(String(16))  # "http" or "cli"
    username: Mapped[str | None] = mapped_column(String(255), index=True)
    client_id: Mapped[str | None] = mapped_column(String(64))
    ip: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
