"""Token revocation (RFC 7009) and introspection (RFC 7662), through authlib."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from authlib.oauth2.rfc6749 import OAuth2Error, OAuth2Request, UnsupportedTokenTypeError
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from authlib.oauth2.rfc7009 import RevocationEndpoint as _RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint as _IntrospectionEndpoint

from app import audit, clients
from app.oauth.clients import OAuthClient
from app.oauth.grants import (
    CallerAndToken,
    IssuedToken,
    find_caller_and_token,
    find_token,
    revoke_family,
)

if TYPE_CHECKING:
    from app.oauth.server import BatonAuthorizationServer


class _UnsupportedTokenType(OAuth2Error):
    """RFC 7009 §2.2.1 is an error response of RFC 6749 §5.2: 400, not the
    401 that authlib's class (a ``ForbiddenError``) answers, which would tell
    the client that its credentials were wrong."""

    error = "unsupported_token_type"
    description = "Unsupported 'token_type_hint'."


def _check_hint(check: Any, request: OAuth2Request, client: Any) -> None:
    try:
        check(request, client)
    except UnsupportedTokenTypeError:
        raise _UnsupportedTokenType() from None


class RevocationEndpoint(_RevocationEndpoint):
    """Public clients revoke with their ``client_id`` alone (RFC 7009 §2.1)."""

    CLIENT_AUTH_METHODS: ClassVar[list[str]] = [
        "client_secret_basic",
        "client_secret_post",
        "none",
    ]
    server: BatonAuthorizationServer

    def check_params(self, request: OAuth2Request, client: Any) -> None:
        _check_hint(super().check_params, request, client)

    def query_token(self, token_string: str, token_type_hint: str | None) -> IssuedToken | None:
        return find_token(self.server.db, token_string, token_type_hint, self.server.clock())

    def revoke_token(self, token: IssuedToken, request: OAuth2Request) -> None:
        """The whole family goes: a revoked refresh token takes the access
        tokens issued with it (§2.1 SHOULD), and a revoked access token takes
        its refresh token (MAY), so that a client's "log out" really ends it."""
        now = self.server.clock()
        revoked = revoke_family(self.server.db, token.row.family_id, now)
        audit.record(
            db=self.server.db,
            event="token.revoked",
            now=now,
            client_id=request.client.client_id,
            ip=getattr(request, "ip", None),
            request_id=getattr(request, "request_id", None),
            family=token.row.family_id,
            revoked=revoked,
            presented="refresh_token" if token.refresh else "access_token",
        )


class IntrospectionEndpoint(_IntrospectionEndpoint):
    """Confidential clients an operator registered (a resource server) may
    introspect any token; those registered through ``/oauth2/register`` only
    their own. With ``BATON_UNAUTHENTICATED_INTROSPECTION`` anyone
    may, which is what an MCP server's token verifier without credentials
    needs; it then learns no more than the bearer of the token could."""

    CLIENT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic", "client_secret_post"]
    server: BatonAuthorizationServer

    def authenticate_endpoint_client(self, request: OAuth2Request) -> Any:
        if self.server.settings.unauthenticated_introspection and not _has_credentials(request):
            request.client = None
            return None
        self._read_ahead(request)
        return super().authenticate_endpoint_client(request)

    def _read_ahead(self, request: OAuth2Request) -> None:
        """Read the client that claims to call and the token it presents in
        one statement, before authlib authenticates the client from what was
        read (one round trip of the two the lookups took one by one)."""
        client_id = _claimed_client_id(request)
        secret = request.form.get("token")
        if client_id is None or not isinstance(secret, str):
            return  # authlib refuses the request, or looks the client up itself
        found = find_caller_and_token(self.server.db, client_id, secret, self.server.clock())
        self.server.remember_client(client_id, found.client)
        request.baton_read_ahead = found

    def authenticate_token(self, request: OAuth2Request, client: Any) -> IssuedToken | None:
        """authlib's, except that a token read ahead is not looked up again."""
        self.check_params(request, client)
        ahead: CallerAndToken | None = getattr(request, "baton_read_ahead", None)
        if ahead is not None:
            token = ahead.token
        else:
            token = self.query_token(request.form["token"], request.form.get("token_type_hint"))
        if token is not None and self.check_permission(token, client, request):
            return token
        return None

    def check_params(self, request: OAuth2Request, client: Any) -> None:
        _check_hint(super().check_params, request, client)

    def check_permission(self, token: IssuedToken, client: Any, request: OAuth2Request) -> bool:
        """RFC 7662 §4: who may learn about a token. A client an operator
        registered (a resource server) may introspect any token; one that
        registered itself (``/oauth2/register``, open to anyone when enabled)
        only the tokens issued to it. Others' get ``{"active": false}``.
        Without client authentication (``BATON_UNAUTHENTICATED_INTROSPECTION``)
        any token may be introspected by whoever holds it."""
        if client is None:
            return True
        caller: OAuthClient = client
        return caller.row.provenance != clients.DCR or token.client_id == caller.client_id

    def query_token(self, token_string: str, token_type_hint: str | None) -> IssuedToken | None:
        return find_token(self.server.db, token_string, token_type_hint, self.server.clock())

    def introspect_token(self, token: IssuedToken) -> dict[str, Any]:
        row, user = token.row, token.user
        if user is not None and user.disabled:
            return {"active": False}
        payload: dict[str, Any] = {
            "active": True,
            "scope": token.get_scope(),
            "client_id": token.client_id,
            "token_type": "refresh_token" if token.refresh else "Bearer",
            "exp": int(token.expires_at.timestamp()),
            "iat": int(row.issued_at.timestamp()),
            "iss": self.server.issuer,
        }
        if user is not None:
            payload["sub"] = user.subject
            payload["username"] = user.username
        if row.resource is not None:
            payload["aud"] = row.resource
        return payload


def _has_credentials(request: OAuth2Request) -> bool:
    """A client secret was sent. A bare ``client_id`` (a public client, auth
    method ``none``) proves nothing and is treated as no authentication."""
    return bool(request.headers.get("Authorization") or request.form.get("client_secret"))


def _claimed_client_id(request: OAuth2Request) -> str | None:
    """The ``client_id`` that authlib authenticates first: HTTP Basic's
    (``client_secret_basic``), else the form's (``client_secret_post``)."""
    client_id, _ = extract_basic_authorization(request.headers)
    if client_id:
        return str(client_id)
    posted = request.form.get("client_id")
    return posted if isinstance(posted, str) and posted else None
