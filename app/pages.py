"""The HTML pages Baton serves itself: the login and consent pages, and the demo."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from app.services import Services

STATIC = Path(__file__).parent / "static"
DEMO_CLIENT_ID = "baton-demo"
DEMO_SCOPE = "read write"


def demo_redirect_uri(public_url: str) -> str:
    return public_url + "/demo/callback"


@cache
def _html(name: str) -> bytes:
    # Read once: the pages ship with the package and do not change at run time.
    return (STATIC / name).read_bytes()


def _page(name: str) -> Response:
    return Response(_html(name), media_type="text/html", headers={"Cache-Control": "no-store"})


async def login_page(request: Request) -> Response:
    return _page("login.html")


async def consent_page(request: Request) -> Response:
    return _page("consent.html")


async def theme(request: Request) -> Response:
    """The operator's stylesheet (BATON_THEME_CSS), loaded after Baton's own."""
    services: Services = request.app.state.services
    path = services.settings.theme_css or STATIC / "theme.css"
    return FileResponse(path, media_type="text/css", headers={"Cache-Control": "no-cache"})


async def home(request: Request) -> Response:
    services: Services = request.app.state.services
    return RedirectResponse("/demo" if services.settings.demo else "/login", status_code=302)


async def demo_page(request: Request) -> Response:
    return _page("demo.html")


async def demo_config(request: Request) -> Response:
    services: Services = request.app.state.services
    return JSONResponse(
        {
            "client_id": DEMO_CLIENT_ID,
            "redirect_uri": demo_redirect_uri(services.settings.public_url),
            "authorize_endpoint": "/oauth2/authorize",
            "token_endpoint": "/oauth2/token",
            "userinfo_endpoint": "/api/v1/users/me",
            "scope": DEMO_SCOPE,
        }
    )


def routes(*, demo: bool) -> list[Route | Mount]:
    found: list[Route | Mount] = [
        Route("/", home, methods=["GET"]),
        Route("/login", login_page, methods=["GET"]),
        Route("/consent", consent_page, methods=["GET"]),
        Route("/theme.css", theme, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    if demo:
        found += [
            Route("/demo", demo_page, methods=["GET"]),
            Route("/demo/callback", demo_page, methods=["GET"]),
            Route("/demo/config.json", demo_config, methods=["GET"]),
        ]
    return found
