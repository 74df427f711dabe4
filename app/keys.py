"""ID-token signing keys, kept in the database so every instance signs with
the same key and publishes the same JWKS.

The newest unretired key signs. ``rotate`` retires it and creates the next;
a retired key stays published until every ID token it signed has expired.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from joserfc.jwk import ECKey, RSAKey
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.models import SigningKey

RSA_BITS = 2048


def _generate(alg: str) -> RSAKey | ECKey:
    if alg == "RS256":
        return RSAKey.generate_key(RSA_BITS, private=True)
    if alg == "ES256":
        return ECKey.generate_key("P-256", private=True)
    raise ValueError(f"unsupported signing algorithm {alg!r}")


def create(*, db: Session, alg: str, now: datetime) -> SigningKey:
    key = _generate(alg)
    kid = key.thumbprint()
    common = {"kid": kid, "alg": alg, "use": "sig"}
    row = SigningKey(
        kid=kid,
        alg=alg,
        private_jwk=key.as_dict(private=True) | common,
        public_jwk=key.as_dict(private=False) | common,
        created_at=now,
    )
    db.add(row)
    db.flush()
    return row


# Built once: building a statement and its cache key costs more than running it.
_CURRENT = (
    select(SigningKey)
    .where(SigningKey.retired_at.is_(None))
    .order_by(SigningKey.created_at.desc(), SigningKey.id.desc())
    .limit(1)
)


def current(*, db: Session) -> SigningKey | None:
    return db.scalar(_CURRENT)


def ensure(*, db: Session, alg: str, now: datetime) -> SigningKey:
    """The signing key, created on first use (the first start of a server).

    A key of another algorithm (``BATON_SIGNING_ALG`` changed) is rotated
    out, so that tokens are signed as discovery says while the old key stays
    published until the ID tokens it signed have expired.
    """
    key = current(db=db)
    if key is None:
        return create(db=db, alg=alg, now=now)
    if key.alg != alg:
        return rotate(db=db, alg=alg, now=now)[0]
    return key


def rotate(*, db: Session, alg: str, now: datetime) -> tuple[SigningKey, list[str]]:
    """A new signing key; the previous ones are retired (still published)."""
    retired = list(
        db.scalars(
            update(SigningKey)
            .where(SigningKey.retired_at.is_(None))
            .values(retired_at=now)
            .returning(SigningKey.kid)
            .execution_options(synchronize_session=False)
        )
    )
    return create(db=db, alg=alg, now=now), retired


def published(*, db: Session, now: datetime, keep: timedelta) -> list[SigningKey]:
    """Keys in the JWKS: the signing key, and retired keys whose ID tokens
    (valid for at most ``keep``) may still be in use."""
    return list(
        db.scalars(
            select(SigningKey)
            .where(or_(SigningKey.retired_at.is_(None), SigningKey.retired_at > now - keep))
            .order_by(SigningKey.created_at.desc(), SigningKey.id.desc())
        )
    )


SIGNING = "signing"  # the current key: new ID tokens are signed with it
PUBLISHED = "published"  # retired, in the JWKS while ID tokens it signed may be valid
EXPIRED = "expired"  # retired long enough ago: no longer published


def status(row: SigningKey, *, signing: SigningKey | None, now: datetime, keep: timedelta) -> str:
    """Where ``row`` stands, by the rule of :func:`published`."""
    if signing is not None and row.id == signing.id:
        return SIGNING
    if row.retired_at is None or row.retired_at > now - keep:
        return PUBLISHED
    return EXPIRED


def all_keys(*, db: Session) -> list[SigningKey]:
    return list(db.scalars(select(SigningKey).order_by(SigningKey.created_at, SigningKey.id)))


@dataclass
class KeyCache:
    """Parsed private keys by kid: parsing an RSA key costs more than a query."""

    keys: dict[str, RSAKey | ECKey]

    def __init__(self) -> None:
        self.keys = {}

    def private(self, row: SigningKey) -> RSAKey | ECKey:
        key = self.keys.get(row.kid)
        if key is None:
            jwk: dict[str, Any] = dict(row.private_jwk)
            key = RSAKey.import_key(jwk) if jwk.get("kty") == "RSA" else ECKey.import_key(jwk)
            self.keys[row.kid] = key
        return key
