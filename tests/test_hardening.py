"""Defences that are not part of a single feature: headers, body limits, redirects."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.testclient import TestClient

from app.redirects import AUTHORIZE_PATH, rebuild, resume_path

HOSTILE = [
    "//evil.example/x",
    "/\\evil.example",
    "/%2F%2Fevil.example",
    "%2F%2Fevil.example",
    "https://evil.example/oauth2/authorize?x=1",
    "javascript:alert(1)",
    "/oauth2/authorize?next=//evil\r\nLocation: https://evil.example",
    "\x00/oauth2/authorize",
    " /oauth2/authorize?a=1",
    "/oauth2/authorize@evil.example?x=1",
    "/oauth2/authorize?x=1#@evil.example",
    "",
]


def assert_local(path: str) -> None:
    assert path.startswith(AUTHORIZE_PATH + "?")
    parts = urlsplit(path)
    assert (parts.scheme, parts.netloc, parts.path, parts.fragment) == ("", "", AUTHORIZE_PATH, "")
    assert not any(ord(c) < 0x21 or c in "\\#" for c in path)


@pytest.mark.parametrize("stored", HOSTILE)
def test_hostile_stored_redir_to_never_escapes(stored: str) -> None:
    assert_local(rebuild(stored))


@given(st.text())
def test_any_stored_value_rebuilds_to_a_local_path(stored: str) -> None:
    assert_local(rebuild(stored))


@given(st.dictionaries(st.sampled_from(["state", "redirect_uri", "scope", "x"]), st.text()))
def test_any_parameters_build_a_local_path(params: dict[str, str]) -> None:
    path = resume_path(params)
    assert_local(path)
    assert rebuild(path) == path


def test_security_headers_on_pages_and_api(client: TestClient) -> None:
    for path in ["/login", "/api/v1/users/me", "/oauth2/authorize"]:
        response = client.get(path)
        csp = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["cache-control"] == "no-store"


def test_static_assets_may_be_cached(client: TestClient) -> None:
    response = client.get("/static/baton.css")
    assert response.status_code == 200
    assert response.headers.get("cache-control") != "no-store"


@pytest.mark.parametrize("declared", [True, False])
def test_oversized_login_bodies_are_refused(client: TestClient, declared: bool) -> None:
    body = b'{"username": "a", "password": "' + b"x" * 70_000 + b'"}'
    if declared:
        response = client.post(
            "/api/v1/login", content=body, headers={"content-type": "application/json"}
        )
    else:
        response = client.post(
            "/api/v1/login",
            content=iter([body[:40_000], body[40_000:]]),
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 413


def test_oversized_token_bodies_get_an_oauth_error(client: TestClient) -> None:
    response = client.post("/oauth2/token", data={"grant_type": "x" * 70_000})
    assert response.status_code == 413
    assert response.json()["error"] == "invalid_request"
