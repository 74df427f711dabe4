"""authlib's view of a registered client (``ClientMixin``)."""

from __future__ import annotations

import re
from ipaddress import ip_address
from urllib.parse import urlsplit, urlunsplit

from authlib.oauth2.rfc6749 import ClientMixin

from app import tokens
from app.clients import ClientView

CONFIDENTIAL_AUTH_METHODS = frozenset({"client_secret_basic", "client_secret_post"})


# A loopback authority and nothing else: an IPv4 or bracketed IPv6 literal and
# an optional numeric port. No userinfo, no backslash, no other character a
# browser would read differently from Python's ``urlsplit``: for
# ``http://evil.example\@127.0.0.1/cb`` urlsplit sees host 127.0.0.1, a
# browser sees evil.example.
_LOOPBACK_AUTHORITY = re.compile(r"(?P<host>[0-9.]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def _without_loopback_port(uri: str) -> str | None:
    """RFC 8252 §7.3 / OAuth 2.1 §8.4.2: for loopback IP redirect URIs the port
    is chosen by the native app at run time and must not be compared. Only the
    port is dropped: the rest of the URI must match character for character."""
    if not uri.isascii() or not uri.isprintable() or "\\" in uri:
        return None
    try:
        parts = urlsplit(uri)
        authority = _LOOPBACK_AUTHORITY.fullmatch(parts.netloc)
        if parts.scheme != "http" or authority is None:
            return None
        host: str = authority["host"]
        if not ip_address(host.strip("[]")).is_loopback:
            return None
    except ValueError:  # "http://[::1/cb": urlsplit refuses it; so does ip_address "1.2"
        return None
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


class OAuthClient(ClientMixin):
    def __init__(self, row: ClientView) -> None:
        self.row = row
        self.pk = row.id
        self.client_id = row.client_id
        self.public = row.public
        self.redirect_uris = list(row.redirect_uris)
        self.scopes = row.scope.split()

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        # Only unambiguous when exactly one URI is registered (OAuth 2.1 §4.1.1).
        return self.redirect_uris[0] if len(self.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        if not scope:
            return " ".join(self.scopes)
        requested = list(dict.fromkeys(scope.split()))
        if any(s not in self.scopes for s in requested):
            return None  # authlib answers invalid_scope
        return " ".join(requested)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        # Exact string comparison (OAuth 2.1 §2.3.1), except for loopback ports.
        if redirect_uri in self.redirect_uris:
            return True
        portless = _without_loopback_port(redirect_uri)
        return portless is not None and any(
            portless == _without_loopback_port(uri) for uri in self.redirect_uris
        )

    def check_client_secret(self, client_secret: str) -> bool:
        stored = self.row.secret_hash
        return stored is not None and tokens.matches(client_secret, stored)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.public:
            return method == "none"
        return method in CONFIDENTIAL_AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.row.grant_types
