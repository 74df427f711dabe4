"""Grants: what a user approved for a client, remembered for a while.

A grant covers later requests for the same or fewer scopes, so the user is
asked once, not at every sign-in. Every authorization code and token is issued
under a grant; revoking the grant revokes them all, at once, in SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, bindparam, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from app import tokens
from app.models import AuthorizationCode, Client, Grant, Token

# What the consent page shows for well-known scopes. Others are shown by name.
SCOPE_DESCRIPTIONS = {
    "openid": "Confirm your identity (your account's identifier)",
    "profile": "See your username",
    "offline_access": "Stay connected while you are away (refresh tokens)",
    "read": "Read your data",
    "write": "Change your data",
}


def describe_scope(scope: str) -> str:
    return SCOPE_DESCRIPTIONS.get(scope, f"Use the '{scope}' permission")


def _scopes(text: str) -> list[str]:
    return list(dict.fromkeys(text.split()))


def _live(now: datetime) -> tuple[ColumnElement[bool], ...]:
    return (Grant.revoked_at.is_(None), Grant.expires_at > now)


# Built once: building a statement and its cache key costs more than running it.
_LIVE_GRANT = (
    select(Grant)
    .where(
        Grant.user_id == bindparam("user_id"),
        Grant.client_pk == bindparam("client_pk"),
        Grant.revoked_at.is_(None),
        Grant.expires_at > bindparam("now"),
    )
    .order_by(Grant.updated_at.desc(), Grant.id.desc())
    .limit(1)
)


def find(*, db: Session, user_id: int, client_pk: int, now: datetime) -> Grant | None:
    """The user's live grant for the client, if any (the newest wins)."""
    return db.scalar(_LIVE_GRANT, {"user_id": user_id, "client_pk": client_pk, "now": now})


def covers(grant: Grant | None, scope: str) -> bool:
    """True when ``grant`` includes every scope in ``scope``."""
    return grant is not None and set(_scopes(scope)) <= set(_scopes(grant.scope))


OFFLINE_ACCESS = "offline_access"


def approve(
    *,
    db: Session,
    user_id: int,
    client_pk: int,
    scope: str,
    requested: str,
    now: datetime,
    lifetime: timedelta,
) -> Grant:
    """Remember the user's approval of ``scope`` (of the ``requested``): added
    to the live grant when there is one (its lifetime starts again), else a
    new grant. Asked for ``offline_access``, the user's answer decides whether
    refresh tokens are issued under the grant, until they answer again."""
    live = find(db=db, user_id=user_id, client_pk=client_pk, now=now)
    asked = OFFLINE_ACCESS in _scopes(requested)
    return extend(
        db=db,
        live=live,
        user_id=user_id,
        client_pk=client_pk,
        scope=scope,
        now=now,
        lifetime=lifetime,
        refresh_declined=(OFFLINE_ACCESS not in _scopes(scope)) if asked else None,
    )


def extend(
    *,
    db: Session,
    live: Grant | None,
    user_id: int,
    client_pk: int,
    scope: str,
    now: datetime,
    lifetime: timedelta,
    refresh_declined: bool | None = None,
) -> Grant:
    """:func:`approve` when the caller already holds the live grant (or
    ``None``); ``refresh_declined`` ``None`` leaves the grant's as it is."""
    if live is None:
        grant = Grant(
            public_id=tokens.new_public_id(),
            user_id=user_id,
            client_pk=client_pk,
            scope=" ".join(_scopes(scope)),
            issued_at=now,
            updated_at=now,
            expires_at=now + lifetime,
            refresh_declined=bool(refresh_declined),
        )
        db.add(grant)
        db.flush()
        return grant
    declined = live.refresh_declined if refresh_declined is None else refresh_declined
    merged = _scopes(live.scope + " " + scope)
    if declined:
        # Left out now, approved before: no longer covered, so that a request
        # for it asks the user again instead of going without refresh tokens.
        merged = [name for name in merged if name != OFFLINE_ACCESS]
    values = {
        "scope": " ".join(merged),
        "updated_at": now,
        "expires_at": now + lifetime,
        "refresh_declined": declined,
    }
    db.execute(_EXTEND, {"grant_id": live.id, **{f"new_{k}": v for k, v in values.items()}})
    # The grant read by find() says what the row now says, with nothing left
    # to flush: the ORM's flush of three attributes cost more than the UPDATE.
    for key, value in values.items():
        set_committed_value(live, key, value)
    return live


_GRANTS = Grant.metadata.tables[Grant.__tablename__]
_EXTEND = (
    update(_GRANTS)
    .where(_GRANTS.c.id == bindparam("grant_id"))
    .values(
        scope=bindparam("new_scope"),
        updated_at=bindparam("new_updated_at"),
        expires_at=bindparam("new_expires_at"),
        refresh_declined=bindparam("new_refresh_declined"),
    )
)


@dataclass(frozen=True, slots=True)
class GrantView:
    grant_id: str
    issued_at: datetime
    expires_at: datetime
    client_id: str
    client_name: str
    scope: str


def list_for_user(*, db: Session, user_id: int, now: datetime) -> list[GrantView]:
    rows = db.execute(
        select(Grant, Client.client_id, Client.name)
        .join(Client, Grant.client_pk == Client.id)
        .where(Grant.user_id == user_id, *_live(now))
        .order_by(Grant.issued_at.desc(), Grant.id.desc())
    )
    return [
        GrantView(grant.public_id, grant.issued_at, grant.expires_at, cid, name, grant.scope)
        for grant, cid, name in rows
    ]


def revoke(
    *, db: Session, now: datetime, grant_id: str | None = None, user_id: int | None = None
) -> int:
    """Revoke live grants (one by id, and/or all of a user's) with every code
    and token issued under them. Returns the number of grants revoked."""
    conditions: list[ColumnElement[bool]] = [Grant.revoked_at.is_(None)]
    if grant_id is not None:
        conditions.append(Grant.public_id == grant_id)
    if user_id is not None:
        conditions.append(Grant.user_id == user_id)
    if grant_id is None and user_id is None:
        raise ValueError("name the grant or the user")
    ids = list(
        db.scalars(
            update(Grant)
            .where(*conditions)
            .values(revoked_at=now)
            .returning(Grant.id)
            .execution_options(synchronize_session=False)
        )
    )
    if ids:
        db.execute(
            update(Token)
            .where(Token.grant_id.in_(ids), Token.revoked_at.is_(None))
            .values(revoked_at=now)
            .execution_options(synchronize_session=False)
        )
        db.execute(
            update(AuthorizationCode)
            .where(AuthorizationCode.grant_id.in_(ids), AuthorizationCode.used_at.is_(None))
            .values(used_at=now)
            .execution_options(synchronize_session=False)
        )
    return len(ids)
