"""``/api/v1/consent`` and ``/api/v1/users/me/oauth2/authorizations``.

The consent step rides on the pending-flow store exactly as the login step
does: the authorization endpoint parks the request as a flow of kind
``consent`` for the signed-in user and sends the browser to the consent page
with its redirection token; the page describes it and answers it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app import audit, authorizations, bindings, flows, problems, sessions
from app.api.common import NO_STORE, flow_document, redirection_token_parameter, services_of
from app.api.schemas import ConsentDecision, parse
from app.db import storable_text
from app.login import RETRY_GRACE
from app.models import PendingFlow, User
from app.services import Services


@dataclass(frozen=True, slots=True)
class _Caller:
    ip: str | None
    request_id: str | None
    session_secret: str | None
    binding_hash: str | None


def _caller(request: Request) -> _Caller:
    return _Caller(
        ip=request.client.host if request.client else None,
        request_id=request.scope.get("state", {}).get("request_id"),
        session_secret=request.cookies.get(sessions.COOKIE_NAME),
        binding_hash=bindings.hash_of(request.cookies.get(bindings.COOKIE_NAME)),
    )


def _signed_in(services: Services, db: Any, caller: _Caller) -> User:
    user = sessions.current_user(
        db=db,
        secret=caller.session_secret,
        now=services.clock(),
        idle_timeout=services.settings.session_idle_timeout,
    )
    if user is None:
        raise problems.unauthorised("Sign in to continue.")
    return user


async def describe(request: Request) -> Response:
    """What the consent page shows: who asks, for what, until when."""
    services = services_of(request)
    token = redirection_token_parameter(request)
    caller = _caller(request)

    def lookup() -> dict[str, Any]:
        now = services.clock()
        with services.database.transaction() as db:
            user = _signed_in(services, db, caller)
            view = flows.describe(
                db=db,
                token=token,
                binding_hash=caller.binding_hash,
                now=now,
                kind=flows.KIND_CONSENT,
                subject_id=user.id,
            )
        scopes = [
            {"name": scope, "description": authorizations.describe_scope(scope)}
            for scope in view.scopes
        ]
        document = flow_document(view, now, scopes) | {"username": user.username}
        return document

    return JSONResponse(await to_thread.run_sync(lookup), headers=NO_STORE)


async def decide(request: Request) -> Response:
    """Approve (all or some of the scopes) or deny, once. The answer is the
    path that resumes the authorization request: on approval it issues the
    code, on refusal the client gets ``access_denied``."""
    services = services_of(request)
    body = parse(ConsentDecision, await request.body())
    caller = _caller(request)

    def answer() -> str:
        now = services.clock()
        with services.database.transaction() as db:
            user = _signed_in(services, db, caller)
            view = flows.describe(
                db=db,
                token=body.redirection_token,
                binding_hash=caller.binding_hash,
                now=now,
                kind=flows.KIND_CONSENT,
                subject_id=user.id,
            )
            scope = _approved_scope(body, view.scopes) if view.status == "pending" else None
            decided = flows.decide(
                db=db,
                token=body.redirection_token,
                user_id=user.id,
                approve=body.approve,
                scope=scope,
                now=now,
                binding_hash=caller.binding_hash,
            )
            if decided is None:
                # A double click or a retry after a lost response: same answer.
                decided = flows.recently_consumed(
                    db=db,
                    token=body.redirection_token,
                    user_id=user.id,
                    binding_hash=caller.binding_hash,
                    now=now,
                    grace=RETRY_GRACE,
                )
                if decided is None:
                    raise problems.flow_not_found()
                return decided.redir_to
            flow = db.get(PendingFlow, decided.id)
            assert flow is not None
            if body.approve and scope is not None:
                authorizations.approve(
                    db=db,
                    user_id=user.id,
                    client_pk=flow.client_pk,
                    scope=scope,
                    requested=" ".join(view.scopes),
                    now=now,
                    lifetime=services.settings.grant_lifetime,
                )
            audit.record(
                db=db,
                event="consent.approved" if body.approve else "consent.denied",
                now=now,
                username=user.username,
                client_id=decided.client_id,
                ip=caller.ip,
                request_id=caller.request_id,
                flow=decided.public_id,
                scope=scope or "",
            )
            return decided.redir_to

    redir_to = await to_thread.run_sync(answer)
    services.metrics.flow_consumed()  # committed (a retry's answer counts again)
    return JSONResponse({"redir_to": redir_to}, headers=NO_STORE)


def _approved_scope(body: ConsentDecision, requested: tuple[str, ...]) -> str:
    """The scopes the user approved: all that were asked, or the subset they
    kept. ``openid`` only says who they are and always stays."""
    if body.scopes is None:
        return " ".join(requested)
    unknown = [scope for scope in body.scopes if scope not in requested]
    if unknown:
        raise problems.validation_error(
            "Only scopes the application asked for can be approved.",
            problems.InvalidField(
                name="scopes",
                error="invalid_value",
                title=f"'{unknown[0]}' was not requested.",
                pointer=f"/scopes/{body.scopes.index(unknown[0])}",
            ),
        )
    kept = [scope for scope in requested if scope in body.scopes or scope == "openid"]
    if body.approve and len(requested) > len(kept) and kept in ([], ["openid"]):
        raise problems.validation_error(
            "Approve at least one permission, or deny the request.",
            problems.InvalidField(
                name="scopes",
                error="invalid_value",
                title="No permission was approved.",
                pointer="/scopes",
            ),
        )
    return " ".join(kept)


async def list_authorizations(request: Request) -> Response:
    services = services_of(request)
    caller = _caller(request)

    def lookup() -> list[dict[str, Any]]:
        with services.database.transaction() as db:
            user = _signed_in(services, db, caller)
            return [
                {
                    "grant_id": grant.grant_id,
                    "grant_issued_at": grant.issued_at.isoformat(),
                    "grant_expires_at": grant.expires_at.isoformat(),
                    "app_client_id": grant.client_id,
                    "app_name": grant.client_name,
                    "scope": grant.scope,
                }
                for grant in authorizations.list_for_user(
                    db=db, user_id=user.id, now=services.clock()
                )
            ]

    return JSONResponse(await to_thread.run_sync(lookup), headers=NO_STORE)


async def revoke_authorization(request: Request) -> Response:
    """Revoke one of the current user's grants and every token issued under it."""
    services = services_of(request)
    caller = _caller(request)
    grant_id = request.path_params["grant_id"]

    def revoke() -> None:
        now = services.clock()
        with services.database.transaction() as db:
            user = _signed_in(services, db, caller)
            revoked = (
                len(grant_id) <= 32
                and storable_text(grant_id)
                and authorizations.revoke(db=db, now=now, grant_id=grant_id, user_id=user.id) > 0
            )
            if not revoked:
                raise problems.Problem(404, "not_found", "No such authorization.")
            audit.record(
                db=db,
                event="grant.revoked",
                now=now,
                username=user.username,
                ip=caller.ip,
                request_id=caller.request_id,
                grant=grant_id,
            )

    await to_thread.run_sync(revoke)
    return Response(status_code=204, headers=NO_STORE)
