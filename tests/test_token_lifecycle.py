"""What happens to tokens after the code exchange, on SQLite and PostgreSQL:
refresh with rotation and reuse detection (RFC 6749 §6, OAuth 2.1 §4.3),
revocation (RFC 7009), introspection (RFC 7662) and resource indicators
(RFC 8707)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from threading import Barrier
from typing import Any

import httpx2
import pytest
import requests
from sqlalchemy import Engine, event, select
from starlette.testclient import TestClient

from app import authorizations, clients, tokens, users
from app.db import Database, utcnow
from app.main import create_app
from app.models import AuditEvent, Grant, Token
from app.oauth import bearer
from app.settings import Settings
from tests.conftest import BASE_URL, Clock, PostgresServer
from tests.factories import ClientInfo, authorize_params, create_client, create_user, pkce
from tests.servers import serving
from tests.test_oauth import (
    assert_oauth_error,
    authorize,
    callback_of,
    count,
    exchange,
    issue_code,
    me,
    sign_in,
    snapshot,
    token_form,
)

RESOURCE = "https://mcp.example/mcp"
OTHER_RESOURCE = "https://other.example/api"


# -- helpers -------------------------------------------------------------------


@contextmanager
def baton(
    make_settings: Callable[..., Settings], clock: Clock, **overrides: Any
) -> Iterator[TestClient]:
    """An in-process Baton with some settings changed."""
    app = create_app(make_settings(**overrides), clock=clock)
    with TestClient(app, base_url=BASE_URL) as test_client:
        yield test_client


def client_auth(app_client: ClientInfo) -> tuple[dict[str, str], tuple[str, str] | None]:
    """A public client names itself in the body; a confidential one uses HTTP Basic."""
    if app_client.secret is None:
        return {"client_id": app_client.client_id}, None
    return {}, (app_client.client_id, app_client.secret)


def obtain(client: TestClient, app_client: ClientInfo, **extra: str) -> dict[str, Any]:
    """authorize → (login) → code → tokens."""
    issued = issue_code(client, app_client, **extra)
    form = token_form(issued)
    _, auth = client_auth(app_client)
    if auth is not None:
        form.pop("client_id")
    response = exchange(client, form, auth=auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def refresh(
    client: TestClient, app_client: ClientInfo, refresh_token: str, **extra: str
) -> httpx2.Response:
    identity, auth = client_auth(app_client)
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, **identity, **extra}
    return client.post("/oauth2/token", data=form, auth=auth)


def refreshed(
    client: TestClient, app_client: ClientInfo, refresh_token: str, **extra: str
) -> dict[str, Any]:
    response = refresh(client, app_client, refresh_token, **extra)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def introspect(
    client: TestClient, token: str, auth: tuple[str, str] | None, **extra: str
) -> httpx2.Response:
    return client.post("/oauth2/introspect", data={"token": token, **extra}, auth=auth)


def introspection(client: TestClient, token: str, resource_server: ClientInfo) -> dict[str, Any]:
    assert resource_server.secret is not None
    response = introspect(client, token, (resource_server.client_id, resource_server.secret))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    return body


def is_active(client: TestClient, token: str, resource_server: ClientInfo) -> bool:
    body = introspection(client, token, resource_server)
    if not body["active"]:
        assert body == {"active": False}  # RFC 7662 §2.2: nothing more about it
    return bool(body["active"])


def revoke(client: TestClient, app_client: ClientInfo, token: str, **extra: str) -> httpx2.Response:
    identity, auth = client_auth(app_client)
    return client.post("/oauth2/revoke", data={"token": token, **identity, **extra}, auth=auth)


def bearer_works(client: TestClient, access_token: str) -> bool:
    response = me(client, access_token)
    assert response.status_code in {200, 401}, response.text
    return response.status_code == 200


def register_client(database: Database, grant_types: tuple[str, ...]) -> ClientInfo:
    with database.transaction() as db:
        registered = clients.register(
            db=db,
            name="No refresh",
            redirect_uris=["https://app.example/callback"],
            public=True,
            first_party=True,
            scope="read write",
            now=utcnow(),
            grant_types=grant_types,
        )
    return ClientInfo(registered.client.client_id, None, "https://app.example/callback")


def token_row(database: Database, access_token: str) -> Token:
    with database.transaction() as db:
        row = db.scalars(
            select(Token).where(Token.access_token_hash == tokens.digest(access_token))
        ).one()
        db.expunge(row)
        return row


@pytest.fixture
def alice(database: Database) -> None:
    create_user(database)


@pytest.fixture
def public_client(database: Database) -> ClientInfo:
    return create_client(database)


@pytest.fixture
def confidential_client(database: Database) -> ClientInfo:
    return create_client(database, public=False, name="Confidential app")


@pytest.fixture
def resource_server(database: Database) -> ClientInfo:
    """A confidential client that introspects tokens (an MCP server, say)."""
    return create_client(database, public=False, name="Resource server")


@pytest.fixture
def other_client(database: Database) -> ClientInfo:
    return create_client(database, name="Other app")


# -- refresh tokens ------------------------------------------------------------


@pytest.mark.usefixtures("alice")
def test_code_exchange_issues_a_refresh_token_to_a_client_that_may_refresh(
    client: TestClient,
    database: Database,
    public_client: ClientInfo,
    settings: Settings,
    clock: Clock,
) -> None:
    body = obtain(client, public_client)

    refresh_token = body["refresh_token"]
    assert refresh_token != body["access_token"]
    assert refresh_token not in repr(snapshot(database))  # only its hash is stored
    row = token_row(database, body["access_token"])
    assert row.refresh_token_hash == tokens.digest(refresh_token)
    assert row.refresh_expires_at == clock.now + settings.refresh_token_ttl
    assert settings.refresh_token_ttl == timedelta(days=30)


@pytest.mark.usefixtures("alice")
def test_no_refresh_token_for_a_client_without_the_refresh_token_grant(
    client: TestClient, database: Database
) -> None:
    app_client = register_client(database, ("authorization_code",))

    body = obtain(client, app_client)

    assert "refresh_token" not in body
    assert token_row(database, body["access_token"]).refresh_token_hash is None
    # Nor may it use the grant with a refresh token it somehow holds.
    response = refresh(client, app_client, tokens.new_secret())
    assert_oauth_error(response, "unauthorized_client")


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize("confidential", [False, True], ids=["public", "confidential"])
def test_every_refresh_rotates_the_refresh_token(
    client: TestClient,
    database: Database,
    public_client: ClientInfo,
    confidential_client: ClientInfo,
    resource_server: ClientInfo,
    confidential: bool,
) -> None:
    """OAuth 2.1 §4.3.1: each use returns a new refresh token and spends the old one."""
    app_client = confidential_client if confidential else public_client
    first = obtain(client, app_client)
    family = token_row(database, first["access_token"]).family_id
    seen = {first["refresh_token"]}
    current = first
    for _ in range(3):
        following = refreshed(client, app_client, current["refresh_token"])
        assert following["token_type"] == "Bearer"
        assert following["scope"] == "read"
        assert following["refresh_token"] not in seen
        assert following["access_token"] != current["access_token"]
        assert "id_token" not in following
        seen.add(following["refresh_token"])
        # The spent refresh token is no longer active; the new one is.
        assert not is_active(client, current["refresh_token"], resource_server)
        assert is_active(client, following["refresh_token"], resource_server)
        assert bearer_works(client, following["access_token"])
        assert token_row(database, following["access_token"]).family_id == family
        current = following
    assert count(database, Token, Token.family_id == family) == 4


@pytest.mark.usefixtures("alice")
def test_a_reused_refresh_token_revokes_its_whole_family(
    client: TestClient,
    database: Database,
    public_client: ClientInfo,
    resource_server: ClientInfo,
) -> None:
    """OAuth 2.1 §4.3.1 / RFC 9700 §4.14.2: a rotated refresh token presented
    again means that two parties hold it; every token of the family stops
    working, the newest included. Other families are left alone."""
    first = obtain(client, public_client)
    bystander = obtain(client, public_client)  # another sign-in of the same app
    second = refreshed(client, public_client, first["refresh_token"])
    third = refreshed(client, public_client, second["refresh_token"])
    assert bearer_works(client, third["access_token"])

    response = refresh(client, public_client, first["refresh_token"])

    assert_oauth_error(response, "invalid_grant")
    for body in (first, second, third):
        assert not is_active(client, body["access_token"], resource_server)
        assert not bearer_works(client, body["access_token"])
    assert not is_active(client, third["refresh_token"], resource_server)
    assert_oauth_error(refresh(client, public_client, third["refresh_token"]), "invalid_grant")
    # The other family is untouched.
    assert bearer_works(client, bystander["access_token"])
    assert refresh(client, public_client, bystander["refresh_token"]).status_code == 200
    with database.transaction() as db:
        event = db.scalars(
            select(AuditEvent).where(AuditEvent.event == "token.reuse_detected")
        ).one()
        assert event.client_id == public_client.client_id
        assert event.detail["revoked"] == 3


@pytest.mark.usefixtures("alice")
def test_a_spent_refresh_token_cannot_be_used_again_even_once(
    client: TestClient, database: Database, public_client: ClientInfo
) -> None:
    """The simplest reuse: the same request twice in a row; the second loses
    and takes the tokens of the first with it."""
    first = obtain(client, public_client)
    winner = refreshed(client, public_client, first["refresh_token"])

    assert_oauth_error(refresh(client, public_client, first["refresh_token"]), "invalid_grant")

    assert not bearer_works(client, winner["access_token"])
    assert_oauth_error(refresh(client, public_client, winner["refresh_token"]), "invalid_grant")


RACERS = 6


@pytest.mark.usefixtures("alice")
def test_concurrent_refreshes_with_one_token_have_one_winner(
    client: TestClient, database: Database, public_client: ClientInfo
) -> None:
    """Threads sending the same refresh token at once through the app (each
    request in its own database transaction): exactly one gets tokens; the
    others are refused, as reuses, and the family is revoked."""
    for _ in range(3):
        first = obtain(client, public_client)
        barrier = Barrier(RACERS)

        def race(
            _: int, refresh_token: str = first["refresh_token"], barrier: Barrier = barrier
        ) -> httpx2.Response:
            barrier.wait(timeout=30)
            return refresh(client, public_client, refresh_token)

        with ThreadPoolExecutor(RACERS) as pool:
            responses = list(pool.map(race, range(RACERS)))

        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] + [400] * (RACERS - 1), [r.text for r in responses]
        assert {r.json()["error"] for r in responses if r.status_code == 400} == {"invalid_grant"}
        winner = next(r.json() for r in responses if r.status_code == 200)
        family = token_row(database, first["access_token"]).family_id
        assert count(database, Token, Token.family_id == family) == 2
        assert count(database, Token, Token.family_id == family, Token.revoked_at.is_(None)) == 0
        assert not bearer_works(client, winner["access_token"])


@pytest.mark.slow
@pytest.mark.postgres
def test_concurrent_refreshes_against_a_real_server_have_one_winner(
    postgres: PostgresServer, tmp_path: Path, clock: Clock
) -> None:
    """The same race over HTTP against ``baton serve`` on PostgreSQL."""
    url = postgres.create_database()
    with serving(url, tmp_path) as server:
        settings = Settings(database_url=url, public_url=BASE_URL, hash_workers=2)
        database = Database(url)
        try:
            create_user(database)
            app_client = create_client(database)
            with TestClient(create_app(settings, clock=clock), base_url=BASE_URL) as local:
                bodies = [obtain(local, app_client) for _ in range(3)]
            for body in bodies:
                barrier = Barrier(RACERS)

                def race(
                    _: int, refresh_token: str = body["refresh_token"], barrier: Barrier = barrier
                ) -> int:
                    barrier.wait(timeout=30)
                    return requests.post(
                        server.url + "/oauth2/token",
                        data={
                            "grant_type": "refresh_token",
                            "refresh_token": refresh_token,
                            "client_id": app_client.client_id,
                        },
                        timeout=30,
                    ).status_code

                with ThreadPoolExecutor(RACERS) as pool:
                    statuses = sorted(pool.map(race, range(RACERS)))
                assert statuses == [200] + [400] * (RACERS - 1)
        finally:
            database.dispose()


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize("thief_is_confidential", [False, True], ids=["public", "confidential"])
def test_another_clients_refresh_token_is_refused_and_nothing_is_revoked(
    client: TestClient,
    database: Database,
    public_client: ClientInfo,
    confidential_client: ClientInfo,
    other_client: ClientInfo,
    thief_is_confidential: bool,
) -> None:
    """RFC 6749 §6: the refresh token is bound to the client it was issued to."""
    thief = confidential_client if thief_is_confidential else other_client
    victim = obtain(client, public_client)
    assert bearer_works(client, victim["access_token"])
    before = snapshot(database)

    assert_oauth_error(refresh(client, thief, victim["refresh_token"]), "invalid_grant")

    assert snapshot(database) == before  # nothing spent, nothing revoked
    assert bearer_works(client, victim["access_token"])
    assert refresh(client, public_client, victim["refresh_token"]).status_code == 200


@pytest.mark.usefixtures("alice")
def test_refresh_may_narrow_the_scope_but_not_widen_it(
    client: TestClient,
    database: Database,
    public_client: ClientInfo,
    resource_server: ClientInfo,
) -> None:
    """RFC 6749 §6: the requested scope must not include any scope not
    originally granted; a refusal spends nothing."""
    first = obtain(client, public_client, scope="read write")
    before = snapshot(database)
    for wider in ("read write delete", "admin"):
        assert_oauth_error(
            refresh(client, public_client, first["refresh_token"], scope=wider), "invalid_scope"
        )
    assert snapshot(database) == before

    narrowed = refreshed(client, public_client, first["refresh_token"], scope="read")

    assert narrowed["scope"] == "read"
    assert introspection(client, narrowed["access_token"], resource_server)["scope"] == "read"
    assert me(client, narrowed["access_token"]).json()["scope"] == "read"


@pytest.mark.usefixtures("alice")
def test_a_narrowed_refresh_keeps_the_refresh_tokens_original_scope(
    client: TestClient, public_client: ClientInfo
) -> None:
    """RFC 6749 §6: "If a new refresh token is issued, the refresh token scope
    MUST be identical to that of the refresh token included by the client"."""
    first = obtain(client, public_client, scope="read write")
    narrowed = refreshed(client, public_client, first["refresh_token"], scope="read")

    widened_again = refresh(client, public_client, narrowed["refresh_token"], scope="read write")

    assert widened_again.status_code == 200, widened_again.text
    assert widened_again.json()["scope"] == "read write"


@pytest.mark.usefixtures("alice")
def test_an_expired_refresh_token_is_refused(
    make_settings: Callable[..., Settings], database: Database, clock: Clock
) -> None:
    """``BATON_REFRESH_TOKEN_TTL``: every rotated refresh token lives that long again."""
    app_client = create_client(database)
    ttl = timedelta(hours=2)
    with baton(make_settings, clock, refresh_token_ttl=ttl) as client:
        first = obtain(client, app_client)
        clock.advance(ttl - timedelta(seconds=1))
        second = refreshed(client, app_client, first["refresh_token"])
        clock.advance(ttl - timedelta(seconds=1))
        assert token_row(database, second["access_token"]).refresh_expires_at == clock.now + (
            timedelta(seconds=1)
        )
        clock.advance(timedelta(seconds=1))
        before = snapshot(database)

        assert_oauth_error(refresh(client, app_client, second["refresh_token"]), "invalid_grant")

        # An expired token is not a reused one: nothing is revoked.
        assert snapshot(database) == before


@pytest.mark.usefixtures("alice")
def test_a_refresh_token_never_outlives_the_users_grant(
    make_settings: Callable[..., Settings], database: Database, clock: Clock
) -> None:
    """``BATON_GRANT_LIFETIME`` below ``BATON_REFRESH_TOKEN_TTL``: the grant ends first."""
    app_client = create_client(database)
    lifetime = timedelta(hours=3)
    with baton(make_settings, clock, grant_lifetime=lifetime) as client:
        first = obtain(client, app_client)
        assert token_row(database, first["access_token"]).refresh_expires_at == (
            clock.now + lifetime
        )
        clock.advance(lifetime - timedelta(seconds=1))
        second = refreshed(client, app_client, first["refresh_token"])
        clock.advance(timedelta(seconds=1))

        assert_oauth_error(refresh(client, app_client, second["refresh_token"]), "invalid_grant")


@pytest.mark.usefixtures("alice")
def test_a_disabled_users_refresh_token_is_refused(
    client: TestClient, database: Database, public_client: ClientInfo, resource_server: ClientInfo
) -> None:
    body = obtain(client, public_client)
    with database.transaction() as db:
        users.set_disabled(db=db, username="alice", disabled=True)

    assert_oauth_error(refresh(client, public_client, body["refresh_token"]), "invalid_grant")
    assert not is_active(client, body["access_token"], resource_server)
    assert not is_active(client, body["refresh_token"], resource_server)
    assert not bearer_works(client, body["access_token"])

    # Refused, not spent: enabled again, the user's app carries on.
    with database.transaction() as db:
        users.set_disabled(db=db, username="alice", disabled=False)
    assert refresh(client, public_client, body["refresh_token"]).status_code == 200


@pytest.mark.usefixtures("alice")
def test_a_password_change_ends_refresh_tokens_whose_access_token_expired(
    client: TestClient,
    database: Database,
    clock: Clock,
    settings: Settings,
    public_client: ClientInfo,
    resource_server: ClientInfo,
) -> None:
    """What ``baton users passwd`` does after a compromise: the usual state of
    an app's newest token is an expired access token and a live refresh token."""
    body = obtain(client, public_client)
    clock.advance(settings.access_token_ttl + timedelta(seconds=1))
    assert is_active(client, body["refresh_token"], resource_server)

    with database.transaction() as db:
        user = users.require(db=db, username="alice")
        assert bearer.revoke_all_for_user(db=db, user_id=user.id, now=clock.now) == 1

    assert_oauth_error(refresh(client, public_client, body["refresh_token"]), "invalid_grant")
    assert not is_active(client, body["refresh_token"], resource_server)


@pytest.mark.usefixtures("alice")
def test_revoking_the_grant_ends_its_refresh_tokens(
    client: TestClient,
    database: Database,
    public_client: ClientInfo,
    other_client: ClientInfo,
    resource_server: ClientInfo,
    clock: Clock,
) -> None:
    """Revoking what the user approved for one client revokes every token
    issued under it (and nothing of other clients)."""
    first = obtain(client, public_client)
    second = refreshed(client, public_client, first["refresh_token"])
    kept = obtain(client, other_client)
    grant_pk = token_row(database, second["access_token"]).grant_id
    assert grant_pk is not None
    assert token_row(database, first["access_token"]).grant_id == grant_pk
    with database.transaction() as db:
        grant_id = db.scalars(select(Grant.public_id).where(Grant.id == grant_pk)).one()
        assert authorizations.revoke(db=db, now=clock.now, grant_id=grant_id) == 1

    assert_oauth_error(refresh(client, public_client, second["refresh_token"]), "invalid_grant")
    assert not is_active(client, second["access_token"], resource_server)
    assert not bearer_works(client, second["access_token"])
    assert refresh(client, other_client, kept["refresh_token"]).status_code == 200


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize(
    "form",
    [
        pytest.param({"refresh_token": None}, id="missing refresh_token"),
        pytest.param({"refresh_token": ""}, id="empty refresh_token"),
        pytest.param({"refresh_token": "x" * 5000}, id="huge refresh_token"),
        pytest.param({"refresh_token": "not-a-token"}, id="unknown refresh_token"),
    ],
)
def test_malformed_refresh_requests_are_refused_without_a_500(
    client: TestClient, database: Database, public_client: ClientInfo, form: dict[str, str | None]
) -> None:
    before = snapshot(database)
    data = {"grant_type": "refresh_token", "client_id": public_client.client_id}
    data.update({k: v for k, v in form.items() if v is not None})

    response = client.post("/oauth2/token", data=data)

    assert response.status_code == 400, response.text
    assert response.json()["error"] in {"invalid_request", "invalid_grant"}
    assert snapshot(database) == before


# -- revocation (RFC 7009) -------------------------------------------------------


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize(
    ("presented", "hint", "confidential"),
    [
        ("access_token", None, False),
        ("refresh_token", None, False),
        ("access_token", "access_token", False),
        ("refresh_token", "refresh_token", False),
        pytest.param("access_token", "refresh_token", False, id="access_token-wrong hint"),
        pytest.param("refresh_token", "access_token", False, id="refresh_token-wrong hint"),
        pytest.param("access_token", None, True, id="access_token-confidential"),
        pytest.param("refresh_token", "refresh_token", True, id="refresh_token-confidential"),
    ],
)
def test_revoking_either_token_ends_the_family(
    client: TestClient,
    public_client: ClientInfo,
    confidential_client: ClientInfo,
    resource_server: ClientInfo,
    presented: str,
    hint: str | None,
    confidential: bool,
) -> None:
    """RFC 7009 §2.1: a public client revokes with its ``client_id`` alone, a
    confidential one authenticates (HTTP Basic); the hint only orders the
    look-up. Revoking the refresh token takes the access token too (SHOULD),
    and Baton revokes the refresh token with its access token as well (MAY)."""
    app_client = confidential_client if confidential else public_client
    body = obtain(client, app_client)
    extra = {} if hint is None else {"token_type_hint": hint}

    response = revoke(client, app_client, body[presented], **extra)

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert not is_active(client, body["access_token"], resource_server)
    assert not is_active(client, body["refresh_token"], resource_server)
    assert not bearer_works(client, body["access_token"])
    assert_oauth_error(refresh(client, app_client, body["refresh_token"]), "invalid_grant")
    # Revoking again is fine (RFC 7009 §2.2: invalid tokens get 200 too).
    assert revoke(client, app_client, body[presented], **extra).status_code == 200


@pytest.mark.usefixtures("alice")
def test_revoking_the_current_refresh_token_ends_earlier_access_tokens_of_its_family(
    client: TestClient, public_client: ClientInfo, resource_server: ClientInfo
) -> None:
    """A client's "sign out" revokes its latest refresh token; access tokens
    issued before the last rotation (still valid until now) end with it."""
    first = obtain(client, public_client)
    second = refreshed(client, public_client, first["refresh_token"])
    assert is_active(client, first["access_token"], resource_server)

    assert revoke(client, public_client, second["refresh_token"]).status_code == 200

    assert not is_active(client, first["access_token"], resource_server)
    assert not bearer_works(client, first["access_token"])
    assert not bearer_works(client, second["access_token"])


@pytest.mark.usefixtures("alice")
def test_revocation_does_not_reach_older_or_other_families(
    client: TestClient, public_client: ClientInfo, resource_server: ClientInfo
) -> None:
    one = obtain(client, public_client)
    two = obtain(client, public_client)

    assert revoke(client, public_client, two["refresh_token"]).status_code == 200

    assert is_active(client, one["access_token"], resource_server)
    assert not is_active(client, two["access_token"], resource_server)


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize("credentials", ["none", "wrong secret", "client_id only"])
def test_a_confidential_client_must_authenticate_to_revoke(
    client: TestClient,
    database: Database,
    confidential_client: ClientInfo,
    resource_server: ClientInfo,
    credentials: str,
) -> None:
    body = obtain(client, confidential_client)
    before = snapshot(database)
    data = {"token": body["access_token"]}
    auth = None
    if credentials == "wrong secret":
        auth = (confidential_client.client_id, "wrong")
    elif credentials == "client_id only":
        data["client_id"] = confidential_client.client_id

    response = client.post("/oauth2/revoke", data=data, auth=auth)

    assert_oauth_error(response, "invalid_client", status=401)
    assert snapshot(database) == before
    assert is_active(client, body["access_token"], resource_server)


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize("revoker_is_confidential", [False, True], ids=["public", "confidential"])
def test_a_client_cannot_revoke_another_clients_token(
    client: TestClient,
    database: Database,
    public_client: ClientInfo,
    other_client: ClientInfo,
    resource_server: ClientInfo,
    revoker_is_confidential: bool,
) -> None:
    """RFC 7009 §2.1: the server verifies that the token was issued to the
    client making the request, and refuses otherwise."""
    revoker = resource_server if revoker_is_confidential else other_client
    body = obtain(client, public_client)
    before = snapshot(database)

    for presented in ("access_token", "refresh_token"):
        response = revoke(client, revoker, body[presented])
        assert response.status_code == 400, response.text
        assert response.json()["error"] in {"invalid_grant", "unauthorized_client"}

    assert snapshot(database) == before
    assert bearer_works(client, body["access_token"])


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize("token", ["unknown", tokens.new_secret(), "x" * 600, "ü"])
def test_revoking_an_unknown_token_is_a_200(
    client: TestClient, database: Database, public_client: ClientInfo, token: str
) -> None:
    """RFC 7009 §2.2: invalid tokens do not cause an error response."""
    before = snapshot(database)

    response = revoke(client, public_client, token)

    assert response.status_code == 200, response.text
    assert snapshot(database) == before


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize(
    ("data", "error"),
    [
        pytest.param({}, "invalid_request", id="no token"),
        pytest.param({"token": "t", "token_type_hint": "id_token"}, "unsupported_token_type"),
    ],
)
def test_bad_revocation_requests(
    client: TestClient, public_client: ClientInfo, data: dict[str, str], error: str
) -> None:
    """RFC 7009 §2.2.1: errors of RFC 6749 §5.2, so 400 (not a 401, which
    would tell the client that its credentials were wrong)."""
    response = client.post("/oauth2/revoke", data={"client_id": public_client.client_id, **data})
    assert_oauth_error(response, error)
    assert "www-authenticate" not in response.headers


# -- introspection (RFC 7662) -----------------------------------------------------


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize(
    "credentials",
    [
        "none",
        "wrong secret",
        "unknown client",
        "a NUL in the client_id",
        "public client_id",
        "secret in the body only",
    ],
)
def test_introspection_requires_client_authentication(
    client: TestClient,
    database: Database,
    public_client: ClientInfo,
    resource_server: ClientInfo,
    credentials: str,
) -> None:
    """RFC 7662 §2.1: the protected resource authenticates; a failure is 401
    invalid_client (RFC 6749 §5.2) and says nothing about the token."""
    body = obtain(client, public_client)
    data = {"token": body["access_token"]}
    auth = None
    if credentials == "wrong secret":
        auth = (resource_server.client_id, "wrong")
    elif credentials == "unknown client":
        auth = ("nobody", "secret")
    elif credentials == "a NUL in the client_id":
        assert resource_server.secret is not None
        auth = (resource_server.client_id + "\x00", resource_server.secret)
    elif credentials == "public client_id":
        data["client_id"] = public_client.client_id
    elif credentials == "secret in the body only":
        data["client_secret"] = "wrong"
        data["client_id"] = resource_server.client_id

    response = client.post("/oauth2/introspect", data=data, auth=auth)

    assert_oauth_error(response, "invalid_client", status=401)
    assert "active" not in response.json()


@contextmanager
def selects() -> Iterator[list[str]]:
    """The SELECT statements that any engine of this process runs meanwhile."""
    statements: list[str] = []

    def seen(_c: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        yield statements
    finally:
        event.remove(Engine, "before_cursor_execute", seen)


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_introspection_reads_the_caller_and_the_token_in_one_statement(
    client: TestClient, public_client: ClientInfo, resource_server: ClientInfo, method: str
) -> None:
    """A resource server introspects on every request it serves: the client
    that calls and the token it presents are read in one round trip, and the
    answer is the same as when they are read one by one."""
    body = obtain(client, public_client, scope="read")
    assert resource_server.secret is not None
    data = {"token": body["refresh_token"]}
    auth: tuple[str, str] | None = (resource_server.client_id, resource_server.secret)
    if method == "client_secret_post":
        data |= {"client_id": resource_server.client_id, "client_secret": resource_server.secret}
        auth = None

    with selects() as statements:
        response = client.post("/oauth2/introspect", data=data, auth=auth)

    assert response.status_code == 200, response.text
    document = response.json()
    assert (document["active"], document["scope"]) == (True, "read")
    assert (document["client_id"], document["username"]) == (public_client.client_id, "alice")
    assert document["token_type"] == "refresh_token"
    assert len(statements) == 1, statements


@pytest.mark.usefixtures("alice")
def test_unauthenticated_introspection_when_enabled(
    make_settings: Callable[..., Settings], database: Database, clock: Clock
) -> None:
    """``BATON_UNAUTHENTICATED_INTROSPECTION=true``: what an MCP server's
    token verifier without credentials needs. Wrong credentials are still wrong."""
    app_client = create_client(database)
    resource_server = create_client(database, public=False, name="Resource server")
    with baton(make_settings, clock, unauthenticated_introspection=True) as client:
        body = obtain(client, app_client)

        response = introspect(client, body["access_token"], None)

        assert response.status_code == 200, response.text
        assert response.json()["active"] is True
        assert response.json()["client_id"] == app_client.client_id
        assert introspect(client, "unknown", None).json() == {"active": False}
        wrong = introspect(client, body["access_token"], (resource_server.client_id, "wrong"))
        assert_oauth_error(wrong, "invalid_client", status=401)
        # Authenticated introspection keeps working.
        assert introspection(client, body["access_token"], resource_server)["active"] is True


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize("hint", [None, "access_token", "refresh_token"])
def test_introspection_of_an_active_access_token(
    client: TestClient,
    database: Database,
    public_client: ClientInfo,
    resource_server: ClientInfo,
    settings: Settings,
    clock: Clock,
    hint: str | None,
) -> None:
    """RFC 7662 §2.2: active, scope, client_id (the token's client, not the
    caller), sub, username, exp, iat, iss, token_type; no ``aud`` without a
    resource indicator. A wrong hint only changes the look-up order."""
    body = obtain(client, public_client, scope="read write")
    issued_at = clock.now
    clock.advance(timedelta(minutes=5))
    extra = {} if hint is None else {"token_type_hint": hint}
    assert resource_server.secret is not None
    auth = (resource_server.client_id, resource_server.secret)

    response = introspect(client, body["access_token"], auth, **extra)

    assert response.status_code == 200, response.text
    with database.transaction() as db:
        subject = users.require(db=db, username="alice").subject
    assert response.json() == {
        "active": True,
        "scope": "read write",
        "client_id": public_client.client_id,
        "sub": subject,
        "username": "alice",
        "exp": int((issued_at + settings.access_token_ttl).timestamp()),
        "iat": int(issued_at.timestamp()),
        "iss": BASE_URL,
        "token_type": "Bearer",
    }


@pytest.mark.usefixtures("alice")
def test_introspection_of_a_refresh_token(
    client: TestClient,
    public_client: ClientInfo,
    resource_server: ClientInfo,
    settings: Settings,
    clock: Clock,
) -> None:
    body = obtain(client, public_client)

    document = introspection(client, body["refresh_token"], resource_server)

    assert document["active"] is True
    assert document["client_id"] == public_client.client_id
    assert document["username"] == "alice"
    assert document["exp"] == int((clock.now + settings.refresh_token_ttl).timestamp())
    assert document["token_type"] != "Bearer"


@pytest.mark.usefixtures("alice")
def test_expired_revoked_and_unknown_tokens_are_inactive(
    client: TestClient,
    public_client: ClientInfo,
    resource_server: ClientInfo,
    settings: Settings,
    clock: Clock,
) -> None:
    """RFC 7662 §2.2: ``{"active": false}`` and nothing else."""
    expiring = obtain(client, public_client)
    revoked = obtain(client, public_client)
    assert revoke(client, public_client, revoked["access_token"]).status_code == 200

    for token in (revoked["access_token"], revoked["refresh_token"], "unknown", "x" * 600):
        assert introspection(client, token, resource_server) == {"active": False}

    clock.advance(settings.access_token_ttl - timedelta(seconds=1))
    assert is_active(client, expiring["access_token"], resource_server)
    clock.advance(timedelta(seconds=1))
    assert introspection(client, expiring["access_token"], resource_server) == {"active": False}
    # The refresh token of the same family lives on.
    assert is_active(client, expiring["refresh_token"], resource_server)


@pytest.mark.usefixtures("alice")
def test_bad_introspection_requests(client: TestClient, resource_server: ClientInfo) -> None:
    assert resource_server.secret is not None
    auth = (resource_server.client_id, resource_server.secret)
    assert_oauth_error(client.post("/oauth2/introspect", data={}, auth=auth), "invalid_request")
    response = introspect(client, "t", auth, token_type_hint="id_token")
    assert_oauth_error(response, "unsupported_token_type")
    assert "www-authenticate" not in response.headers


# -- resource indicators (RFC 8707) ------------------------------------------------


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize("at_token", [True, False], ids=["repeated at token", "authorize only"])
def test_resource_becomes_the_audience(
    client: TestClient,
    database: Database,
    public_client: ClientInfo,
    resource_server: ClientInfo,
    at_token: bool,
) -> None:
    """RFC 8707 §2: the token is for the resource named at authorization;
    introspection tells the resource server (``aud``), also after refresh."""
    issued = issue_code(client, public_client, resource=RESOURCE)
    form = token_form(issued, resource=RESOURCE if at_token else None)

    response = exchange(client, form)

    assert response.status_code == 200, response.text
    body = response.json()
    assert introspection(client, body["access_token"], resource_server)["aud"] == RESOURCE
    following = refreshed(client, public_client, body["refresh_token"])
    assert introspection(client, following["access_token"], resource_server)["aud"] == RESOURCE
    again = refreshed(client, public_client, following["refresh_token"], resource=RESOURCE)
    assert introspection(client, again["access_token"], resource_server)["aud"] == RESOURCE


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize(
    ("authorized", "requested"),
    [
        pytest.param(RESOURCE, OTHER_RESOURCE, id="another resource"),
        pytest.param(None, RESOURCE, id="none at authorization"),
        pytest.param(RESOURCE, RESOURCE + "#f", id="fragment"),
        pytest.param(RESOURCE, "/mcp", id="relative"),
    ],
)
def test_a_different_resource_at_the_token_endpoint_is_invalid_target(
    client: TestClient,
    database: Database,
    public_client: ClientInfo,
    authorized: str | None,
    requested: str,
) -> None:
    """RFC 8707 §2.2: invalid_target; the code is not spent."""
    extra = {} if authorized is None else {"resource": authorized}
    issued = issue_code(client, public_client, **extra)
    before = snapshot(database)

    response = exchange(client, token_form(issued, resource=requested))

    assert_oauth_error(response, "invalid_target")
    assert snapshot(database) == before
    assert exchange(client, token_form(issued)).status_code == 200


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize(
    "resource",
    [
        pytest.param("/mcp", id="relative"),
        pytest.param("https://mcp.example/mcp#fragment", id="fragment"),
        pytest.param("mcp.example", id="no scheme"),
        pytest.param("https://", id="no host"),
        pytest.param("javascript:alert(1)", id="javascript"),
        pytest.param("ftp://mcp.example/mcp", id="not http"),
    ],
)
@pytest.mark.parametrize("signed_in", [False, True], ids=["anonymous", "signed in"])
def test_an_invalid_resource_at_authorization_is_sent_back_as_invalid_target(
    client: TestClient,
    database: Database,
    public_client: ClientInfo,
    resource: str,
    signed_in: bool,
) -> None:
    """RFC 8707 §2: an absolute URI without a fragment, else ``invalid_target``
    at the (verified) redirect URI, before any login, writing nothing."""
    if signed_in:
        assert sign_in(client) is None
    params = authorize_params(public_client, pkce(), resource=resource)
    before = snapshot(database)

    response = authorize(client, params)

    callback = callback_of(response, params)
    assert callback["error"] == "invalid_target"
    assert "code" not in callback
    assert snapshot(database) == before


@pytest.mark.usefixtures("alice")
def test_refresh_with_another_resource_is_invalid_target(
    client: TestClient, database: Database, public_client: ClientInfo
) -> None:
    body = obtain(client, public_client, resource=RESOURCE)
    before = snapshot(database)

    for other in (OTHER_RESOURCE, "/relative", RESOURCE + "#x"):
        response = refresh(client, public_client, body["refresh_token"], resource=other)
        assert_oauth_error(response, "invalid_target")

    # Refused before anything was spent: no reuse, nothing revoked.
    assert snapshot(database) == before
    assert refresh(client, public_client, body["refresh_token"]).status_code == 200


@pytest.mark.usefixtures("alice")
def test_refresh_without_a_resource_cannot_gain_one(
    client: TestClient, database: Database, public_client: ClientInfo
) -> None:
    body = obtain(client, public_client)
    before = snapshot(database)

    response = refresh(client, public_client, body["refresh_token"], resource=RESOURCE)

    assert_oauth_error(response, "invalid_target")
    assert snapshot(database) == before
