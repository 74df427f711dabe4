"""Bearer access tokens (RFC 6750): opaque, looked up by their hash."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app import tokens
from app.models import Token, User


@dataclass(frozen=True, slots=True)
class BearerGrant:
    user: User
    scope: str
    client_pk: int


def token_from_header(value: str | None) -> str | None:
    """RFC 6750 §2.1: ``Authorization: Bearer <token>`` (scheme case-insensitive)."""
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 512:
        return None
    return token


def authenticate(*, db: Session, token: str, now: datetime) -> BearerGrant | None:
    row = db.execute(
        select(Token, User)
        .join(User, Token.user_id == User.id)
        .where(
            Token.access_token_hash == tokens.digest(token),
            Token.revoked_at.is_(None),
            Token.expires_at > now,
            User.disabled.is_(False),
        )
    ).one_or_none()
    if row is None:
        return None
    token_row, user = row
    return BearerGrant(user=user, scope=token_row.scope, client_pk=token_row.client_pk)


def revoke_all_for_user(*, db: Session, user_id: int, now: datetime) -> int:
    """End every live token of a user, access or refresh (after a password
    change). A refresh token outlives its access token by weeks: an app's
    newest row is usually one whose access token has expired."""
    result = db.execute(
        update(Token)
        .where(
            Token.user_id == user_id,
            Token.revoked_at.is_(None),
            or_(Token.expires_at > now, Token.refresh_expires_at > now),
        )
        .values(revoked_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)
