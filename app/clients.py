"""OAuth clients: registration, lookup and removal."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import tokens
from app.models import Client

DEFAULT_SCOPE = "read write"


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
    parts = urlsplit(uri)
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


def register(
    *,
    db: Session,
    name: str,
    redirect_uris: list[str],
    public: bool,
    first_party: bool,
    scope: str,
    now: datetime,
    provenance: str = "cli",
    client_id: str | None = None,
) -> Registered:
    if not name.strip():
        raise InvalidClientMetadata("the client name must not be empty")
    if not redirect_uris:
        raise InvalidClientMetadata("at least one redirect URI is required")
    uris = [validate_redirect_uri(uri) for uri in dict.fromkeys(redirect_uris)]
    scopes = scope.split()
    if not scopes:
        raise InvalidClientMetadata("at least one scope is required")
    secret = None if public else tokens.new_secret()
    client = Client(
        client_id=client_id or secrets.token_hex(16),
        name=name.strip(),
        secret_hash=None if secret is None else tokens.digest(secret),
        public=public,
        first_party=first_party,
        redirect_uris=uris,
        scope=" ".join(dict.fromkeys(scopes)),
        grant_types=["authorization_code"],
        provenance=provenance,
        created_at=now,
    )
    db.add(client)
    try:
        with db.begin_nested():
            db.flush()
    except IntegrityError:
        raise ClientExists(client.client_id) from None
    return Registered(client=client, secret=secret)


def get(*, db: Session, client_id: str) -> Client | None:
    return db.scalar(select(Client).where(Client.client_id == client_id))


def list_all(*, db: Session) -> list[Client]:
    return list(db.scalars(select(Client).order_by(Client.created_at, Client.id)))


def remove(*, db: Session, client_id: str) -> bool:
    """Remove a client with its pending flows, codes and tokens (cascade)."""
    result = db.execute(delete(Client).where(Client.client_id == client_id))
    return bool(getattr(result, "rowcount", 0))
