"""``/oauth2/*`` over Starlette: read the HTTP request, hand plain data to authlib
in the threadpool (it is synchronous and touches SQL), write back its answer."""

from __future__ import annotations

import base64
import binascii
import html
import json
import re
from collections.abc import Callable
from urllib.parse import parse_qsl

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from app import bindings, keys, sessions, tokens
from app.oauth import bearer, discovery
from app.oauth.grants import user_info
from app.oauth.server import BatonJsonRequest, BatonOAuth2Request, OAuthResponse
from app.services import Services

FORM_TYPE = "application/x-www-form-urlencoded"


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _oauth_request(
    request: Request, services: Services, form: list[tuple[str, str]] | None = None
) -> BatonOAuth2Request:
    """The authorization endpoint reads the query (RFC 6749 §3.1); the token
    endpoint reads only the form body (§3.2), never parameters in its URL."""
    # authlib checks the transport of this URI (https, or loopback in development);
    # behind a TLS-terminating proxy the public URL is the truth, not the socket.
    uri = services.settings.public_url + request.url.path
    if request.url.query:
        uri += "?" + request.url.query
    return BatonOAuth2Request(
        request.method,
        uri,
        headers=request.headers,
        query=request.query_params.multi_items() if form is None else [],
        form=form or [],
        ip=request.client.host if request.client else None,
        request_id=request.scope.get("state", {}).get("request_id"),
    )


def _to_http(response: OAuthResponse, request: Request, *, for_people: bool = False) -> Response:
    # Nothing an authorization server answers may be cached (RFC 6749 §5.1).
    headers = {"Cache-Control": "no-store", **dict(response.headers)}
    if response.location is not None:
        return Response(status_code=response.status, headers=headers)
    if for_people and response.status >= 400 and "text/html" in request.headers.get("accept", ""):
        return _error_page(response)
    body = response.body if isinstance(response.body, dict) else {}
    return JSONResponse(body, status_code=response.status, headers=headers)


def _error_page(response: OAuthResponse) -> Response:
    """A person's browser reached an authorization error that must not be
    redirected to the client (RFC 6749 §4.1.2.1): explain it, in plain HTML."""
    body = response.body if isinstance(response.body, dict) else {}
    error = html.escape(str(body.get("error", "invalid_request")))
    description = html.escape(str(body.get("error_description", "")))
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<title>Authorization error</title>"
        '<link rel=stylesheet href="/static/baton.css"></head><body><main class=card>'
        f"<h1>This sign-in cannot continue</h1><p>{description}</p>"
        f"<p><code>{error}</code></p><p>Go back to the application and start again.</p>"
        "</main></body></html>"
    )
    return HTMLResponse(page, status_code=response.status, headers={"Cache-Control": "no-store"})


def _bad_metadata(description: str) -> Response:
    return JSONResponse(
        {"error": "invalid_client_metadata", "error_description": description},
        status_code=400,
        headers={"Cache-Control": "no-store"},
    )


def _encodable(data: object) -> bool:
    """JSON's ``\\ud800`` escapes decode to lone surrogates, which no text
    column or response can hold: such a body is refused before it is stored."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_INVALID_ENCODING = {
    "error": "invalid_request",
    "error_description": "The request is not valid application/x-www-form-urlencoded.",
}


async def authorize(request: Request) -> Response:
    services = _services(request)
    if _BAD_ESCAPE.search(request.url.query):
        # Malformed percent-encoding: decoding it would silently change values.
        return _to_http(OAuthResponse(400, dict(_INVALID_ENCODING)), request, for_people=True)
    oauth_request = _oauth_request(request, services)
    binding = bindings.from_cookie(request.cookies.get(bindings.COOKIE_NAME)) or tokens.new_secret()
    response = await to_thread.run_sync(
        lambda: services.oauth.authorize(
            oauth_request,
            session_secret=request.cookies.get(sessions.COOKIE_NAME),
            binding_secret=binding,
            ip=request.client.host if request.client else None,
            user_agent=request.headers.get("user-agent"),
        )
    )
    answer = _to_http(response, request, for_people=True)
    if response.flow_created:
        bindings.set_cookie(answer, binding, services.settings)
        services.metrics.flow_created()
    return answer


_NOT_A_FORM = JSONResponse(
    {
        "error": "invalid_request",
        "error_description": "The body must be application/x-www-form-urlencoded UTF-8.",
    },
    status_code=400,
    headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
)


_UNREADABLE_BASIC = JSONResponse(
    {
        "error": "invalid_client",
        "error_description": "The Basic credentials are not base64 of UTF-8 'id:secret'.",
    },
    status_code=401,
    headers={"Cache-Control": "no-store", "Pragma": "no-cache", "WWW-Authenticate": "Basic"},
)


def _unreadable_basic(authorization: str | None) -> bool:
    """An ``Authorization: Basic`` header that authlib would fail on (RFC 7617
    §2: base64 of UTF-8 ``id:secret``) rather than refuse: nothing after the
    scheme, or bytes that are not UTF-8. Other schemes are authlib's to judge."""
    if authorization is None or " " not in authorization:
        return False
    scheme, *credentials = authorization.split(None, 1)
    if scheme.lower() != "basic":
        return False
    if not credentials:
        return True
    try:
        base64.b64decode(credentials[0]).decode("utf-8")
    except binascii.Error:
        return False  # authlib ignores what is not base64: then no credentials
    except ValueError:  # not UTF-8, or not ASCII at all ("Basic éééé")
        return True
    return False


async def _form_endpoint(
    request: Request, handler: Callable[[Services], Callable[[BatonOAuth2Request], OAuthResponse]]
) -> Response:
    """The token, revocation and introspection endpoints: a form body only."""
    services = _services(request)
    form = _parse_form(request.headers.get("content-type", ""), await request.body())
    if form is None:
        return _NOT_A_FORM
    if _unreadable_basic(request.headers.get("authorization")):
        return _UNREADABLE_BASIC
    oauth_request = _oauth_request(request, services, form)
    response = await to_thread.run_sync(handler(services), oauth_request)
    return _to_http(response, request)


async def token(request: Request) -> Response:
    return await _form_endpoint(request, lambda services: services.oauth.token)


async def revoke(request: Request) -> Response:
    return await _form_endpoint(request, lambda services: services.oauth.revoke)


async def introspect(request: Request) -> Response:
    return await _form_endpoint(request, lambda services: services.oauth.introspect)


async def register(request: Request) -> Response:
    """RFC 7591 §3.1: a JSON object of client metadata."""
    services = _services(request)
    if not services.settings.dcr:
        return JSONResponse(
            {
                "error": "access_denied",
                "error_description": "Dynamic client registration is not enabled on this server.",
            },
            status_code=403,
            headers={"Cache-Control": "no-store"},
        )
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        data = json.loads(await request.body()) if content_type == "application/json" else None
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict) or not data:
        return _bad_metadata("The body must be a JSON object of client metadata.")
    if not _encodable(data):
        return _bad_metadata(
            "The client metadata holds text that is not Unicode (a lone surrogate)."
        )
    json_request = BatonJsonRequest(
        "POST",
        services.settings.public_url + request.url.path,
        request.headers,
        data,
        ip=request.client.host if request.client else None,
        request_id=request.scope.get("state", {}).get("request_id"),
    )
    response = await to_thread.run_sync(services.oauth.register, json_request)
    return _to_http(response, request)


async def userinfo(request: Request) -> Response:
    """OpenID Connect Core 1.0 §5.3, with an access token that has ``openid``.
    Errors as RFC 6750 §3.1: no or a bad token → 401 ``invalid_token``; a
    good token without ``openid`` → 403 ``insufficient_scope``."""
    services = _services(request)
    secret = bearer.token_from_header(request.headers.get("authorization"))

    def look_up() -> dict[str, object] | str:
        if secret is None:
            return "invalid_token"
        with services.database.reading() as db:
            found = bearer.authenticate(db=db, token=secret, now=services.clock())
            if found is None:
                return "invalid_token"
            if "openid" not in found.scope.split():
                return "insufficient_scope"
            return dict(user_info(found.user, found.scope))

    claims = await to_thread.run_sync(look_up)
    if claims == "insufficient_scope":
        return JSONResponse(
            {"error": "insufficient_scope", "error_description": "The token lacks 'openid'."},
            status_code=403,
            headers={
                "WWW-Authenticate": 'Bearer error="insufficient_scope", scope="openid"',
                "Cache-Control": "no-store",
            },
        )
    if not isinstance(claims, dict):
        has_token = request.headers.get("authorization") is not None
        challenge = 'Bearer error="invalid_token"' if has_token else "Bearer"
        return JSONResponse(
            {"error": "invalid_token", "error_description": "A valid access token is required."},
            status_code=401,
            headers={"WWW-Authenticate": challenge, "Cache-Control": "no-store"},
        )
    return JSONResponse(claims, headers={"Cache-Control": "no-store"})


async def jwks(request: Request) -> Response:
    services = _services(request)

    def published() -> list[dict[str, object]]:
        now = services.clock()
        with services.database.transaction() as db:
            keys.ensure(db=db, alg=services.settings.signing_alg, now=now)
            keep = services.settings.id_token_ttl
            return [dict(row.public_jwk) for row in keys.published(db=db, now=now, keep=keep)]

    body = {"keys": await to_thread.run_sync(published)}
    # Short caching: a rotated key must reach relying parties before it signs much.
    return JSONResponse(body, headers={"Cache-Control": "public, max-age=300"})


async def authorization_server_metadata(request: Request) -> Response:
    """RFC 8414 and OpenID Connect Discovery 1.0: one document, generated from
    what this server has enabled."""
    return JSONResponse(
        discovery.metadata(_services(request).settings),
        headers={"Cache-Control": "public, max-age=3600"},
    )


def _parse_form(content_type: str, body: bytes) -> list[tuple[str, str]] | None:
    """RFC 6749 §3.2: token requests are ``application/x-www-form-urlencoded``."""
    if content_type.split(";")[0].strip().lower() != FORM_TYPE:
        return None
    if _BAD_ESCAPE.search(body.decode("latin-1")):
        return None
    try:
        text = body.decode("utf-8")
        return parse_qsl(text, keep_blank_values=True, errors="strict", max_num_fields=64)
    except (UnicodeDecodeError, ValueError):
        return None


routes = [
    Route("/oauth2/authorize", authorize, methods=["GET"]),
    Route("/oauth2/token", token, methods=["POST"]),
    Route("/oauth2/revoke", revoke, methods=["POST"]),
    Route("/oauth2/introspect", introspect, methods=["POST"]),
    Route("/oauth2/userinfo", userinfo, methods=["GET", "POST"]),
    Route("/oauth2/register", register, methods=["POST"]),
    Route("/oauth2/jwks", jwks, methods=["GET"]),
    Route("/.well-known/oauth-authorization-server", authorization_server_metadata),
    Route("/.well-known/openid-configuration", authorization_server_metadata),
]

__all__ = ["routes"]
