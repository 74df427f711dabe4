"""Browser sessions: the ``session_id`` cookie, stored server-side only as a hash."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from app import tokens
from app.models import BrowserSession, User

COOKIE_NAME = "session_id"


@dataclass(frozen=True, slots=True)
class CreatedSession:
    """A session's row as inserted (the columns its creators read back)."""

    id: int
    id_hash: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class NewSession:
    secret: str  # goes into the cookie, never into the database
    row: CreatedSession


def create(
    *,
    db: Session,
    user_id: int,
    now: datetime,
    duration: timedelta,
    flow_id: int | None = None,
    ip: str | None = None,
    user_agent: str | None = None,
) -> NewSession:
    # Always a fresh id: whatever the browser sent is never reused (session fixation).
    secret = tokens.new_secret()
    id_hash, expires_at = tokens.digest(secret), now + duration
    # Core, not the ORM: the new session is not read back in this unit of work.
    session_id = db.execute(
        _INSERT,
        {
            "id_hash": id_hash,
            "user_id": user_id,
            "flow_id": flow_id,
            "created_at": now,
            "expires_at": expires_at,
            "ip": ip,
            "user_agent": user_agent[:512] if user_agent else None,
        },
    ).scalar_one()
    return NewSession(
        secret=secret,
        row=CreatedSession(id=session_id, id_hash=id_hash, created_at=now, expires_at=expires_at),
    )


_TABLE = BrowserSession.metadata.tables[BrowserSession.__tablename__]
_INSERT = insert(_TABLE).returning(_TABLE.c.id)


TOUCH_EVERY = timedelta(minutes=1)


# Built once: building a statement and its cache key costs more than running
# it. The user comes in the same statement (``row.user`` is then loaded).
_LIVE = (
    select(BrowserSession, User)
    .join(User, BrowserSession.user_id == User.id)
    .where(
        BrowserSession.id_hash == bindparam("id_hash"),
        BrowserSession.revoked_at.is_(None),
        BrowserSession.expires_at > bindparam("now"),
    )
)
_REVOKE = (
    update(BrowserSession)
    .where(BrowserSession.id_hash == bindparam("digest"), BrowserSession.revoked_at.is_(None))
    .values(revoked_at=bindparam("now"))
    .execution_options(synchronize_session=False)
)


def current(
    *,
    db: Session,
    secret: str | None,
    now: datetime,
    idle_timeout: timedelta | None = None,
) -> BrowserSession | None:
    """The live session behind a session cookie, if its user is enabled.

    A session lives until its absolute expiry, and, with ``idle_timeout``,
    only while it is used at least that often; use is recorded at most once
    a minute so that reading a session rarely writes. Its ``created_at`` is
    when the user authenticated (OpenID Connect ``auth_time``).
    """
    if not secret:
        return None
    found = db.execute(_LIVE, {"id_hash": tokens.digest(secret), "now": now}).first()
    if found is None:
        return None
    row, user = found
    if row.user is not user or user.disabled:  # found in the identity map: no SQL
        return None
    last_seen = row.last_seen_at or row.created_at
    if idle_timeout is not None and now - last_seen >= idle_timeout:
        return None
    if now - last_seen >= TOUCH_EVERY:
        row.last_seen_at = now
    return row


def current_user(
    *,
    db: Session,
    secret: str | None,
    now: datetime,
    idle_timeout: timedelta | None = None,
) -> User | None:
    """The enabled user behind a live session cookie, if any (see :func:`current`)."""
    row = current(db=db, secret=secret, now=now, idle_timeout=idle_timeout)
    return None if row is None else row.user


def revoke(*, db: Session, secret: str, now: datetime) -> bool:
    result = db.execute(_REVOKE, {"digest": tokens.digest(secret), "now": now})
    return bool(getattr(result, "rowcount", 0))


def live_for_user(*, db: Session, user_id: int, now: datetime) -> list[BrowserSession]:
    return list(
        db.scalars(
            select(BrowserSession)
            .where(
                BrowserSession.user_id == user_id,
                BrowserSession.revoked_at.is_(None),
                BrowserSession.expires_at > now,
            )
            .order_by(BrowserSession.created_at.desc())
        )
    )


def revoke_all_for_user(*, db: Session, user_id: int, now: datetime) -> int:
    """End every session of a user (logout everywhere, password change, disable)."""
    result = db.execute(
        update(BrowserSession)
        .where(
            BrowserSession.user_id == user_id,
            BrowserSession.revoked_at.is_(None),
            BrowserSession.expires_at > now,
        )
        .values(revoked_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)
