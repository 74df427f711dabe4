"""The audit log: one row per security-relevant event, also written to the
``baton.audit`` log stream. Callers pass names and ids, never secrets."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from app.models import AuditEvent

log = logging.getLogger("baton.audit")

# Keys that must never reach the log, whatever a caller passes.
_FORBIDDEN = frozenset(
    {"password", "token", "redirection_token", "code", "access_token", "refresh_token", "secret"}
)


# A Core INSERT into the table, built once: an audit row is never read back in
# the unit of work that writes it, so it need not pass through the ORM's flush.
_INSERT = insert(AuditEvent.metadata.tables[AuditEvent.__tablename__])


def record(
    *,
    db: Session,
    event: str,
    now: datetime,
    actor: str = "http",
    username: str | None = None,
    client_id: str | None = None,
    ip: str | None = None,
    request_id: str | None = None,
    **detail: Any,
) -> None:
    leaked = _FORBIDDEN & detail.keys()
    if leaked:
        raise ValueError(f"secrets must not be audited: {sorted(leaked)}")
    db.execute(
        _INSERT,
        {
            "occurred_at": now,
            "event": event,
            "actor": actor,
            # PostgreSQL text cannot hold NUL; what was typed is shown, not stored raw.
            "username": username[:255].replace("\x00", "\ufffd") if username else None,
            "client_id": client_id,
            "ip": ip,
            "request_id": request_id,
            "detail": detail,
        },
    )
    log.info(
        json.dumps(
            {
                "event": event,
                "at": now.isoformat(),
                "actor": actor,
                "username": username,
                "client_id": client_id,
                "ip": ip,
                "request_id": request_id,
                **detail,
            },
            default=str,
        )
    )


def recent(
    *,
    db: Session,
    limit: int = 50,
    event: str | None = None,
    username: str | None = None,
    since: datetime | None = None,
) -> list[AuditEvent]:
    query = select(AuditEvent).order_by(AuditEvent.occurred_at.desc(), AuditEvent.id.desc())
    if event is not None:
        query = query.where(AuditEvent.event.startswith(event, autoescape=True))
    if username is not None:
        query = query.where(AuditEvent.username == username)
    if since is not None:
        query = query.where(AuditEvent.occurred_at >= since)
    return list(db.scalars(query.limit(limit)))
