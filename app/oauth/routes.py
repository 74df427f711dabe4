"""``/oauth2/*`` over Starlette: read the HTTP request, hand plain data to authlib
in the threadpool (it is synchronous and touches SQL), write back its answer."""

from __future__ import annotations

import html
import re
from urllib.parse import parse_qsl

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from app import bindings, sessions, tokens
from app.oauth.server import BatonOAuth2Request, OAuthResponse
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
    return answer


async def token(request: Request) -> Response:
    services = _services(request)
    form = _parse_form(request.headers.get("content-type", ""), await request.body())
    if form is None:
        return JSONResponse(
            {
                "error": "invalid_request",
                "error_description": "The body must be application/x-www-form-urlencoded UTF-8.",
            },
            status_code=400,
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )
    oauth_request = _oauth_request(request, services, form)
    response = await to_thread.run_sync(services.oauth.token, oauth_request)
    return _to_http(response, request)


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
]

__all__ = ["routes"]
