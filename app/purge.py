"""Deleting finished flows in bounded batches, from the CLI or on a schedule."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, delete, or_, select

from app import flows
from app.db import Database
from app.models import AuditEvent, BrowserSession, LoginFailure

log = logging.getLogger("baton.purge")

BATCH_SIZE = 1000
# The scheduled purge rests as long as each batch took: at most half of one
# database connection's time, so a backlog of millions never crowds out logins.
SCHEDULED_PAUSE = 1.0


def purge(
    database: Database,
    *,
    now: datetime,
    older_than: timedelta,
    batch_size: int = BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
    pause: float = 0.0,
) -> int:
    """Delete flows that ended more than ``older_than`` before ``now``.

    Each batch is its own short transaction, so a purge of millions of rows
    never holds locks for long and runs safely beside a serving Baton. With
    ``pause``, it rests that fraction of each batch's duration before the
    next, leaving the database to the requests being served.
    """
    cutoff = now - max(older_than, timedelta(0))
    # Sessions that ended first: a purged flow would otherwise make the
    # foreign key rewrite each of its sessions (ON DELETE SET NULL), which
    # cost most of the purge's time at scale.
    delete_in_batches(
        database,
        BrowserSession,
        or_(BrowserSession.expires_at < cutoff, BrowserSession.revoked_at < cutoff),
        batch_size=batch_size,
    )
    total = 0
    while True:
        started = time.monotonic()
        with database.transaction() as db:
            deleted = flows.purge_batch(db=db, cutoff=cutoff, batch_size=batch_size)
        total += deleted
        if pause and deleted == batch_size:
            time.sleep((time.monotonic() - started) * pause)
        if on_batch is not None and deleted:
            on_batch(total)
        if deleted < batch_size:
            return total


async def purge_periodically(
    database: Database,
    clock: Callable[[], datetime],
    *,
    interval: timedelta,
    older_than: timedelta,
    forget_failures_after: timedelta | None = None,
    audit_retention: timedelta | None = None,
    on_purged: Callable[[int], None] | None = None,
) -> None:
    """The server's scheduled purge; runs until cancelled. ``on_purged`` hears
    how many flows each run deleted (the metrics)."""
    from anyio import to_thread  # the server has it loaded; the CLI need not pay for it

    while True:
        await asyncio.sleep(interval.total_seconds())
        try:
            deleted = await to_thread.run_sync(
                lambda: purge(database, now=clock(), older_than=older_than, pause=SCHEDULED_PAUSE)
            )
            if forget_failures_after is not None:
                await to_thread.run_sync(
                    lambda: _forget_failures(database, clock() - forget_failures_after)
                )
            if audit_retention is not None:
                await to_thread.run_sync(lambda: _forget_audit(database, clock() - audit_retention))
        except Exception:
            log.exception("scheduled purge failed; retrying at the next interval")
            continue
        if deleted:
            log.info("purged %d finished flows", deleted)
            if on_purged is not None:
                on_purged(deleted)


def delete_in_batches(
    database: Database,
    model: type[BrowserSession] | type[LoginFailure] | type[AuditEvent],
    condition: ColumnElement[bool],
    *,
    batch_size: int = BATCH_SIZE,
) -> int:
    """Delete the rows matching ``condition``, ``batch_size`` at a time, each
    batch its own transaction: never one statement that could run into the
    statement timeout or hold locks for long. On PostgreSQL two instances
    take different rows (``SKIP LOCKED``)."""
    total = 0
    while True:
        with database.transaction() as db:
            candidates = select(model.id).where(condition).order_by(model.id).limit(batch_size)
            if db.get_bind().dialect.name == "postgresql":
                candidates = candidates.with_for_update(skip_locked=True)
            result = db.execute(
                delete(model)
                .where(model.id.in_(candidates.scalar_subquery()), condition)
                .execution_options(synchronize_session=False)
            )
            deleted = int(getattr(result, "rowcount", 0) or 0)
        total += deleted
        if deleted < batch_size:
            return total


def _forget_failures(database: Database, cutoff: datetime) -> None:
    """Login failures older than the throttle window no longer count."""
    delete_in_batches(database, LoginFailure, LoginFailure.occurred_at < cutoff)


def _forget_audit(database: Database, cutoff: datetime) -> None:
    """Audit events past BATON_AUDIT_RETENTION."""
    delete_in_batches(database, AuditEvent, AuditEvent.occurred_at < cutoff)
