"""The grants of the token endpoint on Baton's tables: the authorization code
with PKCE (OAuth 2.1 §4.1), refresh tokens with rotation and reuse detection
(§4.3), and the OpenID Connect ID token that rides on the code exchange."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from authlib.oauth2.base import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidRequestError, OAuth2Request, grants
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import OpenIDCode, UserInfo
from sqlalchemy import bindparam, insert, or_, select, update

from app import audit, keys, tokens
from app.clients import ClientRecord
from app.db import storable_text
from app.models import AuthorizationCode, Client, Grant, Token, User

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


class InvalidTargetError(OAuth2Error):
    """RFC 8707 §2: the ``resource`` is invalid, unknown or not allowed."""

    error = "invalid_target"


MAX_RESOURCE = 2048


def validate_resource(value: str | None, *, redirect_uri: str | None = None) -> str | None:
    """RFC 8707 §2: an absolute URI without a fragment."""
    if value is None:
        return None
    try:
        parts = urlsplit(value)
    except ValueError:  # "https://[::1/": not a URI at all
        parts = None
    if (
        parts is None
        or len(value) > MAX_RESOURCE
        or parts.scheme not in {"https", "http"}
        or not parts.netloc
        or "#" in value
        or not value.isprintable()
    ):
        raise InvalidTargetError(
            "'resource' must be an absolute http(s) URI without a fragment.",
            redirect_uri=redirect_uri,
        )
    return value


def _one_resource(request: OAuth2Request, redirect_uri: str | None = None) -> str | None:
    values = request.payload.datalist.get("resource", [])
    if len(values) > 1:
        raise InvalidTargetError(
            "Baton issues tokens for one 'resource' at a time.", redirect_uri=redirect_uri
        )
    return validate_resource(values[0], redirect_uri=redirect_uri) if values else None


# Built once: building a statement and its cache key costs more than running it.
# A code is not read back in the request that issues it: a Core INSERT,
# without the ORM's unit of work.
_CODES = AuthorizationCode.metadata.tables[AuthorizationCode.__tablename__]
_INSERT_CODE = insert(_CODES)
_LIVE_CODE = select(AuthorizationCode).where(
    AuthorizationCode.code_hash == bindparam("code_hash"),
    AuthorizationCode.client_pk == bindparam("client_pk"),
    AuthorizationCode.used_at.is_(None),
    AuthorizationCode.expires_at > bindparam("now"),
)
# The tokens a spent code issued (one family): what a replay of it revokes.
_CODE_FAMILY = (
    select(Token.__table__.c.family_id)
    .where(Token.__table__.c.code_id == bindparam("code_id"))
    .limit(1)
)
_SPENT_CODE_FAMILY = (
    select(Token.__table__.c.family_id)
    .join(_CODES, _CODES.c.id == Token.__table__.c.code_id)
    .where(
        _CODES.c.code_hash == bindparam("code_hash"),
        _CODES.c.client_pk == bindparam("client_pk"),
        _CODES.c.used_at.is_not(None),
    )
    .limit(1)
)
# Updates that decide single use are Core statements on the table: through
# the mapped class, the ORM's bulk-update path cost each 55-80 µs more.
_SPEND_CODE = (
    update(_CODES)
    .where(
        _CODES.c.id == bindparam("code_id"),
        _CODES.c.used_at.is_(None),
        _CODES.c.expires_at > bindparam("now"),
    )
    .values(used_at=bindparam("now"))
    .returning(_CODES.c.user_id)
)


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = [
        "client_secret_basic",
        "client_secret_post",
        "none",
    ]

    server: BatonAuthorizationServer

    def validate_authorization_request(self) -> str:
        redirect_uri: str = super().validate_authorization_request()
        # RFC 8707 §2: checked here, once the redirect URI is verified, so the
        # client hears of a bad 'resource' before the user signs in, and no
        # code (or pending flow) ever carries one.
        _one_resource(self.request, redirect_uri)
        return redirect_uri

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        now = self.server.clock()
        data = request.payload.data
        grant: Grant | None = getattr(request, "baton_grant", None)
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
        self.server.db.execute(
            _INSERT_CODE,
            {
                "code_hash": tokens.digest(code),
                "client_pk": request.client.pk,
                "user_id": request.user.id,
                "redirect_uri": data.get("redirect_uri"),
                "scope": request.scope or "",
                "code_challenge": data.get("code_challenge"),
                "code_challenge_method": data.get("code_challenge_method"),
                "nonce": data.get("nonce"),
                "auth_time": getattr(request, "baton_auth_time", now),
                "created_at": now,
                "expires_at": now + self.server.settings.code_ttl,
                "grant_id": grant.id if grant is not None else None,
                "resource": data.get("resource"),
            },
        )

    def validate_token_request(self) -> None:
        super().validate_token_request()
        # RFC 8707 §2.2: the token is for the resource the code was issued for.
        code: AuthorizationCode = self.request.authorization_code
        resource = _one_resource(self.request)
        if resource is not None and resource != code.resource:
            raise InvalidTargetError("The 'resource' differs from the authorization request.")

    def query_authorization_code(self, code: str, client: Any) -> AuthorizationCode | None:
        code_hash = tokens.digest(code)
        live: AuthorizationCode | None = self.server.db.scalar(
            _LIVE_CODE, {"code_hash": code_hash, "client_pk": client.pk, "now": self.server.clock()}
        )
        if live is None:
            self._replayed(
                self.server.db.scalar(
                    _SPENT_CODE_FAMILY, {"code_hash": code_hash, "client_pk": client.pk}
                )
            )
        return live

    def _replayed(self, family: str | None) -> None:
        """OAuth 2.1 §4.1.3: a code used again means someone else holds it;
        the tokens it issued are revoked (``BatonAuthorizationServer.token``
        does it once this request's own transaction has rolled back)."""
        if family is not None:
            self.request.baton_reused_family = family
            self.request.baton_reused = "code"

    def authenticate_user(self, authorization_code: AuthorizationCode) -> User:
        """Spend the code. authlib calls this after every check passed (client,
        redirect URI, PKCE verifier), so a failed exchange leaves the code
        intact; the conditional UPDATE makes a concurrent second exchange lose.
        """
        db = self.server.db
        spent = db.execute(
            _SPEND_CODE, {"code_id": authorization_code.id, "now": self.server.clock()}
        ).scalar_one_or_none()
        if spent is None:  # a concurrent exchange of the same code won
            self._replayed(db.scalar(_CODE_FAMILY, {"code_id": authorization_code.id}))
        user = None if spent is None else db.get(User, spent)
        if user is None or user.disabled or not _grant_is_live(self.server, authorization_code):
            raise InvalidGrantError("Invalid 'code' in request.")
        return user

    def generate_token(
        self,
        user: Any = None,
        scope: str | None = None,
        grant_type: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        """authlib's, less the refresh token when the user declined
        ``offline_access`` for this client (the grant says so)."""
        code: AuthorizationCode = self.request.authorization_code
        if include_refresh_token and code.grant_id is not None:
            grant = grant_of(self.server.db, code.grant_id)  # read by authenticate_user
            include_refresh_token = grant is not None and not grant.refresh_declined
        token: dict[str, Any] = super().generate_token(
            user=user,
            scope=scope,
            grant_type=grant_type,
            expires_in=expires_in,
            include_refresh_token=include_refresh_token,
        )
        return token

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        # Spent codes stay (with used_at set) until purged, so a replay is told
        # apart from a typo in logs and can later revoke what the code issued.
        return None


def grant_of(db: Any, grant_id: int) -> Grant | None:
    """The grant, read once per unit of work: the session's identity map holds
    it weakly, so without this reference every ``db.get`` would read it again."""
    held: dict[int, Grant | None] = db.info.setdefault("baton_grants", {})
    if grant_id not in held:
        held[grant_id] = db.get(Grant, grant_id)
    return held[grant_id]


def _grant_is_live(
    server: BatonAuthorizationServer, issued: AuthorizationCode | TokenRecord
) -> bool:
    if issued.grant_id is None:
        return True
    grant = grant_of(server.db, issued.grant_id)
    return grant is not None and grant.revoked_at is None and grant.expires_at > server.clock()


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A row of ``tokens`` as the token, revocation and introspection
    endpoints read it: plain columns, without the ORM's bookkeeping (an
    introspection spent a fifth of its time loading three ORM entities)."""

    id: int
    access_token_hash: str
    client_pk: int
    user_id: int | None
    grant_id: int | None
    family_id: str
    scope: str
    refresh_scope: str | None
    resource: str | None
    issued_at: datetime
    expires_at: datetime
    refresh_expires_at: datetime | None
    refreshed_at: datetime | None
    revoked_at: datetime | None
    auth_time: datetime | None


@dataclass(frozen=True, slots=True)
class TokenUser:
    """The user of a token, as much of it as the endpoints need."""

    id: int
    subject: str
    username: str
    disabled: bool


class IssuedToken:
    """authlib's ``TokenMixin`` over a row of ``tokens``, seen as the access
    token or as the refresh token that was presented, with the ``client_id``
    of its client and its user (loaded in the same statement)."""

    def __init__(
        self,
        row: TokenRecord,
        *,
        refresh: bool,
        now: datetime,
        client_id: str,
        user: TokenUser | None,
    ) -> None:
        self.row = row
        self.refresh = refresh
        self.now = now
        self.client_id = client_id
        self.user = user

    @property
    def expires_at(self) -> datetime:
        if self.refresh:
            assert self.row.refresh_expires_at is not None
            return self.row.refresh_expires_at
        return self.row.expires_at

    def check_client(self, client: Any) -> bool:
        return bool(self.row.client_pk == client.pk)

    def get_scope(self) -> str:
        if self.refresh and self.row.refresh_scope is not None:
            return self.row.refresh_scope
        return self.row.scope

    def get_expires_in(self) -> int:
        return max(0, int((self.expires_at - self.now).total_seconds()))

    def is_expired(self) -> bool:
        return self.expires_at <= self.now

    def is_revoked(self) -> bool:
        return self.row.revoked_at is not None or (
            self.refresh and self.row.refreshed_at is not None
        )


_TOKENS, _CLIENTS, _USERS = Token.__table__.c, Client.__table__.c, User.__table__.c
_TOKEN_FIELDS = len(TokenRecord.__slots__)
# Built once: building the statement and its cache key cost more than running it.
_TOKEN_BY_DIGEST = (
    select(
        *(_TOKENS[name] for name in TokenRecord.__slots__),
        _CLIENTS.client_id,
        *(_USERS[name].label(f"user_{name}") for name in TokenUser.__slots__),
    )
    .select_from(
        Token.__table__.join(Client.__table__, _TOKENS.client_pk == _CLIENTS.id).outerjoin(
            User.__table__, _TOKENS.user_id == _USERS.id
        )
    )
    .where(
        or_(
            _TOKENS.access_token_hash == bindparam("digest"),
            _TOKENS.refresh_token_hash == bindparam("digest"),
        )
    )
    .limit(1)
)


MAX_TOKEN_LENGTH = 512  # Baton's are 43 characters; longer ones are not looked up


def find_token(db: Any, secret: str, hint: str | None, now: datetime) -> IssuedToken | None:
    """The access or refresh token ``secret``, found in one statement with its
    client and user (introspection needs all three). Both hashes are unique
    and indexed, so the hint (RFC 7009 §2.1, RFC 7662 §2.1) is not needed."""
    if len(secret) > MAX_TOKEN_LENGTH:
        return None
    digest = tokens.digest(secret)
    found = db.execute(_TOKEN_BY_DIGEST, {"digest": digest}).first()
    return None if found is None else _issued(found, digest, now)


def _issued(found: Sequence[Any], digest: str, now: datetime) -> IssuedToken | None:
    """The token of a row laid out as ``_TOKEN_BY_DIGEST``'s columns (None
    when an outer join found none)."""
    if found[0] is None:
        return None
    row = TokenRecord(*found[:_TOKEN_FIELDS])
    client_id, user_fields = found[_TOKEN_FIELDS], found[_TOKEN_FIELDS + 1 :]
    user = None if user_fields[0] is None else TokenUser(*user_fields)
    return IssuedToken(
        row,
        refresh=row.access_token_hash != digest,
        now=now,
        client_id=client_id,
        user=user,
    )


_CALLER, _ISSUED_TO = Client.__table__.alias("caller"), Client.__table__.alias("issued_to")
_CLIENT_FIELDS = len(ClientRecord.__slots__)
_CALLER_AND_TOKEN = (
    select(
        *(_CALLER.c[name] for name in ClientRecord.__slots__),
        *(_TOKENS[name] for name in TokenRecord.__slots__),
        _ISSUED_TO.c.client_id,
        *(_USERS[name].label(f"user_{name}") for name in TokenUser.__slots__),
    )
    .select_from(
        _CALLER.outerjoin(
            Token.__table__,
            or_(
                _TOKENS.access_token_hash == bindparam("digest"),
                _TOKENS.refresh_token_hash == bindparam("digest"),
            ),
        )
        .outerjoin(_ISSUED_TO, _TOKENS.client_pk == _ISSUED_TO.c.id)
        .outerjoin(User.__table__, _TOKENS.user_id == _USERS.id)
    )
    .where(_CALLER.c.client_id == bindparam("client_id"))
    .limit(1)
)


@dataclass(frozen=True, slots=True)
class CallerAndToken:
    """What :func:`find_caller_and_token` read: the client that claims to call
    (not yet authenticated) and the token it presents, as of ``digest``."""

    client: ClientRecord | None
    token: IssuedToken | None
    digest: str


def find_caller_and_token(db: Any, client_id: str, secret: str, now: datetime) -> CallerAndToken:
    """The calling client and the token it presents, in one statement: what
    introspection needs, in one round trip instead of two (a resource server
    introspects on every request it serves). Reading the token before the
    client has authenticated reveals nothing: the caller sees it only once
    authlib has checked the client's secret against the record read here.
    Both lookups hit a unique index; the token is not looked up (and the
    client alone is) where :func:`find_token` would not look it up either."""
    digest = tokens.digest(secret) if len(secret) <= MAX_TOKEN_LENGTH else ""
    if not storable_text(client_id):
        return CallerAndToken(None, None, digest)
    found = db.execute(_CALLER_AND_TOKEN, {"client_id": client_id, "digest": digest}).first()
    if found is None:
        return CallerAndToken(None, None, digest)
    return CallerAndToken(
        ClientRecord(*found[:_CLIENT_FIELDS]),
        _issued(found[_CLIENT_FIELDS:], digest, now) if digest else None,
        digest,
    )


_SPEND_REFRESH = (
    update(Token.metadata.tables[Token.__tablename__])
    .where(
        _TOKENS.id == bindparam("token_id"),
        _TOKENS.refreshed_at.is_(None),
        _TOKENS.revoked_at.is_(None),
    )
    .values(refreshed_at=bindparam("now"))
)


def revoke_family(db: Any, family_id: str, now: datetime) -> int:
    result = db.execute(
        update(Token)
        .where(Token.family_id == family_id, Token.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


class RefreshTokenGrant(grants.RefreshTokenGrant):
    """RFC 6749 §6 with OAuth 2.1 §4.3.1 rotation: every refresh spends the
    presented refresh token (one conditional UPDATE) and issues a new one of
    the same family. A spent refresh token presented again means that it
    leaked: the whole family is revoked."""

    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = (
        AuthorizationCodeGrant.TOKEN_ENDPOINT_AUTH_METHODS
    )
    INCLUDE_NEW_REFRESH_TOKEN = True

    server: BatonAuthorizationServer

    def authenticate_refresh_token(self, refresh_token: str) -> IssuedToken | None:
        server, now = self.server, self.server.clock()
        found = find_token(server.db, refresh_token, "refresh_token", now)
        if found is None or not found.refresh:
            return None
        row = found.row
        if row.refreshed_at is not None and row.revoked_at is None:
            self.request.baton_reused_family = row.family_id
            return None
        if found.is_revoked() or found.is_expired() or not _grant_is_live(server, row):
            return None
        # Spent here, before anything is issued: of two concurrent refreshes
        # with one token exactly one passes; the other is a reuse.
        spent = server.db.execute(_SPEND_REFRESH, {"token_id": row.id, "now": now})
        if not getattr(spent, "rowcount", 0):
            self.request.baton_reused_family = row.family_id
            return None
        return found

    def validate_token_request(self) -> None:
        super().validate_token_request()
        resource = _one_resource(self.request)
        if resource is not None and resource != self.request.refresh_token.row.resource:
            raise InvalidTargetError("The 'resource' differs from the authorization request.")

    def authenticate_user(self, refresh_token: IssuedToken) -> TokenUser | None:
        user = refresh_token.user
        if user is None or user.disabled:
            raise InvalidGrantError("The user of this refresh token cannot sign in.")
        return user

    def revoke_old_credential(self, refresh_token: IssuedToken) -> None:
        return None  # spent in authenticate_refresh_token


class BatonOpenIDCode(OpenIDCode):
    """OpenID Connect Core 1.0 §3.1.3.6: the ID token of the code exchange,
    signed with the database's current key."""

    def __init__(self, server: BatonAuthorizationServer) -> None:
        super().__init__(require_nonce=False)
        self.server = server

    def _key(self) -> Any:
        """The signing key, looked up once per unit of work (authlib asks for
        it three times per ID token: key, algorithm, header)."""
        db = self.server.db
        key = db.info.get("baton_signing_key")
        if key is None:
            key = keys.ensure(db=db, alg=self.server.settings.signing_alg, now=self.server.clock())
            db.info["baton_signing_key"] = key
        return key

    def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
        # A nonce seen with this client before is a replayed authorization request.
        found = self.server.db.scalar(
            select(AuthorizationCode.id)
            .where(
                AuthorizationCode.client_pk == request.client.pk, AuthorizationCode.nonce == nonce
            )
            .limit(1)
        )
        return found is not None

    def resolve_client_private_key(self, client: Any) -> Any:
        return self.server.key_cache.private(self._key())

    def get_client_algorithm(self, client: Any) -> str:
        return str(self._key().alg)

    def get_encode_header(self, client: Any) -> dict[str, str]:
        key = self._key()
        return {"alg": key.alg, "kid": key.kid, "typ": "JWT"}

    def get_client_claims(self, client: Any) -> dict[str, Any]:
        # The server's clock, as for every other expiry: a key is published
        # for ``id_token_ttl`` after retirement, measured on this clock.
        now = int(self.server.clock().timestamp())
        ttl = int(self.server.settings.id_token_ttl.total_seconds())
        return {
            "iss": self.server.issuer,
            "aud": [client.get_client_id()],
            "iat": now,
            "exp": now + ttl,
        }

    def generate_user_info(self, user: User, scope: str) -> UserInfo:
        return user_info(user, scope)


def user_info(user: User, scope: str) -> UserInfo:
    """The claims a scope releases (OpenID Connect Core 1.0 §5.4)."""
    info = UserInfo(sub=user.subject)
    if "profile" in scope.split():
        info["preferred_username"] = user.username
    return info
