"""Interoperability with the npm package openid-client (v6, on oauth4webapi),
which nobody here wrote: ``tests/interop/flow.mjs`` drives the whole flow
against a real ``baton serve`` on SQLite and PostgreSQL and prints one JSON
report, on which these tests assert.

``make interop`` (a prerequisite of ``make test``) installs the package from
``tests/interop/package-lock.json``. Without Node.js or that install these
tests skip, unless ``BATON_TEST_INTEROP=required`` (as in CI), where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.interop_findings import DcrClientNotPersisted
from tests.servers import Server, serving

INTEROP = Path(__file__).parent / "interop"
SCRIPT = INTEROP / "flow.mjs"
REQUIRED = os.environ.get("BATON_TEST_INTEROP", "").lower() == "required"
USERNAME = "alice"
PASSWORD = "node interop password, long enough"
SCOPE = "openid profile read write"
# What flow.mjs registers, or expects a pre-registered client to have.
REDIRECT_URI = "http://127.0.0.1/callback"


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, once openid-client is installed for it."""
    node = shutil.which("node")
    problem = None
    if node is None:
        problem = "Node.js is not installed"
    elif not (INTEROP / "node_modules" / "openid-client" / "package.json").is_file():
        problem = f"openid-client is not installed in {INTEROP} (run make interop)"
    if problem is not None:
        if REQUIRED:
            pytest.fail(problem + " (BATON_TEST_INTEROP=required)")
        pytest.skip(problem + " (set BATON_TEST_INTEROP=required to make this fail)")
    assert node is not None
    return node


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, node: str
) -> Iterator[Server]:
    """One server per database for this module; each run registers its own clients."""
    workdir = tmp_path_factory.mktemp("interop-node")
    if request.param == "sqlite":
        url = f"sqlite:///{workdir}/baton.db"
    else:
        url = request.getfixturevalue("postgres").create_database()
    with serving(url, workdir, {"BATON_DCR": "true"}) as running:
        running.baton("users", "add", USERNAME, "--password-stdin", stdin=PASSWORD + "\n")
        yield running


def run_flow(node: str, server: Server, kind: str, **env: str) -> dict[str, Any]:
    """Run flow.mjs; its JSON report, whatever its exit status."""
    completed = subprocess.run(
        [node, str(SCRIPT), "--issuer", server.url, "--client", kind],
        env={
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", ""),
            "BATON_INTEROP_USERNAME": USERNAME,
            "BATON_INTEROP_PASSWORD": PASSWORD,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    try:
        report: dict[str, Any] = json.loads(completed.stdout)
    except ValueError:
        pytest.fail(f"flow.mjs printed no JSON (exit {completed.returncode}):\n{completed.stderr}")
    assert (completed.returncode == 0) is report["ok"], completed.stderr
    return report


def add_client(server: Server, name: str, *, public: bool) -> dict[str, Any]:
    args = ["clients", "add", "--name", name, "--redirect-uri", REDIRECT_URI, "--scope", SCOPE]
    created: dict[str, Any] = json.loads(
        server.baton(*args, "--json", *(["--public"] if public else [])).stdout
    )
    return created


def assert_the_whole_flow(report: dict[str, Any], server: Server, kind: str) -> None:
    steps = {step["name"]: step for step in report["steps"]}
    failed = [step for step in report["steps"] if not step["ok"]]
    assert report["ok"], json.dumps(failed, indent=2)
    assert report["client"] == kind
    assert report["versions"]["openid-client"].startswith("6.")

    assert steps["discovery"]["issuer"] == server.url
    client_id = steps["registration"]["client_id"]

    # The first authorization shows the login page, then the consent page for
    # exactly what was asked; the second one is silent (session, remembered grant).
    login, consent = steps["authorize"]["pages"]
    assert login == {"page": "login"}
    assert consent["page"] == "consent"
    assert consent["client"]["client_id"] == client_id
    assert consent["scopes"] == SCOPE.split()
    # iss (RFC 9207): advertised, so openid-client checked it against the issuer.
    assert steps["authorize"]["callback_parameters"] == ["code", "iss", "state"]
    assert steps["authorize again"]["pages"] == []

    # The ID token, validated by the library (signature, iss, aud, nonce, exp).
    for name in ("token", "token again"):
        token = steps[name]
        assert token["token_type"] == "bearer"
        assert token["scope"] == SCOPE
        assert token["refresh_token"] is True
        claims = token["id_token_claims"]
        assert claims["iss"] == server.url
        assert client_id in claims["aud"]
        assert claims["nonce"]
        assert isinstance(claims["auth_time"], int)
        assert claims["at_hash"]
        assert claims["preferred_username"] == USERNAME
    subject = steps["token"]["id_token_claims"]["sub"]
    assert steps["token again"]["id_token_claims"]["sub"] == subject
    assert steps["userinfo"]["userinfo"] == {"sub": subject, "preferred_username": USERNAME}

    # Refresh rotates; the rotated-out refresh token is refused.
    assert steps["refresh"]["rotated"] is True
    assert steps["refresh"]["scope"] == SCOPE
    assert steps["refresh with the rotated-out token"]["refused"]["error"] == "invalid_grant"

    live = steps["introspect refreshed access token"]["introspection"]
    assert live["active"] is True
    assert live["client_id"] == client_id
    assert live["sub"] == subject
    assert live["scope"] == SCOPE
    assert live["iss"] == server.url
    assert steps["introspect after reuse"]["introspection"] == {"active": False}
    assert steps["introspect refresh token"]["introspection"]["active"] is True

    # Revoked: the refresh token and the access token issued with it.
    assert steps["revoke"]["ok"] is True
    assert steps["introspect revoked refresh token"]["introspection"] == {"active": False}
    assert steps["introspect its access token"]["introspection"] == {"active": False}
    assert steps["userinfo after revocation"]["refused"]["status"] == 401


@pytest.mark.parametrize(
    "kind",
    ["public", "confidential"],
)
def test_openid_client_registers_itself_and_completes_the_whole_flow(
    node: str, server: Server, kind: str
) -> None:
    env = {}
    if kind == "public":
        # Its tokens are introspected by the operator's resource server: a client
        # that registered itself may introspect only its own tokens.
        resource_server = add_client(
            server, "openid-client interop (resource server)", public=False
        )
        env["BATON_INTEROP_RS_CLIENT_ID"] = resource_server["client_id"]
        env["BATON_INTEROP_RS_CLIENT_SECRET"] = resource_server["client_secret"]
    report = run_flow(node, server, kind, **env)
    registration = next(s for s in report["steps"] if s["name"] == "registration")
    if registration["ok"] and not report["ok"]:
        listed = json.loads(server.baton("clients", "list", "--json").stdout)
        if registration["client_id"] not in {c["client_id"] for c in listed}:
            raise DcrClientNotPersisted(json.dumps(report["steps"][-1]))
    assert report["registration"] == "dynamic"
    assert registration["token_endpoint_auth_method"] == (
        "none" if kind == "public" else "client_secret_basic"
    )
    assert_the_whole_flow(report, server, kind)


@pytest.mark.parametrize("kind", ["public", "confidential"])
def test_openid_client_completes_the_whole_flow_with_a_preregistered_client(
    node: str, server: Server, kind: str
) -> None:
    """The same flow with a client from ``baton clients add``, the operator's way."""
    app = add_client(server, f"openid-client interop ({kind}, cli)", public=kind == "public")
    env = {"BATON_INTEROP_CLIENT_ID": app["client_id"]}
    if kind == "confidential":
        env["BATON_INTEROP_CLIENT_SECRET"] = app["client_secret"]
    else:
        resource_server = add_client(
            server, "openid-client interop (resource server)", public=False
        )
        env["BATON_INTEROP_RS_CLIENT_ID"] = resource_server["client_id"]
        env["BATON_INTEROP_RS_CLIENT_SECRET"] = resource_server["client_secret"]
    report = run_flow(node, server, kind, **env)
    assert report["registration"] == "preregistered"
    assert_the_whole_flow(report, server, kind)
