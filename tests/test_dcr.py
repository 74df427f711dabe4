"""Dynamic client registration (RFC 7591) at ``POST /oauth2/register``, on
SQLite and PostgreSQL: off unless ``BATON_DCR=true``; redirect URIs as OAuth
2.1 §2.3 and RFC 8252 §7 allow; registered clients are third-party (consent)
and recorded with provenance ``dcr``; malformed metadata is a 400, never a
500, and writes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from app import clients
from app.db import Database, utcnow
from app.models import AuditEvent, Client
from app.settings import Settings
from tests.conftest import Clock
from tests.factories import (
    ClientInfo,
    authorize_params,
    create_client,
    create_user,
    pkce,
    query_of,
)
from tests.test_cli import (
    _clean_environment,  # noqa: F401  (an autouse fixture)
    table,
)
from tests.test_cli import baton as run_baton
from tests.test_oauth import (
    authorize,
    callback_of,
    exchange,
    issue_code,
    sign_in,
    snapshot,
    token_form,
)
from tests.test_token_lifecycle import baton, refresh

LOOPBACK = "http://127.0.0.1:33418/callback"
REDIRECT = "https://tool.example/callback"


# -- helpers -------------------------------------------------------------------


def register(client: TestClient, document: Any) -> httpx2.Response:
    # Serialised here: json.dumps writes a lone surrogate as its \\u escape.
    return client.post(
        "/oauth2/register",
        content=json.dumps(document),
        headers={"Content-Type": "application/json"},
    )


def registered(client: TestClient, document: dict[str, Any]) -> dict[str, Any]:
    response = register(client, document)
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    return body


def stored(database: Database, client_id: str) -> Client | None:
    with database.transaction() as db:
        row = clients.get(db=db, client_id=client_id)
        if row is not None:
            db.expunge(row)
        return row


def client_rows(database: Database) -> int:
    with database.transaction() as db:
        return len(clients.list_all(db=db))


def info(body: dict[str, Any], redirect_uri: str = REDIRECT) -> ClientInfo:
    return ClientInfo(body["client_id"], body.get("client_secret"), redirect_uri)


def consent_then_code(client: TestClient, app_client: ClientInfo, scope: str) -> tuple[str, str]:
    """A signed-in browser: authorize → consent page → approve → code."""
    challenge = pkce()
    params = authorize_params(app_client, challenge, scope=scope)
    paused = authorize(client, params)
    assert paused.status_code == 302, paused.text
    location = paused.headers["location"]
    assert location.startswith("/consent?redirection_token="), location
    token = query_of(location)["redirection_token"]
    described = client.get("/api/v1/consent", params={"redirection_token": token})
    assert described.status_code == 200, described.text
    assert described.json()["client"]["client_id"] == app_client.client_id
    decided = client.post("/api/v1/consent", json={"redirection_token": token, "approve": True})
    assert decided.status_code == 200, decided.text
    resumed = client.get(decided.json()["redir_to"], follow_redirects=False)
    callback = callback_of(resumed, params)
    return callback["code"], challenge.verifier


@pytest.fixture
def dcr(make_settings: Callable[..., Settings], clock: Clock) -> Iterator[TestClient]:
    """Baton with ``BATON_DCR=true``."""
    with baton(make_settings, clock, dcr=True) as test_client:
        yield test_client


@pytest.fixture
def alice(database: Database) -> None:
    create_user(database)


# -- off by default ------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"redirect_uris": [REDIRECT]},
        {"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"},
        ["not", "an", "object"],
    ],
)
def test_registration_is_refused_when_off(
    client: TestClient, database: Database, body: Any
) -> None:
    """Without ``BATON_DCR=true``: 403 access_denied, nothing written, and
    discovery does not advertise a registration endpoint."""
    before = snapshot(database)

    response = register(client, body)

    assert response.status_code == 403, response.text
    assert response.json()["error"] == "access_denied"
    assert snapshot(database) == before
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        assert "registration_endpoint" not in client.get(path).json()


# -- registration ---------------------------------------------------------------------


def test_a_public_client_gets_a_client_id_and_no_secret(dcr: TestClient) -> None:
    """RFC 7591 §3.2.1 for an MCP client: ``token_endpoint_auth_method=none``."""
    body = registered(
        dcr,
        {
            "client_name": "MCP Inspector",
            "redirect_uris": [LOOPBACK],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "scope": "openid read",
        },
    )

    assert isinstance(body["client_id"], str)
    assert len(body["client_id"]) >= 16
    assert "client_secret" not in body
    assert body["token_endpoint_auth_method"] == "none"
    assert body["client_name"] == "MCP Inspector"
    assert body["redirect_uris"] == [LOOPBACK]
    assert body["grant_types"] == ["authorization_code", "refresh_token"]
    assert body["scope"] == "openid read"
    assert isinstance(body["client_id_issued_at"], int)


def test_a_confidential_client_gets_a_secret(dcr: TestClient) -> None:
    """The default method is ``client_secret_basic`` (RFC 7591 §2)."""
    body = registered(dcr, {"client_name": "Web tool", "redirect_uris": [REDIRECT]})

    assert body["token_endpoint_auth_method"] == "client_secret_basic"
    assert len(body["client_secret"]) >= 32
    assert body["client_secret_expires_at"] == 0
    assert body["client_id"] != body["client_secret"]
    assert body["grant_types"] == ["authorization_code"]


def test_each_registration_is_a_new_client(dcr: TestClient) -> None:
    document = {"client_name": "Same", "redirect_uris": [REDIRECT]}
    first, second = registered(dcr, document), registered(dcr, document)
    assert first["client_id"] != second["client_id"]
    assert first["client_secret"] != second["client_secret"]


@pytest.mark.parametrize("public", [True, False], ids=["public", "confidential"])
def test_a_registered_client_is_stored_as_third_party_from_dcr(
    dcr: TestClient, database: Database, public: bool
) -> None:
    document: dict[str, Any] = {
        "client_name": "Tool",
        "redirect_uris": [LOOPBACK, "com.example.tool:/oauth2redirect"],
        "scope": "read",
        # Not a registration parameter: a client cannot make itself trusted.
        "first_party": True,
    }
    if public:
        document["token_endpoint_auth_method"] = "none"

    body = registered(dcr, document)

    row = stored(database, body["client_id"])
    assert row is not None
    assert row.provenance == "dcr"
    assert row.first_party is False
    assert row.public is public
    assert (row.secret_hash is None) is public
    assert row.name == "Tool"
    assert row.scope == "read"
    assert row.redirect_uris == [LOOPBACK, "com.example.tool:/oauth2redirect"]
    assert list(row.grant_types) == ["authorization_code"]
    if not public:
        assert body["client_secret"] not in repr(snapshot(database))  # only its hash
    with database.transaction() as db:
        event = db.scalars(select(AuditEvent).where(AuditEvent.event == "client.registered")).one()
        assert event.client_id == body["client_id"]


@pytest.mark.usefixtures("alice")
def test_a_confidential_clients_secret_works_at_the_token_endpoint(
    dcr: TestClient, database: Database
) -> None:
    """Registration → consent (never first-party) → code → tokens with the
    issued secret; a wrong secret is refused."""
    body = registered(
        dcr,
        {
            "client_name": "Web tool",
            "redirect_uris": [REDIRECT],
            "grant_types": ["authorization_code", "refresh_token"],
            "scope": "read write",
        },
    )
    app_client = info(body)
    assert sign_in(dcr) is None
    code, verifier = consent_then_code(dcr, app_client, "read")
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    }
    assert app_client.secret is not None

    wrong = exchange(dcr, form, auth=(app_client.client_id, "wrong"))
    assert wrong.status_code == 401
    response = exchange(dcr, form, auth=(app_client.client_id, app_client.secret))

    assert response.status_code == 200, response.text
    tokens = response.json()
    assert tokens["scope"] == "read"
    assert refresh(dcr, app_client, tokens["refresh_token"]).status_code == 200


@pytest.mark.usefixtures("alice")
def test_a_registered_client_introspects_only_its_own_tokens(
    dcr: TestClient, database: Database
) -> None:
    """RFC 7662 §4: open registration must not make anyone a resource server.
    A self-registered confidential client learns nothing of another client's
    token; an operator's confidential client (a resource server) still does."""
    registrant = info(registered(dcr, {"client_name": "Anyone", "redirect_uris": [REDIRECT]}))
    assert registrant.secret is not None
    resource_server = create_client(database, public=False)
    assert resource_server.secret is not None
    others = create_client(database)  # first-party, public: no consent step
    others_token = exchange(dcr, token_form(issue_code(dcr, others))).json()["access_token"]
    code, verifier = consent_then_code(dcr, registrant, "read")
    own_token = exchange(
        dcr,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        },
        auth=(registrant.client_id, registrant.secret),
    ).json()["access_token"]

    def introspect(token: str, caller: ClientInfo) -> dict[str, Any]:
        assert caller.secret is not None
        response = dcr.post(
            "/oauth2/introspect", data={"token": token}, auth=(caller.client_id, caller.secret)
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    assert introspect(others_token, registrant) == {"active": False}
    assert introspect(own_token, registrant)["active"] is True
    assert introspect(others_token, resource_server)["username"] == "alice"
    assert introspect(own_token, resource_server)["active"] is True


@pytest.mark.usefixtures("alice")
def test_a_public_registered_client_completes_the_flow(dcr: TestClient) -> None:
    body = registered(
        dcr,
        {
            "client_name": "CLI",
            "redirect_uris": [LOOPBACK],
            "token_endpoint_auth_method": "none",
        },
    )
    app_client = info(body, "http://127.0.0.1:50123/callback")  # any loopback port
    assert sign_in(dcr) is None
    code, verifier = consent_then_code(dcr, app_client, "read")

    response = exchange(
        dcr,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": app_client.redirect_uri,
            "client_id": app_client.client_id,
            "code_verifier": verifier,
        },
    )

    assert response.status_code == 200, response.text
    assert "refresh_token" not in response.json()  # not registered for it


@pytest.mark.usefixtures("alice")
def test_a_registered_client_always_needs_consent(dcr: TestClient) -> None:
    """Registered clients are never first-party: a signed-in user is sent to
    the consent page with a redirection token, not straight back with a code."""
    body = registered(dcr, {"client_name": "Tool", "redirect_uris": [REDIRECT]})
    assert sign_in(dcr) is None
    params = authorize_params(info(body), pkce())

    response = authorize(dcr, params)

    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith("/consent?redirection_token="), location
    assert "code=" not in location


@pytest.mark.usefixtures("alice")
def test_a_cli_client_is_unaffected_by_dcr(dcr: TestClient, database: Database) -> None:
    """Guard for the test above: the consent redirect is about provenance,
    not about the server: a first-party client of the same server gets a code."""
    app_client = create_client(database)
    assert sign_in(dcr) is None
    params = authorize_params(app_client, pkce())
    assert "code" in callback_of(authorize(dcr, params), params)


def test_clients_list_shows_the_provenance(
    dcr: TestClient, database_url: str, database: Database
) -> None:
    body = registered(dcr, {"client_name": "Registered tool", "redirect_uris": [REDIRECT]})
    create_client(database, name="Operator app")

    rows = json.loads(run_baton(database_url, "clients", "list", "--json").stdout)

    provenance = {row["name"]: row["provenance"] for row in rows}
    assert provenance == {"Registered tool": "dcr", "Operator app": "cli"}
    first_party = {row["name"]: row["first_party"] for row in rows}
    assert first_party == {"Registered tool": False, "Operator app": True}
    lines = table(run_baton(database_url, "clients", "list"))
    assert lines[0][:4] == ["CLIENT ID", "NAME", "TYPE", "SOURCE"]
    assert [body["client_id"], "Registered tool", "confidential", "dcr"] in [
        line[:4] for line in lines[1:]
    ]


def test_clients_list_shows_the_provenance_column(database_url: str, database: Database) -> None:
    """The ``SOURCE`` column and ``provenance`` field, whatever registered the client."""
    with database.transaction() as db:
        clients.register(
            db=db,
            name="Registered tool",
            redirect_uris=[REDIRECT],
            public=True,
            first_party=False,
            scope="read",
            now=utcnow(),
            provenance="dcr",
        )
    rows = json.loads(run_baton(database_url, "clients", "list", "--json").stdout)
    assert [(row["name"], row["provenance"]) for row in rows] == [("Registered tool", "dcr")]
    lines = table(run_baton(database_url, "clients", "list"))
    assert lines[1][1:4] == ["Registered tool", "public", "dcr"]


# -- redirect URIs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("http://127.0.0.1:8080/callback", id="loopback IPv4"),
        pytest.param("http://127.0.0.1/callback", id="loopback without port"),
        pytest.param("http://[::1]:8080/callback", id="loopback IPv6"),
        pytest.param("http://localhost:3000/callback", id="localhost"),
        pytest.param("https://tool.example/callback?x=1", id="https with query"),
        pytest.param("com.example.tool:/oauth2redirect", id="reverse-domain scheme"),
        pytest.param("com.example.tool://callback", id="reverse-domain scheme with authority"),
    ],
)
def test_accepted_redirect_uris(dcr: TestClient, uri: str) -> None:
    """OAuth 2.1 §2.3, RFC 8252 §7.1 and §7.3."""
    body = registered(dcr, {"redirect_uris": [uri], "token_endpoint_auth_method": "none"})
    assert body["redirect_uris"] == [uri]


BAD_REDIRECT_URIS = [
    pytest.param(["http://tool.example/callback"], id="http not loopback"),
    pytest.param(["http://localhost.evil.example/cb"], id="http lookalike of localhost"),
    pytest.param(["https://tool.example/callback#fragment"], id="fragment"),
    pytest.param(["https://tool.example/callback#"], id="empty fragment"),
    pytest.param(["javascript:alert(1)"], id="javascript"),
    pytest.param(["data:text/html,<script>alert(1)</script>"], id="data"),
    pytest.param(["file:///etc/passwd"], id="file"),
    pytest.param(["myapp://callback"], id="bare custom scheme"),
    pytest.param(["myapp:/callback"], id="bare custom scheme without authority"),
    pytest.param(["/callback"], id="relative"),
    pytest.param(["https:///callback"], id="no host"),
    pytest.param(["https://tool.example@evil.example/cb"], id="user information"),
    pytest.param(["http://[::1/cb"], id="broken IPv6 literal"),
    pytest.param(["http://tool.example/it's\"quoted"], id="quotes (echoed in the error)"),
    pytest.param(["http://tool.example/back\\slash"], id="backslash (echoed in the error)"),
    pytest.param(["https://tool.example/\x00"], id="NUL"),
    pytest.param(["https://tool.example/" + "x" * 2100], id="too long"),
    pytest.param([REDIRECT, "http://tool.example/callback"], id="one bad among good"),
    pytest.param([f"https://tool.example/{n}" for n in range(21)], id="too many"),
    pytest.param([], id="empty list"),
    pytest.param([""], id="empty string"),
    pytest.param(REDIRECT, id="a string, not a list"),
    pytest.param([123], id="a number"),
    pytest.param([[REDIRECT]], id="nested list"),
    pytest.param(None, id="null"),
]


@pytest.mark.parametrize("uris", BAD_REDIRECT_URIS)
def test_bad_redirect_uris_are_refused(dcr: TestClient, database: Database, uris: Any) -> None:
    """RFC 7591 §3.2.2: ``invalid_redirect_uri``; nothing is written."""
    before = snapshot(database)

    response = register(dcr, {"client_name": "Tool", "redirect_uris": uris})

    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_redirect_uri"
    assert snapshot(database) == before


def test_missing_redirect_uris_are_refused(dcr: TestClient, database: Database) -> None:
    before = snapshot(database)
    response = register(dcr, {"client_name": "Tool", "token_endpoint_auth_method": "none"})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_redirect_uri"
    assert snapshot(database) == before


# -- other metadata --------------------------------------------------------------------------


BAD_METADATA = [
    pytest.param({"grant_types": ["client_credentials"]}, id="client_credentials"),
    pytest.param({"grant_types": ["implicit"]}, id="implicit"),
    pytest.param({"grant_types": ["refresh_token"]}, id="refresh_token alone"),
    pytest.param({"grant_types": ["authorization_code", "password"]}, id="password"),
    pytest.param({"grant_types": "authorization_code"}, id="grant_types a string"),
    pytest.param({"grant_types": [1]}, id="grant_types numbers"),
    pytest.param({"response_types": ["token"]}, id="response type token"),
    pytest.param({"response_types": ["code id_token"]}, id="hybrid response type"),
    pytest.param({"response_types": "code"}, id="response_types a string"),
    pytest.param({"token_endpoint_auth_method": "private_key_jwt"}, id="private_key_jwt"),
    pytest.param({"token_endpoint_auth_method": "client_secret_jwt"}, id="client_secret_jwt"),
    pytest.param({"token_endpoint_auth_method": "tls_client_auth"}, id="tls_client_auth"),
    pytest.param({"token_endpoint_auth_method": ["none"]}, id="auth method a list"),
    pytest.param({"token_endpoint_auth_method": None}, id="auth method null"),
    pytest.param({"scope": "admin"}, id="unsupported scope"),
    pytest.param({"scope": "read admin"}, id="one unsupported scope"),
    pytest.param({"scope": 123}, id="scope a number"),
    pytest.param({"scope": ["read"]}, id="scope a list"),
    pytest.param({"scope": "read\x00"}, id="scope with NUL"),
    pytest.param({"client_name": "x" * 300}, id="client_name over 255"),
    pytest.param({"client_name": "x" * 5000}, id="client_name far too long"),
    pytest.param({"client_name": 42}, id="client_name a number"),
    pytest.param({"client_name": ["Tool"]}, id="client_name a list"),
    pytest.param({"client_name": {"en": "Tool"}}, id="client_name an object"),
    pytest.param({"client_name": "Tool\x00"}, id="client_name with NUL"),
    pytest.param({"client_name": "Tool\nInc"}, id="client_name with a newline"),
    pytest.param({"client_uri": "not a url"}, id="client_uri"),
    pytest.param({"client_uri": 7}, id="client_uri a number"),
    pytest.param({"logo_uri": "https://logo.example/#x"}, id="logo_uri with fragment"),
    pytest.param({"tos_uri": "https://" + "x" * 3000}, id="tos_uri too long"),
    pytest.param({"contacts": "admin@tool.example"}, id="contacts a string"),
    pytest.param({"contacts": ["a@b.example"] * 50}, id="too many contacts"),
    pytest.param({"jwks": "keys"}, id="jwks a string"),
    pytest.param({"jwks": {"keys": "nope"}}, id="jwks malformed"),
    pytest.param({"jwks_uri": 5}, id="jwks_uri a number"),
    pytest.param({"jwks": {}}, id="jwks without keys"),
    pytest.param(
        {"jwks": {"keys": [{"kty": "EC", "crv": "P-999", "x": "AA", "y": "AA"}]}},
        id="jwks with an unknown curve",
    ),
    # JSON's \ud800 escape decodes to a lone surrogate, which nothing can store.
    pytest.param({"contacts": ["\ud800"]}, id="contacts with a lone surrogate"),
    pytest.param({"client_name": "Tool \udfff"}, id="client_name with a lone surrogate"),
    pytest.param({"redirect_uris": ["https://tool.example/\ud800"]}, id="URI with a surrogate"),
    pytest.param({"software_id": {"id": 1}}, id="software_id an object"),
]


@pytest.mark.parametrize("changes", BAD_METADATA)
def test_invalid_metadata_is_refused(
    dcr: TestClient, database: Database, changes: dict[str, Any]
) -> None:
    """RFC 7591 §3.2.2: 400 ``invalid_client_metadata``, never a 500, and no row."""
    before = snapshot(database)

    response = register(dcr, {"client_name": "Tool", "redirect_uris": [REDIRECT], **changes})

    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"] == "invalid_client_metadata"
    assert isinstance(response.json().get("error_description", ""), str)
    assert snapshot(database) == before


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        pytest.param(b"redirect_uris=https://tool.example/cb", "application/json", id="not JSON"),
        pytest.param(b'["https://tool.example/cb"]', "application/json", id="an array"),
        pytest.param(b'"text"', "application/json", id="a string"),
        pytest.param(b"null", "application/json", id="null"),
        pytest.param(b"{}", "application/json", id="an empty object"),
        pytest.param(b"\xff\xfe{", "application/json", id="not UTF-8"),
        pytest.param(b"[" * 10_000 + b"]" * 10_000, "application/json", id="deeply nested"),
        pytest.param(
            json.dumps({"redirect_uris": [REDIRECT]}).encode(), "text/plain", id="not JSON type"
        ),
        pytest.param(
            json.dumps({"redirect_uris": [REDIRECT]}).encode(),
            "application/x-www-form-urlencoded",
            id="form type",
        ),
    ],
)
def test_a_body_that_is_not_a_json_object_is_refused(
    dcr: TestClient, database: Database, content: bytes, content_type: str
) -> None:
    before = snapshot(database)

    response = dcr.post("/oauth2/register", content=content, headers={"Content-Type": content_type})

    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_client_metadata"
    assert snapshot(database) == before


def test_unknown_metadata_is_ignored(dcr: TestClient) -> None:
    """RFC 7591 §2: the server ignores metadata it does not understand."""
    body = registered(
        dcr,
        {
            "redirect_uris": [REDIRECT],
            "x-vendor-extension": {"nested": [1, 2, 3]},
            "software_statement": "not.a.jwt",
            "client_name#fr": "Outil",
        },
    )
    assert "x-vendor-extension" not in body
    assert "software_statement" not in body


def test_defaults_when_metadata_is_omitted(dcr: TestClient) -> None:
    """RFC 7591 §2 defaults: client_secret_basic, authorization_code, code;
    every scope the server supports."""
    body = registered(dcr, {"redirect_uris": [REDIRECT]})

    assert body["token_endpoint_auth_method"] == "client_secret_basic"
    assert body["grant_types"] == ["authorization_code"]
    assert body["response_types"] == ["code"]
    supported = dcr.get("/.well-known/oauth-authorization-server").json()["scopes_supported"]
    assert sorted(body["scope"].split()) == sorted(supported)
    assert body["client_name"] == "Unnamed application"


def test_registration_endpoint_is_advertised_when_on(dcr: TestClient) -> None:
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        document = dcr.get(path).json()
        assert document["registration_endpoint"].endswith("/oauth2/register")
