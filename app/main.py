"""The application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from app import clients, health, keys, pages
from app.api import routes as api_routes
from app.db import Database, utcnow
from app.health import Readiness
from app.metrics import Metrics, MetricsMiddleware
from app.metrics import route as metrics_route
from app.middleware import (
    ApiCorsMiddleware,
    ApiGuardMiddleware,
    BodyLimitMiddleware,
    BodyTooLarge,
    ClientAddressMiddleware,
    PublicCorsMiddleware,
    RequestIdMiddleware,
    SecurityHeadersMiddleware,
    oauth_error_json,
)
from app.oauth import routes as oauth_routes
from app.oauth.server import BatonAuthorizationServer
from app.passwords import HashingPool
from app.problems import PROBLEM_CONTENT_TYPE, Problem
from app.purge import purge_periodically
from app.services import Services
from app.settings import Settings

log = logging.getLogger("baton")


def create_app(settings: Settings, *, clock: Callable[[], datetime] = utcnow) -> Starlette:
    metrics = Metrics()  # this app's own registry

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        database = Database(settings.database_url, pool=settings.database_pool)
        hashing = HashingPool(
            settings.hash_workers,
            settings.hash_wait,
            settings.argon2_cost,
            observer=metrics,
            processes=settings.hash_processes,
        )
        readiness = Readiness(settings.database_url)
        oauth = BatonAuthorizationServer(settings=settings, database=database, clock=clock)
        app.state.services = Services(
            settings, database, hashing, oauth, clock, metrics=metrics, readiness=readiness
        )
        if settings.demo:
            ensure_demo_client(database, settings, clock())
        ensure_signing_key(database, settings, clock())
        purging = None
        if settings.purge_interval is not None:
            purging = asyncio.create_task(
                purge_periodically(
                    database,
                    clock,
                    interval=settings.purge_interval,
                    older_than=settings.purge_age,
                    forget_failures_after=settings.throttle_window,
                    audit_retention=settings.audit_retention,
                    on_purged=metrics.flows_purged,
                )
            )
        try:
            yield
        finally:
            if purging is not None:
                purging.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await purging
            hashing.shutdown()
            database.dispose()
            readiness.dispose()
            metrics.close()

    return Starlette(
        routes=[
            *api_routes.routes,
            *oauth_routes.routes,
            *pages.routes(demo=settings.demo),
            *health.routes,
            *([metrics_route(metrics)] if settings.metrics else []),
        ],
        middleware=[
            # Behind proxies, before anything reads the client address.
            *([Middleware(ClientAddressMiddleware)] if settings.trusted_proxies else []),
            Middleware(RequestIdMiddleware),
            Middleware(MetricsMiddleware, metrics=metrics),
            Middleware(SecurityHeadersMiddleware),
            Middleware(PublicCorsMiddleware),
            Middleware(
                ApiCorsMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_credentials=True,
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["Content-Type", "Authorization"],
                expose_headers=["X-Request-ID", "Retry-After"],
                max_age=600,
            ),
            Middleware(ApiGuardMiddleware, allowed_origins=settings.allowed_origins),
            Middleware(BodyLimitMiddleware, limit=settings.max_body_bytes),
        ],
        exception_handlers={
            ClientDisconnect: _client_disconnected,
            BodyTooLarge: _body_too_large,
            Problem: _problem_response,
            HTTPException: _http_error,
            DBAPIError: _database_error,
            Exception: _server_error,
        },
        lifespan=lifespan,
    )


def create_app_from_env() -> Starlette:
    """The uvicorn factory: ``uvicorn --factory app.main:create_app_from_env``."""
    return create_app(Settings.from_env())


def ensure_demo_client(database: Database, settings: Settings, now: datetime) -> None:
    """Register (or re-point) the demo's public client at this server's URL."""
    redirect_uri = pages.demo_redirect_uri(settings.public_url)
    with database.transaction() as db:
        existing = clients.get(db=db, client_id=pages.DEMO_CLIENT_ID)
        if existing is None:
            try:
                clients.register(
                    db=db,
                    name="Baton demo",
                    redirect_uris=[redirect_uri],
                    public=True,
                    first_party=True,
                    scope=pages.DEMO_SCOPE,
                    now=now,
                    provenance="demo",
                    client_id=pages.DEMO_CLIENT_ID,
                )
            except clients.ClientExists:
                # Every worker and replica does this as it starts; another won.
                existing = clients.get(db=db, client_id=pages.DEMO_CLIENT_ID)
        if existing is not None and existing.redirect_uris != [redirect_uri]:
            existing.redirect_uris = [redirect_uri]


def ensure_signing_key(database: Database, settings: Settings, now: datetime) -> None:
    """The first start creates the ID-token signing key. A database that is not
    ready yet (unreachable, not migrated) must not stop the server from
    starting and saying so on /readyz: the key is then made on first use."""
    try:
        with database.transaction() as db:
            keys.ensure(db=db, alg=settings.signing_alg, now=now)
    except SQLAlchemyError as error:
        log.warning("signing key not checked at start-up: %s", type(error).__name__)


def _request_id(request: Request) -> str | None:
    value = request.scope.get("state", {}).get("request_id")
    return value if isinstance(value, str) else None


def problem_response(request: Request, problem: Problem) -> Response:
    request_id = _request_id(request)
    return JSONResponse(
        problem.body(request_id),
        status_code=problem.status,
        headers={"Cache-Control": "no-store", **problem.headers},
        media_type=PROBLEM_CONTENT_TYPE,
    )


async def _problem_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(request, exc)


async def _body_too_large(request: Request, exc: Exception) -> Response:
    if request.url.path.startswith("/oauth2/"):
        return oauth_error_json(413, "invalid_request", "The request body is too large.")
    return problem_response(
        request, Problem(413, "validation_error", "The request body is too large.")
    )


_HTTP_TYPES = {404: "not_found", 401: "unauthorised", 403: "forbidden"}


async def _http_error(request: Request, exc: Exception) -> Response:
    """The router's 404 and 405, in the error format of the path: ``Allow``
    (RFC 9110 section 15.5.6) is kept on every one."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    path = request.url.path
    if path.startswith("/oauth2/"):
        # RFC 6749 has no code for these; the request is not one it accepts.
        description = {
            404: "There is no OAuth endpoint at this path.",
            405: f"This endpoint does not accept {request.method}.",
        }.get(exc.status_code, str(exc.detail))
        return oauth_error_json(exc.status_code, "invalid_request", description, headers)
    if path.startswith("/api/"):
        kind = _HTTP_TYPES.get(exc.status_code, "unspecified")
        return problem_response(
            request, Problem(exc.status_code, kind, str(exc.detail), headers=headers)
        )
    return PlainTextResponse(str(exc.detail), status_code=exc.status_code, headers=headers)


# nginx's "client closed request": no client ever sees it.
CLIENT_CLOSED_REQUEST = 499


async def _client_disconnected(request: Request, exc: Exception) -> Response:
    """The client went away before its request body was complete: nothing is
    wrong with Baton and nobody is left to answer. The empty answer goes
    nowhere (the server drops it), but the access log and the metrics see
    499, not a 5xx."""
    log.debug("client disconnected mid-request", extra={"request_id": _request_id(request)})
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _database_error(request: Request, exc: Exception) -> Response:
    """A connection the database ended (a restart, a failover, a proxy's idle
    timeout) fails the request it served; the pool is renewed at once, so the
    client is told to try again (503, ``Retry-After: 1``), not that Baton
    broke. Any other database error is a 500."""
    assert isinstance(exc, DBAPIError)
    if not exc.connection_invalidated:
        return await _server_error(request, exc)
    log.warning("database connection lost", extra={"request_id": _request_id(request)})
    retry = {"Retry-After": "1", "Cache-Control": "no-store"}
    if request.url.path.startswith("/oauth2/"):
        return oauth_error_json(
            503,
            "temporarily_unavailable",
            "The database connection was lost; try again.",
            retry,
        )
    return problem_response(
        request,
        Problem(503, "unspecified", "The database connection was lost; try again.", headers=retry),
    )


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", extra={"request_id": _request_id(request)})
    return problem_response(
        request, Problem(500, "internal_server_error", "Something went wrong on our side.")
    )
