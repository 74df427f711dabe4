"""OpenID Connect and discovery, on SQLite and PostgreSQL: the metadata
documents (RFC 8414, OpenID Connect Discovery 1.0) checked by authlib, the
JWKS, ID tokens verified with joserfc (OpenID Connect Core 1.0 §3.1.3.6),
``/oauth2/userinfo`` (§5.3) and signing-key rotation."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx2
import pytest
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oidc.discovery import OpenIDProviderMetadata
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError
from joserfc.jwk import KeySet
from sqlalchemy import select
from starlette.testclient import TestClient

from app import keys, users
from app.db import Database
from app.models import BrowserSession, SigningKey
from app.settings import Settings
from tests.conftest import BASE_URL, Clock
from tests.factories import ClientInfo, authorize_params, create_client, create_user, pkce
from tests.test_oauth import authorize, callback_of, sign_in
from tests.test_token_lifecycle import baton, obtain, refreshed

WELL_KNOWN = ["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"]
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


# -- helpers -------------------------------------------------------------------


def discovery(client: TestClient, path: str = WELL_KNOWN[0]) -> dict[str, Any]:
    response = client.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    document: dict[str, Any] = response.json()
    return document


def jwks(client: TestClient) -> dict[str, Any]:
    response = client.get("/oauth2/jwks")
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def kids(client: TestClient) -> list[str]:
    return [key["kid"] for key in jwks(client)["keys"]]


def verify(client: TestClient, id_token: str, alg: str = "RS256") -> jwt.Token:
    """Check the signature against the published JWKS, as a relying party would."""
    key_set = KeySet.import_key_set(jwks(client))
    return jwt.decode(id_token, key_set, algorithms=[alg])


def half_hash(access_token: str) -> str:
    """OpenID Connect Core 1.0 §3.1.3.6: the left half of the SHA-256 hash, base64url."""
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode("ascii")


def seconds(moment: datetime) -> int:
    return int(moment.timestamp())


def subject_of(database: Database, username: str = "alice") -> str:
    with database.transaction() as db:
        return users.require(db=db, username=username).subject


def login_time(database: Database) -> datetime:
    with database.transaction() as db:
        return db.scalars(
            select(BrowserSession.created_at).order_by(BrowserSession.id.desc()).limit(1)
        ).one()


def userinfo(client: TestClient, token: str | None, method: str = "GET") -> httpx2.Response:
    client.cookies.clear()  # only the bearer token may authenticate
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return client.request(method, "/oauth2/userinfo", headers=headers)


@pytest.fixture
def alice(database: Database) -> None:
    create_user(database)


@pytest.fixture
def oidc_client(database: Database) -> ClientInfo:
    return create_client(database, scope="openid profile read write", name="OIDC app")


# -- discovery -------------------------------------------------------------------


@pytest.mark.parametrize("path", WELL_KNOWN)
def test_discovery_documents_are_valid_metadata(client: TestClient, path: str) -> None:
    """RFC 8414 §2 and OpenID Connect Discovery 1.0 §3, as authlib checks them."""
    document = discovery(client, path)

    AuthorizationServerMetadata(document).validate()
    OpenIDProviderMetadata(document).validate()
    assert document["issuer"] == BASE_URL
    assert document["authorization_endpoint"] == BASE_URL + "/oauth2/authorize"
    assert document["token_endpoint"] == BASE_URL + "/oauth2/token"
    assert document["jwks_uri"] == BASE_URL + "/oauth2/jwks"
    assert document["userinfo_endpoint"] == BASE_URL + "/oauth2/userinfo"
    assert document["revocation_endpoint"] == BASE_URL + "/oauth2/revoke"
    assert document["introspection_endpoint"] == BASE_URL + "/oauth2/introspect"
    assert document["response_types_supported"] == ["code"]
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert set(document["grant_types_supported"]) == {"authorization_code", "refresh_token"}
    assert "openid" in document["scopes_supported"]
    assert document["id_token_signing_alg_values_supported"] == ["RS256"]
    assert {"sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "at_hash", "amr"} <= set(
        document["claims_supported"]
    )
    assert "registration_endpoint" not in document
    assert discovery(client, WELL_KNOWN[0]) == discovery(client, WELL_KNOWN[1])


def test_every_advertised_endpoint_exists(client: TestClient) -> None:
    """Nothing in the document leads to a 404 or a 405 for its method."""
    document = discovery(client)
    gets = ["authorization_endpoint", "jwks_uri", "userinfo_endpoint"]
    posts = ["token_endpoint", "revocation_endpoint", "introspection_endpoint"]
    for name in gets + posts:
        url = document[name]
        assert url.startswith(BASE_URL + "/")
        response = client.request(
            "GET" if name in gets else "POST", url[len(BASE_URL) :], follow_redirects=False
        )
        assert response.status_code not in {404, 405}, (name, response.status_code)


@pytest.mark.parametrize("dcr", [False, True])
@pytest.mark.parametrize("unauthenticated_introspection", [False, True])
def test_discovery_advertises_what_is_enabled(
    make_settings: Callable[..., Settings],
    clock: Clock,
    dcr: bool,
    unauthenticated_introspection: bool,
) -> None:
    """``BATON_DCR`` adds ``registration_endpoint``;
    ``BATON_UNAUTHENTICATED_INTROSPECTION`` adds ``none`` to the
    introspection endpoint's authentication methods."""
    with baton(
        make_settings, clock, dcr=dcr, unauthenticated_introspection=unauthenticated_introspection
    ) as client:
        for path in WELL_KNOWN:
            document = discovery(client, path)
            AuthorizationServerMetadata(document).validate()
            OpenIDProviderMetadata(document).validate()
            if dcr:
                assert document["registration_endpoint"] == BASE_URL + "/oauth2/register"
            else:
                assert "registration_endpoint" not in document
            methods = document["introspection_endpoint_auth_methods_supported"]
            assert ("none" in methods) is unauthenticated_introspection
            assert {"client_secret_basic", "client_secret_post"} <= set(methods)
            assert "none" in document["revocation_endpoint_auth_methods_supported"]


def test_discovery_with_es256(make_settings: Callable[..., Settings], clock: Clock) -> None:
    """RFC 8414 is satisfied; OpenID Connect Discovery 1.0 §3 wants RS256 in
    ``id_token_signing_alg_values_supported``, which an ES256-only server
    cannot truthfully list: that is the one rule this configuration breaks."""
    with baton(make_settings, clock, signing_alg="ES256") as client:
        document = discovery(client)

    AuthorizationServerMetadata(document).validate()
    assert document["id_token_signing_alg_values_supported"] == ["ES256"]
    with pytest.raises(ValueError, match="RS256"):
        OpenIDProviderMetadata(document).validate()
    OpenIDProviderMetadata(
        document | {"id_token_signing_alg_values_supported": ["ES256", "RS256"]}
    ).validate()


# -- the JWKS ----------------------------------------------------------------------


@pytest.mark.parametrize(("alg", "kty"), [("RS256", "RSA"), ("ES256", "EC")])
def test_jwks_publishes_public_keys_only(
    make_settings: Callable[..., Settings],
    database: Database,
    clock: Clock,
    alg: str,
    kty: str,
) -> None:
    """The signing key is created on first use; only its public half is shown."""
    with baton(make_settings, clock, signing_alg=alg) as client:
        response = client.get("/oauth2/jwks")
        assert response.status_code == 200
        published = response.json()["keys"]
        assert jwks(client)["keys"] == published  # the same key, not a new one per request

    assert len(published) == 1
    key = published[0]
    assert key["kty"] == kty
    assert key["alg"] == alg
    assert key["use"] == "sig"
    assert not PRIVATE_MEMBERS & set(key)
    if kty == "EC":
        assert key["crv"] == "P-256"
    with database.transaction() as db:
        row = db.scalars(select(SigningKey)).one()
        assert row.kid == key["kid"]
        assert row.alg == alg
        assert "d" in row.private_jwk


# -- ID tokens ---------------------------------------------------------------------


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize(("alg", "kty"), [("RS256", "RSA"), ("ES256", "EC")])
def test_id_token_is_signed_and_carries_the_claims(
    make_settings: Callable[..., Settings],
    database: Database,
    clock: Clock,
    oidc_client: ClientInfo,
    alg: str,
    kty: str,
) -> None:
    """OpenID Connect Core 1.0 §2 and §3.1.3.6: iss, sub, aud, exp, iat,
    auth_time (when the user signed in, not when the code was issued), nonce,
    at_hash; the header names the key (kid) and the algorithm."""
    ttl = timedelta(minutes=20)
    with baton(make_settings, clock, signing_alg=alg, id_token_ttl=ttl) as client:
        assert sign_in(client) is None
        signed_in_at = login_time(database)
        clock.advance(timedelta(minutes=7))
        body = obtain(client, oidc_client, scope="openid profile", nonce="n-0S6_WzA2Mj")

        token = verify(client, body["id_token"], alg)
        published = jwks(client)["keys"]

    assert token.header["alg"] == alg
    assert token.header["kid"] == published[0]["kid"]
    assert published[0]["kty"] == kty
    claims = token.claims
    assert claims["iss"] == BASE_URL
    assert claims["sub"] == subject_of(database)
    assert claims["aud"] in (oidc_client.client_id, [oidc_client.client_id])
    assert claims["iat"] == seconds(clock.now)
    assert claims["exp"] == seconds(clock.now) + int(ttl.total_seconds())
    assert claims["auth_time"] == seconds(signed_in_at)
    assert claims["auth_time"] == seconds(clock.now - timedelta(minutes=7))
    assert claims["nonce"] == "n-0S6_WzA2Mj"
    assert claims["at_hash"] == half_hash(body["access_token"])
    assert claims["preferred_username"] == "alice"
    assert body["scope"] == "openid profile"


@pytest.mark.usefixtures("alice")
def test_id_token_auth_time_after_a_login_through_the_flow(
    client: TestClient, database: Database, clock: Clock, oidc_client: ClientInfo
) -> None:
    """Signed in on the login page in the middle of the flow: auth_time is that login."""
    body = obtain(client, oidc_client, scope="openid")

    claims = verify(client, body["id_token"]).claims

    assert claims["auth_time"] == seconds(login_time(database)) == seconds(clock.now)
    assert "nonce" not in claims
    assert "preferred_username" not in claims  # no profile scope
    assert claims["sub"] == subject_of(database)


@pytest.mark.usefixtures("alice")
def test_no_id_token_without_openid(client: TestClient, oidc_client: ClientInfo) -> None:
    body = obtain(client, oidc_client, scope="profile read")

    assert "id_token" not in body
    # Nor from a refresh, whatever the scope.
    assert "id_token" not in refreshed(client, oidc_client, body["refresh_token"])


@pytest.mark.usefixtures("alice")
def test_a_nonce_is_accepted_once_per_client(
    client: TestClient, database: Database, oidc_client: ClientInfo
) -> None:
    """OpenID Connect Core 1.0 §3.1.2.1 / §15.5.2: a nonce seen before is a
    replayed authentication request, refused at the client's redirect URI."""
    obtain(client, oidc_client, scope="openid", nonce="only-once")
    other = create_client(database, scope="openid read", name="Another OIDC app")
    assert sign_in(client) is None

    params = authorize_params(oidc_client, pkce(), scope="openid", nonce="only-once")
    callback = callback_of(authorize(client, params), params)

    assert callback["error"] == "invalid_request"
    assert "code" not in callback
    # Nonces are the client's own: another client may use the same value.
    assert "id_token" in obtain(client, other, scope="openid", nonce="only-once")


# -- userinfo -------------------------------------------------------------------------


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_userinfo_with_an_openid_access_token(
    client: TestClient, database: Database, oidc_client: ClientInfo, method: str
) -> None:
    """OpenID Connect Core 1.0 §5.3: ``sub`` always; ``preferred_username``
    only with ``profile`` (§5.4); ``sub`` equals the ID token's."""
    with_profile = obtain(client, oidc_client, scope="openid profile")
    without_profile = obtain(client, oidc_client, scope="openid")
    subject = subject_of(database)

    response = userinfo(client, with_profile["access_token"], method)

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {"sub": subject, "preferred_username": "alice"}
    assert verify(client, with_profile["id_token"]).claims["sub"] == subject
    response = userinfo(client, without_profile["access_token"], method)
    assert response.json() == {"sub": subject}


@pytest.mark.usefixtures("alice")
def test_userinfo_without_a_valid_token_is_a_401_with_a_challenge(
    client: TestClient, oidc_client: ClientInfo, settings: Settings, clock: Clock
) -> None:
    """RFC 6750 §3: ``WWW-Authenticate: Bearer``, with ``error="invalid_token"``
    when a token was sent."""
    response = userinfo(client, None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"

    response = userinfo(client, "garbage")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert response.json()["error"] == "invalid_token"
    assert userinfo(client, "x" * 600).status_code == 401

    body = obtain(client, oidc_client, scope="openid")
    assert userinfo(client, body["access_token"]).status_code == 200
    revoked = obtain(client, oidc_client, scope="openid")
    form = {"token": revoked["access_token"], "client_id": oidc_client.client_id}
    assert client.post("/oauth2/revoke", data=form).status_code == 200
    assert userinfo(client, revoked["access_token"]).status_code == 401
    clock.advance(settings.access_token_ttl)
    assert userinfo(client, body["access_token"]).status_code == 401


@pytest.mark.usefixtures("alice")
def test_userinfo_with_a_token_without_openid_is_insufficient_scope(
    client: TestClient, oidc_client: ClientInfo
) -> None:
    body = obtain(client, oidc_client, scope="profile read")

    response = userinfo(client, body["access_token"])

    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


@pytest.mark.usefixtures("alice")
def test_userinfo_refuses_a_token_without_openid(
    client: TestClient, oidc_client: ClientInfo
) -> None:
    """Whatever the status, a token without ``openid`` never reads claims."""
    body = obtain(client, oidc_client, scope="profile read")

    response = userinfo(client, body["access_token"])

    assert response.status_code in {401, 403}
    assert "sub" not in response.json()


# -- signing keys ---------------------------------------------------------------------


@pytest.mark.usefixtures("alice")
def test_key_rotation_keeps_the_old_key_published_until_its_tokens_expire(
    make_settings: Callable[..., Settings],
    database: Database,
    clock: Clock,
    oidc_client: ClientInfo,
) -> None:
    """``keys.rotate``: new ID tokens carry the new kid at once; the retired
    key stays in the JWKS for ``id_token_ttl`` after retirement, so ID tokens
    it signed still verify, and then drops out."""
    ttl = timedelta(minutes=30)
    with baton(make_settings, clock, id_token_ttl=ttl) as client:
        before = obtain(client, oidc_client, scope="openid")
        old_kid = verify(client, before["id_token"]).header["kid"]
        clock.advance(timedelta(minutes=1))
        with database.transaction() as db:
            new_key, retired = keys.rotate(db=db, alg="RS256", now=clock.now)
            new_kid = new_key.kid
        assert retired == [old_kid]
        assert new_kid != old_kid
        retired_at = clock.now

        after = obtain(client, oidc_client, scope="openid")

        assert verify(client, after["id_token"]).header["kid"] == new_kid
        assert verify(client, before["id_token"]).header["kid"] == old_kid
        assert kids(client) == [new_kid, old_kid]
        clock.advance(ttl - timedelta(seconds=1))
        assert old_kid in kids(client)
        assert clock.now - retired_at < ttl
        clock.advance(timedelta(seconds=1))
        assert kids(client) == [new_kid]
        with pytest.raises(InvalidKeyIdError):
            verify(client, before["id_token"])
        # The new key still signs.
        latest = obtain(client, oidc_client, scope="openid")
        assert verify(client, latest["id_token"]).header["kid"] == new_kid


@pytest.mark.usefixtures("alice")
def test_changing_the_signing_algorithm_rotates_the_key(
    make_settings: Callable[..., Settings],
    database: Database,
    clock: Clock,
    oidc_client: ClientInfo,
) -> None:
    """A restart with another ``BATON_SIGNING_ALG`` signs with that algorithm,
    as discovery then says, and keeps the previous key published for a while."""
    with baton(make_settings, clock, signing_alg="RS256") as client:
        rs256 = obtain(client, oidc_client, scope="openid")
        old_kid = verify(client, rs256["id_token"], "RS256").header["kid"]
    with baton(make_settings, clock, signing_alg="ES256") as client:
        es256 = obtain(client, oidc_client, scope="openid")

        token = verify(client, es256["id_token"], "ES256")

        assert token.header["alg"] == "ES256"
        assert discovery(client)["id_token_signing_alg_values_supported"] == ["ES256"]
        assert old_kid in kids(client)
        assert verify(client, rs256["id_token"], "RS256").header["kid"] == old_kid
    with database.transaction() as db:
        assert keys.current(db=db) is not None
        assert [row.alg for row in keys.all_keys(db=db)] == ["RS256", "ES256"]


def test_unknown_bearer_at_userinfo_never_500s(client: TestClient) -> None:
    for header in ("Bearer", "Bearer ", "Basic abc", "Bearer a b", "bearer " + "x" * 10_000):
        response = client.get("/oauth2/userinfo", headers={"Authorization": header})
        assert response.status_code == 401, (header, response.status_code)
