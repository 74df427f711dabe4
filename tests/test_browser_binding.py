"""Issue 4 in process: flows bound to their browser, several tabs, idempotent
retries, the flow endpoint for login pages, the back button, and the
cross-origin rules of /api/v1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from urllib.parse import parse_qsl, urlsplit

import httpx2
import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from app.bindings import RESTART_WINDOW
from app.db import Database
from app.main import create_app
from app.models import AuthorizationCode, BrowserSession
from app.settings import Settings, SettingsError
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

LOGIN = "/api/v1/login"
FLOW = "/api/v1/login/flow"


@pytest.fixture
def app_client(database: Database) -> ClientInfo:
    create_user(database)
    create_user(database, "bob")
    return create_client(database)


@pytest.fixture
def other_browser(settings: Settings, clock: Clock) -> Iterator[TestClient]:
    with TestClient(create_app(settings, clock=clock), base_url=BASE_URL) as browser:
        yield browser


def start(browser: TestClient, app: ClientInfo) -> str:
    paused = browser.get(
        "/oauth2/authorize", params=authorize_params(app, pkce()), follow_redirects=False
    )
    assert paused.status_code == 302, paused.text
    return query_of(paused.headers["location"])["redirection_token"]


def login(browser: TestClient, token: str, username: str = "alice") -> httpx2.Response:
    response = browser.post(
        LOGIN, json={"username": username, "password": PASSWORD, "redirection_token": token}
    )
    assert_documented(response, LOGIN)
    return response


def describe(browser: TestClient, token: str) -> dict[str, object]:
    response = browser.get(FLOW, params={"redirection_token": token})
    assert response.status_code == 200
    assert_documented(response, FLOW, "GET")
    body: dict[str, object] = response.json()
    return body


def count(database: Database, model: type[object]) -> int:
    with database.transaction() as db:
        return db.scalar(select(func.count()).select_from(model)) or 0


def assert_not_found(response: httpx2.Response) -> None:
    assert response.status_code == 400
    assert [f["error"] for f in response.json()["invalid_fields"]] == ["reference_not_found"]


def test_the_binding_cookie(client: TestClient, app_client: ClientInfo, settings: Settings) -> None:
    paused = client.get(
        "/oauth2/authorize", params=authorize_params(app_client, pkce()), follow_redirects=False
    )
    cookie = paused.headers["set-cookie"].lower()
    assert cookie.startswith("baton_binding=")
    for attribute in ["httponly", "samesite=lax", "path=/", "secure"]:
        assert attribute in cookie
    # The flow's lifetime and the hour in which an expired flow can be restarted.
    assert f"max-age={int((settings.flow_ttl + RESTART_WINDOW).total_seconds())}" in cookie


def test_a_token_stolen_into_another_browser_is_refused(
    client: TestClient, other_browser: TestClient, app_client: ClientInfo, database: Database
) -> None:
    token = start(client, app_client)
    assert_not_found(login(other_browser, token))
    assert describe(other_browser, token) == {"status": "unknown"}
    assert count(database, BrowserSession) == 0
    assert login(client, token).status_code == 200


def test_several_tabs_complete_in_either_order(
    client: TestClient, app_client: ClientInfo, database: Database
) -> None:
    second_app = create_client(database, name="Second app")
    first, second, third = (
        start(client, app_client),
        start(client, second_app),
        start(client, app_client),
    )
    assert len({c.value for c in client.cookies.jar if c.name == "baton_binding"}) == 1
    resumes = [login(client, token).json()["redir_to"] for token in (third, first, second)]
    for resume in resumes:
        done = client.get(resume, follow_redirects=False)
        assert done.status_code == 302
        assert "code=" in done.headers["location"]
    assert count(database, AuthorizationCode) == 3


def test_a_retried_login_gets_the_same_answer(
    client: TestClient, app_client: ClientInfo, clock: Clock
) -> None:
    token = start(client, app_client)
    first = login(client, token)
    again = login(client, token)
    assert again.status_code == 200
    assert again.json() == first.json()
    assert again.cookies["session_id"] != first.cookies["session_id"]
    assert_not_found(login(client, token, "bob"))
    clock.advance(timedelta(seconds=61))
    assert_not_found(login(client, token))


def test_no_retry_grace_after_the_code_was_issued(
    client: TestClient, app_client: ClientInfo
) -> None:
    token = start(client, app_client)
    resume = login(client, token).json()["redir_to"]
    client.get(resume, follow_redirects=False)
    assert_not_found(login(client, token))


def test_the_flow_endpoint_through_a_flow_s_life(
    client: TestClient, app_client: ClientInfo, clock: Clock
) -> None:
    token = start(client, app_client)
    pending = describe(client, token)
    assert pending["status"] == "pending"
    assert pending["client"] == {"client_id": app_client.client_id, "name": "Test app"}
    assert pending["scopes"] == ["read"]
    assert pending["expires_in"] == 600
    assert "restart_url" not in pending

    resume = login(client, token).json()["redir_to"]
    consumed = describe(client, token)
    assert (consumed["status"], consumed["restart_url"]) == ("consumed", resume)

    client.get(resume, follow_redirects=False)
    assert describe(client, token) == {
        "status": "completed",
        "client": pending["client"],
        "scopes": ["read"],
    }


def test_an_expired_flow_offers_a_fresh_start(
    client: TestClient, app_client: ClientInfo, clock: Clock
) -> None:
    token = start(client, app_client)
    clock.advance(timedelta(minutes=11))
    expired = describe(client, token)
    assert expired["status"] == "expired"
    restart = str(expired["restart_url"])
    assert restart.startswith("/oauth2/authorize?")
    assert "flow" not in dict(parse_qsl(urlsplit(restart).query))
    restarted = client.get(restart, follow_redirects=False)
    new_token = query_of(restarted.headers["location"])["redirection_token"]
    assert new_token != token
    assert login(client, new_token).status_code == 200


def test_the_flow_endpoint_needs_a_token(client: TestClient) -> None:
    response = client.get(FLOW)
    assert response.status_code == 400
    assert_documented(response, FLOW, "GET")
    assert describe(client, "nonsense") == {"status": "unknown"}
    assert describe(client, "x" * 1000) == {"status": "unknown"}


def test_the_back_button_never_issues_a_second_code(
    client: TestClient, app_client: ClientInfo, database: Database
) -> None:
    token = start(client, app_client)
    resume = login(client, token).json()["redir_to"]
    assert client.get(resume, follow_redirects=False).status_code == 302
    again = client.get(resume, follow_redirects=False, headers={"Accept": "text/html"})
    assert again.status_code == 400
    assert "already completed" in again.text
    assert "location" not in again.headers
    assert count(database, AuthorizationCode) == 1


# -- cross-origin rules -----------------------------------------------------------


@pytest.fixture
def spa_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        login_url="https://login.example.com/signin",
        cors_origins=("https://login.example.com",),
    )


def test_an_external_login_page_must_be_an_allowed_origin() -> None:
    with pytest.raises(SettingsError, match="BATON_CORS_ORIGINS"):
        Settings.from_env(
            {
                "BATON_PUBLIC_URL": "https://auth.example.com",
                "BATON_LOGIN_URL": "https://login.example.com/signin",
            }
        )
    with pytest.raises(SettingsError, match="BATON_CORS_ORIGINS"):
        Settings.from_env({"BATON_CORS_ORIGINS": "*"})
    settings = Settings.from_env(
        {
            "BATON_PUBLIC_URL": "https://auth.example.com",
            "BATON_LOGIN_URL": "https://login.example.com/signin",
            "BATON_CORS_ORIGINS": "https://login.example.com, https://Other.example.com:8443/",
        }
    )
    assert settings.cors_origins == ("https://login.example.com", "https://other.example.com:8443")


def test_cross_origin_login_is_refused_unless_allowed(
    spa_settings: Settings, app_client: ClientInfo, clock: Clock
) -> None:
    with TestClient(create_app(spa_settings, clock=clock), base_url=BASE_URL) as browser:
        token = start(browser, app_client)
        body = {"username": "alice", "password": PASSWORD, "redirection_token": token}
        evil = browser.post(LOGIN, json=body, headers={"Origin": "https://evil.example"})
        assert evil.status_code == 403
        assert evil.headers["content-type"] == "application/problem+json"
        assert "access-control-allow-origin" not in evil.headers
        allowed = browser.post(LOGIN, json=body, headers={"Origin": "https://login.example.com"})
        assert allowed.status_code == 200, allowed.text
        assert allowed.headers["access-control-allow-origin"] == "https://login.example.com"
        assert allowed.headers["access-control-allow-credentials"] == "true"


def test_a_cross_origin_form_post_is_refused(client: TestClient, app_client: ClientInfo) -> None:
    token = start(client, app_client)
    form = {"username": "alice", "password": PASSWORD, "redirection_token": token}
    forged = client.post(LOGIN, data=form, headers={"Origin": "https://evil.example"})
    assert forged.status_code == 403
    same_origin_form = client.post(LOGIN, data=form, headers={"Origin": BASE_URL})
    assert same_origin_form.status_code == 415
    text_plain = client.post(
        LOGIN, content=b'{"username": "alice"}', headers={"Content-Type": "text/plain"}
    )
    assert text_plain.status_code == 415
    assert login(client, token).status_code == 200


@pytest.mark.parametrize(
    ("origin", "allowed"), [("https://login.example.com", True), ("https://evil.example", False)]
)
def test_cors_preflight(spa_settings: Settings, origin: str, allowed: bool) -> None:
    with TestClient(create_app(spa_settings), base_url=BASE_URL) as browser:
        response = browser.options(
            LOGIN,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
    if allowed:
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == origin
        assert response.headers["access-control-allow-credentials"] == "true"
    else:
        assert response.headers.get("access-control-allow-origin") != origin
