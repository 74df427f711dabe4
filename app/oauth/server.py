"""Baton's authlib ``AuthorizationServer``: storage hooks and a framework-free
request/response adapter. The Starlette layer turns a :class:`Request` into an
``OAuth2Request`` here and an :class:`OAuthResponse` back into HTTP.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlencode

from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import (
    InvalidRequestError,
    OAuth2Error,
    OAuth2Payload,
    OAuth2Request,
)
from authlib.oauth2.rfc6749.requests import JsonPayload, JsonRequest
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oidc.core.errors import ConsentRequiredError, LoginRequiredError
from sqlalchemy import insert
from sqlalchemy.orm import Session

from app import audit, authorizations, clients, flows, keys, sessions, tokens
from app.db import Database
from app.models import AuthorizationCode, BrowserSession, Token, User
from app.oauth.clients import OAuthClient
from app.oauth.endpoints import IntrospectionEndpoint, RevocationEndpoint
from app.oauth.grants import (
    AuthorizationCodeGrant,
    BatonOpenIDCode,
    IssuedToken,
    RefreshTokenGrant,
    S256CodeChallenge,
    grant_of,
    revoke_family,
)
from app.oauth.registration import RegistrationEndpoint
from app.redirects import RESUMABLE_PARAMETERS, resume_path
from app.settings import Settings

_T = TypeVar("_T")
# A token is not read back in the request that issues it: a Core INSERT,
# without the ORM's unit of work.
_INSERT_TOKEN = insert(Token.metadata.tables[Token.__tablename__])
_current_db: ContextVar[Session] = ContextVar("baton_oauth_db")


@dataclass(frozen=True, slots=True)
class OAuthResponse:
    status: int
    body: dict[str, Any] | str
    headers: list[tuple[str, str]] = field(default_factory=list)
    flow_created: bool = False

    @property
    def location(self) -> str | None:
        return next((v for k, v in self.headers if k.lower() == "location"), None)


ALREADY_COMPLETED = {
    "error": "invalid_request",
    "error_description": "This sign-in was already completed. Return to the application.",
}


class _Payload(OAuth2Payload):
    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in pairs:
            self._datalist[key].append(value)
        # The first occurrence wins; duplicates are refused before use (RFC 6749 §3.1, §3.2).
        self._data = {key: values[0] for key, values in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class BatonOAuth2Request(OAuth2Request):
    """An ``OAuth2Request`` built from already-read, plain data (no framework types)."""

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Mapping[str, str],
        query: Sequence[tuple[str, str]],
        form: Sequence[tuple[str, str]] = (),
        ip: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(method, uri, headers=headers)
        self.payload = _Payload([*query, *form])
        # For the audit log only.
        self.ip = ip
        self.request_id = request_id
        self._query = dict(query)
        self._form = dict(form)

    @property
    def args(self) -> dict[str, str]:
        return self._query

    @property
    def form(self) -> dict[str, str]:
        return self._form


class _JsonPayload(JsonPayload):
    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    @property
    def data(self) -> dict[str, Any]:
        return self._data


class BatonJsonRequest(JsonRequest):
    """A JSON request (client registration), from already-parsed data."""

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Mapping[str, str],
        data: dict[str, Any],
        ip: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(method, uri, headers)
        self.payload = _JsonPayload(data)
        self.ip = ip
        self.request_id = request_id


class _Abort(Exception):
    """Unwinds a transaction while keeping the response to return."""

    def __init__(self, response: OAuthResponse) -> None:
        self.response = response


class BatonAuthorizationServer(AuthorizationServer):
    def __init__(
        self, *, settings: Settings, database: Database, clock: Callable[[], datetime]
    ) -> None:
        super().__init__()
        self.settings = settings
        self.database = database
        self.clock = clock
        ttl = int(settings.access_token_ttl.total_seconds())
        self.register_token_generator(
            "default",
            BearerTokenGenerator(
                access_token_generator=lambda **_: tokens.new_secret(),
                refresh_token_generator=lambda **_: tokens.new_secret(),
                expires_generator=lambda client, grant_type: ttl,
            ),
        )
        self.key_cache = keys.KeyCache()
        self.register_grant(
            AuthorizationCodeGrant, [S256CodeChallenge(required=True), BatonOpenIDCode(self)]
        )
        self.register_grant(RefreshTokenGrant)
        self.register_endpoint(RevocationEndpoint(self))
        self.register_endpoint(IntrospectionEndpoint(self))
        self.register_endpoint(RegistrationEndpoint(self))

    @property
    def issuer(self) -> str:
        return self.settings.public_url

    # -- the unit of work that authlib's hooks run in ------------------------

    @property
    def db(self) -> Session:
        return _current_db.get()

    @contextmanager
    def _unit_of_work(self, *, read_only: bool = False) -> Iterator[Session]:
        unit = self.database.reading() if read_only else self.database.transaction()
        with unit as db:
            reset = _current_db.set(db)
            try:
                yield db
            finally:
                _current_db.reset(reset)

    # -- authlib hooks ---------------------------------------------------------

    def query_client(self, client_id: str) -> OAuthClient | None:
        # authlib asks more than once per request; once per unit of work is enough.
        if client_id not in self._clients():
            self.remember_client(client_id, clients.record(db=self.db, client_id=client_id))
        return self._clients()[client_id]

    def remember_client(self, client_id: str, record: clients.ClientRecord | None) -> None:
        """What :meth:`query_client` answers for ``client_id`` for the rest of
        this unit of work (a record read along with something else)."""
        self._clients()[client_id] = None if record is None else OAuthClient(record)

    def _clients(self) -> dict[str, OAuthClient | None]:
        cache: dict[str, OAuthClient | None] = self.db.info.setdefault("baton_clients", {})
        return cache

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        """Store a new token, as hashes: a code exchange starts a family, a
        refresh continues the family of the refresh token it spent."""
        now = self.clock()
        code: AuthorizationCode | None = request.authorization_code
        previous: IssuedToken | None = request.refresh_token
        if code is not None:
            grant_id, family, resource = code.grant_id, tokens.new_public_id(), code.resource
            auth_time: datetime | None = code.auth_time
            refresh_scope = token.get("scope", "")
        elif previous is not None:
            row = previous.row
            grant_id, family, resource, auth_time = (
                row.grant_id,
                row.family_id,
                row.resource,
                row.auth_time,
            )
            refresh_scope = previous.get_scope()
        else:  # pragma: no cover - Baton registers no other token grant
            raise RuntimeError("a token without a code or refresh token")
        refresh = token.get("refresh_token")
        refresh_expires_at = None
        if refresh:
            refresh_expires_at = now + self.settings.refresh_token_ttl
            grant = grant_of(self.db, grant_id) if grant_id is not None else None
            if grant is not None:
                # A refresh token never outlives what the user approved.
                refresh_expires_at = min(refresh_expires_at, grant.expires_at)
        audit.record(
            db=self.db,
            event="token.refreshed" if previous is not None else "token.issued",
            now=now,
            username=request.user.username if request.user is not None else None,
            client_id=request.client.client_id,
            ip=getattr(request, "ip", None),
            request_id=getattr(request, "request_id", None),
            scope=token.get("scope", ""),
            family=family,
            with_refresh_token=refresh is not None,
            resource=resource,
        )
        self.db.execute(
            _INSERT_TOKEN,
            {
                "access_token_hash": tokens.digest(token["access_token"]),
                "refresh_token_hash": tokens.digest(refresh) if refresh else None,
                "client_pk": request.client.pk,
                "user_id": request.user.id if request.user is not None else None,
                "code_id": code.id if code is not None else None,
                "scope": token.get("scope", ""),
                "issued_at": now,
                "expires_at": now + self.settings.access_token_ttl,
                "grant_id": grant_id,
                "family_id": family,
                "refresh_expires_at": refresh_expires_at,
                "refresh_scope": refresh_scope if refresh else None,
                "resource": resource,
                "auth_time": auth_time,
            },
        )

    def create_oauth2_request(self, request: OAuth2Request) -> OAuth2Request:
        return request

    def create_json_request(self, request: Any) -> Any:
        return request

    def handle_response(
        self, status: int, body: dict[str, Any] | str, headers: list[tuple[str, str]]
    ) -> OAuthResponse:
        return OAuthResponse(status, body, list(headers))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None

    # -- endpoints -------------------------------------------------------------

    def authorize(
        self,
        request: BatonOAuth2Request,
        *,
        session_secret: str | None,
        binding_secret: str,
        ip: str | None,
        user_agent: str | None,
    ) -> OAuthResponse:
        """``GET /oauth2/authorize``; see :meth:`_authorize`. Every answer sent
        back to the client's redirect URI, code or error, names this server as
        ``iss`` (RFC 9207), so a client talking to several servers cannot be
        fooled into sending a code to the wrong one (mix-up attacks)."""
        response = self._authorize(
            request,
            session_secret=session_secret,
            binding_secret=binding_secret,
            ip=ip,
            user_agent=user_agent,
        )
        location = response.location
        if response.status != 302 or response.flow_created or location is None:
            return response
        separator = "&" if "?" in location else "?"
        location += separator + urlencode({"iss": self.issuer})
        headers = [(k, v) for k, v in response.headers if k.lower() != "location"]
        return OAuthResponse(302, response.body, [*headers, ("Location", location)])

    def _authorize(
        self,
        request: BatonOAuth2Request,
        *,
        session_secret: str | None,
        binding_secret: str,
        ip: str | None,
        user_agent: str | None,
    ) -> OAuthResponse:
        """``GET /oauth2/authorize`` (RFC 6749 §4.1.1).

        An invalid request is answered here, redirected to the client only when
        authlib has validated its redirect URI (§4.1.2.1). A valid request from
        a browser without a session is paused as a pending flow bound to
        ``binding_secret`` (the browser's binding cookie). The resume URL of a
        consumed flow issues its code once; a second visit gets an explanation.
        """
        now = self.clock()
        refusal = _refuse_parameters(request)
        if refusal is not None:
            # Answered before authlib, never redirected: the values are unusable.
            return _response(self.handle_error_response(request, InvalidRequestError(refusal)))
        with self._unit_of_work() as db:
            session = sessions.current(
                db=db,
                secret=session_secret,
                now=now,
                idle_timeout=self.settings.session_idle_timeout,
            )
            user = session.user if session is not None else None
            try:
                grant = _guard(lambda: self.get_consent_grant(request, end_user=user))
                interaction = _interaction(request.payload.data, grant.redirect_uri)
            except OAuth2Error as error:
                error.state = request.payload.state
                return _response(self.handle_error_response(request, error))
            params = request.payload.data
            resumed = None
            if user is not None and params.get("flow"):
                resumed = flows.mark_resumed(
                    db=db,
                    public_id=params["flow"],
                    user_id=user.id,
                    client_pk=request.client.pk,
                    now=now,
                )
                if resumed is None:
                    return OAuthResponse(400, ALREADY_COMPLETED)
                if resumed.decision == flows.DENIED:
                    # The user said no: access_denied at the client's redirect URI.
                    return self._answer(request, grant, None)
            pause = _Pause(self, request, binding_secret=binding_secret, ip=ip, agent=user_agent)
            # 1. Who is it? (OpenID Connect Core 1.0 §3.1.2.1: prompt, max_age)
            if session is None or (resumed is None and interaction.wants_login(session, now)):
                if interaction.none:
                    return self._refuse(
                        request, LoginRequiredError(redirect_uri=grant.redirect_uri)
                    )
                return pause.login()
            assert user is not None
            # 2. Did they agree? First-party clients need not ask.
            scope = request.scope or ""
            client: clients.ClientView = request.client.row
            existing = authorizations.find(db=db, user_id=user.id, client_pk=client.id, now=now)
            if not client.first_party and (
                not authorizations.covers(existing, scope)
                or (interaction.consent and (resumed is None or resumed.kind != flows.KIND_CONSENT))
            ):
                if interaction.none:
                    return self._refuse(
                        request, ConsentRequiredError(redirect_uri=grant.redirect_uri)
                    )
                return pause.consent(user.id)
            if client.first_party:  # (a consent answer stored its grant already)
                existing = authorizations.extend(
                    db=db,
                    live=existing,
                    user_id=user.id,
                    client_pk=client.id,
                    scope=scope,
                    now=now,
                    lifetime=self.settings.grant_lifetime,
                )
            request.baton_grant = existing
            request.baton_auth_time = session.created_at
            return self._answer(request, grant, user)

    def _answer(self, request: BatonOAuth2Request, grant: Any, user: User | None) -> OAuthResponse:
        return _response(self.create_authorization_response(request, grant_user=user, grant=grant))

    def _refuse(self, request: BatonOAuth2Request, error: OAuth2Error) -> OAuthResponse:
        error.state = request.payload.state
        return _response(self.handle_error_response(request, error))

    def token(self, request: BatonOAuth2Request) -> OAuthResponse:
        """``POST /oauth2/token`` (RFC 6749 §4.1.3). Nothing is written unless a
        token is issued."""
        if any(len(values) > 1 for values in request.payload.datalist.values()):
            error = InvalidRequestError("A parameter is repeated (RFC 6749 section 3.2).")
            return _response(self.handle_error_response(request, error))
        try:
            with self._unit_of_work():
                response = _response(_guard(lambda: self.create_token_response(request)))
                if response.status != 200:
                    raise _Abort(response)
                return response
        except _Abort as abort:
            family = getattr(request, "baton_reused_family", None)
            if family is not None:
                self._revoke_reused_family(request, family)
            return abort.response

    def _revoke_reused_family(self, request: BatonOAuth2Request, family: str) -> None:
        """A rotated refresh token or a spent code came back: someone holds a
        copy. Every token of its family stops working, in its own transaction
        (the refused request's own transaction was rolled back)."""
        now = self.clock()
        reused = getattr(request, "baton_reused", "refresh_token")
        with self.database.transaction() as db:
            revoked = revoke_family(db, family, now)
            audit.record(
                db=db,
                event="code.reuse_detected" if reused == "code" else "token.reuse_detected",
                now=now,
                client_id=request.payload.client_id,
                ip=request.ip,
                request_id=request.request_id,
                family=family,
                revoked=revoked,
            )

    def revoke(self, request: BatonOAuth2Request) -> OAuthResponse:
        """``POST /oauth2/revoke`` (RFC 7009)."""
        return self._endpoint(RevocationEndpoint.ENDPOINT_NAME, request)

    def introspect(self, request: BatonOAuth2Request) -> OAuthResponse:
        """``POST /oauth2/introspect`` (RFC 7662)."""
        return self._endpoint(IntrospectionEndpoint.ENDPOINT_NAME, request, read_only=True)

    def register(self, request: BatonJsonRequest) -> OAuthResponse:
        """``POST /oauth2/register`` (RFC 7591)."""
        return self._endpoint(RegistrationEndpoint.ENDPOINT_NAME, request)

    def _endpoint(
        self,
        name: str,
        request: BatonOAuth2Request | BatonJsonRequest,
        *,
        read_only: bool = False,
    ) -> OAuthResponse:
        if isinstance(request, BatonOAuth2Request) and any(
            len(values) > 1 for values in request.payload.datalist.values()
        ):
            error = InvalidRequestError("A parameter is repeated.")
            return _response(self.handle_error_response(request, error))
        try:
            with self._unit_of_work(read_only=read_only):
                response = _response(_guard(lambda: self.create_endpoint_response(name, request)))
                if not 200 <= response.status < 300:  # registration answers 201
                    raise _Abort(response)
                return response
        except _Abort as abort:
            return abort.response
        except OAuth2Error as error:  # _guard's: a description authlib refused
            return _response(self.handle_error_response(request, error))


MAX_PARAMETER_LENGTH = 2048
# Where a value is stored in a narrower column (``authorization_codes.nonce``).
_MAX_LENGTHS = {"nonce": 255}
_VSCHARS = re.compile(r"[\x20-\x7e]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _refuse_parameters(request: OAuth2Request) -> str | None:
    """RFC 6749 §3.1: no parameter twice. Appendix A.5 / OpenID Connect: state
    and nonce are visible ASCII, which the client must get back exactly, so
    anything else (invalid UTF-8, control characters) is refused, not mangled.
    No parameter carries a control character (PostgreSQL's text cannot even
    hold NUL). Values are bounded, since they are stored with the flow."""
    datalist = request.payload.datalist
    for name in RESUMABLE_PARAMETERS:
        values = datalist.get(name, [])
        if len(values) > 1:
            return f"Parameter '{name}' is repeated."
        if not values:
            continue
        if len(values[0]) > _MAX_LENGTHS.get(name, MAX_PARAMETER_LENGTH):
            return f"Parameter '{name}' is too long."
        if name in {"state", "nonce"} and not _VSCHARS.fullmatch(values[0]):
            return f"Parameter '{name}' must be visible ASCII characters."
        if _CONTROL.search(values[0]):
            return f"Parameter '{name}' contains control characters."
    return None


@dataclass(frozen=True, slots=True)
class _Interaction:
    """What the client asked of the user (OpenID Connect Core 1.0 §3.1.2.1)."""

    prompts: frozenset[str]
    max_age: int | None

    @property
    def none(self) -> bool:
        return "none" in self.prompts

    @property
    def consent(self) -> bool:
        return "consent" in self.prompts

    def wants_login(self, session: BrowserSession, now: datetime) -> bool:
        """Whether the user must sign in again despite their session."""
        if self.prompts & {"login", "select_account"}:
            return True
        if self.max_age is None:
            return False
        # max_age=0 is a fresh sign-in every time (like prompt=login).
        return self.max_age == 0 or now - session.created_at > timedelta(seconds=self.max_age)


PROMPTS = frozenset({"none", "login", "consent", "select_account"})


def _interaction(params: Mapping[str, str], redirect_uri: str) -> _Interaction:
    prompts = frozenset(params.get("prompt", "").split())
    if prompts - PROMPTS:
        # The value is not echoed: an error description allows only some
        # visible ASCII (RFC 6749 §5.2), and the supported ones say enough.
        raise InvalidRequestError(
            f"Unsupported 'prompt' value; supported: {', '.join(sorted(PROMPTS))}.",
            redirect_uri=redirect_uri,
        )
    if "none" in prompts and len(prompts) > 1:
        raise InvalidRequestError(
            "'prompt=none' cannot be combined with other values.", redirect_uri=redirect_uri
        )
    max_age = None
    if "max_age" in params:
        text = params["max_age"]
        if not text.isascii() or not text.isdigit() or len(text) > 10:
            raise InvalidRequestError(
                "'max_age' must be a number of seconds.", redirect_uri=redirect_uri
            )
        max_age = int(text)
    return _Interaction(prompts, max_age)


class _Pause:
    """Park the authorization request as a pending flow and send the browser
    to the page that completes it (the login or consent page)."""

    def __init__(
        self,
        server: BatonAuthorizationServer,
        request: BatonOAuth2Request,
        *,
        binding_secret: str,
        ip: str | None,
        agent: str | None,
    ) -> None:
        self.server = server
        self.request = request
        self.binding_secret = binding_secret
        self.ip = ip
        self.agent = agent

    def login(self) -> OAuthResponse:
        return self._pause(flows.KIND_LOGIN, self.server.settings.login_url, None)

    def consent(self, user_id: int) -> OAuthResponse:
        return self._pause(flows.KIND_CONSENT, self.server.settings.consent_url, user_id)

    def _pause(self, kind: str, page: str, subject_id: int | None) -> OAuthResponse:
        server, request = self.server, self.request
        now = server.clock()
        params = request.payload.data
        kept = {name: params[name] for name in RESUMABLE_PARAMETERS if name in params}
        kept.pop("flow", None)
        # The resume URL names its flow, so that it continues only once.
        public_id = tokens.new_public_id()
        flow = flows.create(
            db=server.db,
            client_pk=request.client.pk,
            request=kept | {"scope": request.scope},
            redir_to=resume_path(kept | {"flow": public_id}),
            public_id=public_id,
            now=now,
            ttl=server.settings.flow_ttl,
            kind=kind,
            binding_hash=tokens.digest(self.binding_secret),
            ip=self.ip,
            user_agent=self.agent,
            subject_id=subject_id,
        )
        audit.record(
            db=server.db,
            event="flow.created",
            now=now,
            client_id=request.client.client_id,
            ip=self.ip,
            request_id=request.request_id,
            flow=flow.row.public_id,
            kind=kind,
            scope=request.scope,
        )
        separator = "&" if "?" in page else "?"
        location = page + separator + urlencode({"redirection_token": flow.token})
        return OAuthResponse(302, "", [("Location", location)], flow_created=True)


def _response(value: object) -> OAuthResponse:
    """authlib is untyped; every response it returns went through ``handle_response``."""
    assert isinstance(value, OAuthResponse)
    return value


def _guard(call: Callable[[], _T]) -> _T:
    """authlib builds some error descriptions from request values and raises
    ``ValueError`` when they hold characters RFC 6749 forbids; answer those as
    an ordinary ``invalid_request`` instead of a 500."""
    try:
        return call()
    except ValueError as error:
        if "forbidden characters" not in str(error):
            raise
        raise InvalidRequestError("The request contains invalid characters.") from None
