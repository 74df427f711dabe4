"""Fuzz ``/api/v1`` with schemathesis against the OpenAPI document Baton serves.

The schema is loaded from the running application (in process, lifespan and
all), so the document under test is exactly the one clients download. Every
response must be a non-5xx with a documented status code, content type and
body. ``BATON_FUZZ_EXAMPLES`` raises the examples per operation and generation
mode (``make fuzz`` sets 1000).

schemathesis's pytest integration for fixtures (``schemathesis.pytest.from_fixture``)
cannot run here: schemathesis 4.32 rewrites ``request.node._nodeid``, which
pytest 9.2 no longer has. The operations' Hypothesis strategies
(``operation.as_strategy``) drive the same generation and checks instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from argon2 import PasswordHasher
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.core import NOT_SET
from schemathesis.python import asgi
from schemathesis.schemas import BaseSchema
from sqlalchemy import select

from app import flows, passwords, sessions, tokens
from app.api.routes import openapi_document
from app.db import Database
from app.main import create_app
from app.models import Client, Token, User
from app.redirects import AUTHORIZE_PATH, resume_path
from app.settings import Settings
from tests.conftest import Clock
from tests.factories import PASSWORD, create_client, create_user

EXAMPLES = int(os.environ.get("BATON_FUZZ_EXAMPLES", "40"))
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
]
# Each fuzzed example happens a day after the previous one: past every flow,
# session and login-throttle window that the examples before it left behind.
BETWEEN_EXAMPLES = timedelta(days=1)


def fuzz_settings() -> settings:
    return settings(
        max_examples=EXAMPLES,
        deadline=None,
        # Explaining a failure replays it many times over, for little news here.
        phases=[phase for phase in Phase if phase is not Phase.explain],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def _operations() -> list[Any]:
    """Every operation of the document, in each generation mode that applies to
    it: an operation without inputs (parameters, body or security) cannot be
    sent a negative request."""
    document = openapi_document()
    params = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            inputs = (
                operation.get("parameters")
                or operation.get("requestBody")
                or operation.get("security", document.get("security"))
            )
            for mode in GenerationMode:
                if mode is GenerationMode.POSITIVE or inputs:
                    label = f"{mode} {method.upper()} {path}"
                    params.append(pytest.param(method.upper(), path, mode, id=label))
    return params


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2id at its lowest cost. The fuzz is about what Baton answers, and
    at the real cost (~0.2 s a verification) logins would take all its time."""
    monkeypatch.setattr(
        passwords, "_argon2", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    )


@dataclass(frozen=True)
class Seed:
    """Real credentials, so that fuzzed requests get past authentication too."""

    database: Database
    clock: Clock
    client_pk: int
    user_id: int
    access_token: str

    def flow_token(self, *, spent: bool = False) -> str:
        """The redirection token of a new pending flow (consumed already if ``spent``)."""
        now = self.clock()
        params = {"response_type": "code", "client_id": "fuzz", "state": "s"}
        with self.database.transaction() as db:
            flow = flows.create(
                db=db,
                client_pk=self.client_pk,
                request=params,
                redir_to=resume_path(params),
                now=now,
                ttl=timedelta(minutes=10),
            )
            if spent:
                assert flows.consume(db=db, token=flow.token, user_id=self.user_id, now=now)
        return flow.token

    def session(self) -> str:
        """The cookie value of a new live session of alice's."""
        with self.database.transaction() as db:
            created = sessions.create(
                db=db, user_id=self.user_id, now=self.clock(), duration=timedelta(hours=1)
            )
        return created.secret


@pytest.fixture
def seed(database: Database, clock: Clock) -> Seed:
    """alice, a client and a bearer token of alice's that outlives any fuzz run."""
    create_user(database)
    client_id = create_client(database).client_id
    access_token = tokens.new_secret()
    with database.transaction() as db:
        user_id = db.scalars(select(User.id).where(User.username == "alice")).one()
        client_pk = db.scalars(select(Client.id).where(Client.client_id == client_id)).one()
        db.add(
            Token(
                access_token_hash=tokens.digest(access_token),
                client_pk=client_pk,
                user_id=user_id,
                scope="read",
                issued_at=clock(),
                expires_at=clock() + timedelta(days=3650),
            )
        )
    return Seed(database, clock, client_pk, user_id, access_token)


@pytest.fixture
def api_schema(
    make_settings: Callable[..., Settings], clock: Clock, seed: Seed
) -> Iterator[BaseSchema]:
    """The document as Baton serves it, bound to the app that served it.

    Loading it starts the app's lifespan in schemathesis's ASGI transport (so
    ``app.state.services`` exists); it runs until the end of the test.
    """
    app = create_app(make_settings(purge_interval=None), clock=clock)
    try:
        yield schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)
    finally:
        asgi.shutdown_lifespans()


# What a fuzzed request carries besides what schemathesis generated.
CREDENTIALS = [
    "generated",  # only what schemathesis made up
    "password",  # alice's username and password in a login body
    "fresh flow",  # ... and the redirection token of a pending flow, in the body or query
    "spent flow",  # ... or of a consumed one
    "session",  # a live session cookie
    "bearer",  # a live bearer access token
]


def with_credentials(case: Case[Any], seed: Seed, credentials: str) -> None:
    if credentials in {"password", "fresh flow", "spent flow"}:
        token = None
        if credentials != "password":
            token = seed.flow_token(spent=credentials == "spent flow")
        if isinstance(case.body, dict):
            body = {**case.body, "username": "alice", "password": PASSWORD}
            body.pop("redirection_token", None)
            if token is not None:
                body["redirection_token"] = token
            case.body = body
        if token is not None and "redirection_token" in case.query:
            case.query = {**case.query, "redirection_token": token}
    elif credentials == "session":
        case.cookies = {**case.cookies, sessions.COOKIE_NAME: seed.session()}
    elif credentials == "bearer":
        case.headers["Authorization"] = f"Bearer {seed.access_token}"


@pytest.mark.parametrize(("method", "path", "mode"), _operations())
def test_fuzzed_requests_get_documented_answers(
    api_schema: BaseSchema, seed: Seed, method: str, path: str, mode: GenerationMode
) -> None:
    """No 5xx, and a documented status code, content type and body, for
    requests that fit the document (positive) and requests that do not."""
    operation = api_schema[path][method]

    @fuzz_settings()
    @given(case=operation.as_strategy(mode), credentials=st.sampled_from(CREDENTIALS))
    def fuzz(case: Case[Any], credentials: str) -> None:
        seed.clock.advance(BETWEEN_EXAMPLES)
        with_credentials(case, seed, credentials)
        case.call_and_validate(checks=CHECKS)

    fuzz()


def test_logins_the_document_allows_are_not_refused_as_invalid(
    api_schema: BaseSchema, seed: Seed
) -> None:
    """A login body that fits ``hq_LoginRequest`` may be refused for its
    credentials (401) or by the throttle (429), never as malformed (400): a
    client that follows the document must not meet limits it does not state."""
    operation = api_schema["/api/v1/login"]["POST"]

    @fuzz_settings()
    @given(case=operation.as_strategy(GenerationMode.POSITIVE))
    def fuzz(case: Case[Any]) -> None:
        seed.clock.advance(BETWEEN_EXAMPLES)
        response = case.call_and_validate(checks=CHECKS)
        assert response.status_code != 400, (
            f"the document allows {case.body!r}, Baton refused it: {response.text}"
        )

    fuzz()


# -- known requests, through the same checks ----------------------------------------


@dataclass(frozen=True)
class Known:
    method: str
    path: str
    status: int
    body: Callable[[Seed], dict[str, str]] | None = None
    query: Callable[[Seed], dict[str, str]] | None = None
    cookie: bool = False
    bearer: bool = False


KNOWN = [
    pytest.param(
        Known("POST", "/api/v1/login", 200, lambda s: {"username": "alice", "password": PASSWORD}),
        id="login",
    ),
    pytest.param(
        Known(
            "POST",
            "/api/v1/login",
            200,
            lambda s: {
                "username": "alice",
                "password": PASSWORD,
                "redirection_token": s.flow_token(),
            },
        ),
        id="login through a flow",
    ),
    pytest.param(
        Known(
            "POST",
            "/api/v1/login",
            400,
            lambda s: {
                "username": "alice",
                "password": PASSWORD,
                "redirection_token": s.flow_token(spent=True),
            },
        ),
        id="login through a spent flow",
    ),
    pytest.param(
        Known("POST", "/api/v1/login", 401, lambda s: {"username": "alice", "password": "wrong"}),
        id="wrong password",
    ),
    pytest.param(
        Known("POST", "/api/v1/login", 401, lambda s: {"username": "\x00", "password": "x"}),
        id="NUL in the username",
    ),
    pytest.param(
        Known("POST", "/api/v1/login", 400, lambda s: {"username": "alice"}),
        id="no password",
    ),
    pytest.param(
        Known(
            "GET", "/api/v1/login/flow", 200, query=lambda s: {"redirection_token": s.flow_token()}
        ),
        id="flow of a fresh token",
    ),
    pytest.param(
        Known(
            "GET",
            "/api/v1/login/flow",
            200,
            query=lambda s: {"redirection_token": s.flow_token(spent=True)},
        ),
        id="flow of a spent token",
    ),
    pytest.param(
        Known("GET", "/api/v1/login/flow", 200, query=lambda s: {"redirection_token": "nope"}),
        id="flow of an unknown token",
    ),
    pytest.param(Known("GET", "/api/v1/login/flow", 400), id="flow without a token"),
    pytest.param(Known("POST", "/api/v1/logout", 204, cookie=True), id="logout"),
    pytest.param(Known("POST", "/api/v1/logout", 204), id="logout without a session"),
    pytest.param(Known("GET", "/api/v1/users/me", 200, cookie=True), id="me by session"),
    pytest.param(Known("GET", "/api/v1/users/me", 200, bearer=True), id="me by bearer token"),
    pytest.param(Known("GET", "/api/v1/users/me", 401), id="me anonymous"),
]


@pytest.mark.parametrize("known", KNOWN)
def test_known_requests_get_documented_answers(
    api_schema: BaseSchema, seed: Seed, known: Known
) -> None:
    """Successes the fuzzer may miss, and edge cases it may not reach in a short
    run, answered as documented and with the expected status."""
    operation = api_schema[known.path][known.method]
    body: dict[str, Any] | None = None if known.body is None else known.body(seed)
    case = operation.Case(
        body=NOT_SET if body is None else body,
        query=None if known.query is None else known.query(seed),
        cookies={sessions.COOKIE_NAME: seed.session()} if known.cookie else None,
        headers={"Authorization": f"Bearer {seed.access_token}"} if known.bearer else None,
    )

    response = case.call_and_validate(checks=CHECKS)

    assert response.status_code == known.status, response.text
    if response.status_code == 200 and known.path == "/api/v1/users/me":
        via = "session" if known.cookie else "access_token"
        assert response.json()["authenticated_by"] == via
    if response.status_code == 200 and body is not None:
        redir_to = response.json().get("redir_to")
        if "redirection_token" in body:
            assert redir_to is not None
            assert redir_to.startswith(AUTHORIZE_PATH + "?")
        else:
            assert redir_to is None
