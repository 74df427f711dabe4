"""Interoperability with authlib's OAuth client, which nobody here wrote: the
whole flow against a real ``baton serve`` over loopback HTTP, on SQLite and
PostgreSQL — discovery → dynamic registration → authorize → login → consent →
code → token (ID token verified against the discovered JWKS) → userinfo →
refresh → introspect → revoke.

Every OAuth endpoint comes from the discovery document; the only Baton paths
written here are the login and consent pages' API that a person's browser calls
(the "browser" is a requests session holding its cookies). The ID token is
verified the way authlib's own OpenID client does it (``OpenIDMixin.
parse_id_token``): joserfc for the signature, ``authlib.oidc.core.CodeIDToken``
for the claims; ``authlib.jose`` is deprecated in authlib 1.9 in favour of
joserfc, and its warning is an error here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.factories import query_of
from tests.interop_findings import (
    DcrClientNotPersisted,
    PublicIntrospectionRefused,
)
from tests.servers import Server, free_port, serving

USERNAME = "alice"
PASSWORD = "interop password, long enough"
SCOPE = "openid profile read write"
WELL_KNOWN = "/.well-known/openid-configuration"
TIMEOUT = 10


# -- the server ----------------------------------------------------------------


def _database_url(request: pytest.FixtureRequest, workdir: Path) -> str:
    """An EMPTY database: the server's own ``baton db upgrade`` creates the schema."""
    if request.param == "sqlite":
        return f"sqlite:///{workdir}/baton.db"
    postgres = request.getfixturevalue("postgres")
    url: str = postgres.create_database()
    return url


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One server per database for this module; each test registers its own clients."""
    workdir = tmp_path_factory.mktemp("interop-authlib")
    with serving(_database_url(request, workdir), workdir, {"BATON_DCR": "true"}) as running:
        running.baton("users", "add", USERNAME, "--password-stdin", stdin=PASSWORD + "\n")
        yield running


@pytest.fixture(scope="module")
def open_introspection_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """What an MCP deployment runs: introspection without client authentication."""
    workdir = tmp_path_factory.mktemp("interop-authlib-open")
    extra = {"BATON_UNAUTHENTICATED_INTROSPECTION": "true"}
    with serving(f"sqlite:///{workdir}/baton.db", workdir, extra) as running:
        running.baton("users", "add", USERNAME, "--password-stdin", stdin=PASSWORD + "\n")
        yield running


# -- the client's side ---------------------------------------------------------


def discover(server: Server) -> dict[str, Any]:
    """OpenID Connect Discovery 1.0 §4: the issuer's document, whose issuer is the
    URL it was fetched from (§4.3)."""
    response = requests.get(server.url + WELL_KNOWN, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    metadata: dict[str, Any] = response.json()
    assert metadata["issuer"] == server.url
    return metadata


def register(
    server: Server, metadata: dict[str, Any], *, how: str, public: bool, name: str
) -> dict[str, Any]:
    """A client for ``SCOPE`` with a loopback redirect URI (RFC 8252 §7.3), either
    registered by the app itself (RFC 7591) or by the operator's ``baton clients add``."""
    redirect_uri = f"http://127.0.0.1:{free_port()}/callback"
    if how == "cli":
        args = ["clients", "add", "--name", name, "--redirect-uri", redirect_uri]
        args += ["--scope", SCOPE, "--json", *(["--public"] if public else [])]
        created: dict[str, Any] = json.loads(server.baton(*args).stdout)
        return created | {"redirect_uris": [redirect_uri]}
    response = requests.post(
        metadata["registration_endpoint"],
        json={
            "client_name": name,
            "redirect_uris": [redirect_uri],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none" if public else "client_secret_basic",
            "scope": SCOPE,
        },
        timeout=TIMEOUT,
    )
    assert response.status_code == 201, response.text
    registered: dict[str, Any] = response.json()
    assert registered["redirect_uris"] == [redirect_uri]
    assert registered["token_endpoint_auth_method"] == ("none" if public else "client_secret_basic")
    assert ("client_secret" in registered) is not public
    assert set(registered["grant_types"]) == {"authorization_code", "refresh_token"}
    # Registration read back by the operator: stored, and marked as dynamic (issue 3 §6).
    listed = json.loads(server.baton("clients", "list", "--json").stdout)
    stored = [c for c in listed if c["client_id"] == registered["client_id"]]
    if not stored:
        raise DcrClientNotPersisted(f"201 {registered['client_id']} but not stored")
    assert stored[0]["provenance"] == "dcr"
    assert stored[0]["first_party"] is False
    return registered


@pytest.fixture
def closing() -> Iterator[ExitStack]:
    """Closes the HTTP sessions a test opens."""
    with ExitStack() as stack:
        yield stack


def session_for(client: dict[str, Any], metadata: dict[str, Any]) -> OAuth2Session:
    method = "client_secret_basic" if client.get("client_secret") else "none"
    return OAuth2Session(
        client_id=client["client_id"],
        client_secret=client.get("client_secret"),
        token_endpoint_auth_method=method,
        revocation_endpoint_auth_method=method,
        redirect_uri=client["redirect_uris"][0],
        scope=SCOPE,
        code_challenge_method="S256",
        token_endpoint=metadata["token_endpoint"],
    )


class Browser(requests.Session):
    """A person's browser: a cookie jar that follows Baton's pages by hand."""

    def __init__(self, server: Server) -> None:
        super().__init__()
        self.server = server

    def redirect_from(self, url: str) -> str:
        response = self.get(url, allow_redirects=False, timeout=TIMEOUT)
        assert response.status_code == 302, (response.status_code, response.text[:500])
        return urljoin(url, response.headers["location"])

    def answer(self, path: str, body: dict[str, Any]) -> str:
        response = self.post(self.server.url + path, json=body, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        redir_to: str = response.json()["redir_to"]
        return self.server.url + redir_to

    def sign_in(self, authorization_url: str, client_name: str) -> tuple[str, list[str]]:
        """authorize → login page → consent page → the client's redirect URI;
        the URL the client receives and the pages that were shown."""
        pages: list[str] = []
        location = self.redirect_from(authorization_url)
        while location.startswith(self.server.url + "/") and len(pages) < 4:
            page, token = urlsplit(location).path, query_of(location)["redirection_token"]
            assert self.get(location, timeout=TIMEOUT).status_code == 200
            pages.append(page)
            if page == "/login":
                credentials = {"username": USERNAME, "password": PASSWORD}
                resume = self.answer("/api/v1/login", credentials | {"redirection_token": token})
            else:
                assert page == "/consent", location
                described = self.get(
                    self.server.url + "/api/v1/consent",
                    params={"redirection_token": token},
                    timeout=TIMEOUT,
                ).json()
                assert described["client"]["name"] == client_name
                assert [s["name"] for s in described["scopes"]] == SCOPE.split()
                resume = self.answer(
                    "/api/v1/consent", {"redirection_token": token, "approve": True}
                )
            location = self.redirect_from(resume)
        return location, pages


def authorize(
    oauth: OAuth2Session, metadata: dict[str, Any], browser: Browser, name: str
) -> tuple[dict[str, Any], list[str], str]:
    """A PKCE (S256) request with state and nonce, through the browser, and the
    code exchange; the token, the pages shown and the nonce."""
    verifier, nonce = generate_token(64), generate_token(24)
    url, state = oauth.create_authorization_url(
        metadata["authorization_endpoint"], code_verifier=verifier, nonce=nonce
    )
    callback, pages = browser.sign_in(url, name)
    assert callback.startswith(str(oauth.redirect_uri) + "?"), callback
    assert query_of(callback)["state"] == state
    token: dict[str, Any] = dict(
        oauth.fetch_token(authorization_response=callback, code_verifier=verifier, state=state)
    )
    assert token["token_type"].lower() == "bearer"
    assert token["scope"] == SCOPE
    assert token["expires_in"] > 0
    assert token["refresh_token"]
    return token, pages, nonce


def verify_id_token(
    token: dict[str, Any], metadata: dict[str, Any], client_id: str, nonce: str
) -> dict[str, Any]:
    """OpenID Connect Core 1.0 §3.1.3.7, as authlib's OpenIDMixin.parse_id_token
    does it: the signature against the keys at the discovered ``jwks_uri``, with
    an algorithm the metadata lists; then iss, aud, exp, iat, nonce and at_hash."""
    keys = requests.get(metadata["jwks_uri"], timeout=TIMEOUT)
    assert keys.status_code == 200
    decoded = jwt.decode(
        token["id_token"],
        KeySet.import_key_set(keys.json()),
        algorithms=metadata["id_token_signing_alg_values_supported"],
    )
    assert decoded.header["kid"] in {key["kid"] for key in keys.json()["keys"]}
    claims = CodeIDToken(
        decoded.claims,
        decoded.header,
        {
            "iss": {"essential": True, "value": metadata["issuer"]},
            "aud": {"essential": True, "value": client_id},
            "nonce": {"essential": True},
            "auth_time": {"essential": True},
            "at_hash": {"essential": True},
        },
        {"nonce": nonce, "client_id": client_id, "access_token": token["access_token"]},
    )
    claims.validate(leeway=60)
    return dict(claims)


def introspect(oauth: OAuth2Session, metadata: dict[str, Any], token: str, hint: str) -> Any:
    response = oauth.introspect_token(
        metadata["introspection_endpoint"], token=token, token_type_hint=hint
    )
    assert response.status_code == 200, response.text
    return response.json()


# -- the tests -----------------------------------------------------------------


def test_both_discovery_documents_describe_the_same_server(server: Server) -> None:
    """RFC 8414 §3 and OpenID Connect Discovery 1.0 §4: the same document, every
    endpoint on the issuer, and the PKCE and auth methods this flow relies on."""
    metadata = discover(server)
    oauth_metadata = requests.get(
        server.url + "/.well-known/oauth-authorization-server", timeout=TIMEOUT
    ).json()
    assert oauth_metadata == metadata
    for name in (
        "authorization_endpoint",
        "token_endpoint",
        "registration_endpoint",
        "revocation_endpoint",
        "introspection_endpoint",
        "userinfo_endpoint",
        "jwks_uri",
    ):
        assert metadata[name].startswith(server.url + "/"), name
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert "code" in metadata["response_types_supported"]
    assert {"authorization_code", "refresh_token"} <= set(metadata["grant_types_supported"])
    assert set(SCOPE.split()) <= set(metadata["scopes_supported"])
    assert {"none", "client_secret_basic"} <= set(metadata["token_endpoint_auth_methods_supported"])


@pytest.mark.parametrize(
    "how",
    [
        "dcr",
        "cli",
    ],
)
@pytest.mark.parametrize("public", [True, False], ids=["public", "confidential"])
def test_authlib_client_completes_the_whole_flow(
    server: Server, closing: ExitStack, how: str, public: bool
) -> None:
    metadata = discover(server)
    name = f"authlib interop ({how}, {'public' if public else 'confidential'})"
    app = register(server, metadata, how=how, public=public, name=name)
    oauth = closing.enter_context(session_for(app, metadata))
    # RFC 7662 §2.1: the protected resource introspects, authenticated. A public
    # client's tokens are introspected by its resource server, a confidential
    # client the operator registered (one that registered itself may introspect
    # only its own tokens).
    resource_server = app
    if public:
        resource_server = register(
            server, metadata, how="cli", public=False, name=name + " resource server"
        )
    rs = closing.enter_context(session_for(resource_server, metadata))
    browser = closing.enter_context(Browser(server))

    # 1. Sign in: the login page, then the consent page (a third-party client).
    token, pages, nonce = authorize(oauth, metadata, browser, name)
    assert pages == ["/login", "/consent"]
    claims = verify_id_token(token, metadata, app["client_id"], nonce)
    subject = claims["sub"]
    assert claims["preferred_username"] == USERNAME

    userinfo = oauth.get(metadata["userinfo_endpoint"], timeout=TIMEOUT)
    assert userinfo.status_code == 200
    assert userinfo.json() == {"sub": subject, "preferred_username": USERNAME}

    # 2. Refresh (OAuth 2.1 §4.3.1): a new refresh token each time.
    refreshed = dict(oauth.refresh_token(refresh_token=token["refresh_token"]))
    assert refreshed["refresh_token"] != token["refresh_token"]
    assert refreshed["access_token"] != token["access_token"]
    assert refreshed["scope"] == SCOPE
    active = introspect(rs, metadata, refreshed["access_token"], "access_token")
    assert active["active"] is True
    assert active["client_id"] == app["client_id"]
    assert active["sub"] == subject
    assert active["scope"] == SCOPE
    assert active["iss"] == metadata["issuer"]
    assert active["exp"] > active["iat"]

    # The rotated-out refresh token is refused; its reuse ends the family.
    with pytest.raises(OAuthError) as refused:
        oauth.refresh_token(refresh_token=token["refresh_token"])
    assert refused.value.error == "invalid_grant"
    ended = introspect(rs, metadata, refreshed["access_token"], "access_token")
    assert ended == {"active": False}

    # 3. Again: the session and the remembered consent make it silent.
    token, pages, nonce = authorize(oauth, metadata, browser, name)
    assert pages == []
    assert verify_id_token(token, metadata, app["client_id"], nonce)["sub"] == subject
    assert introspect(rs, metadata, token["refresh_token"], "refresh_token")["active"] is True

    # 4. Revocation (RFC 7009) by the client itself: the refresh token and the
    # access token issued with it stop working.
    revoked = oauth.revoke_token(
        metadata["revocation_endpoint"],
        token=token["refresh_token"],
        token_type_hint="refresh_token",
    )
    assert revoked.status_code == 200
    assert introspect(rs, metadata, token["refresh_token"], "refresh_token") == {"active": False}
    assert introspect(rs, metadata, token["access_token"], "access_token") == {"active": False}
    after = oauth.get(metadata["userinfo_endpoint"], timeout=TIMEOUT)
    assert after.status_code == 401
    assert 'error="invalid_token"' in after.headers["www-authenticate"]


def test_public_client_introspects_with_the_advertised_none_method(
    open_introspection_server: Server, closing: ExitStack
) -> None:
    server = open_introspection_server
    metadata = discover(server)
    assert "none" in metadata["introspection_endpoint_auth_methods_supported"]
    name = "authlib interop (open introspection)"
    app = register(server, metadata, how="cli", public=True, name=name)
    oauth = closing.enter_context(session_for(app, metadata))
    browser = closing.enter_context(Browser(server))
    token, _, _ = authorize(oauth, metadata, browser, name)

    # Without any client identification it works (what an MCP token verifier does)...
    anonymous = requests.post(
        metadata["introspection_endpoint"], data={"token": token["access_token"]}, timeout=TIMEOUT
    )
    assert anonymous.status_code == 200
    assert anonymous.json()["active"] is True

    # ...but authlib's client, authenticating with "none" as advertised, is refused.
    response = oauth.introspect_token(
        metadata["introspection_endpoint"], token=token["access_token"]
    )
    if response.status_code == 401 and response.json().get("error") == "invalid_client":
        raise PublicIntrospectionRefused(response.text)
    assert response.status_code == 200, response.text
    assert response.json()["active"] is True
