"""POST /api/v1/login, /logout and /users/me against the Lenses HQ contract."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import bcrypt
import httpx2
import pytest
from sqlalchemy import func, select, update
from starlette.testclient import TestClient

from app import tokens
from app.db import Database
from app.models import BrowserSession, PendingFlow, User
from app.passwords import HashingOverloaded
from app.settings import Settings
from tests.conftest import Clock
from tests.factories import (
    PASSWORD,
    authorize_params,
    create_client,
    create_user,
    create_user_with_hash,
    pkce,
    query_of,
)
from tests.openapi import assert_documented

LOGIN = "/api/v1/login"


def login(client: TestClient, **body: Any) -> httpx2.Response:
    response = client.post(LOGIN, json=body)
    assert_documented(response, LOGIN)
    return response


def start_flow(client: TestClient, database: Database) -> str:
    """Start an authorization request without a session; return its redirection token."""
    app_client = create_client(database)
    paused = client.get(
        "/oauth2/authorize", params=authorize_params(app_client, pkce()), follow_redirects=False
    )
    assert paused.status_code == 302, paused.text
    return query_of(paused.headers["location"])["redirection_token"]


def session_count(database: Database) -> int:
    with database.transaction() as db:
        return db.scalar(select(func.count()).select_from(BrowserSession)) or 0


def set_cookie_header(response: httpx2.Response) -> str:
    return response.headers["set-cookie"]


def test_login_without_token_opens_a_session(client: TestClient, database: Database) -> None:
    create_user(database)
    response = login(client, username="alice", password=PASSWORD)
    assert response.status_code == 200
    assert response.json() == {}
    assert response.headers["cache-control"] == "no-store"
    cookie = set_cookie_header(response)
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "secure", "path", "max-age", "samesite"} <= attributes
    assert "samesite=lax" in cookie.lower()
    assert "path=/" in cookie.lower()
    assert "max-age=86400" in cookie.lower()

    secret = client.cookies["session_id"]
    with database.transaction() as db:
        row = db.scalars(select(BrowserSession)).one()
        assert row.id_hash == tokens.digest(secret)
        assert secret not in {row.id_hash, row.ip, row.user_agent}
    me = client.get("/api/v1/users/me")
    assert me.status_code == 200
    assert me.json() == {"username": "alice", "authenticated_by": "session"}
    assert_documented(me, "/api/v1/users/me", "GET")


def test_cookie_is_not_secure_when_switched_off(
    make_settings: Callable[..., Settings], database: Database, clock: Clock
) -> None:
    from app.main import create_app

    create_user(database)
    app = create_app(make_settings(secure_cookies=False, session_duration=timedelta(hours=2)))
    with TestClient(app, base_url="http://127.0.0.1") as plain:
        response = login(plain, username="alice", password=PASSWORD)
    cookie = set_cookie_header(response).lower()
    assert "secure" not in cookie
    assert "httponly" in cookie
    assert "max-age=7200" in cookie


def test_login_with_token_consumes_the_flow_and_answers_where_to_resume(
    client: TestClient, database: Database
) -> None:
    create_user(database)
    token = start_flow(client, database)
    response = login(client, username="alice", password=PASSWORD, redirection_token=token)
    assert response.status_code == 200
    redir_to = response.json()["redir_to"]
    assert redir_to.startswith("/oauth2/authorize?")
    assert not redir_to.startswith("//")
    with database.transaction() as db:
        flow = db.scalars(select(PendingFlow)).one()
        session = db.scalars(select(BrowserSession)).one()
        assert flow.consumed_at is not None
        assert flow.consumed_by == session.user_id
        assert session.flow_id == flow.id


@pytest.mark.parametrize("case", ["unknown user", "wrong password", "disabled user"])
def test_refusals_are_one_identical_answer(
    client: TestClient, database: Database, case: str
) -> None:
    create_user(database, "alice")
    create_user(database, "dora", disabled=True)
    username, password = {
        "unknown user": ("nobody", PASSWORD),
        "wrong password": ("alice", "not the password"),
        "disabled user": ("dora", PASSWORD),
    }[case]
    response = login(client, username=username, password=password)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body.pop("request_id") == response.headers["x-request-id"]
    assert body == {"type": "unauthorised", "title": "Invalid username or password.", "status": 401}
    assert "set-cookie" not in response.headers
    assert session_count(database) == 0


@pytest.mark.parametrize(
    ("content", "pointers"),
    [
        (b'{"username": "alice", "password": ', []),
        (b"[1, 2]", []),
        (b'"text"', []),
        (b"{}", ["/password", "/username"]),
        (b'{"username": "", "password": "x"}', ["/username"]),
        (b'{"username": "alice", "password": ""}', ["/password"]),
        (b'{"username": 42, "password": ["x"]}', ["/password", "/username"]),
        (b'{"username": "a", "password": "x", "redirection_token": null}', ["/redirection_token"]),
        (b'{"username": "a", "password": "x", "redirection_token": 7}', ["/redirection_token"]),
        (b'{"username": "a", "password": "' + b"x" * 2000 + b'"}', ["/password"]),
        (b"\xff\xfe", []),
    ],
)
def test_malformed_bodies_are_validation_errors(
    client: TestClient, database: Database, content: bytes, pointers: list[str]
) -> None:
    response = client.post(LOGIN, content=content, headers={"content-type": "application/json"})
    assert_documented(response, LOGIN)
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "validation_error"
    assert body["title"]
    found = sorted(field["pointer"] for field in body.get("invalid_fields", []))
    assert found == pointers
    for field in body.get("invalid_fields", []):
        assert field["name"] == field["pointer"].lstrip("/")
        assert field["error"] == "invalid_value"
    assert session_count(database) == 0


def test_unknown_fields_are_ignored(client: TestClient, database: Database) -> None:
    create_user(database)
    response = login(client, username="alice", password=PASSWORD, remember_me=True)
    assert response.status_code == 200


def _assert_reference_not_found(response: httpx2.Response) -> None:
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "validation_error"
    fields = body["invalid_fields"]
    assert [(f["name"], f["error"], f["pointer"]) for f in fields] == [
        ("redirection_token", "reference_not_found", "/redirection_token")
    ]
    assert "set-cookie" not in response.headers


def test_unknown_token_creates_no_session(client: TestClient, database: Database) -> None:
    create_user(database)
    for token in ["", "nonsense", tokens.new_secret(), "x" * 512]:
        _assert_reference_not_found(
            login(client, username="alice", password=PASSWORD, redirection_token=token)
        )
    assert session_count(database) == 0


def test_expired_token_is_refused(client: TestClient, database: Database, clock: Clock) -> None:
    create_user(database)
    token = start_flow(client, database)
    clock.advance(timedelta(minutes=10, seconds=1))
    _assert_reference_not_found(
        login(client, username="alice", password=PASSWORD, redirection_token=token)
    )
    assert session_count(database) == 0


def test_revoked_token_is_refused(client: TestClient, database: Database, clock: Clock) -> None:
    create_user(database)
    token = start_flow(client, database)
    with database.transaction() as db:
        db.execute(update(PendingFlow).values(revoked_at=clock()))
    _assert_reference_not_found(
        login(client, username="alice", password=PASSWORD, redirection_token=token)
    )
    assert session_count(database) == 0


def test_consumed_token_cannot_be_replayed(client: TestClient, database: Database) -> None:
    create_user(database)
    create_user(database, "bob")
    token = start_flow(client, database)
    first = login(client, username="alice", password=PASSWORD, redirection_token=token)
    assert first.status_code == 200
    with database.transaction() as db:
        before = db.scalars(select(PendingFlow)).one().consumed_at
    replay = login(client, username="bob", password=PASSWORD, redirection_token=token)
    _assert_reference_not_found(replay)
    assert session_count(database) == 1
    with database.transaction() as db:
        flow = db.scalars(select(PendingFlow)).one()
        assert flow.consumed_at == before
        assert flow.consumed_by is not None


def test_wrong_password_never_burns_the_token(client: TestClient, database: Database) -> None:
    create_user(database)
    token = start_flow(client, database)
    for username in ["alice", "nobody"]:
        refused = login(client, username=username, password="wrong", redirection_token=token)
        assert refused.status_code == 401
    accepted = login(client, username="alice", password=PASSWORD, redirection_token=token)
    assert accepted.status_code == 200
    assert "redir_to" in accepted.json()


def test_a_new_session_id_at_every_login(client: TestClient, database: Database) -> None:
    create_user(database)
    planted = tokens.new_secret()
    client.cookies.set("session_id", planted, domain="baton.test")
    first = login(client, username="alice", password=PASSWORD)
    issued = first.cookies["session_id"]
    assert issued != planted
    second = login(client, username="alice", password=PASSWORD)
    assert second.cookies["session_id"] not in {planted, issued}
    with database.transaction() as db:
        hashes = set(db.scalars(select(BrowserSession.id_hash)))
    assert tokens.digest(planted) not in hashes
    assert len(hashes) == 2


@pytest.mark.parametrize("prefix", [b"$2a$", b"$2b$"])
def test_bcrypt_hashes_are_accepted_then_upgraded(
    client: TestClient, database: Database, prefix: bytes
) -> None:
    legacy = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4, prefix=prefix[1:3]))
    assert legacy.startswith(prefix)
    create_user_with_hash(database, "carol", legacy.decode())
    assert login(client, username="carol", password="wrong").status_code == 401
    assert login(client, username="carol", password=PASSWORD).status_code == 200
    with database.transaction() as db:
        stored = db.scalars(select(User.password_hash).where(User.username == "carol")).one()
    assert stored.startswith("$argon2id$")
    assert login(client, username="carol", password=PASSWORD).status_code == 200


def test_logout_ends_the_session(client: TestClient, database: Database) -> None:
    create_user(database)
    login(client, username="alice", password=PASSWORD)
    secret = client.cookies["session_id"]
    response = client.post("/api/v1/logout")
    assert response.status_code == 204
    assert_documented(response, "/api/v1/logout")
    assert (
        'session_id=""' in response.headers["set-cookie"]
        or "Max-Age=0" in (response.headers["set-cookie"])
    )
    client.cookies.set("session_id", secret, domain="baton.test")
    assert client.get("/api/v1/users/me").status_code == 401
    with database.transaction() as db:
        assert db.scalars(select(BrowserSession.revoked_at)).one() is not None
    assert client.post("/api/v1/logout").status_code == 204


def test_me_without_credentials_is_a_problem(client: TestClient) -> None:
    response = client.get("/api/v1/users/me")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert_documented(response, "/api/v1/users/me", "GET")


def test_expired_session_is_refused(client: TestClient, database: Database, clock: Clock) -> None:
    create_user(database)
    login(client, username="alice", password=PASSWORD)
    clock.advance(timedelta(hours=24, seconds=1))
    assert client.get("/api/v1/users/me").status_code == 401


def test_overloaded_hashing_is_a_503_with_retry_after(
    client: TestClient, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def busy(*_: object) -> None:
        raise HashingOverloaded

    monkeypatch.setattr("app.api.routes.log_in", busy)
    response = login(client, username="alice", password=PASSWORD)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["status"] == 503


def test_every_response_carries_a_distinct_request_id(client: TestClient) -> None:
    ids = {client.post(LOGIN, json={}).headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", LOGIN, 405), ("GET", "/api/v1/nothing", 404), ("DELETE", "/api/v1/users/me", 405)],
)
def test_unknown_api_routes_are_problems(
    client: TestClient, method: str, path: str, status: int
) -> None:
    response = client.request(method, path)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == status
