"""The flow-binding cookie: ties pending flows to the browser that started them.

One random secret per browser, set by ``/oauth2/authorize`` whenever it pauses
a request; each flow stores its SHA-256. Every tab and every client started
from that browser shares the one cookie, so several flows work at once and the
cookie never grows. A redirection token posted from another browser (another
cookie jar) is refused exactly like an unknown token.
"""

from __future__ import annotations

import re
from datetime import timedelta

from starlette.responses import Response

from app import tokens
from app.settings import Settings

COOKIE_NAME = "baton_binding"
_WELL_FORMED = re.compile(r"[A-Za-z0-9_-]{43}")


def from_cookie(value: str | None) -> str | None:
    return value if value is not None and _WELL_FORMED.fullmatch(value) else None


def hash_of(value: str | None) -> str | None:
    secret = from_cookie(value)
    return None if secret is None else tokens.digest(secret)


# How long after its flows expire the cookie is still sent: a page opened
# late learns its flow "expired" with a restart link, not "unknown".
RESTART_WINDOW = timedelta(hours=1)


def set_cookie(response: Response, secret: str, settings: Settings) -> None:
    # Aged to the flows it binds, plus the restart window; refreshed whenever
    # another flow starts.
    response.set_cookie(
        COOKIE_NAME,
        secret,
        max_age=int((settings.flow_ttl + RESTART_WINDOW).total_seconds()),
        path="/",
        secure=settings.secure_cookies,
        httponly=True,
        samesite="lax",
    )
