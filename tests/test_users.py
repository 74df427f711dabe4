"""The users domain: duplicates leave the surrounding transaction usable."""

from __future__ import annotations

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
