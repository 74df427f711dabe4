"""Malformed requests at ``/oauth2/authorize`` and ``/oauth2/token``: repeated
parameters, huge values, broken percent-encodings and non-ASCII values.

Each must be answered with an RFC 6749 error: a JSON ``{"error": ...}`` with a
4xx, or at the authorization endpoint a 302 carrying ``error`` to the client's
registered redirect URI (§4.1.2.1). Never a 5xx, never a redirect anywhere
else, and nothing written: no paused flow, no code, no token.

Every malformation of one parameter is sent in one test (one app start), and
the test reports all the malformations that went wrong at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import httpx2
import pytest
from argon2 import PasswordHasher
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from starlette.testclient import TestClient

from app import passwords, sessions
from app.db import Database
from app.models import AuthorizationCode, PendingFlow, Token, User
from tests.conftest import Clock
from tests.factories import ClientInfo, authorize_params, create_client, create_user, pkce, query_of

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
EVIL_URI = "https://evil.example/callback"
HUGE = "x" * 10 * 1024
EXAMPLES = int(os.environ.get("BATON_FUZZ_EXAMPLES", "40"))

# Raw (already percent-encoded) values; the test client sends them as they are.
BAD_ENCODINGS = {
    "bad escape %ZZ": "%ZZ",
    "invalid UTF-8 %C3%28": "%C3%28",
    "NUL %00": "%00",
    "non-ASCII é": "caf%C3%A9",
    "non-ASCII 日本": "%E6%97%A5%E6%9C%AC",
}

AUTHORIZE_PARAMETERS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
)
TOKEN_PARAMETERS = ("grant_type", "code", "redirect_uri", "client_id", "code_verifier")

# A different, plausible value of each parameter, for a second occurrence.
OTHER_VALUE = {
    "response_type": "token",
    "client_id": "no-such-client",
    "redirect_uri": EVIL_URI,
    "scope": "write",
    "state": "another-state",
    "code_challenge": pkce().challenge,
    "code_challenge_method": "plain",
    "grant_type": "refresh_token",
    "code": "another-code",
    "code_verifier": pkce().verifier,
}


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2id at its lowest cost: nothing here checks a password, and the
    hash every app start computes would otherwise dominate these short tests."""
    monkeypatch.setattr(
        passwords, "_argon2", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    )


# -- malformed requests ----------------------------------------------------------------


def malformations(name: str, params: dict[str, str]) -> dict[str, str]:
    """The malformed variants of a valid request (``params``), all spoiling
    parameter ``name``: description → query string (or form body)."""
    valid = urlencode(params)
    others = urlencode([(k, v) for k, v in params.items() if k != name])
    again = urlencode({name: params[name]})
    other = urlencode({name: OTHER_VALUE[name]})
    variants = {
        f"{name} twice": f"{valid}&{again}",
        f"{name} twice, differing": f"{valid}&{other}",
        f"{name} twice, differing first": f"{other}&{valid}",
        f"{name} of 10 kB": f"{others}&{name}={HUGE}",
    }
    for label, raw in BAD_ENCODINGS.items():
        variants[f"{name} {label}"] = f"{others}&{name}={raw}"
    return variants


def assert_oauth_error(response: httpx2.Response, *, redirect_uris: tuple[str, ...] = ()) -> str:
    """A JSON error with a 4xx, or (where ``redirect_uris`` are given) a 302 to
    one of them carrying ``error``; returns the error code."""
    assert response.status_code < 500, response.text
    if response.status_code == 302:
        location = response.headers["location"]
        parts = urlsplit(location)
        target = f"{parts.scheme}://{parts.netloc}{parts.path}"
        assert target in redirect_uris, f"302 to {location[:120]!r}, not an error to the client"
        query = parse_qs(parts.query)
        assert "error" in query, f"302 to the client without an error: {location[:120]!r}"
        assert "code" not in query, location
        return query["error"][0]
    assert 400 <= response.status_code < 500, f"{response.status_code}: {response.text[:200]}"
    content_type = response.headers["content-type"].split(";")[0]
    assert content_type == "application/json", f"{content_type}: {response.text[:200]}"
    error = response.json()["error"]
    assert isinstance(error, str), error
    assert error, response.text
    return error


def rows(database: Database) -> tuple[int, ...]:
    """Pending flows, unspent codes and tokens: what a request may write."""
    with database.transaction() as db:
        return tuple(
            db.scalar(select(func.count()).select_from(model).where(*where)) or 0
            for model, where in (
                (PendingFlow, ()),
                (AuthorizationCode, (AuthorizationCode.used_at.is_(None),)),
                (Token, ()),
            )
        )


def check_each(
    variants: dict[str, str],
    send: Callable[[str], httpx2.Response],
    database: Database,
    redirect_uris: tuple[str, ...] = (),
) -> None:
    """Send every variant; fail with the list of those not answered with an
    RFC 6749 error, or that wrote anything."""
    failures = []
    for label, variant in variants.items():
        before = rows(database)
        try:
            assert_oauth_error(send(variant), redirect_uris=redirect_uris)
            assert rows(database) == before, "it wrote a flow, a code or a token"
        except AssertionError as failure:
            failures.append(f"{label}: {failure}".splitlines()[0])
        except Exception as error:  # what the app did not handle is a 500
            failures.append(f"{label}: 500, {type(error).__name__}: {error}".splitlines()[0])
    assert not failures, "\n".join(failures)


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture
def app_client(database: Database) -> ClientInfo:
    return create_client(database)


def sign_in_directly(client: TestClient, database: Database, clock: Clock) -> None:
    """A live session for alice, without a password login."""
    create_user(database)
    with database.transaction() as db:
        user_id = db.scalars(select(User.id).where(User.username == "alice")).one()
        session = sessions.create(db=db, user_id=user_id, now=clock(), duration=timedelta(hours=1))
    client.cookies.set(sessions.COOKIE_NAME, session.secret)


@pytest.fixture(params=["anonymous", "signed in"])
def browser(
    request: pytest.FixtureRequest, client: TestClient, database: Database, clock: Clock
) -> TestClient:
    """A browser without a session (a valid request pauses for login) and one
    with alice signed in (a valid request gets a code at once)."""
    if request.param == "signed in":
        sign_in_directly(client, database, clock)
    return client


@pytest.fixture
def token_form(
    client: TestClient, database: Database, clock: Clock, app_client: ClientInfo
) -> dict[str, str]:
    """A valid token request for a fresh authorization code."""
    sign_in_directly(client, database, clock)
    challenge = pkce()
    params = authorize_params(app_client, challenge)
    response = client.get("/oauth2/authorize", params=params, follow_redirects=False)
    assert response.status_code == 302, response.text
    return {
        "grant_type": "authorization_code",
        "code": query_of(response.headers["location"])["code"],
        "redirect_uri": app_client.redirect_uri,
        "client_id": app_client.client_id,
        "code_verifier": challenge.verifier,
    }


def exchange(client: TestClient, body: str, auth: tuple[str, str] | None = None) -> httpx2.Response:
    if auth is None:
        return client.post("/oauth2/token", content=body, headers=FORM)
    return client.post("/oauth2/token", content=body, headers=FORM, auth=auth)


# -- the authorization endpoint --------------------------------------------------------


def test_the_requests_to_spoil_are_accepted(browser: TestClient, app_client: ClientInfo) -> None:
    """The control: unspoiled, the request pauses for login or gets a code."""
    params = authorize_params(app_client, pkce())
    response = browser.get("/oauth2/authorize?" + urlencode(params), follow_redirects=False)
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(("/login?redirection_token=", app_client.redirect_uri + "?code="))


@pytest.mark.parametrize("name", AUTHORIZE_PARAMETERS)
def test_malformed_authorization_requests_get_an_error(
    browser: TestClient, database: Database, app_client: ClientInfo, name: str
) -> None:
    variants = malformations(name, authorize_params(app_client, pkce()))

    def send(query: str) -> httpx2.Response:
        return browser.get("/oauth2/authorize?" + query, follow_redirects=False)

    check_each(variants, send, database, redirect_uris=(app_client.redirect_uri,))


# Values of optional parameters that each once got a 500: echoed into an error
# description that authlib refuses, too long for the column that stores it,
# holding NUL (PostgreSQL's text cannot) or not parseable as a URI.
ODD_OPTIONAL_VALUES = {
    "prompt with a quote": "prompt=%22",
    "prompt with a backslash": "prompt=%5C",
    "prompt non-ASCII": "prompt=caf%C3%A9",
    "prompt NUL": "prompt=login%00",
    "nonce of 256 characters": "nonce=" + "n" * 256,
    "resource with NUL": "resource=https%3A%2F%2Fapi.example%2F%00",
    "resource not a URI": "resource=https%3A%2F%2F%5B%3A%3A1%2F",
    "flow NUL": "flow=%00",
    "flow with a control character": "flow=a%01b",
    "login_hint with a control character": "login_hint=a%7Fb",
}


def test_odd_optional_parameters_get_an_error(
    browser: TestClient, database: Database, app_client: ClientInfo
) -> None:
    valid = urlencode(authorize_params(app_client, pkce()))
    variants = {label: f"{valid}&{extra}" for label, extra in ODD_OPTIONAL_VALUES.items()}

    def send(query: str) -> httpx2.Response:
        return browser.get("/oauth2/authorize?" + query, follow_redirects=False)

    check_each(variants, send, database, redirect_uris=(app_client.redirect_uri,))


# -- the token endpoint ----------------------------------------------------------------


@pytest.mark.parametrize("name", TOKEN_PARAMETERS)
def test_malformed_token_requests_get_an_error(
    client: TestClient, database: Database, token_form: dict[str, str], name: str
) -> None:
    """Refused without spending the code: the well-formed request then succeeds."""
    check_each(malformations(name, token_form), lambda body: exchange(client, body), database)

    assert exchange(client, urlencode(token_form)).status_code == 200


def test_malformed_basic_credentials_get_an_error(
    client: TestClient, database: Database, token_form: dict[str, str]
) -> None:
    """RFC 6749 §2.3.1: HTTP Basic client credentials whose client id cannot exist."""
    body = urlencode({k: v for k, v in token_form.items() if k != "client_id"})
    client_ids = {"NUL": "\x00", "non-ASCII": "caf\u00e9", "10 kB": HUGE, "empty": ""}
    variants = {f"Basic client id {label}": client_id for label, client_id in client_ids.items()}

    check_each(variants, lambda client_id: exchange(client, body, (client_id, "secret")), database)

    assert exchange(client, urlencode(token_form)).status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param("Basic /w==", id="not UTF-8"),
        pytest.param("Basic 6Tp4", id="not UTF-8 before the colon"),
        pytest.param("Basic \u00e9\u00e9\u00e9\u00e9".encode("latin-1"), id="not ASCII"),
        pytest.param("Basic ", id="nothing after the scheme"),
        pytest.param("basic \t", id="only whitespace after the scheme"),
    ],
)
@pytest.mark.parametrize("path", ["/oauth2/token", "/oauth2/introspect", "/oauth2/revoke"])
def test_unreadable_basic_credentials_get_invalid_client(
    client: TestClient,
    database: Database,
    token_form: dict[str, str],
    authorization: str | bytes,
    path: str,
) -> None:
    """RFC 7617 §2: base64 of UTF-8 ``id:secret``; what is not is refused as
    invalid_client (RFC 6749 §5.2), not a 500."""
    before = rows(database)

    response = client.post(
        path, content=urlencode(token_form), headers={**FORM, "Authorization": authorization}
    )

    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"] == "Basic"
    assert rows(database) == before
    assert exchange(client, urlencode(token_form)).status_code == 200


def test_a_resource_that_is_not_a_uri_gets_invalid_target(
    client: TestClient, database: Database, token_form: dict[str, str]
) -> None:
    for resource in ("https://[::1/", "https://api.example/\x00"):
        response = exchange(client, urlencode({**token_form, "resource": resource}))
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_target"

    assert exchange(client, urlencode(token_form)).status_code == 200


# -- anything at all -------------------------------------------------------------------


@st.composite
def authorization_queries(draw: st.DrawFn, valid: dict[str, str]) -> str:
    """A valid request's parameters, some dropped, repeated or replaced by junk."""
    junk = st.one_of(
        st.text(max_size=20).map(lambda text: quote(text, safe="")),
        st.sampled_from([*BAD_ENCODINGS.values(), HUGE, quote(EVIL_URI, safe="")]),
    )
    pairs: list[str] = []
    for name, value in valid.items():
        for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2]))):
            kept = draw(st.booleans())
            pairs.append(f"{name}={quote(value, safe='') if kept else draw(junk)}")
    extra = draw(st.lists(st.tuples(st.sampled_from(AUTHORIZE_PARAMETERS), junk), max_size=2))
    pairs += [f"{name}={value}" for name, value in extra]
    return "&".join(draw(st.permutations(pairs)))


def test_any_authorization_request_gets_a_sound_answer(
    browser: TestClient, app_client: ClientInfo
) -> None:
    """Whatever the query: no 5xx, no redirect but to the login page or to the
    registered redirect URI, and a repeated parameter is never accepted."""
    valid = authorize_params(app_client, pkce())

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(query=authorization_queries(valid))
    def check(query: str) -> None:
        note(f"GET /oauth2/authorize?{query[:500]}")
        response = browser.get("/oauth2/authorize?" + query, follow_redirects=False)
        names = [pair.partition("=")[0] for pair in query.split("&")]
        location = response.headers.get("location", "")
        if response.status_code == 302 and len(names) == len(set(names)):
            if location.startswith("/login?"):
                assert query_of(location)["redirection_token"]
                return
            if location.startswith(app_client.redirect_uri + "?code="):
                return
        assert_oauth_error(response, redirect_uris=(app_client.redirect_uri,))

    check()
