"""What browser-based and multi-server clients need from the OAuth endpoints:
the ``iss`` authorization-response parameter (RFC 9207) and CORS without
credentials on the endpoints they call from their own origin."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from app.db import Database
from tests.conftest import BASE_URL
from tests.factories import authorize_params, create_client, create_user, pkce, query_of
from tests.test_oauth import authorize, redirection_token, sign_in

SPA = "https://spa.example"


@pytest.fixture
def alice(database: Database) -> None:
    create_user(database)


def test_codes_and_errors_sent_to_the_client_name_the_issuer(
    client: TestClient, alice: None, database: Database
) -> None:
    app = create_client(database)
    params = authorize_params(app, pkce())
    paused = authorize(client, params)
    assert "iss=" not in paused.headers["location"]  # Baton's own login page
    resumed = client.get(sign_in(client, redirection_token(paused)) or "", follow_redirects=False)
    callback = query_of(resumed.headers["location"])
    assert callback["iss"] == BASE_URL
    assert "code" in callback

    refused = authorize(client, authorize_params(app, pkce(), scope="admin"))
    callback = query_of(refused.headers["location"])
    assert callback["error"] == "invalid_scope"
    assert callback["iss"] == BASE_URL
    metadata = client.get("/.well-known/oauth-authorization-server").json()
    assert metadata["authorization_response_iss_parameter_supported"] is True


@pytest.mark.parametrize(
    "path",
    ["/oauth2/token", "/oauth2/revoke", "/oauth2/register", "/oauth2/userinfo", "/oauth2/jwks"],
)
def test_browser_clients_may_call_the_token_endpoints_without_credentials(
    client: TestClient, path: str
) -> None:
    preflight = client.options(
        path,
        headers={
            "Origin": SPA,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in preflight.headers
    answered = client.post(path, headers={"Origin": SPA}, data={"token": "nope"})
    assert answered.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in answered.headers


def test_discovery_is_public_and_cacheable(client: TestClient) -> None:
    for path in ("/.well-known/openid-configuration", "/oauth2/jwks"):
        response = client.get(path, headers={"Origin": SPA})
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "*"
        assert response.headers["cache-control"].startswith("public")


@pytest.mark.parametrize("path", ["/oauth2/introspect", "/oauth2/authorize", "/api/v1/login"])
def test_no_wildcard_cors_where_cookies_or_secrets_matter(client: TestClient, path: str) -> None:
    preflight = client.options(
        path, headers={"Origin": SPA, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.headers.get("access-control-allow-origin") != "*"
    assert "access-control-allow-origin" not in preflight.headers
