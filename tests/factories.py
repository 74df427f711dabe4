"""Test data, created through the domain functions Baton itself uses."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from app import clients, users
from app.db import Database, utcnow
from app.passwords import hash_password

PASSWORD = "correct horse battery staple"
REDIRECT_URI = "https://app.example/callback"


def create_user(
    database: Database, username: str = "alice", password: str = PASSWORD, *, disabled: bool = False
) -> None:
    with database.transaction() as db:
        user = users.create(
            db=db, username=username, password_hash=hash_password(password), now=utcnow()
        )
        user.disabled = disabled


def create_user_with_hash(database: Database, username: str, password_hash: str) -> None:
    with database.transaction() as db:
        users.create(db=db, username=username, password_hash=password_hash, now=utcnow())


@dataclass(frozen=True)
class ClientInfo:
    client_id: str
    secret: str | None
    redirect_uri: str


def create_client(
    database: Database,
    *,
    public: bool = True,
    redirect_uris: tuple[str, ...] = (REDIRECT_URI,),
    scope: str = "read write",
    first_party: bool = True,
    name: str = "Test app",
) -> ClientInfo:
    with database.transaction() as db:
        registered = clients.register(
            db=db,
            name=name,
            redirect_uris=list(redirect_uris),
            public=public,
            first_party=first_party,
            scope=scope,
            now=utcnow(),
        )
    return ClientInfo(registered.client.client_id, registered.secret, redirect_uris[0])


@dataclass(frozen=True)
class Pkce:
    verifier: str
    challenge: str


def pkce() -> Pkce:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return Pkce(verifier, challenge)


def authorize_params(client: ClientInfo, challenge: Pkce, **extra: str) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": client.redirect_uri,
        "scope": "read",
        "state": secrets.token_urlsafe(16),
        "code_challenge": challenge.challenge,
        "code_challenge_method": "S256",
    }
    params.update(extra)
    return params


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
