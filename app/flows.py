"""Pending flows: an authorization request paused at the login step.

The browser carries only an opaque redirection token; the request itself waits
in SQL. A flow is consumed at most once, by one conditional UPDATE, so any
number of processes racing on one token produce exactly one winner.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from app import tokens
from app.models import PendingFlow

KIND_LOGIN = "login"
MAX_TOKEN_LENGTH = 128


@dataclass(frozen=True, slots=True)
class NewFlow:
    token: str  # the only copy of the plaintext; it goes into the redirect URL
    row: PendingFlow


@dataclass(frozen=True, slots=True)
class ConsumedFlow:
    id: int
    public_id: str
    redir_to: str


def create(
    *,
    db: Session,
    client_pk: int,
    request: dict[str, Any],
    redir_to: str,
    now: datetime,
    ttl: timedelta,
    kind: str = KIND_LOGIN,
    binding_hash: str | None = None,
    ip: str | None = None,
    user_agent: str | None = None,
) -> NewFlow:
    token = tokens.new_secret()
    row = PendingFlow(
        public_id=tokens.new_public_id(),
        token_hash=tokens.digest(token),
        kind=kind,
        client_pk=client_pk,
        request=request,
        redir_to=redir_to,
        binding_hash=binding_hash,
        created_at=now,
        expires_at=now + ttl,
        requester_ip=ip,
        requester_agent=user_agent[:512] if user_agent else None,
    )
    db.add(row)
    db.flush()
    return NewFlow(token=token, row=row)


def consume(
    *, db: Session, token: str, user_id: int, now: datetime, kind: str = KIND_LOGIN
) -> ConsumedFlow | None:
    """Consume the flow behind ``token`` for ``user_id``, or return ``None`` when
    it is unknown, expired, revoked or already consumed.

    One statement decides: the row lock taken by the UPDATE makes concurrent
    callers wait, then re-check ``consumed_at IS NULL`` and find it set.
    """
    if len(token) > MAX_TOKEN_LENGTH:
        return None
    row = db.execute(
        update(PendingFlow)
        .where(
            PendingFlow.token_hash == tokens.digest(token),
            PendingFlow.kind == kind,
            PendingFlow.consumed_at.is_(None),
            PendingFlow.revoked_at.is_(None),
            PendingFlow.expires_at > now,
        )
        .values(consumed_at=now, consumed_by=user_id)
        .returning(PendingFlow.id, PendingFlow.public_id, PendingFlow.redir_to)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        return None
    return ConsumedFlow(id=row.id, public_id=row.public_id, redir_to=row.redir_to)
