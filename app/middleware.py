"""ASGI middleware: a request id on every request and response, and an access
log that never records query strings (they carry redirection tokens and codes);
security headers, CORS, body limits, the ``/api/v1`` CSRF guard, and the client
address behind trusted proxies."""

from __future__ import annotations

import ipaddress
import logging
import time
import uuid
from collections.abc import Mapping

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs
from app.http_protocol import PEER

access_log = logging.getLogger("baton.access")


class RequestIdMiddleware:
    """Gives each request an id (``scope["state"]["request_id"]``) and echoes it
    as ``X-Request-ID``. Ids sent by clients are ignored: they are not trusted
    to be unique, and logs must correlate on ours."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        bound = logs.current_request_id.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            # The raw, still percent-encoded path: a decoded %0A would let a
            # client forge log lines.
            path = scope.get("raw_path", b"").decode("latin-1").split("?")[0] or "-"
            milliseconds = (time.perf_counter() - started) * 1000
            access_log.log(
                logs.access_level(scope["path"], status),
                "%s %s %d %.1fms request_id=%s",
                scope["method"],
                path,
                status,
                milliseconds,
                request_id,
                extra={
                    "method": scope["method"],
                    "path": path,
                    "status": status,
                    "duration_ms": round(milliseconds, 1),
                },
            )
            logs.current_request_id.reset(bound)


class BodyTooLarge(Exception):
    """The request body exceeded the configured limit."""


# Every page Baton serves is same-origin static HTML + JS; nothing inline.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Redirection tokens and codes travel in URLs: never leak them as Referer.
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class SecurityHeadersMiddleware:
    """Security headers on every response, and ``Cache-Control: no-store`` on
    everything but static assets: every other answer is about someone's
    authentication."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cacheable = scope["path"].startswith("/static/") or scope["path"] in PUBLIC_DOCUMENTS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if not cacheable:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


# Server metadata and keys: the same for everyone, and worth caching.
PUBLIC_DOCUMENTS = frozenset(
    {
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
        "/oauth2/jwks",
    }
)
# What a browser-based client (an SPA, the MCP Inspector) calls from its own
# origin: none of it reads cookies, so any origin may, without credentials.
PUBLIC_CORS_PATHS = PUBLIC_DOCUMENTS | {
    "/oauth2/token",
    "/oauth2/revoke",
    "/oauth2/register",
    "/oauth2/userinfo",
}


class PublicCorsMiddleware:
    """CORS for the endpoints browser-based OAuth clients call directly:
    ``Access-Control-Allow-Origin: *`` and never credentials, so a page on
    another origin can discover, register, exchange codes and refresh, but
    can never ride on a user's Baton cookies. ``/api/v1`` keeps its own
    exact-origin, credentialed CORS (``BATON_CORS_ORIGINS``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in PUBLIC_CORS_PATHS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if "origin" not in headers:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            response = Response(
                status_code=204,
                headers={
                    "Access-Control-Allow-Origin": "*",
                    "Access-Control-Allow-Methods": "GET, POST",
                    "Access-Control-Allow-Headers": "Authorization, Content-Type, DPoP",
                    "Access-Control-Max-Age": "600",
                },
            )
            await response(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                response_headers["Access-Control-Allow-Origin"] = "*"
                # Starlette's credentialed CORS (for /api/v1) adds this to
                # every response; with "*" it must never be sent.
                if "access-control-allow-credentials" in response_headers:
                    del response_headers["access-control-allow-credentials"]
                response_headers["Access-Control-Expose-Headers"] = "WWW-Authenticate, X-Request-ID"
            await send(message)

        await self.app(scope, receive, send_with_cors)


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.limit + 1
                if declared > self.limit:
                    scope.setdefault("state", {})["body_too_large"] = True
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if scope.get("state", {}).get("body_too_large"):
                raise BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge
            return message

        await self.app(scope, limited_receive, send)


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ApiGuardMiddleware:
    """Login-CSRF defence for ``/api/v1``: a request that changes state must
    carry a JSON body or none (a cross-site HTML form cannot send JSON without a
    CORS preflight) and, when a browser says where it comes from (``Origin``),
    come from Baton itself or an origin in ``BATON_CORS_ORIGINS``. Non-browser
    clients send no ``Origin`` and pass."""

    def __init__(self, app: ASGIApp, allowed_origins: frozenset[str]) -> None:
        self.app = app
        self.allowed_origins = allowed_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not scope["path"].startswith("/api/")
            or scope["method"] in SAFE_METHODS
        ):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is not None and origin not in self.allowed_origins:
            await _problem(
                scope, receive, send, 403, "forbidden", "This origin may not call Baton."
            )
            return
        # A body must be JSON; HTML forms can only send form encodings or text.
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        has_body = "content-type" in headers or headers.get("content-length", "0") != "0"
        if has_body and content_type != "application/json":
            await _problem(
                scope,
                receive,
                send,
                415,
                "validation_error",
                "Send the request as application/json.",
            )
            return
        await self.app(scope, receive, send)


class ApiCorsMiddleware(CORSMiddleware):
    """Starlette's exact-origin, credentialed CORS, whose refused preflights
    answer in the format of the path asked about, not in plain text.

    The refusal is ``403 forbidden``: the request is well formed, and policy
    refuses it, as ``ApiGuardMiddleware`` refuses the request itself from an
    origin not allowed. (A browser fails a preflight on any status but 2xx, so
    the choice only informs the people reading it.)"""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "OPTIONS":
            await super().__call__(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if "origin" not in headers or "access-control-request-method" not in headers:
            await super().__call__(scope, receive, send)
            return
        response = self.preflight_response(request_headers=headers)
        if response.status_code == 400:
            if not self.is_allowed_origin(origin=headers["origin"]):
                title = "This origin may not call Baton."
            else:
                title = "This cross-origin request's method or headers are not allowed."
            kept = {
                name: value
                for name, value in response.headers.items()
                if name not in ("content-type", "content-length")
            }
            if scope["path"].startswith("/api/"):
                response = problem_json(scope, 403, "forbidden", title, kept)
            elif scope["path"].startswith("/oauth2/"):
                response = oauth_error_json(403, "invalid_request", title, kept)
        await response(scope, receive, send)


def problem_json(
    scope: Scope, status: int, kind: str, title: str, headers: Mapping[str, str] | None = None
) -> Response:
    """An RFC 7807 document for ``/api/v1``, outside the exception handlers."""
    body: dict[str, object] = {"type": kind, "title": title, "status": status}
    request_id = scope.get("state", {}).get("request_id")
    if request_id:
        body["request_id"] = request_id
    return JSONResponse(
        body,
        status_code=status,
        headers={**(headers or {}), "Cache-Control": "no-store"},
        media_type="application/problem+json",
    )


def oauth_error_json(
    status: int, error: str, description: str, headers: Mapping[str, str] | None = None
) -> Response:
    """An RFC 6749 section 5.2 error document for ``/oauth2/*``."""
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={**(headers or {}), "Cache-Control": "no-store"},
    )


async def _problem(
    scope: Scope, receive: Receive, send: Send, status: int, kind: str, title: str
) -> None:
    await problem_json(scope, status, kind, title)(scope, receive, send)


class ClientAddressMiddleware:
    """Keeps ``scope["client"]`` an IP address behind ``BATON_TRUSTED_PROXIES``.

    uvicorn then takes the client address from X-Forwarded-For, whatever it
    holds (a name, a word, 100 characters): an address Baton throttles on and
    stores (64 characters at most). Only an IP address is taken, as
    ``ipaddress`` writes it (at most 39 characters; an IPv6 zone, meaningless
    beyond the proxy's own link, is dropped). Anything else counts as no
    forwarded address at all: the client is the peer that sent the request,
    as the server saw it (``app.http_protocol.PEER``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("client") is None:
            await self.app(scope, receive, send)
            return
        host, port = scope["client"]
        address = ip_address(host) if isinstance(host, str) else None
        if address is None:
            peer = scope.get("extensions", {}).get(PEER, {}).get("client")
            scope["client"] = tuple(peer) if peer is not None else None
        elif address != host:
            scope["client"] = (address, port)
        await self.app(scope, receive, send)


def ip_address(value: str) -> str | None:
    """``value`` as ``ipaddress`` writes it, without an IPv6 zone; ``None``
    if it is not an IP address."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        address = ipaddress.IPv6Address(int(address))
    return str(address)
