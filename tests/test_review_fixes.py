"""Defences added after the security review (SECURITY.md): re-login ends the
old session, a password change ends access tokens, repeated authorize
parameters, access-log injection, proxy addresses and audit retention."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from starlette.testclient import TestClient

from app import audit
from app.cli import main as baton
from app.db import Database
from app.models import AuditEvent
from app.purge import purge_periodically
from app.settings import Settings, SettingsError
from tests.conftest import Clock
from tests.factories import PASSWORD, authorize_params, create_client, create_user, pkce, query_of


def sign_in(client: TestClient, username: str = "alice") -> None:
    response = client.post("/api/v1/login", json={"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.text


def test_logging_in_again_ends_the_previous_session(client: TestClient, database: Database) -> None:
    create_user(database)
    sign_in(client)
    old = client.cookies["session_id"]
    sign_in(client)
    assert client.get("/api/v1/users/me").status_code == 200
    client.cookies.set("session_id", old, domain="baton.test")
    assert client.get("/api/v1/users/me").status_code == 401


def test_a_password_change_ends_access_tokens(
    client: TestClient, database: Database, database_url: str
) -> None:
    create_user(database)
    app = create_client(database)
    challenge = pkce()
    sign_in(client)
    issued = client.get(
        "/oauth2/authorize", params=authorize_params(app, challenge), follow_redirects=False
    )
    token = client.post(
        "/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": query_of(issued.headers["location"])["code"],
            "redirect_uri": app.redirect_uri,
            "client_id": app.client_id,
            "code_verifier": challenge.verifier,
        },
    ).json()["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    client.cookies.clear()
    assert client.get("/api/v1/users/me", headers=bearer).status_code == 200
    result = CliRunner().invoke(
        baton,
        ["--database-url", database_url, "users", "passwd", "alice", "--password-stdin"],
        input="a new password\n",
    )
    assert result.exit_code == 0, result.output
    assert client.get("/api/v1/users/me", headers=bearer).status_code == 401


@pytest.mark.parametrize("name", ["nonce", "code_challenge_method", "state", "scope"])
def test_repeated_authorize_parameters_are_refused(
    client: TestClient, database: Database, name: str
) -> None:
    app = create_client(database)
    params = [*authorize_params(app, pkce(), nonce="n1").items(), (name, "again")]
    response = client.get("/oauth2/authorize", params=params, follow_redirects=False)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert "location" not in response.headers


def test_the_access_log_cannot_be_forged(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="baton.access"):
        client.get("/login%0AGET%20/forged%20200")
    lines = [r.getMessage() for r in caplog.records if r.name == "baton.access"]
    assert len(lines) == 1
    assert "\n" not in lines[0]
    assert "%0A" in lines[0]


def test_trusted_proxies() -> None:
    settings = Settings.from_env({"BATON_TRUSTED_PROXIES": "10.0.0.1, 192.168.0.0/16"})
    assert settings.trusted_proxies == ("10.0.0.1", "192.168.0.0/16")
    with pytest.raises(SettingsError, match="BATON_TRUSTED_PROXIES"):
        Settings.from_env({"BATON_TRUSTED_PROXIES": "proxy.local"})


def test_audit_events_are_kept_for_the_retention_only(database: Database, clock: Clock) -> None:
    with database.transaction() as db:
        audit.record(db=db, event="old", now=clock() - timedelta(days=91))
        audit.record(db=db, event="recent", now=clock() - timedelta(days=1))

    async def run() -> None:
        task = asyncio.create_task(
            purge_periodically(
                database,
                clock,
                interval=timedelta(milliseconds=10),
                older_than=timedelta(hours=24),
                audit_retention=timedelta(days=90),
            )
        )
        try:
            for _ in range(500):
                await asyncio.sleep(0.01)
                with database.transaction() as db:
                    if db.scalar(select(func.count()).select_from(AuditEvent)) == 1:
                        return
            pytest.fail("old audit events were never forgotten")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(run())
    with database.transaction() as db:
        assert list(db.scalars(select(AuditEvent.event))) == ["recent"]
