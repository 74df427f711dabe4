"""Users: the people who sign in."""

from __future__ import annotations

import unicodedata
from datetime import datetime

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import storable_text
from app.models import User

MAX_USERNAME = 255

# Characters that change how a line reads instead of adding to it: controls (a
# newline forges a line of `baton users list`), format characters (a bidi
# override reverses text, a zero-width one hides), line and paragraph
# separators, and lone surrogates (bytes that were not UTF-8; no database stores them).
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def printable(text: str) -> bool:
    """True for text that prints as it reads; unlike ``str.isprintable``, any space is fine."""
    return not any(unicodedata.category(character) in _UNPRINTABLE for character in text)


class InvalidUsername(ValueError):
    pass


class UserExists(Exception):
    pass


class UnknownUser(Exception):
    pass


# Built once: building a statement and its cache key costs more than running it.
_BY_USERNAME = select(User).where(User.username == bindparam("username"))


def get_by_username(*, db: Session, username: str) -> User | None:
    if not storable_text(username):
        return None
    return db.scalar(_BY_USERNAME, {"username": username})


def get(*, db: Session, user_id: int) -> User | None:
    return db.get(User, user_id)


def check_username(username: str) -> str:
    """What ``POST /api/v1/login`` accepts (1 to 255 characters), printable and
    not blank: a login with another name finds no user."""
    if not username.strip() or len(username) > MAX_USERNAME:
        raise InvalidUsername(f"the user name must be 1 to {MAX_USERNAME} characters")
    if not printable(username):
        raise InvalidUsername("the user name must not contain control characters")
    return username


def create(*, db: Session, username: str, password_hash: str, now: datetime) -> User:
    user = User(
        username=check_username(username),
        password_hash=password_hash,
        disabled=False,
        created_at=now,
        password_changed_at=now,
    )
    try:
        # In a savepoint, so a duplicate leaves the caller's transaction usable.
        with db.begin_nested():
            db.add(user)
            db.flush()
    except IntegrityError:
        raise UserExists(username) from None
    return user


def list_all(*, db: Session) -> list[User]:
    return list(db.scalars(select(User).order_by(User.username)))


def any_exist(*, db: Session) -> bool:
    return db.scalar(select(User.id).limit(1)) is not None


def _require(db: Session, username: str) -> User:
    user = get_by_username(db=db, username=username)
    if user is None:
        raise UnknownUser(username)
    return user


def set_password(*, db: Session, username: str, password_hash: str, now: datetime) -> User:
    user = _require(db, username)
    user.password_hash = password_hash
    user.password_changed_at = now
    return user


def upgrade_hash(*, db: Session, user_id: int, old_hash: str, new_hash: str) -> None:
    """Replace an outdated hash (bcrypt, or argon2id of another cost), unless the
    password changed meanwhile."""
    db.execute(
        update(User)
        .where(User.id == user_id, User.password_hash == old_hash)
        .values(password_hash=new_hash)
    )


def set_disabled(*, db: Session, username: str, disabled: bool) -> User:
    user = _require(db, username)
    user.disabled = disabled
    return user


def remove(*, db: Session, username: str) -> None:
    """Delete a user with their sessions, codes and tokens (cascade)."""
    user = _require(db, username)
    db.execute(delete(User).where(User.id == user.id))


def require(*, db: Session, username: str) -> User:
    return _require(db, username)
