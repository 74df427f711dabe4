"""OAuth clients: registration, lookup and removal."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from urllib.parse import urlsplit

from sqlalchemy import bindparam, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import tokens, users
from app.db import storable_text
from app.models import Client

DEFAULT_SCOPE = "read write"
# Every client may refresh unless registered otherwise (tokens rotate, OAuth 2.1 §4.3.1).
GRANT_TYPES = ("authorization_code", "refresh_token")


# Where a client came from (``clients.provenance``).
CLI = "cli"  # an operator's: ``baton clients add``
DCR = "dcr"  # registered itself: ``POST /oauth2/register``


class InvalidClientMetadata(ValueError):
    pass


class ClientExists(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Registered:
    client: Client
    secret: str | None  # shown once, stored only as a hash


def validate_redirect_uri(uri: str) -> str:
    """RFC 6749 §3.1.2: absolute, no fragment. OAuth 2.1 adds: https, or http on
    loopback (RFC 8252 §7.3), or a private-use scheme of a native app (§7.1)."""
    if not users.printable(uri):
        raise InvalidClientMetadata(f"redirect URI {uri!r} contains control characters")
    try:
        parts = urlsplit(uri)
    except ValueError:  # "https://[::1/cb", or a host that NFKC turns into "app#.example"
        raise InvalidClientMetadata(f"redirect URI {uri!r} is not a valid URI") from None
    if not parts.scheme:
        raise InvalidClientMetadata(f"redirect URI {uri!r} is not absolute")
    if parts.fragment or "#" in uri:
        raise InvalidClientMetadata(f"redirect URI {uri!r} must not contain a fragment")
    if parts.scheme == "http":
        if parts.hostname not in {"localhost", "127.0.0.1", "::1"}:
            raise InvalidClientMetadata(
                f"redirect URI {uri!r} must use https (http only on loopback)"
            )
    elif parts.scheme == "https":
        if not parts.hostname:
            raise InvalidClientMetadata(f"redirect URI {uri!r} has no host")
    elif parts.scheme in {"javascript", "data", "file", "vbscript"}:
        raise InvalidClientMetadata(f"redirect URI {uri!r} uses a forbidden scheme")
    return uri


def validate_native_or_https_redirect_uri(uri: str) -> str:
    """What a self-registered client may use (RFC 8252 §7, OAuth 2.1 §2.3):
    https, http on loopback, or a private-use scheme in reverse-domain form
    (``com.example.app:/callback``), never a bare custom scheme."""
    uri = validate_redirect_uri(uri)
    scheme = urlsplit(uri).scheme.lower()
    if scheme not in {"http", "https"} and "." not in scheme:
        raise InvalidClientMetadata(
            f"redirect URI {uri!r} must use https, loopback http, or a reverse-domain scheme"
        )
    return uri


MAX_NAME = 255
MAX_SCOPE = 1024
MAX_REDIRECT_URIS = 20
MAX_REDIRECT_URI = 2000


def _clean_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise InvalidClientMetadata("the client name must not be empty")
    if len(name) > MAX_NAME:
        raise InvalidClientMetadata(f"the client name must be at most {MAX_NAME} characters")
    if not users.printable(name):
        raise InvalidClientMetadata("the client name must not contain control characters")
    return name


def _clean_redirect_uris(redirect_uris: list[str]) -> list[str]:
    if not redirect_uris:
        raise InvalidClientMetadata("at least one redirect URI is required")
    if len(redirect_uris) > MAX_REDIRECT_URIS:
        raise InvalidClientMetadata(f"at most {MAX_REDIRECT_URIS} redirect URIs are allowed")
    for uri in redirect_uris:
        if len(uri) > MAX_REDIRECT_URI:
            raise InvalidClientMetadata(
                f"redirect URIs must be at most {MAX_REDIRECT_URI} characters"
            )
    return [validate_redirect_uri(uri) for uri in dict.fromkeys(redirect_uris)]


def _clean_scope(scope: str) -> str:
    scopes = " ".join(dict.fromkeys(scope.split()))
    if not scopes:
        raise InvalidClientMetadata("at least one scope is required")
    if len(scopes) > MAX_SCOPE:
        raise InvalidClientMetadata(f"the scope must be at most {MAX_SCOPE} characters")
    if not users.printable(scopes):
        raise InvalidClientMetadata("the scope must not contain control characters")
    return scopes


def register(
    *,
    db: Session,
    name: str,
    redirect_uris: list[str],
    public: bool,
    first_party: bool,
    scope: str,
    now: datetime,
    provenance: str = CLI,
    client_id: str | None = None,
    grant_types: tuple[str, ...] = GRANT_TYPES,
) -> Registered:
    name = _clean_name(name)
    uris = _clean_redirect_uris(redirect_uris)
    scope = _clean_scope(scope)
    secret = None if public else tokens.new_secret()
    client = Client(
        client_id=client_id or secrets.token_hex(16),
        name=name,
        secret_hash=None if secret is None else tokens.digest(secret),
        public=public,
        first_party=first_party,
        redirect_uris=uris,
        scope=scope,
        grant_types=[g for g in GRANT_TYPES if g in grant_types],
        provenance=provenance,
        created_at=now,
    )
    try:
        # In a savepoint, so a duplicate leaves the caller's transaction usable.
        with db.begin_nested():
            db.add(client)
            db.flush()
    except IntegrityError:
        raise ClientExists(client.client_id) from None
    return Registered(client=client, secret=secret)


# Built once: building the statement and its cache key cost more than running it.
_BY_CLIENT_ID = select(Client).where(Client.client_id == bindparam("client_id"))


class ClientView(Protocol):
    """What the OAuth endpoints read of a client: a row of ``clients`` or a
    :class:`ClientRecord`."""

    @property
    def id(self) -> int: ...
    @property
    def client_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def secret_hash(self) -> str | None: ...
    @property
    def public(self) -> bool: ...
    @property
    def first_party(self) -> bool: ...
    @property
    def redirect_uris(self) -> list[str]: ...
    @property
    def scope(self) -> str: ...
    @property
    def grant_types(self) -> list[str]: ...
    @property
    def provenance(self) -> str: ...


@dataclass(frozen=True, slots=True)
class ClientRecord:
    """A client as the OAuth endpoints read it, without the ORM's bookkeeping
    (every token, revocation and introspection request looks one up)."""

    id: int
    client_id: str
    name: str
    secret_hash: str | None
    public: bool
    first_party: bool
    redirect_uris: list[str]
    scope: str
    grant_types: list[str]
    provenance: str  # CLI or DCR


_RECORD_BY_CLIENT_ID = select(
    *(Client.__table__.c[field] for field in ClientRecord.__slots__)
).where(Client.__table__.c.client_id == bindparam("client_id"))


def record(*, db: Session, client_id: str) -> ClientRecord | None:
    if not storable_text(client_id):
        return None
    row = db.execute(_RECORD_BY_CLIENT_ID, {"client_id": client_id}).first()
    return None if row is None else ClientRecord(*row)


def get(*, db: Session, client_id: str) -> Client | None:
    if not storable_text(client_id):
        return None
    return db.scalar(_BY_CLIENT_ID, {"client_id": client_id})


def list_all(*, db: Session) -> list[Client]:
    return list(db.scalars(select(Client).order_by(Client.created_at, Client.id)))


def remove(*, db: Session, client_id: str) -> bool:
    """Remove a client with its pending flows, codes and tokens (cascade)."""
    result = db.execute(delete(Client).where(Client.client_id == client_id))
    return bool(getattr(result, "rowcount", 0))


class UnknownClient(Exception):
    pass


def require(*, db: Session, client_id: str) -> Client:
    client = get(db=db, client_id=client_id)
    if client is None:
        raise UnknownClient(client_id)
    return client


def update_metadata(
    *,
    db: Session,
    client_id: str,
    name: str | None = None,
    redirect_uris: list[str] | None = None,
    scope: str | None = None,
    first_party: bool | None = None,
) -> Client:
    client = require(db=db, client_id=client_id)
    if name is not None:
        client.name = _clean_name(name)
    if redirect_uris is not None:
        client.redirect_uris = _clean_redirect_uris(redirect_uris)
    if scope is not None:
        client.scope = _clean_scope(scope)
    if first_party is not None:
        client.first_party = first_party
    return client


def rotate_secret(*, db: Session, client_id: str) -> str:
    """A new secret for a confidential client; the old one stops working at once."""
    client = require(db=db, client_id=client_id)
    if client.public:
        raise InvalidClientMetadata(f"client {client_id!r} is public and has no secret")
    secret = tokens.new_secret()
    client.secret_hash = tokens.digest(secret)
    return secret
