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
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlencode

from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import (
    InvalidRequestError,
    OAuth2Error,
    OAuth2Payload,
    OAuth2Request,
)
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from sqlalchemy.orm import Session

from app import audit, clients, flows, sessions, tokens
from app.db import Database
from app.models import Token
from app.oauth.clients import OAuthClient
from app.oauth.grants import AuthorizationCodeGrant, S256CodeChallenge
from app.redirects import RESUMABLE_PARAMETERS, resume_path
from app.settings import Settings

_T = TypeVar("_T")
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
        self.register_grant(AuthorizationCodeGrant, [S256CodeChallenge(required=True)])

    # -- the unit of work that authlib's hooks run in ------------------------

    @property
    def db(self) -> Session:
        return _current_db.get()

    @contextmanager
    def _unit_of_work(self) -> Iterator[Session]:
        with self.database.transaction() as db:
            reset = _current_db.set(db)
            try:
                yield db
            finally:
                _current_db.reset(reset)

    # -- authlib hooks ---------------------------------------------------------

    def query_client(self, client_id: str) -> OAuthClient | None:
        row = clients.get(db=self.db, client_id=client_id)
        return None if row is None else OAuthClient(row)

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        now = self.clock()
        audit.record(
            db=self.db,
            event="token.issued",
            now=now,
            username=request.user.username if request.user is not None else None,
            client_id=request.client.client_id,
            ip=getattr(request, "ip", None),
            request_id=getattr(request, "request_id", None),
            scope=token.get("scope", ""),
            with_refresh_token="refresh_token" in token,
        )
        code = request.authorization_code
        refresh = token.get("refresh_token")
        self.db.add(
            Token(
                access_token_hash=tokens.digest(token["access_token"]),
                refresh_token_hash=tokens.digest(refresh) if refresh else None,
                client_pk=request.client.pk,
                user_id=request.user.id if request.user is not None else None,
                code_id=code.id if code is not None else None,
                scope=token.get("scope", ""),
                issued_at=now,
                expires_at=now + self.settings.access_token_ttl,
            )
        )

    def create_oauth2_request(self, request: OAuth2Request) -> OAuth2Request:
        return request

    def create_json_request(self, request: Any) -> Any:
        raise NotImplementedError("Baton has no JSON OAuth endpoints yet")

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
            try:
                grant = _guard(lambda: self.get_consent_grant(request, end_user=None))
            except OAuth2Error as error:
                return _response(self.handle_error_response(request, error))
            user = sessions.current_user(
                db=db,
                secret=session_secret,
                now=now,
                idle_timeout=self.settings.session_idle_timeout,
            )
            params = request.payload.data
            resumed_flow = params.get("flow")
            if user is not None:
                if resumed_flow is not None and not flows.mark_resumed(
                    db=db,
                    public_id=resumed_flow,
                    user_id=user.id,
                    client_pk=request.client.pk,
                    now=now,
                ):
                    return OAuthResponse(400, ALREADY_COMPLETED)
                return _response(
                    self.create_authorization_response(request, grant_user=user, grant=grant)
                )
            kept = {name: params[name] for name in RESUMABLE_PARAMETERS if name in params}
            kept.pop("flow", None)
            flow = flows.create(
                db=db,
                client_pk=request.client.pk,
                request=kept | {"scope": request.scope},
                redir_to=resume_path(kept),
                now=now,
                ttl=self.settings.flow_ttl,
                binding_hash=tokens.digest(binding_secret),
                ip=ip,
                user_agent=user_agent,
            )
            # The resume URL names its flow, so that it can issue a code only once.
            flow.row.redir_to = resume_path(kept | {"flow": flow.row.public_id})
            audit.record(
                db=db,
                event="flow.created",
                now=now,
                client_id=request.client.client_id,
                ip=ip,
                request_id=request.request_id,
                flow=flow.row.public_id,
                scope=request.scope,
            )
            login_url = self.settings.login_url
            separator = "&" if "?" in login_url else "?"
            location = login_url + separator + urlencode({"redirection_token": flow.token})
            return OAuthResponse(302, "", [("Location", location)], flow_created=True)

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
            return abort.response


MAX_PARAMETER_LENGTH = 2048
_VSCHARS = re.compile(r"[\x20-\x7e]*")


def _refuse_parameters(request: OAuth2Request) -> str | None:
    """RFC 6749 §3.1: no parameter twice. Appendix A.5 / OpenID Connect: state
    and nonce are visible ASCII, which the client must get back exactly, so
    anything else (invalid UTF-8, control characters) is refused, not mangled.
    Values are bounded, since they are stored with the flow."""
    datalist = request.payload.datalist
    for name in RESUMABLE_PARAMETERS:
        values = datalist.get(name, [])
        if len(values) > 1:
            return f"Parameter '{name}' is repeated."
        if values and len(values[0]) > MAX_PARAMETER_LENGTH:
            return f"Parameter '{name}' is too long."
        if values and name in {"state", "nonce"} and not _VSCHARS.fullmatch(values[0]):
            return f"Parameter '{name}' must be visible ASCII characters."
    return None


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
