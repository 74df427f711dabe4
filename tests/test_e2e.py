"""End to end over real HTTP against ``baton serve``, driven by authlib's OAuth
client (requests_client.OAuth2Session) and a requests session as the browser."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import Barrier
from urllib.parse import urljoin

import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from sqlalchemy import func, select

from app.db import Database
from app.models import BrowserSession, PendingFlow
from tests.conftest import PostgresServer
from tests.factories import create_user, query_of
from tests.servers import Server, serving

PASSWORD = "e2e password, long enough"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An EMPTY database: the server's own ``baton db upgrade`` creates the schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/baton.db"
    postgres: PostgresServer = request.getfixturevalue("postgres")
    return postgres.create_database()


@pytest.fixture
def server(fresh_database_url: str, tmp_path: Path) -> Iterator[Server]:
    with serving(fresh_database_url, tmp_path) as running:
        running.baton("users", "add", "alice", "--password-stdin", stdin=PASSWORD + "\n")
        yield running


def register(server: Server, *, public: bool, redirect_uri: str) -> dict[str, str | None]:
    # First-party: no consent step (the interop tests drive consent).
    args = ["clients", "add", "--name", "E2E app", "--first-party", "--redirect-uri", redirect_uri]
    args.append("--json")
    created: dict[str, str | None] = json.loads(
        server.baton(*args, *(["--public"] if public else [])).stdout
    )
    return created


def sign_in_through_the_login_page(server: Server, authorization_url: str) -> tuple[str, str]:
    """What a person's browser does: follow authorize to the login page, post the
    credentials, follow redir_to; return the callback URL carrying the code and
    the redirection token."""
    browser = requests.Session()
    paused = browser.get(authorization_url, allow_redirects=False, timeout=10)
    assert paused.status_code == 302, paused.text
    login_page = urljoin(server.url, paused.headers["location"])
    page = browser.get(login_page, timeout=10)
    assert page.status_code == 200
    assert "login-form" in page.text
    token = query_of(login_page)["redirection_token"]

    login = browser.post(
        server.url + "/api/v1/login",
        json={"username": "alice", "password": PASSWORD, "redirection_token": token},
        timeout=10,
    )
    assert login.status_code == 200, login.text
    resumed = browser.get(server.url + login.json()["redir_to"], allow_redirects=False, timeout=10)
    assert resumed.status_code == 302, resumed.text
    return str(resumed.headers["location"]), token


@pytest.mark.parametrize("public", [True, False], ids=["public", "confidential"])
def test_authlib_client_completes_the_flow(server: Server, public: bool) -> None:
    redirect_uri = "http://127.0.0.1:8123/callback"
    created = register(server, public=public, redirect_uri=redirect_uri)
    oauth = OAuth2Session(
        client_id=created["client_id"],
        client_secret=created["client_secret"],
        token_endpoint_auth_method="none" if public else "client_secret_basic",
        redirect_uri=redirect_uri,
        scope="read write",
        code_challenge_method="S256",
    )
    verifier = generate_token(64)
    authorization_url, state = oauth.create_authorization_url(
        server.url + "/oauth2/authorize", code_verifier=verifier
    )

    callback, redirection_token = sign_in_through_the_login_page(server, authorization_url)
    assert callback.startswith(redirect_uri + "?")
    assert query_of(callback)["state"] == state

    token = oauth.fetch_token(
        server.url + "/oauth2/token",
        authorization_response=callback,
        code_verifier=verifier,
        state=state,
    )
    assert token["token_type"] == "Bearer"
    assert token["scope"] == "read write"
    me = oauth.get(server.url + "/api/v1/users/me", timeout=10)
    assert me.status_code == 200
    assert me.json()["username"] == "alice"

    # The code is single-use, whoever presents it again.
    replay = requests.post(
        server.url + "/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": query_of(callback)["code"],
            "redirect_uri": redirect_uri,
            "client_id": created["client_id"],
            "client_secret": created["client_secret"] or "",
            "code_verifier": verifier,
        },
        timeout=10,
    )
    assert replay.status_code in {400, 401}
    assert replay.json()["error"] in {"invalid_grant", "invalid_client"}

    log = server.log.read_text()
    assert "POST /api/v1/login 200" in log
    for secret in (redirection_token, query_of(callback)["code"], token["access_token"], PASSWORD):
        assert secret not in log


def test_twenty_concurrent_logins_one_token_one_winner(
    server: Server, fresh_database_url: str
) -> None:
    redirect_uri = "http://127.0.0.1:8123/callback"
    created = register(server, public=True, redirect_uri=redirect_uri)
    oauth = OAuth2Session(
        client_id=created["client_id"], redirect_uri=redirect_uri, code_challenge_method="S256"
    )
    url, _ = oauth.create_authorization_url(
        server.url + "/oauth2/authorize", code_verifier=generate_token(64)
    )
    paused = requests.get(url, allow_redirects=False, timeout=10)
    token = query_of(paused.headers["location"])["redirection_token"]
    binding = paused.cookies["baton_binding"]
    # Twenty people racing for one flow from the browser that started it: the
    # same-user retry grace cannot blur the race when every login is another user.
    database = Database(fresh_database_url)
    try:
        for n in range(20):
            create_user(database, f"racer{n}", PASSWORD)
    finally:
        database.dispose()

    start = Barrier(20)

    def attempt(n: int) -> requests.Response:
        with requests.Session() as browser:  # each its own cookie jar, same binding
            browser.cookies.set("baton_binding", binding)
            start.wait()
            return browser.post(
                server.url + "/api/v1/login",
                json={"username": f"racer{n}", "password": PASSWORD, "redirection_token": token},
                timeout=60,
            )

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(attempt, range(20)))

    winners = [r for r in responses if r.status_code == 200]
    losers = [r for r in responses if r.status_code != 200]
    assert len(winners) == 1, [r.status_code for r in responses]
    assert "redir_to" in winners[0].json()
    assert "session_id" in winners[0].cookies
    for loser in losers:
        assert loser.status_code == 400
        fields = loser.json()["invalid_fields"]
        assert [f["error"] for f in fields] == ["reference_not_found"]
        assert "set-cookie" not in loser.headers

    database = Database(fresh_database_url)
    try:
        with database.transaction() as db:
            flow = db.scalars(select(PendingFlow)).one()
            assert flow.consumed_at is not None
            sessions = db.scalar(select(func.count()).select_from(BrowserSession))
            for_flow = db.scalar(
                select(func.count())
                .select_from(BrowserSession)
                .where(BrowserSession.flow_id == flow.id)
            )
    finally:
        database.dispose()
    assert (sessions, for_flow) == (1, 1)
