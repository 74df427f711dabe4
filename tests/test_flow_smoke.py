"""The core loop in process: authorize → pending flow → login → resume → token."""

from __future__ import annotations

from starlette.testclient import TestClient

from app.db import Database
from tests.factories import PASSWORD, authorize_params, create_client, create_user, pkce, query_of


def test_authorize_login_resume_token(client: TestClient, database: Database) -> None:
    create_user(database)
    app_client = create_client(database)
    challenge = pkce()
    params = authorize_params(app_client, challenge)

    paused = client.get("/oauth2/authorize", params=params, follow_redirects=False)
    assert paused.status_code == 302
    location = paused.headers["location"]
    assert location.startswith("/login?redirection_token=")
    token = query_of(location)["redirection_token"]

    login = client.post(
        "/api/v1/login",
        json={"username": "alice", "password": PASSWORD, "redirection_token": token},
    )
    assert login.status_code == 200, login.text
    redir_to = login.json()["redir_to"]
    assert redir_to.startswith("/oauth2/authorize?")

    resumed = client.get(redir_to, follow_redirects=False)
    assert resumed.status_code == 302
    callback = query_of(resumed.headers["location"])
    assert resumed.headers["location"].startswith(app_client.redirect_uri + "?")
    assert callback["state"] == params["state"]

    exchanged = client.post(
        "/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": callback["code"],
            "redirect_uri": app_client.redirect_uri,
            "client_id": app_client.client_id,
            "code_verifier": challenge.verifier,
        },
    )
    assert exchanged.status_code == 200, exchanged.text
    body = exchanged.json()
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "read"
    assert body["expires_in"] == 3600

    client.cookies.clear()
    me = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json()["username"] == "alice"
