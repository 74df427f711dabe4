"""Edges of the HTTP surface found by fuzzing a served Baton: clients that
leave in the middle of a request, the router's own 404 and 405, refused CORS
preflights, and client addresses forwarded by a trusted proxy."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx2
import pytest
import requests
import sqlalchemy
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from app.http_protocol import PEER
from app.main import create_app
from app.middleware import ClientAddressMiddleware
from app.settings import Settings
from tests.conftest import BASE_URL
from tests.factories import PASSWORD, REDIRECT_URI, pkce, query_of
from tests.servers import Server, serving

ERROR_TYPES = {
    "not_found",
    "unauthorised",
    "forbidden",
    "internal_server_error",
    "validation_error",
    "unspecified",
}


def assert_problem(response: httpx2.Response, status: int) -> dict[str, object]:
    """An ``hq_Error`` document (spec/login-openapi.json)."""
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, object] = response.json()
    assert body["status"] == status
    assert body["type"] in ERROR_TYPES
    assert isinstance(body["title"], str)
    assert body["title"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


# -- a client that leaves mid-body ------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("edges")
    env = {"BATON_DCR": "true"}
    with serving(f"sqlite:///{workdir / 'baton.db'}", workdir, env) as running:
        yield running


def _requests_by_status(server: Server, route: str) -> dict[str, float]:
    text = requests.get(server.url + "/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "baton_http_requests_total" and sample.labels["route"] == route:
                status = sample.labels["status"]
                counts[status] = counts.get(status, 0.0) + sample.value
    return counts


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/api/v1/login", "application/json"),
        ("/api/v1/consent", "application/json"),
        ("/oauth2/token", "application/x-www-form-urlencoded"),
        ("/oauth2/register", "application/json"),
    ],
)
def test_a_client_gone_mid_body_is_no_server_error(
    served: Server, path: str, content_type: str
) -> None:
    """100 bytes announced, 4 sent, then the socket closes: nobody is left to
    answer, nothing failed, and neither the log nor the metrics say 5xx."""
    before = sum(_requests_by_status(served, path).values())
    parts = urlsplit(served.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: baton\r\nContent-Type: {content_type}\r\n"
            f'Content-Length: 100\r\n\r\n{{"a"'.encode()
        )
        time.sleep(0.2)  # the app is waiting for the rest of the body
    deadline = time.monotonic() + 10
    while sum((counts := _requests_by_status(served, path)).values()) == before:
        assert time.monotonic() < deadline, "the request was never counted"
        time.sleep(0.05)
    assert not [status for status in counts if status.startswith("5")], counts
    log = served.log.read_text()
    assert " ERROR " not in log
    assert "Traceback" not in log


# -- the router's own errors --------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("GET", "/oauth2/token", 405, {"POST"}),
        ("POST", "/oauth2/jwks", 405, {"GET", "HEAD"}),
        ("DELETE", "/oauth2/authorize", 405, {"GET", "HEAD"}),
        ("GET", "/oauth2/nope", 404, None),
    ],
)
def test_oauth_router_errors_are_oauth_errors(
    client: TestClient, method: str, path: str, status: int, allow: set[str] | None
) -> None:
    response = client.request(method, path)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    allowed = response.headers.get("allow")
    # Starlette lists a route's methods from a set: in any order.
    assert (None if allowed is None else set(allowed.split(", "))) == allow
    body = response.json()
    assert body["error"] == "invalid_request"
    assert isinstance(body["error_description"], str)
    assert body["error_description"]


def test_an_api_405_keeps_its_allow_header(client: TestClient) -> None:
    response = client.put("/api/v1/login", json={})
    assert assert_problem(response, 405)["type"] == "unspecified"
    assert response.headers["allow"] == "POST"


def test_an_api_404_is_still_a_problem(client: TestClient) -> None:
    assert assert_problem(client.get("/api/v1/nope"), 404)["type"] == "not_found"


# -- CORS preflights ------------------------------------------------------------------


def _preflight(client: TestClient, path: str, origin: str, method: str = "POST") -> httpx2.Response:
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "content-type",
        },
    )


@pytest.fixture
def cors_client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    settings = make_settings(cors_origins=("https://app.example",))
    with TestClient(create_app(settings), base_url=BASE_URL) as test_client:
        yield test_client


def test_a_preflight_from_a_refused_origin_is_a_problem(cors_client: TestClient) -> None:
    response = _preflight(cors_client, "/api/v1/login", "https://evil.example")
    body = assert_problem(response, 403)
    assert body["type"] == "forbidden"
    assert body["title"] == "This origin may not call Baton."
    assert "access-control-allow-origin" not in response.headers
    assert "Origin" in response.headers["vary"]


def test_a_preflight_for_a_refused_method_is_a_problem(cors_client: TestClient) -> None:
    response = _preflight(cors_client, "/api/v1/login", "https://app.example", method="PUT")
    body = assert_problem(response, 403)
    assert body["type"] == "forbidden"
    assert "method" in str(body["title"])


def test_an_allowed_preflight_is_unchanged(cors_client: TestClient) -> None:
    response = _preflight(cors_client, "/api/v1/login", "https://app.example")
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert response.headers["access-control-allow-credentials"] == "true"


def test_a_refused_preflight_on_oauth_is_an_oauth_error(cors_client: TestClient) -> None:
    response = _preflight(cors_client, "/oauth2/authorize", "https://evil.example", "GET")
    assert response.status_code == 403
    assert response.json()["error"] == "invalid_request"


# -- client addresses behind a trusted proxy ----------------------------------------------


def _client_seen(client: tuple[str, int], peer: tuple[str, int] | None) -> object:
    """What the app behind ``ClientAddressMiddleware`` sees as ``scope["client"]``."""
    seen: list[object] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["client"])

    async def nothing() -> Message:
        raise AssertionError

    async def ignored(message: Message) -> None:
        raise AssertionError

    scope: Scope = {"type": "http", "client": client}
    if peer is not None:
        scope["extensions"] = {PEER: {"client": peer}}
    asyncio.run(ClientAddressMiddleware(app)(scope, nothing, ignored))
    return seen[0]


PEER_ADDRESS = ("10.0.0.7", 41000)


@pytest.mark.parametrize(
    ("forwarded", "seen"),
    [
        pytest.param("a" * 100, PEER_ADDRESS, id="a word"),
        pytest.param("proxy.example", PEER_ADDRESS, id="a name"),
        pytest.param("[2001:db8::1", PEER_ADDRESS, id="an unclosed bracket"),
        pytest.param("1.2.3.4:80", PEER_ADDRESS, id="a port uvicorn did not strip"),
        pytest.param("01.2.3.4", PEER_ADDRESS, id="an ambiguous octet"),
        pytest.param("", PEER_ADDRESS, id="nothing"),
        pytest.param("192.0.2.1", ("192.0.2.1", 5), id="IPv4"),
        pytest.param("2001:DB8:0:0::1", ("2001:db8::1", 5), id="IPv6, normalised"),
        pytest.param("fe80::1%eth0", ("fe80::1", 5), id="IPv6 with a zone"),
        pytest.param("fe80::1%" + "z" * 80, ("fe80::1", 5), id="IPv6 with a long zone"),
    ],
)
def test_only_an_ip_address_is_taken_as_the_client(forwarded: str, seen: tuple[str, int]) -> None:
    assert _client_seen((forwarded, 5), PEER_ADDRESS) == seen


def test_without_the_peer_a_bad_address_is_no_address() -> None:
    assert _client_seen(("a" * 100, 5), None) is None


@pytest.mark.slow
def test_a_forwarded_address_that_is_no_ip_falls_back_to_the_peer(
    empty_database_url: str, tmp_path: Path
) -> None:
    """X-Forwarded-For from a trusted proxy holding 100 characters: every step
    of a sign-in works (PostgreSQL refused the address: ``varchar(64)``), and
    what is recorded is the proxy's address."""
    env = {"BATON_TRUSTED_PROXIES": "127.0.0.1"}
    with serving(empty_database_url, tmp_path, env) as server:
        server.baton("users", "add", "alice", "--password-stdin", stdin=PASSWORD + "\n")
        created = json.loads(
            server.baton(
                "clients", "add", "--name", "Edges", "--public", "--first-party",
                "--redirect-uri", REDIRECT_URI, "--json",
            ).stdout
        )  # fmt: skip
        browser = requests.Session()
        browser.headers["X-Forwarded-For"] = "a" * 100
        params = {
            "response_type": "code",
            "client_id": created["client_id"],
            "redirect_uri": REDIRECT_URI,
            "scope": "read",
            "state": secrets.token_urlsafe(8),
            "code_challenge": pkce().challenge,
            "code_challenge_method": "S256",
        }
        paused = browser.get(
            server.url + "/oauth2/authorize", params=params, allow_redirects=False, timeout=10
        )
        assert paused.status_code == 302, paused.text
        token = query_of(paused.headers["location"])["redirection_token"]
        login = {"username": "alice", "redirection_token": token}
        failed = browser.post(
            server.url + "/api/v1/login", json={**login, "password": "wrong"}, timeout=10
        )
        assert failed.status_code == 401, failed.text
        signed_in = browser.post(
            server.url + "/api/v1/login", json={**login, "password": PASSWORD}, timeout=10
        )
        assert signed_in.status_code == 200, signed_in.text
        resumed = browser.get(
            urljoin(server.url, signed_in.json()["redir_to"]), allow_redirects=False, timeout=10
        )
        assert resumed.status_code == 302, resumed.text
    engine = sqlalchemy.create_engine(empty_database_url)
    try:
        with engine.connect() as connection:
            recorded = {
                *connection.execute(sqlalchemy.text("SELECT ip FROM audit_events")).scalars(),
                *connection.execute(
                    sqlalchemy.text("SELECT requester_ip FROM pending_flows")
                ).scalars(),
                *connection.execute(sqlalchemy.text("SELECT ip FROM browser_sessions")).scalars(),
            }
    finally:
        engine.dispose()
    assert recorded - {None} == {"127.0.0.1"}
