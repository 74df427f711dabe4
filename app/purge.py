"""Deleting finished flows in bounded batches, from the CLI or on a schedule."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from app import audit, flows, throttle
from app.db import Database

log = logging.getLogger("baton.purge")

BATCH_SIZE = 1000


def purge(
    database: Database,
    *,
    now: datetime,
    older_than: timedelta,
    batch_size: int = BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Delete flows that ended more than ``older_than`` before ``now``.

    Each batch is its own short transaction, so a purge of millions of rows
    never holds locks for long and runs safely beside a serving Baton.
    """
    cutoff = now - max(older_than, timedelta(0))
    total = 0
    while True:
        with database.transaction() as db:
            deleted = flows.purge_batch(db=db, cutoff=cutoff, batch_size=batch_size)
        total += deleted
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
                lambda: purge(database, now=clock(), older_than=older_than)
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


def _forget_failures(database: Database, cutoff: datetime) -> None:
    """Login failures older than the throttle window no longer count."""
    with database.transaction() as db:
        throttle.forget_before(db=db, cutoff=cutoff)


def _forget_audit(database: Database, cutoff: datetime) -> None:
    """Audit events past BATON_AUDIT_RETENTION."""
    with database.transaction() as db:
        audit.forget_before(db=db, cutoff=cutoff)
