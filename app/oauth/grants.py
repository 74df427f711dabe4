"""The authorization-code grant with PKCE (OAuth 2.1 §4.1), on Baton's tables."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidRequestError, OAuth2Request, grants
from authlib.oauth2.rfc7636 import CodeChallenge
from sqlalchemy import select, update

from app import audit, tokens
from app.models import AuthorizationCode, User

if TYPE_CHECKING:
    from app.oauth.server import BatonAuthorizationServer


class S256CodeChallenge(CodeChallenge):
    """PKCE as OAuth 2.1 §4.1.1 wants it: ``S256`` only, required of public clients."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD: ClassVar[list[str]] = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        request: OAuth2Request = grant.request
        data = request.payload.data
        if request.client.public and not data.get("code_challenge"):
            raise InvalidRequestError(
                "Public clients must send a PKCE 'code_challenge'.", redirect_uri=redirect_uri
            )
        if data.get("code_challenge") and data.get("code_challenge_method") != "S256":
            # RFC 7636 §4.3 defaults a missing method to "plain", which OAuth 2.1 refuses.
            raise InvalidRequestError(
                "'code_challenge_method' must be S256.", redirect_uri=redirect_uri
            )
        super().validate_code_challenge(grant, redirect_uri)


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = [
        "client_secret_basic",
        "client_secret_post",
        "none",
    ]

    server: BatonAuthorizationServer

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        now = self.server.clock()
        data = request.payload.data
        audit.record(
            db=self.server.db,
            event="code.issued",
            now=now,
            username=request.user.username,
            client_id=request.client.client_id,
            ip=getattr(request, "ip", None),
            request_id=getattr(request, "request_id", None),
            scope=request.scope or "",
        )
        self.server.db.add(
            AuthorizationCode(
                code_hash=tokens.digest(code),
                client_pk=request.client.pk,
                user_id=request.user.id,
                redirect_uri=data.get("redirect_uri"),
                scope=request.scope or "",
                code_challenge=data.get("code_challenge"),
                code_challenge_method=data.get("code_challenge_method"),
                nonce=data.get("nonce"),
                auth_time=now,
                created_at=now,
                expires_at=now + self.server.settings.code_ttl,
            )
        )

    def query_authorization_code(self, code: str, client: Any) -> AuthorizationCode | None:
        return self.server.db.scalar(
            select(AuthorizationCode).where(
                AuthorizationCode.code_hash == tokens.digest(code),
                AuthorizationCode.client_pk == client.pk,
                AuthorizationCode.used_at.is_(None),
                AuthorizationCode.expires_at > self.server.clock(),
            )
        )

    def authenticate_user(self, authorization_code: AuthorizationCode) -> User:
        """Spend the code. authlib calls this after every check passed (client,
        redirect URI, PKCE verifier), so a failed exchange leaves the code
        intact; the conditional UPDATE makes a concurrent second exchange lose.
        """
        db = self.server.db
        spent = db.execute(
            update(AuthorizationCode)
            .where(
                AuthorizationCode.id == authorization_code.id,
                AuthorizationCode.used_at.is_(None),
                AuthorizationCode.expires_at > self.server.clock(),
            )
            .values(used_at=self.server.clock())
            .returning(AuthorizationCode.user_id)
            .execution_options(synchronize_session=False)
        ).scalar_one_or_none()
        user = None if spent is None else db.get(User, spent)
        if user is None or user.disabled:
            raise InvalidGrantError("Invalid 'code' in request.")
        return user

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        # Spent codes stay (with used_at set) until purged, so a replay is told
        # apart from a typo in logs and can later revoke what the code issued.
        return None
