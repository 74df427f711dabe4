"""The users and clients domains: duplicates leave the surrounding transaction
usable; names and redirect URIs are refused whatever the entry point."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import clients, users
from app.db import Database, utcnow
from app.models import User


def test_a_duplicate_user_does_not_spoil_the_transaction(database: Database) -> None:
    with database.transaction() as db:
        users.create(db=db, username="bob", password_hash="$argon2id$x", now=utcnow())
    with database.transaction() as db:
        with pytest.raises(users.UserExists):
            users.create(db=db, username="bob", password_hash="$argon2id$y", now=utcnow())
        users.create(db=db, username="brian", password_hash="$argon2id$z", now=utcnow())
    with database.transaction() as db:
        rows = {u.username: u.password_hash for u in db.scalars(select(User))}
    assert rows == {"bob": "$argon2id$x", "brian": "$argon2id$z"}


def test_a_duplicate_client_id_does_not_spoil_the_transaction(database: Database) -> None:
    def register(db: Session, client_id: str) -> None:
        clients.register(
            db=db,
            name="App",
            redirect_uris=["https://app.example/cb"],
            public=True,
            first_party=False,
            scope="read",
            now=utcnow(),
            client_id=client_id,
        )

    with database.transaction() as db:
        register(db, "one")
        with pytest.raises(clients.ClientExists):
            register(db, "one")
        register(db, "two")
    with database.transaction() as db:
        assert [c.client_id for c in clients.list_all(db=db)] == ["one", "two"]


@pytest.mark.parametrize(
    "username",
    ["", " ", "x" * 256, "bob\nx", "\x1b[2J", "\u202eevil", "a\u2029b", "\udcff"],
    ids=[
        "empty", "blank", "256 characters", "newline", "escape", "bidi override",
        "paragraph separator", "lone surrogate",
    ],
)  # fmt: skip
def test_create_refuses_an_unusable_username(database: Database, username: str) -> None:
    with database.transaction() as db:
        with pytest.raises(users.InvalidUsername):
            users.create(db=db, username=username, password_hash="$argon2id$x", now=utcnow())
        assert users.list_all(db=db) == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "App\nx"}, "the client name must not contain control characters"),
        ({"name": "\u200bApp"}, "the client name must not contain control characters"),
        ({"scope": "read\x7f"}, "the scope must not contain control characters"),
        ({"redirect_uris": ["https://app.example/\x85"]}, "contains control characters"),
        ({"redirect_uris": ["https://[::1/cb"]}, "is not a valid URI"),
        # urlsplit refuses a host that NFKC turns into "app#.example".
        ({"redirect_uris": ["https://app\uff03.example/cb"]}, "is not a valid URI"),
    ],
    ids=[
        "newline in name", "zero width in name", "DEL in scope", "C1 in redirect URI",
        "unclosed IPv6 literal", "NFKC host",
    ],
)  # fmt: skip
def test_clients_refuse_unprintable_or_unparsable_metadata(
    database: Database, changes: dict[str, Any], message: str
) -> None:
    metadata: dict[str, Any] = {
        "name": "App",
        "redirect_uris": ["https://app.example/cb"],
        "scope": "read",
    }
    with database.transaction() as db:
        with pytest.raises(clients.InvalidClientMetadata, match=re.escape(message)):
            clients.register(
                db=db, **(metadata | changes), public=True, first_party=False, now=utcnow()
            )
        client = clients.register(db=db, **metadata, public=True, first_party=False, now=utcnow())
        with pytest.raises(clients.InvalidClientMetadata, match=re.escape(message)):
            clients.update_metadata(db=db, client_id=client.client.client_id, **changes)
        assert clients.list_all(db=db) == [client.client]
        assert client.client.name == "App"
