"""The consent step (issue 3): a pending flow of kind ``consent``, the consent
API, remembered grants, ``prompt`` and ``max_age``, and the user's grants —
in process, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import httpx2
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from app.db import Database
from app.main import create_app
from app.models import Grant, PendingFlow, Token
from app.settings import Settings
from tests.conftest import BASE_URL, Clock
from tests.factories import (
    PASSWORD,
    ClientInfo,
    authorize_params,
    create_client,
    create_user,
    pkce,
    query_of,
)
from tests.openapi import assert_documented
from tests.test_oauth import authorize, callback_of, exchange, me, redirection_token, sign_in

# -- helpers -------------------------------------------------------------------


def consent_token(response: httpx2.Response) -> str:
    """The token of a request paused for consent (a redirect to the consent page)."""
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith("/consent?redirection_token="), location
    return query_of(location)["redirection_token"]


def describe(browser: TestClient, token: str) -> httpx2.Response:
    response = browser.get("/api/v1/consent", params={"redirection_token": token})
    assert_documented(response, "/api/v1/consent", "GET")
    return response


def decide(browser: TestClient, token: str, approve: bool, **extra: Any) -> httpx2.Response:
    response = browser.post(
        "/api/v1/consent", json={"redirection_token": token, "approve": approve, **extra}
    )
    assert_documented(response, "/api/v1/consent", "POST")
    return response


def start(browser: TestClient, app: ClientInfo, **extra: str) -> tuple[dict[str, str], Any]:
    """authorize → (login and resume when there is no session); the response
    that follows the login step, with the request's parameters."""
    challenge = pkce()
    params = authorize_params(app, challenge, **extra)
    response = authorize(browser, params)
    if response.headers.get("location", "").startswith("/login?"):
        resume = sign_in(browser, redirection_token(response))
        assert resume is not None
        response = browser.get(resume, follow_redirects=False)
    return params | {"code_verifier": challenge.verifier}, response


def follow(browser: TestClient, redir_to: str) -> httpx2.Response:
    assert redir_to.startswith("/oauth2/authorize?"), redir_to
    return browser.get(redir_to, follow_redirects=False)


def token_for(browser: TestClient, params: Mapping[str, str], code: str) -> dict[str, Any]:
    response = exchange(
        browser,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": params["redirect_uri"],
            "client_id": params["client_id"],
            "code_verifier": params["code_verifier"],
        },
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def grants_of(database: Database) -> list[Grant]:
    with database.transaction() as db:
        rows = list(db.scalars(select(Grant).order_by(Grant.id)))
        db.expunge_all()
        return rows


# -- fixtures ------------------------------------------------------------------


@pytest.fixture
def alice(database: Database) -> None:
    create_user(database)


@pytest.fixture
def third_party(database: Database) -> ClientInfo:
    return create_client(database, first_party=False, name="Notes CLI", scope="read write")


# -- consent -------------------------------------------------------------------


def test_approval_resumes_and_issues_the_code(
    client: TestClient, alice: None, third_party: ClientInfo, database: Database
) -> None:
    params, response = start(client, third_party, scope="read write")
    token = consent_token(response)

    described = describe(client, token)
    assert described.status_code == 200
    document = described.json()
    assert document["status"] == "pending"
    assert document["username"] == "alice"
    assert document["client"] == {"client_id": third_party.client_id, "name": "Notes CLI"}
    assert [s["name"] for s in document["scopes"]] == ["read", "write"]
    assert all(s["description"] for s in document["scopes"])
    assert 0 < document["expires_in"] <= 600

    answer = decide(client, token, True)
    assert answer.status_code == 200, answer.text
    callback = callback_of(follow(client, answer.json()["redir_to"]), params)
    assert "error" not in callback
    issued = token_for(client, params, callback["code"])
    assert issued["scope"] == "read write"
    assert me(client, issued["access_token"]).status_code == 200
    [grant] = grants_of(database)
    assert grant.scope == "read write"
    assert grant.revoked_at is None


def test_denial_sends_access_denied_to_the_client(
    client: TestClient, alice: None, third_party: ClientInfo, database: Database
) -> None:
    params, response = start(client, third_party)
    answer = decide(client, consent_token(response), False)
    assert answer.status_code == 200
    callback = callback_of(follow(client, answer.json()["redir_to"]), params)
    assert callback["error"] == "access_denied"
    assert "code" not in callback
    assert grants_of(database) == []


def test_a_grant_covers_the_same_or_fewer_scopes_but_not_more(
    client: TestClient, alice: None, third_party: ClientInfo
) -> None:
    _, response = start(client, third_party, scope="read write")
    follow(client, decide(client, consent_token(response), True).json()["redir_to"])

    for scope in ("read write", "read", "write read"):
        params, response = start(client, third_party, scope=scope)
        assert "code" in callback_of(response, params), scope

    third_party_more = create_client_scope(client, third_party)
    _, response = start(client, third_party_more, scope="read admin")
    consent_token(response)


def create_client_scope(client: TestClient, app: ClientInfo) -> ClientInfo:
    """The same client, now also allowed the ``admin`` scope."""
    database: Database = client.app.state.services.database  # type: ignore[attr-defined]
    from app import clients

    with database.transaction() as db:
        clients.update_metadata(db=db, client_id=app.client_id, scope="read write admin")
    return app


def test_the_user_may_approve_fewer_scopes(
    client: TestClient, alice: None, third_party: ClientInfo, database: Database
) -> None:
    params, response = start(client, third_party, scope="read write")
    answer = decide(client, consent_token(response), True, scopes=["read"])
    assert answer.status_code == 200, answer.text
    callback = callback_of(follow(client, answer.json()["redir_to"]), params)
    params = params | {"scope": "read"}
    assert token_for(client, params, callback["code"])["scope"] == "read"
    [grant] = grants_of(database)
    assert grant.scope == "read"
    # Asking for "write" later asks again; "read" alone does not.
    _, response = start(client, third_party, scope="write")
    consent_token(response)


def test_offline_access_left_out_means_no_refresh_token_until_approved(
    client: TestClient, alice: None, database: Database
) -> None:
    """OpenID Connect Core §11: ``offline_access`` asks for a refresh token.
    Asked and left out by the user, none is issued under that grant, even when
    the client stops asking; approved later, refresh tokens come back."""
    app = create_client(database, first_party=False, scope="read offline_access")

    def tokens_after(answer: dict[str, Any] | None, scope: str) -> dict[str, Any]:
        params, response = start(client, app, scope=scope)
        if answer is not None:
            response = follow(
                client, decide(client, consent_token(response), **answer).json()["redir_to"]
            )
        return token_for(client, params, callback_of(response, params)["code"])

    declined = tokens_after({"approve": True, "scopes": ["read"]}, "read offline_access")
    assert declined["scope"] == "read"
    assert "refresh_token" not in declined
    [grant] = grants_of(database)
    assert grant.refresh_declined

    # The grant covers "read": no question, and still no refresh token.
    assert "refresh_token" not in tokens_after(None, "read")

    approved = tokens_after({"approve": True}, "read offline_access")
    assert approved["scope"] == "read offline_access"
    assert "refresh_token" in approved
    assert "refresh_token" in tokens_after(None, "read")
    [grant] = grants_of(database)
    assert not grant.refresh_declined

    # Asked again (prompt=consent) and left out this time: the grant no longer
    # covers offline_access, so asking for it brings the question back.
    _, response = start(client, app, scope="read offline_access", prompt="consent")
    decide(client, consent_token(response), True, scopes=["read"])
    [grant] = grants_of(database)
    assert (grant.scope, grant.refresh_declined) == ("read", True)
    _, response = start(client, app, scope="read offline_access")
    assert consent_token(response)


def test_a_client_that_never_asks_for_offline_access_gets_refresh_tokens(
    client: TestClient, alice: None, third_party: ClientInfo
) -> None:
    """What an MCP client expects: refresh tokens by its grant type alone."""
    params, response = start(client, third_party, scope="read")
    answer = decide(client, consent_token(response), True)
    issued = token_for(
        client, params, callback_of(follow(client, answer.json()["redir_to"]), params)["code"]
    )
    assert "refresh_token" in issued


def test_scopes_that_were_not_requested_cannot_be_approved(
    client: TestClient, alice: None, third_party: ClientInfo, database: Database
) -> None:
    _, response = start(client, third_party, scope="read")
    token = consent_token(response)
    refused = decide(client, token, True, scopes=["read", "write"])
    assert refused.status_code == 400
    [field] = refused.json()["invalid_fields"]
    assert field["pointer"] == "/scopes/1"
    empty = decide(client, token, True, scopes=[])
    assert empty.status_code == 400
    assert grants_of(database) == []
    # Nothing was consumed: the user can still answer.
    assert decide(client, token, True).status_code == 200


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"approve": True}, "/redirection_token"),
        ({"redirection_token": "x"}, "/approve"),
        ({"redirection_token": "x", "approve": "yes"}, "/approve"),
        ({"redirection_token": "x", "approve": True, "scopes": "read"}, "/scopes"),
        ({"redirection_token": "", "approve": True}, "/redirection_token"),
    ],
)
def test_malformed_decisions_are_validation_problems(
    client: TestClient, alice: None, body: dict[str, Any], pointer: str
) -> None:
    sign_in(client)
    response = client.post("/api/v1/consent", json=body)
    assert response.status_code == 400, response.text
    assert_documented(response, "/api/v1/consent", "POST")
    assert [f["pointer"] for f in response.json()["invalid_fields"]] == [pointer]


def test_a_decision_is_taken_once_and_a_retry_gets_the_same_answer(
    client: TestClient, alice: None, third_party: ClientInfo
) -> None:
    params, response = start(client, third_party)
    token = consent_token(response)
    first = decide(client, token, True).json()["redir_to"]
    # A double click: the same answer, not an error, even if it says otherwise.
    assert decide(client, token, False).json()["redir_to"] == first
    assert "code" in callback_of(follow(client, first), params)
    # Once the request resumed, the token is spent for good.
    late = decide(client, token, True)
    assert late.status_code == 400
    assert late.json()["invalid_fields"][0]["error"] == "reference_not_found"
    assert describe(client, token).json()["status"] == "completed"
    # And the resume URL does not issue a second code.
    assert follow(client, first).status_code == 400


def test_another_browser_or_user_cannot_use_the_consent_token(
    client: TestClient,
    alice: None,
    third_party: ClientInfo,
    settings: Settings,
    clock: Clock,
    database: Database,
) -> None:
    _, response = start(client, third_party)
    token = consent_token(response)

    create_user(database, "mallory")
    with TestClient(create_app(settings, clock=clock), base_url=BASE_URL) as other:
        assert describe(other, token).status_code == 401  # no session at all
        assert decide(other, token, True).status_code == 401
        signed = other.post("/api/v1/login", json={"username": "mallory", "password": PASSWORD})
        assert signed.status_code == 200
        assert describe(other, token).json()["status"] == "unknown"
        refused = decide(other, token, True)
        assert refused.status_code == 400
        assert refused.json()["invalid_fields"][0]["error"] == "reference_not_found"

    # Mallory signing in in alice's browser does not make alice's request hers.
    assert sign_in_as(client, "mallory") is None
    assert describe(client, token).json()["status"] == "unknown"
    assert decide(client, token, True).status_code == 400
    assert grants_of(database) == []


def sign_in_as(browser: TestClient, username: str) -> str | None:
    response = browser.post("/api/v1/login", json={"username": username, "password": PASSWORD})
    assert response.status_code == 200
    redir_to: str | None = response.json().get("redir_to")
    return redir_to


def test_an_expired_consent_request_can_be_restarted(
    client: TestClient, alice: None, third_party: ClientInfo, clock: Clock
) -> None:
    params, response = start(client, third_party)
    token = consent_token(response)
    clock.advance(timedelta(minutes=11))
    document = describe(client, token).json()
    assert document["status"] == "expired"
    refused = decide(client, token, True)
    assert refused.json()["invalid_fields"][0]["error"] == "reference_not_found"
    restarted = client.get(document["restart_url"], follow_redirects=False)
    answer = decide(client, consent_token(restarted), True)
    assert "code" in callback_of(follow(client, answer.json()["redir_to"]), params)


def test_first_party_clients_are_not_asked_but_their_grant_is_listed(
    client: TestClient, alice: None, database: Database
) -> None:
    first_party = create_client(database, name="Console")
    params, response = start(client, first_party)
    assert "code" in callback_of(response, params)
    listed = client.get("/api/v1/users/me/oauth2/authorizations")
    assert [g["app_name"] for g in listed.json()] == ["Console"]


def test_a_first_party_grant_grows_and_starts_again_at_each_authorization(
    make_settings: Any, clock: Clock, alice: None, database: Database
) -> None:
    """A later request for more scopes widens the user's one grant, and its
    lifetime starts again; the code issued then carries the widened grant
    (a refresh token of it lives until the renewed end)."""
    first_party = create_client(database, name="Console")
    lifetime = timedelta(hours=2)
    settings = make_settings(grant_lifetime=lifetime, session_duration=timedelta(days=1))
    with TestClient(create_app(settings, clock=clock), base_url=BASE_URL) as browser:
        start(browser, first_party, scope="read")
        [grant] = grants_of(database)
        assert (grant.scope, grant.expires_at) == ("read", clock.now + lifetime)

        clock.advance(timedelta(hours=1))
        params, response = start(browser, first_party, scope="write")
        body = token_for(browser, params, callback_of(response, params)["code"])

    [grant] = grants_of(database)
    assert grant.scope == "read write"
    assert (grant.updated_at, grant.expires_at) == (clock.now, clock.now + lifetime)
    assert body["scope"] == "write"
    with database.transaction() as db:
        token = db.scalars(select(Token).where(Token.grant_id == grant.id)).one()
        assert token.refresh_expires_at == clock.now + lifetime


def test_grants_expire_after_their_lifetime(
    make_settings: Any, clock: Clock, alice: None, third_party: ClientInfo
) -> None:
    settings = make_settings(grant_lifetime=timedelta(hours=2), session_duration=timedelta(days=1))
    with TestClient(create_app(settings, clock=clock), base_url=BASE_URL) as browser:
        _, response = start(browser, third_party)
        follow(browser, decide(browser, consent_token(response), True).json()["redir_to"])
        params, response = start(browser, third_party)
        assert "code" in callback_of(response, params)
        clock.advance(timedelta(hours=2, minutes=1))
        browser.cookies.clear()
        _, response = start(browser, third_party)
        consent_token(response)


# -- prompt and max_age (OpenID Connect Core 1.0 §3.1.2.1) ---------------------


def test_prompt_consent_asks_again_despite_a_grant_and_does_not_loop(
    client: TestClient, alice: None, third_party: ClientInfo
) -> None:
    _, response = start(client, third_party)
    follow(client, decide(client, consent_token(response), True).json()["redir_to"])
    params, response = start(client, third_party, prompt="consent")
    answer = decide(client, consent_token(response), True)
    assert "code" in callback_of(follow(client, answer.json()["redir_to"]), params)


def test_prompt_login_asks_to_sign_in_again_and_does_not_loop(
    client: TestClient, alice: None, database: Database
) -> None:
    first_party = create_client(database)
    assert sign_in(client) is None
    params = authorize_params(first_party, pkce(), prompt="login")
    response = authorize(client, params)
    resume = sign_in(client, redirection_token(response))
    assert resume is not None
    assert "code" in callback_of(client.get(resume, follow_redirects=False), params)


def test_prompt_none_without_a_session_is_login_required(
    client: TestClient, alice: None, third_party: ClientInfo, database: Database
) -> None:
    params = authorize_params(third_party, pkce(), prompt="none")
    callback = callback_of(authorize(client, params), params)
    assert callback["error"] == "login_required"
    with database.transaction() as db:
        assert db.scalars(select(PendingFlow)).all() == []


def test_prompt_none_without_a_grant_is_consent_required_and_with_one_a_code(
    client: TestClient, alice: None, third_party: ClientInfo
) -> None:
    assert sign_in(client) is None
    params = authorize_params(third_party, pkce(), prompt="none")
    assert callback_of(authorize(client, params), params)["error"] == "consent_required"
    _, response = start(client, third_party)
    follow(client, decide(client, consent_token(response), True).json()["redir_to"])
    params = authorize_params(third_party, pkce(), prompt="none")
    assert "code" in callback_of(authorize(client, params), params)


@pytest.mark.parametrize("prompt", ["none login", "sometimes", "none consent"])
def test_invalid_prompts_are_refused_at_the_redirect_uri(
    client: TestClient, alice: None, third_party: ClientInfo, prompt: str
) -> None:
    params = authorize_params(third_party, pkce(), prompt=prompt)
    assert callback_of(authorize(client, params), params)["error"] == "invalid_request"


@pytest.mark.parametrize("max_age", ["-1", "soon", "1e3", "99999999999"])
def test_invalid_max_age_is_refused(
    client: TestClient, alice: None, third_party: ClientInfo, max_age: str
) -> None:
    params = authorize_params(third_party, pkce(), max_age=max_age)
    assert callback_of(authorize(client, params), params)["error"] == "invalid_request"


def test_max_age_asks_for_a_fresh_login_when_the_session_is_older(
    client: TestClient, alice: None, database: Database, clock: Clock
) -> None:
    first_party = create_client(database)
    assert sign_in(client) is None
    clock.advance(timedelta(minutes=10))
    fresh_enough = authorize_params(first_party, pkce(), max_age="3600")
    assert "code" in callback_of(authorize(client, fresh_enough), fresh_enough)
    too_old = authorize_params(first_party, pkce(), max_age="300")
    resume = sign_in(client, redirection_token(authorize(client, too_old)))
    assert resume is not None
    assert "code" in callback_of(client.get(resume, follow_redirects=False), too_old)


def test_max_age_zero_always_asks_to_sign_in_once(
    client: TestClient, alice: None, database: Database
) -> None:
    first_party = create_client(database)
    assert sign_in(client) is None
    params = authorize_params(first_party, pkce(), max_age="0")
    resume = sign_in(client, redirection_token(authorize(client, params)))
    assert resume is not None
    assert "code" in callback_of(client.get(resume, follow_redirects=False), params)


# -- the user's grants ---------------------------------------------------------


def test_the_user_lists_and_revokes_grants_and_their_tokens(
    client: TestClient, alice: None, third_party: ClientInfo, database: Database
) -> None:
    params, response = start(client, third_party)
    answer = decide(client, consent_token(response), True)
    callback = callback_of(follow(client, answer.json()["redir_to"]), params)
    issued = token_for(client, params, callback["code"])
    assert sign_in(client) is None  # me() cleared the cookies; sign back in

    listed = client.get("/api/v1/users/me/oauth2/authorizations")
    assert_documented(listed, "/api/v1/users/me/oauth2/authorizations", "GET")
    [grant] = listed.json()
    assert grant["app_client_id"] == third_party.client_id
    assert grant["app_name"] == "Notes CLI"
    assert grant["scope"] == "read"

    revoked = client.delete(f"/api/v1/users/me/oauth2/authorizations/{grant['grant_id']}")
    assert revoked.status_code == 204
    assert client.get("/api/v1/users/me/oauth2/authorizations").json() == []
    assert me(client, issued["access_token"]).status_code == 401
    refreshed = exchange(
        client,
        {
            "grant_type": "refresh_token",
            "refresh_token": issued["refresh_token"],
            "client_id": third_party.client_id,
        },
    )
    assert refreshed.status_code == 400
    assert refreshed.json()["error"] == "invalid_grant"
    # The next request asks again.
    _, response = start(client, third_party)
    consent_token(response)


def test_grants_are_private_to_their_user(
    client: TestClient,
    alice: None,
    third_party: ClientInfo,
    settings: Settings,
    clock: Clock,
    database: Database,
) -> None:
    _, response = start(client, third_party)
    follow(client, decide(client, consent_token(response), True).json()["redir_to"])
    [grant] = client.get("/api/v1/users/me/oauth2/authorizations").json()

    create_user(database, "mallory")
    with TestClient(create_app(settings, clock=clock), base_url=BASE_URL) as other:
        path = f"/api/v1/users/me/oauth2/authorizations/{grant['grant_id']}"
        assert other.get("/api/v1/users/me/oauth2/authorizations").status_code == 401
        assert other.delete(path).status_code == 401
        assert sign_in_as(other, "mallory") is None
        assert other.get("/api/v1/users/me/oauth2/authorizations").json() == []
        refused = other.delete(path)
        assert refused.status_code == 404
        assert_documented(refused, "/api/v1/users/me/oauth2/authorizations/{grant_id}", "DELETE")
        too_long = "/api/v1/users/me/oauth2/authorizations/" + "x" * 300
        assert other.delete(too_long).status_code == 404
        # PostgreSQL's text cannot hold NUL: a lookup by one is not a 500.
        assert other.delete("/api/v1/users/me/oauth2/authorizations/a%00b").status_code == 404
    assert [g.revoked_at for g in grants_of(database)] == [None]
