"""The OAuth 2.1 endpoints in process: ``/oauth2/authorize``, ``/oauth2/token`` and
the bearer tokens they issue, against SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx2
import pytest
from sqlalchemy import func, select, update
from starlette.testclient import TestClient

from app import clients, tokens
from app.db import Base, Database
from app.models import AuditEvent, AuthorizationCode, Client, PendingFlow, Token, User
from app.settings import Settings
from tests.conftest import Clock
from tests.factories import (
    PASSWORD,
    REDIRECT_URI,
    ClientInfo,
    authorize_params,
    create_client,
    create_user,
    pkce,
    query_of,
)

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
PROBLEM_JSON = "application/problem+json"
LOOPBACK_URI = "http://127.0.0.1:1234/cb"

Snapshot = dict[str, list[tuple[Any, ...]]]


# -- helpers -------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """An authorization code, with what its exchange needs."""

    client: ClientInfo
    code: str
    verifier: str
    redirect_uri: str


def snapshot(database: Database) -> Snapshot:
    """Every row of every table, in primary-key order."""
    with database.transaction() as db:
        return {
            table.name: [
                tuple(row) for row in db.execute(select(table).order_by(*table.primary_key))
            ]
            for table in Base.metadata.sorted_tables
        }


def count(database: Database, model: Any, *where: Any) -> int:
    with database.transaction() as db:
        return db.scalar(select(func.count()).select_from(model).where(*where)) or 0


def client_pk(database: Database, client_id: str) -> int:
    with database.transaction() as db:
        row = clients.get(db=db, client_id=client_id)
        assert row is not None
        return row.id


def changed(params: Mapping[str, str], changes: Mapping[str, str | None]) -> dict[str, str]:
    """``params`` with ``changes`` applied; a ``None`` value removes the parameter."""
    result = {**params, **changes}
    return {name: value for name, value in result.items() if value is not None}


def sign_in(client: TestClient, redirection_token: str | None = None) -> str | None:
    """Log alice in through the API; returns the URL that resumes the flow, if any."""
    body = {"username": "alice", "password": PASSWORD}
    if redirection_token is not None:
        body["redirection_token"] = redirection_token
    response = client.post("/api/v1/login", json=body)
    assert response.status_code == 200, response.text
    redir_to: str | None = response.json().get("redir_to")
    return redir_to


def authorize(
    client: TestClient,
    params: Mapping[str, str] | Sequence[tuple[str, str]],
    headers: Mapping[str, str] | None = None,
) -> httpx2.Response:
    return client.get("/oauth2/authorize", params=params, headers=headers, follow_redirects=False)


def redirection_token(response: httpx2.Response) -> str:
    """The token of a request paused for login (a redirect to the login page)."""
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith("/login?redirection_token="), location
    return query_of(location)["redirection_token"]


def callback_of(response: httpx2.Response, params: Mapping[str, str]) -> dict[str, str]:
    """The query of a redirect back to the client, which must echo ``state``."""
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(params["redirect_uri"] + "?"), location
    callback = query_of(location)
    assert callback["state"] == params["state"]
    return callback


def issue_code(client: TestClient, app_client: ClientInfo, **extra: str) -> Issued:
    """authorize → (login → resume, when the browser has no session) → code."""
    challenge = pkce()
    params = authorize_params(app_client, challenge, **extra)
    response = authorize(client, params)
    if response.headers.get("location", "").startswith("/login?"):
        resume = sign_in(client, redirection_token(response))
        assert resume is not None
        response = client.get(resume, follow_redirects=False)
    callback = callback_of(response, params)
    assert "error" not in callback
    return Issued(app_client, callback["code"], challenge.verifier, params["redirect_uri"])


def token_form(issued: Issued, **changes: str | None) -> dict[str, str]:
    """A valid public-client token request for ``issued``, with ``changes``."""
    form = {
        "grant_type": "authorization_code",
        "code": issued.code,
        "redirect_uri": issued.redirect_uri,
        "client_id": issued.client.client_id,
        "code_verifier": issued.verifier,
    }
    return changed(form, changes)


def exchange(
    client: TestClient, form: Mapping[str, str], auth: tuple[str, str] | None = None
) -> httpx2.Response:
    return client.post("/oauth2/token", data=form, auth=auth)


def access_token(client: TestClient, issued: Issued) -> str:
    response = exchange(client, token_form(issued))
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def assert_oauth_error(response: httpx2.Response, error: str, status: int = 400) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == error


def me(client: TestClient, token: str) -> httpx2.Response:
    client.cookies.clear()  # only the bearer token may authenticate
    return client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})


def assert_unauthorised_problem(response: httpx2.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM_JSON
    assert response.json()["status"] == 401


# -- fixtures ------------------------------------------------------------------


@pytest.fixture
def alice(database: Database) -> None:
    create_user(database)


@pytest.fixture
def public_client(database: Database) -> ClientInfo:
    return create_client(database)


@pytest.fixture
def confidential_client(database: Database) -> ClientInfo:
    app_client = create_client(database, public=False)
    assert app_client.secret is not None
    return app_client


@pytest.fixture(params=["anonymous", "signed_in"])
def browser(request: pytest.FixtureRequest, client: TestClient, alice: None) -> TestClient:
    """The browser without a session, and with alice signed in."""
    if request.param == "signed_in":
        assert sign_in(client) is None
    return client


# -- the authorization endpoint --------------------------------------------------


@pytest.mark.usefixtures("alice")
def test_authorize_without_session_pauses_the_request(
    client: TestClient,
    database: Database,
    public_client: ClientInfo,
    settings: Settings,
    clock: Clock,
) -> None:
    """A valid request from a browser without a session waits in ``pending_flows``
    behind an opaque token that is stored only as its SHA-256 digest."""
    params = authorize_params(public_client, pkce())

    token = redirection_token(authorize(client, {**params, "foo": "bar"}))

    expected_client_pk = client_pk(database, public_client.client_id)
    with database.transaction() as db:
        flow = db.scalars(select(PendingFlow)).one()
        assert flow.token_hash == tokens.digest(token)
        assert flow.client_pk == expected_client_pk
        assert flow.redir_to.startswith("/oauth2/authorize?")
        resumed = dict(parse_qsl(urlsplit(flow.redir_to).query))
        assert resumed == params | {"flow": flow.public_id}
        assert "foo=" not in flow.redir_to
        assert flow.binding_hash is not None
        assert flow.created_at == clock.now
        assert flow.expires_at == flow.created_at + settings.flow_ttl
        assert flow.consumed_at is None
    assert settings.flow_ttl == timedelta(minutes=10)
    assert token not in repr(snapshot(database))


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize("signed_in_by", ["login without token", "login through a flow"])
def test_authorize_with_session_issues_a_code_at_once(
    client: TestClient, database: Database, public_client: ClientInfo, signed_in_by: str
) -> None:
    """RFC 6749 §4.1.2: a signed-in user is sent straight back with a code and the state."""
    if signed_in_by == "login without token":
        assert sign_in(client) is None
    else:
        issue_code(client, public_client)
    flows_before = count(database, PendingFlow)
    codes_before = count(database, AuthorizationCode)
    params = authorize_params(public_client, pkce())

    callback = callback_of(authorize(client, params), params)

    assert count(database, PendingFlow) == flows_before
    assert count(database, AuthorizationCode) == codes_before + 1
    code_hash = tokens.digest(callback["code"])
    assert count(database, AuthorizationCode, AuthorizationCode.code_hash == code_hash) == 1


INVALID_TARGETS = [
    pytest.param({"client_id": "no-such-client"}, id="unknown client_id"),
    pytest.param({"client_id": None}, id="missing client_id"),
    pytest.param({"redirect_uri": "https://evil.example/callback"}, id="unregistered redirect_uri"),
    pytest.param({"redirect_uri": REDIRECT_URI + "/"}, id="trailing slash"),
    pytest.param({"redirect_uri": "https://app.example/Callback"}, id="case in the path"),
    pytest.param({"redirect_uri": REDIRECT_URI + '"'}, id="double quote"),
    pytest.param({"redirect_uri": REDIRECT_URI + "\\"}, id="backslash"),
    pytest.param({"redirect_uri": "https://app.example/<script>"}, id="markup"),
    pytest.param(
        {"response_type": "token", "redirect_uri": "https://evil.example/callback"},
        id="unsupported response_type to an unregistered redirect_uri",
    ),
]


@pytest.mark.parametrize("changes", INVALID_TARGETS)
def test_authorize_never_redirects_to_an_unverified_target(
    browser: TestClient,
    database: Database,
    public_client: ClientInfo,
    changes: dict[str, str | None],
) -> None:
    """RFC 6749 §4.1.2.1: without a valid client and redirect URI the error is
    shown to the user, never redirected (OAuth 2.1 §2.3.1: exact string match)."""
    params = changed(authorize_params(public_client, pkce()), changes)
    before = snapshot(database)

    response = authorize(browser, params)

    assert response.status_code == 400, response.text
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("application/json")
    assert isinstance(response.json()["error"], str)
    assert snapshot(database) == before


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize("changes", INVALID_TARGETS)
def test_authorize_error_page_for_browsers(
    client: TestClient,
    database: Database,
    public_client: ClientInfo,
    changes: dict[str, str | None],
) -> None:
    """A browser asking for HTML gets an escaped error page, still no redirect."""
    sign_in(client)
    params = changed(authorize_params(public_client, pkce()), changes)
    before = snapshot(database)

    response = authorize(client, params, headers={"Accept": "text/html"})

    assert response.status_code == 400
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert "<script>" not in response.text
    assert snapshot(database) == before


def test_authorize_requires_redirect_uri_when_several_are_registered(
    browser: TestClient, database: Database
) -> None:
    """OAuth 2.1 §2.3.2: with several registered URIs the request must name one."""
    app_client = create_client(
        database, redirect_uris=(REDIRECT_URI, "https://app.example/other-callback")
    )
    params = changed(authorize_params(app_client, pkce()), {"redirect_uri": None})
    before = snapshot(database)

    response = authorize(browser, params)

    assert response.status_code == 400, response.text
    assert "location" not in response.headers
    assert response.json()["error"] == "invalid_request"
    assert snapshot(database) == before


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize("redirect_uri", ["http://127.0.0.1:5555/cb", LOOPBACK_URI])
def test_loopback_redirect_uri_accepts_any_port(
    client: TestClient, database: Database, redirect_uri: str
) -> None:
    """RFC 8252 §7.3: the port of a loopback redirect URI is not compared; the
    code is then bound to the URI actually used."""
    app_client = create_client(database, redirect_uris=(LOOPBACK_URI,))

    issued = issue_code(client, app_client, redirect_uri=redirect_uri)

    assert issued.redirect_uri == redirect_uri
    assert exchange(client, token_form(issued)).status_code == 200


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "http://127.0.0.1:5555/other",
        "http://127.0.0.1:5555/cb?x=1",
        "http://localhost:1234/cb",
        "https://127.0.0.1:1234/cb",
        # Python's urlsplit reads host 127.0.0.1 in these; a browser may not
        # (WHATWG URL: a backslash is a slash, so the first goes to evil.example).
        "http://evil.example\\@127.0.0.1:8080/cb",
        "http://127.0.0.1:8080\\@evil.example/cb",
        "http://evil.example@127.0.0.1:8080/cb",
        "http://127.0.0.1:8080\\cb",
        "http://127.0.0.1:8080/cb\t",
        "http://127.0.0.1:8080/c\u0130b",
        "http://[::1]@127.0.0.1:8080/cb",
        "http://[::1/cb",
    ],
)
def test_loopback_redirect_uri_still_compares_the_rest(
    browser: TestClient, database: Database, redirect_uri: str
) -> None:
    """RFC 8252 §7.3 relaxes only the port: path, query, host and scheme must match."""
    app_client = create_client(database, redirect_uris=(LOOPBACK_URI,))
    params = authorize_params(app_client, pkce(), redirect_uri=redirect_uri)
    before = snapshot(database)

    response = authorize(browser, params)

    assert response.status_code == 400, response.text
    assert "location" not in response.headers
    assert snapshot(database) == before


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        pytest.param(
            {"code_challenge": None, "code_challenge_method": None},
            "invalid_request",
            id="public client without PKCE",
        ),
        pytest.param({"code_challenge_method": "plain"}, "invalid_request", id="plain"),
        pytest.param({"code_challenge_method": None}, "invalid_request", id="no method"),
        pytest.param({"response_type": "token"}, "unsupported_response_type", id="token"),
        pytest.param({"scope": "admin"}, "invalid_scope", id="unknown scope"),
        pytest.param({"scope": "read admin"}, "invalid_scope", id="one unknown scope"),
    ],
)
def test_authorize_redirects_errors_to_a_verified_client(
    browser: TestClient,
    database: Database,
    public_client: ClientInfo,
    changes: dict[str, str | None],
    error: str,
) -> None:
    """RFC 6749 §4.1.2.1 with OAuth 2.1 §4.1.1 (PKCE with S256 for public
    clients): once the redirect URI is verified, errors go back to the client
    with the state, before any login and without writing anything."""
    params = changed(authorize_params(public_client, pkce()), changes)
    before = snapshot(database)

    callback = callback_of(authorize(browser, params), params)

    assert callback["error"] == error
    assert "code" not in callback
    assert snapshot(database) == before


# -- the token endpoint --------------------------------------------------------


@pytest.mark.usefixtures("alice")
def test_token_exchange_issues_a_bearer_token(
    client: TestClient, database: Database, public_client: ClientInfo, settings: Settings
) -> None:
    """RFC 6749 §5.1: Bearer, expires_in, scope and ``Cache-Control: no-store``;
    only hashes reach the database."""
    issued = issue_code(client, public_client)

    response = exchange(client, token_form(issued))

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == int(settings.access_token_ttl.total_seconds())
    assert body["scope"] == "read"
    rows = snapshot(database)
    assert body["access_token"] not in repr(rows)
    assert issued.code not in repr(rows)
    with database.transaction() as db:
        token = db.scalars(select(Token)).one()
        assert token.access_token_hash == tokens.digest(body["access_token"])
        assert token.scope == "read"
        code = db.scalars(select(AuthorizationCode)).one()
        assert code.used_at is not None
        assert token.code_id == code.id


@pytest.mark.usefixtures("alice")
def test_code_is_single_use(
    client: TestClient, database: Database, public_client: ClientInfo
) -> None:
    """OAuth 2.1 §4.1.3: a code is refused the second time, and the tokens it
    issued are revoked (someone else holds the code); nothing else changes."""
    issued = issue_code(client, public_client)
    first = exchange(client, token_form(issued))
    assert first.status_code == 200
    before = snapshot(database)

    assert_oauth_error(exchange(client, token_form(issued)), "invalid_grant")

    assert me(client, first.json()["access_token"]).status_code == 401
    refreshed = exchange(
        client,
        {
            "grant_type": "refresh_token",
            "refresh_token": first.json()["refresh_token"],
            "client_id": public_client.client_id,
        },
    )
    assert_oauth_error(refreshed, "invalid_grant")
    after = snapshot(database)
    changed_tables = {name for name in after if after[name] != before[name]}
    assert changed_tables == {"tokens", "audit_events"}
    with database.transaction() as db:
        events = list(db.scalars(select(AuditEvent.event).order_by(AuditEvent.id)))
    assert events[-1] == "code.reuse_detected"


@pytest.mark.usefixtures("alice")
def test_a_code_replayed_with_a_wrong_verifier_still_revokes_what_it_issued(
    client: TestClient, public_client: ClientInfo
) -> None:
    """Whoever presents a spent code has a copy of it, verifier or not."""
    issued = issue_code(client, public_client)
    first = exchange(client, token_form(issued)).json()

    assert_oauth_error(
        exchange(client, token_form(issued, code_verifier=pkce().verifier)), "invalid_grant"
    )

    assert me(client, first["access_token"]).status_code == 401


@pytest.mark.usefixtures("alice")
def test_wrong_code_verifier_leaves_the_code_usable(
    client: TestClient, database: Database, public_client: ClientInfo
) -> None:
    """RFC 7636 §4.6: a wrong verifier is invalid_grant; nothing is spent, so
    the right verifier still works."""
    issued = issue_code(client, public_client)
    before = snapshot(database)

    wrong = exchange(client, token_form(issued, code_verifier=pkce().verifier))

    assert_oauth_error(wrong, "invalid_grant")
    assert snapshot(database) == before
    assert exchange(client, token_form(issued)).status_code == 200


@pytest.mark.usefixtures("alice")
def test_missing_code_verifier_is_invalid_request(
    client: TestClient, database: Database, public_client: ClientInfo
) -> None:
    """RFC 7636 §4.5: the verifier is required when a challenge was sent."""
    issued = issue_code(client, public_client)
    before = snapshot(database)

    assert_oauth_error(exchange(client, token_form(issued, code_verifier=None)), "invalid_request")
    assert snapshot(database) == before


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize(
    "redirect_uri", [None, "https://app.example/callback/", "https://app.example/other"]
)
def test_token_redirect_uri_must_match_the_authorization_request(
    client: TestClient, database: Database, public_client: ClientInfo, redirect_uri: str | None
) -> None:
    """RFC 6749 §4.1.3: the redirect_uri must be identical to the authorization request's."""
    issued = issue_code(client, public_client)
    before = snapshot(database)

    response = exchange(client, token_form(issued, redirect_uri=redirect_uri))

    assert_oauth_error(response, "invalid_grant")
    assert snapshot(database) == before


@pytest.mark.usefixtures("alice")
def test_code_is_bound_to_its_client(
    client: TestClient, database: Database, public_client: ClientInfo
) -> None:
    """RFC 6749 §4.1.3: a code issued to client A is refused to client B."""
    other = create_client(database, name="Other app")
    issued = issue_code(client, public_client)
    before = snapshot(database)

    response = exchange(client, token_form(issued, client_id=other.client_id))

    assert_oauth_error(response, "invalid_grant")
    assert snapshot(database) == before
    assert exchange(client, token_form(issued)).status_code == 200


@pytest.mark.usefixtures("alice")
def test_expired_code_is_refused(
    client: TestClient,
    database: Database,
    public_client: ClientInfo,
    settings: Settings,
    clock: Clock,
) -> None:
    """OAuth 2.1 §4.1.2: codes are short-lived (``code_ttl``, one minute by default)."""
    assert settings.code_ttl == timedelta(minutes=1)
    issued = issue_code(client, public_client)
    clock.advance(settings.code_ttl + timedelta(seconds=1))
    before = snapshot(database)

    assert_oauth_error(exchange(client, token_form(issued)), "invalid_grant")
    assert snapshot(database) == before


@pytest.mark.usefixtures("alice")
def test_code_of_a_disabled_user_is_refused(
    client: TestClient, database: Database, public_client: ClientInfo
) -> None:
    """A user disabled between the code and its exchange gets no token."""
    issued = issue_code(client, public_client)
    with database.transaction() as db:
        db.execute(update(User).values(disabled=True))
    before = snapshot(database)

    assert_oauth_error(exchange(client, token_form(issued)), "invalid_grant")
    assert snapshot(database) == before


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_confidential_client_authenticates(
    client: TestClient, confidential_client: ClientInfo, method: str
) -> None:
    """RFC 6749 §2.3.1: HTTP Basic or the body; PKCE is used alongside."""
    issued = issue_code(client, confidential_client)
    secret = confidential_client.secret
    assert secret is not None

    if method == "client_secret_basic":
        response = exchange(
            client, token_form(issued, client_id=None), auth=(issued.client.client_id, secret)
        )
    else:
        response = exchange(client, token_form(issued, client_secret=secret))

    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "Bearer"


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_confidential_client_with_wrong_secret(
    client: TestClient, database: Database, confidential_client: ClientInfo, method: str
) -> None:
    """RFC 6749 §5.2: invalid_client, 401 (with WWW-Authenticate for Basic)."""
    issued = issue_code(client, confidential_client)
    before = snapshot(database)

    if method == "client_secret_basic":
        response = exchange(
            client, token_form(issued, client_id=None), auth=(issued.client.client_id, "wrong")
        )
    else:
        response = exchange(client, token_form(issued, client_secret="wrong"))

    assert_oauth_error(response, "invalid_client", status=401)
    if method == "client_secret_basic":
        assert response.headers["www-authenticate"].startswith("Basic ")
    assert snapshot(database) == before
    secret = confidential_client.secret
    assert secret is not None
    assert exchange(client, token_form(issued, client_secret=secret)).status_code == 200


@pytest.mark.usefixtures("alice")
def test_confidential_client_must_authenticate(
    client: TestClient, database: Database, confidential_client: ClientInfo
) -> None:
    """RFC 6749 §3.2.1: a confidential client cannot pass as a public one."""
    issued = issue_code(client, confidential_client)
    before = snapshot(database)

    response = exchange(client, token_form(issued))

    assert response.status_code in {400, 401}, response.text
    assert response.json()["error"] == "invalid_client"
    assert snapshot(database) == before


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize(
    ("verifier", "error"),
    [("wrong", "invalid_grant"), (None, "invalid_request")],
)
def test_confidential_client_pkce_is_checked(
    client: TestClient,
    database: Database,
    confidential_client: ClientInfo,
    verifier: str | None,
    error: str,
) -> None:
    """RFC 7636 §4.6 applies to confidential clients too (no PKCE downgrade, RFC 9700 §4.8)."""
    issued = issue_code(client, confidential_client)
    secret = confidential_client.secret
    assert secret is not None
    bad_verifier = pkce().verifier if verifier == "wrong" else None
    before = snapshot(database)

    response = exchange(
        client, token_form(issued, client_secret=secret, code_verifier=bad_verifier)
    )

    assert_oauth_error(response, error)
    assert snapshot(database) == before


@pytest.mark.usefixtures("alice")
def test_repeated_token_parameter_is_refused(
    client: TestClient, database: Database, public_client: ClientInfo
) -> None:
    """RFC 6749 §3.2: request parameters must not be included more than once."""
    issued = issue_code(client, public_client)
    pairs = [*token_form(issued).items(), ("code", issued.code)]
    before = snapshot(database)

    response = client.post("/oauth2/token", content=urlencode(pairs), headers=FORM)

    assert_oauth_error(response, "invalid_request")
    assert snapshot(database) == before
    assert exchange(client, token_form(issued)).status_code == 200


@pytest.mark.usefixtures("alice")
def test_token_request_must_be_form_encoded(
    client: TestClient, database: Database, public_client: ClientInfo
) -> None:
    """RFC 6749 §4.1.3: ``application/x-www-form-urlencoded``, not JSON."""
    issued = issue_code(client, public_client)
    before = snapshot(database)

    response = client.post("/oauth2/token", json=token_form(issued))

    assert_oauth_error(response, "invalid_request")
    assert snapshot(database) == before


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize("junk", [b"\xff\xfe", b"%ff%fe"], ids=["raw", "percent-encoded"])
def test_token_request_with_invalid_utf8(
    client: TestClient, database: Database, public_client: ClientInfo, junk: bytes
) -> None:
    """Bytes that are not UTF-8 are a 400 invalid_request, never a 500."""
    issued = issue_code(client, public_client)
    body = urlencode(token_form(issued)).encode("ascii") + b"&nonce=" + junk
    before = snapshot(database)

    response = client.post("/oauth2/token", content=body, headers=FORM)

    assert_oauth_error(response, "invalid_request")
    assert snapshot(database) == before


@pytest.mark.usefixtures("alice")
def test_unsupported_grant_type(
    client: TestClient, database: Database, public_client: ClientInfo
) -> None:
    """RFC 6749 §5.2: OAuth 2.1 has no password grant."""
    before = snapshot(database)
    form = {
        "grant_type": "password",
        "username": "alice",
        "password": PASSWORD,
        "client_id": public_client.client_id,
    }

    assert_oauth_error(exchange(client, form), "unsupported_grant_type")
    assert snapshot(database) == before


# -- bearer tokens -------------------------------------------------------------


@pytest.mark.usefixtures("alice")
def test_bearer_token_authenticates_users_me(client: TestClient, public_client: ClientInfo) -> None:
    """RFC 6750 §2.1: ``Authorization: Bearer``."""
    token = access_token(client, issue_code(client, public_client))

    response = me(client, token)

    assert response.status_code == 200, response.text
    assert response.json() == {
        "username": "alice",
        "authenticated_by": "access_token",
        "scope": "read",
    }


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize("token", ["garbage", "x" * 600, tokens.new_secret()])
def test_unknown_bearer_token_is_a_401_problem(client: TestClient, token: str) -> None:
    """RFC 6750 §3.1 / RFC 7807: an unknown token is refused as a problem document."""
    assert_unauthorised_problem(me(client, token))


@pytest.mark.usefixtures("alice")
def test_bearer_token_does_not_fall_back_to_the_session(client: TestClient) -> None:
    """A bad bearer token is refused even when the browser has a valid session."""
    assert sign_in(client) is None
    response = client.get("/api/v1/users/me", headers={"Authorization": "Bearer garbage"})
    assert_unauthorised_problem(response)


@pytest.mark.usefixtures("alice")
def test_expired_bearer_token_is_a_401_problem(
    client: TestClient, public_client: ClientInfo, settings: Settings, clock: Clock
) -> None:
    """Access tokens live ``access_token_ttl`` (one hour by default)."""
    assert settings.access_token_ttl == timedelta(hours=1)
    token = access_token(client, issue_code(client, public_client))

    clock.advance(settings.access_token_ttl - timedelta(seconds=1))
    assert me(client, token).status_code == 200
    clock.advance(timedelta(seconds=2))
    assert_unauthorised_problem(me(client, token))


# -- client removal ------------------------------------------------------------


@pytest.mark.usefixtures("alice")
def test_removing_a_client_cascades_its_flows_codes_and_tokens(
    client: TestClient, database: Database
) -> None:
    removed = create_client(database, name="Removed app")
    kept = create_client(database, name="Kept app")
    for app_client in (removed, kept):
        redirection_token(authorize(client, authorize_params(app_client, pkce())))
    assert sign_in(client) is None
    tokens_of = {}
    for app_client in (removed, kept):
        tokens_of[app_client.client_id] = access_token(client, issue_code(client, app_client))
        issue_code(client, app_client)  # one code left unused
    removed_pk = client_pk(database, removed.client_id)
    kept_pk = client_pk(database, kept.client_id)

    with database.transaction() as db:
        assert clients.remove(db=db, client_id=removed.client_id)

    for model, rows_per_client in ((PendingFlow, 1), (AuthorizationCode, 2), (Token, 1)):
        assert count(database, model, model.client_pk == removed_pk) == 0, model.__tablename__
        assert count(database, model, model.client_pk == kept_pk) == rows_per_client
    assert count(database, Client) == 1
    assert count(database, User) == 1
    assert_unauthorised_problem(me(client, tokens_of[removed.client_id]))
    assert me(client, tokens_of[kept.client_id]).status_code == 200


@pytest.mark.usefixtures("alice")
def test_token_endpoint_reads_only_the_body(
    client: TestClient, public_client: ClientInfo, database: Database
) -> None:
    """RFC 6749 §3.2: token request parameters travel in the body, not the URL."""
    issued = issue_code(client, public_client)
    form = token_form(issued, client_id=None)
    before = snapshot(database)
    moved = client.post(
        "/oauth2/token?" + urlencode({"client_id": public_client.client_id}), data=form
    )
    assert moved.status_code in {400, 401}
    assert snapshot(database) == before
    assert exchange(client, token_form(issued)).status_code == 200


@pytest.mark.usefixtures("alice")
def test_token_errors_are_json_whatever_the_client_accepts(
    client: TestClient, public_client: ClientInfo
) -> None:
    response = client.post(
        "/oauth2/token",
        data={"grant_type": "authorization_code", "code": "nope"},
        headers={"Accept": "text/html,application/json"},
    )
    assert response.status_code in {400, 401}
    assert response.headers["content-type"] == "application/json"
    assert "error" in response.json()
