"""The ``redir_to`` of a login: always a server-built path on Baton itself.

A pending flow stores the path that resumes its authorization request. What
leaves the server is never that stored string as such: it is rebuilt from a
fixed path and re-encoded parameters, so even a tampered row cannot turn
``redir_to`` into an open redirect (``//evil``, ``/\\evil``, ``https://…``).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit

AUTHORIZE_PATH = "/oauth2/authorize"

# The parameters of an authorization request that survive the login pause.
# Anything else is dropped, so the resume URL contains only what Baton validated.
RESUMABLE_PARAMETERS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
    "nonce",
    "prompt",
    "max_age",
    "resource",
    "login_hint",
    "ui_locales",
    "flow",  # the public id of the pending flow this URL resumes
)


def resume_path(params: Mapping[str, str]) -> str:
    """``/oauth2/authorize?…`` with the resumable parameters, percent-encoded."""
    kept = [(name, params[name]) for name in RESUMABLE_PARAMETERS if name in params]
    return AUTHORIZE_PATH + "?" + urlencode(kept)


def rebuild(stored: str) -> str:
    """Re-derive a resume path from a stored one, whatever it contains."""
    query = urlsplit(stored).query if stored.startswith(AUTHORIZE_PATH + "?") else ""
    return resume_path(dict(parse_qsl(query, keep_blank_values=True)))


def without_flow(path: str) -> str:
    """The same authorization request, no longer tied to a pending flow."""
    query = urlsplit(path).query if path.startswith(AUTHORIZE_PATH + "?") else ""
    params = dict(parse_qsl(query, keep_blank_values=True))
    params.pop("flow", None)
    return resume_path(params)


def with_scope(path: str, scope: str) -> str:
    """The same authorization request for ``scope`` instead."""
    query = urlsplit(path).query if path.startswith(AUTHORIZE_PATH + "?") else ""
    params = dict(parse_qsl(query, keep_blank_values=True))
    params["scope"] = scope
    return resume_path(params)
