"""``baton keys list|rotate`` on SQLite and on PostgreSQL, through click's
CliRunner, checked against the database and against the JWKS that a running
Baton publishes."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from app import keys
from app.db import Database, utcnow
from app.models import AuditEvent, SigningKey
from app.settings import Settings
from tests.conftest import Clock
from tests.test_cli import (  # noqa: F401  (_clean_environment: an autouse fixture)
    _clean_environment,
    baton,
    error_of,
    table,
)
from tests.test_token_lifecycle import baton as serve_in_process

KEY_FIELDS = {"kid", "alg", "created_at", "retired_at", "status"}


def keys_json(url: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(baton(url, "keys", "list", "--json").stdout)
    return rows


def rotate_json(url: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(baton(url, "keys", "rotate", "--json").stdout)
    return document


def stored_keys(database: Database) -> list[SigningKey]:
    with database.transaction() as db:
        rows = keys.all_keys(db=db)
        for row in rows:
            db.expunge(row)
        return rows


def published_kids(make_settings: Callable[..., Settings], **overrides: Any) -> list[str]:
    """What a Baton on this database publishes right now (its own clock)."""
    with serve_in_process(make_settings, Clock(), **overrides) as client:
        response = client.get("/oauth2/jwks")
        assert response.status_code == 200
        return [key["kid"] for key in response.json()["keys"]]


def at(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def test_keys_list_is_empty_before_the_first_start(database_url: str) -> None:
    assert keys_json(database_url) == []
    result = baton(database_url, "keys", "list")
    assert table(result) == [["KID", "ALG", "STATUS", "CREATED", "RETIRED"], ["(none)"]]


def test_keys_list_shows_the_key_a_server_created(
    database_url: str, database: Database, make_settings: Callable[..., Settings]
) -> None:
    """The first start of a server creates the signing key; the command shows it."""
    (kid,) = published_kids(make_settings)

    (row,) = keys_json(database_url)

    assert set(row) == KEY_FIELDS
    assert row["kid"] == kid
    assert row["alg"] == "RS256"
    assert row["status"] == "signing"
    assert row["retired_at"] is None
    (stored,) = stored_keys(database)
    assert at(row["created_at"]) == stored.created_at
    lines = table(baton(database_url, "keys", "list"))
    assert lines[0] == ["KID", "ALG", "STATUS", "CREATED", "RETIRED"]
    assert lines[1] == [kid, "RS256", "signing", row["created_at"], "-"]


def test_keys_rotate_adds_a_key_and_retires_the_old_one(
    database_url: str, database: Database, make_settings: Callable[..., Settings]
) -> None:
    (old_kid,) = published_kids(make_settings)
    before = utcnow()

    rotated = rotate_json(database_url)

    new_kid = rotated["kid"]
    assert new_kid != old_kid
    assert rotated["alg"] == "RS256"
    (retired,) = rotated["retired"]
    assert retired["kid"] == old_kid
    published_until = at(retired["published_until"])
    assert published_until is not None
    assert before + timedelta(hours=1) <= published_until <= utcnow() + timedelta(hours=1)
    stored = {row.kid: row for row in stored_keys(database)}
    assert set(stored) == {old_kid, new_kid}
    assert stored[new_kid].retired_at is None
    retired_at = stored[old_kid].retired_at
    assert retired_at is not None
    assert before <= retired_at <= utcnow()
    # The server signs with the new key and still publishes the old one.
    assert published_kids(make_settings) == [new_kid, old_kid]
    listed = {row["kid"]: row for row in keys_json(database_url)}
    assert listed[new_kid]["status"] == "signing"
    assert listed[old_kid]["status"] == "published"
    assert at(listed[old_kid]["retired_at"]) == retired_at
    assert [row["kid"] for row in keys_json(database_url)] == [old_kid, new_kid]  # oldest first


def test_keys_rotate_prints_the_new_kid(database_url: str, database: Database) -> None:
    first = baton(database_url, "keys", "rotate")
    (only,) = stored_keys(database)
    assert first.stdout == f"signing key:   {only.kid} (RS256)\n"

    second = baton(database_url, "keys", "rotate")

    newest = stored_keys(database)[-1]
    lines = second.stdout.splitlines()
    assert lines[0] == f"signing key:   {newest.kid} (RS256)"
    assert lines[1].startswith(f"retired:       {only.kid} (published until ")
    assert len(lines) == 2


def test_keys_rotate_on_an_empty_database_creates_the_first_key(
    database_url: str, database: Database
) -> None:
    rotated = rotate_json(database_url)

    assert rotated["retired"] == []
    assert [row.kid for row in stored_keys(database)] == [rotated["kid"]]
    assert keys_json(database_url)[0]["status"] == "signing"


def test_keys_rotate_uses_the_configured_algorithm(
    database_url: str,
    database: Database,
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BATON_SIGNING_ALG", "ES256")

    rotated = rotate_json(database_url)

    assert rotated["alg"] == "ES256"
    (row,) = stored_keys(database)
    assert row.alg == "ES256"
    assert row.private_jwk["kty"] == "EC"
    assert published_kids(make_settings, signing_alg="ES256") == [rotated["kid"]]


def test_a_bad_signing_algorithm_setting_is_an_error(
    database_url: str, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATON_SIGNING_ALG", "HS256")

    result = baton(database_url, "keys", "rotate", exit_code=1)

    assert error_of(result).startswith("Error: BATON_SIGNING_ALG: ")
    assert stored_keys(database) == []


def test_keys_past_their_publication_are_expired(
    database_url: str,
    database: Database,
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``BATON_ID_TOKEN_TTL`` after retirement a key is no longer published;
    ``keys list`` and the JWKS agree on which keys those are."""
    now = utcnow()
    with database.transaction() as db:
        oldest = keys.create(db=db, alg="RS256", now=now - timedelta(hours=5)).kid
        middle = keys.rotate(db=db, alg="RS256", now=now - timedelta(hours=3))[0].kid
        newest = keys.rotate(db=db, alg="RS256", now=now - timedelta(minutes=90))[0].kid
    # Retired 3 hours and 90 minutes ago.
    for ttl, expired in [("1h", {oldest, middle}), ("2h", {oldest}), ("4h", set())]:
        monkeypatch.setenv("BATON_ID_TOKEN_TTL", ttl)
        statuses = {row["kid"]: row["status"] for row in keys_json(database_url)}
        assert statuses[newest] == "signing"
        assert {kid for kid, status in statuses.items() if status == "expired"} == expired
        assert {kid for kid, status in statuses.items() if status == "published"} == (
            {oldest, middle} - expired
        )
        hours = int(ttl[:-1])
        published = published_kids(make_settings, id_token_ttl=timedelta(hours=hours))
        assert set(published) == {oldest, middle, newest} - expired


def test_keys_commands_never_print_private_keys(
    database_url: str, database: Database, make_settings: Callable[..., Settings]
) -> None:
    published_kids(make_settings)
    rotated = baton(database_url, "keys", "rotate", "--json").stdout
    listed = (
        baton(database_url, "keys", "list", "--json").stdout
        + baton(database_url, "keys", "list").stdout
    )
    for row in stored_keys(database):
        for member in ("d", "p", "q", "dp", "dq", "qi"):
            secret = row.private_jwk[member]
            assert secret not in rotated
            assert secret not in listed


def test_keys_rotate_is_audited(database_url: str, database: Database) -> None:
    first = rotate_json(database_url)
    second = rotate_json(database_url)

    with database.transaction() as db:
        events = db.scalars(
            select(AuditEvent)
            .where(AuditEvent.event == "admin.key_rotated")
            .order_by(AuditEvent.id)
        ).all()
        assert [(e.actor, e.detail["kid"], e.detail["retired"]) for e in events] == [
            ("cli", first["kid"], []),
            ("cli", second["kid"], [first["kid"]]),
        ]


@pytest.mark.parametrize("command", [["keys"], ["keys", "list"], ["keys", "rotate"]], ids=" ".join)
def test_keys_help(command: list[str]) -> None:
    result = baton(None, *command, "--help")
    assert result.stdout.startswith("Usage: ")
    assert " ".join(["main", *command]) in result.stdout.splitlines()[0]


def test_keys_is_listed_in_the_main_help() -> None:
    lines = baton(None, "--help").stdout.splitlines()
    assert any(line.split()[:1] == ["keys"] for line in lines)
    listed = baton(None, "keys", "--help").stdout
    assert "list" in listed
    assert "rotate" in listed
