"""``/api/v1``: login, logout, the current user and the OpenAPI document."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app import audit, bindings, flows, problems, sessions
from app.api import consent
from app.api.common import (
    NO_STORE,
    flow_document,
    redirection_token_parameter,
    services_of,
)
from app.api.schemas import LoginRequest, parse
from app.login import Attempt, log_in
from app.models import User
from app.oauth import bearer
from app.passwords import HashingOverloaded


async def login(request: Request) -> Response:
    services = services_of(request)
    body = parse(LoginRequest, await request.body())
    attempt = Attempt(
        username=body.username,
        password=body.password,
        redirection_token=body.redirection_token,
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
        request_id=request.scope.get("state", {}).get("request_id"),
        binding_hash=bindings.hash_of(request.cookies.get(bindings.COOKIE_NAME)),
        previous_session=request.cookies.get(sessions.COOKIE_NAME),
    )
    try:
        result = await log_in(services, attempt)
    except HashingOverloaded:
        raise problems.overloaded(retry_after=1) from None
    payload = {} if result.redir_to is None else {"redir_to": result.redir_to}
    response = JSONResponse(payload, headers=NO_STORE)
    response.set_cookie(
        sessions.COOKIE_NAME,
        result.session_secret,
        max_age=int(services.settings.session_duration.total_seconds()),
        path="/",
        secure=services.settings.secure_cookies,
        httponly=True,
        samesite="lax",
    )
    return response


async def login_flow(request: Request) -> Response:
    """What a login page may know about its redirection token before posting."""
    services = services_of(request)
    token = redirection_token_parameter(request)
    binding_hash = bindings.hash_of(request.cookies.get(bindings.COOKIE_NAME))

    def lookup() -> flows.FlowView:
        with services.database.reading() as db:
            return flows.describe(
                db=db, token=token, binding_hash=binding_hash, now=services.clock()
            )

    view = await to_thread.run_sync(lookup)
    document = flow_document(view, services.clock(), list(view.scopes))
    return JSONResponse(document, headers=NO_STORE)


async def logout(request: Request) -> Response:
    services = services_of(request)
    secret = request.cookies.get(sessions.COOKIE_NAME)
    if secret:

        def revoke() -> None:
            now = services.clock()
            with services.database.transaction() as db:
                user = sessions.current_user(db=db, secret=secret, now=now)
                if sessions.revoke(db=db, secret=secret, now=now):
                    audit.record(
                        db=db,
                        event="session.ended",
                        now=now,
                        username=user.username if user else None,
                        ip=request.client.host if request.client else None,
                        request_id=request.scope.get("state", {}).get("request_id"),
                    )

        await to_thread.run_sync(revoke)
    response = Response(status_code=204, headers=NO_STORE)
    response.delete_cookie(
        sessions.COOKIE_NAME,
        path="/",
        secure=services.settings.secure_cookies,
        httponly=True,
        samesite="lax",
    )
    return response


async def me(request: Request) -> Response:
    services = services_of(request)
    access_token = bearer.token_from_header(request.headers.get("authorization"))
    session_secret = request.cookies.get(sessions.COOKIE_NAME)

    def lookup() -> dict[str, Any] | None:
        now = services.clock()
        with services.database.transaction() as db:
            if access_token is not None:
                grant = bearer.authenticate(db=db, token=access_token, now=now)
                if grant is None:
                    return None
                return _user_document(grant.user, via="access_token", scope=grant.scope)
            user = sessions.current_user(
                db=db,
                secret=session_secret,
                now=now,
                idle_timeout=services.settings.session_idle_timeout,
            )
            return None if user is None else _user_document(user, via="session")

    document = await to_thread.run_sync(lookup)
    if document is None:
        raise problems.unauthorised("Sign in, or send a valid bearer access token.")
    return JSONResponse(document, headers=NO_STORE)


def _user_document(user: User, *, via: str, scope: str | None = None) -> dict[str, Any]:
    document: dict[str, Any] = {"username": user.username, "authenticated_by": via}
    if scope is not None:
        document["scope"] = scope
    return document


@cache
def openapi_document() -> dict[str, Any]:
    text = resources.files("app.api").joinpath("openapi.json").read_text("utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())


routes = [
    Route("/api/v1/login", login, methods=["POST"]),
    Route("/api/v1/login/flow", login_flow, methods=["GET"]),
    Route("/api/v1/logout", logout, methods=["POST"]),
    Route("/api/v1/users/me", me, methods=["GET"]),
    Route("/api/v1/openapi.json", openapi, methods=["GET"]),
    Route("/api/v1/consent", consent.describe, methods=["GET"]),
    Route("/api/v1/consent", consent.decide, methods=["POST"]),
    Route("/api/v1/users/me/oauth2/authorizations", consent.list_authorizations, methods=["GET"]),
    Route(
        "/api/v1/users/me/oauth2/authorizations/{grant_id}",
        consent.revoke_authorization,
        methods=["DELETE"],
    ),
]
