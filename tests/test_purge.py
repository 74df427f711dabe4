"""The purge's housekeeping beyond flows: ended sessions go first (so that
deleting flows does not rewrite them), and every table is emptied in bounded
batches."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from app import audit, sessions
from app.db import Database, utcnow
from app.models import AuditEvent, BrowserSession, User
from app.purge import delete_in_batches, purge
from tests.factories import create_user


def _alice(database: Database) -> int:
    create_user(database)
    with database.transaction() as db:
        return db.scalars(select(User.id)).one()


def test_ended_sessions_are_purged_and_live_ones_kept(database: Database) -> None:
    user_id = _alice(database)
    now = utcnow()
    day = timedelta(days=1)
    with database.transaction() as db:
        expired = sessions.create(db=db, user_id=user_id, now=now - 3 * day, duration=day)
        revoked = sessions.create(db=db, user_id=user_id, now=now - 3 * day, duration=9 * day)
        revoked.row.revoked_at = now - 2 * day
        recently_revoked = sessions.create(db=db, user_id=user_id, now=now - day, duration=9 * day)
        recently_revoked.row.revoked_at = now - timedelta(hours=1)
        live = sessions.create(db=db, user_id=user_id, now=now - 3 * day, duration=9 * day)
        kept = {recently_revoked.row.id, live.row.id}
        gone = {expired.row.id, revoked.row.id}

    purge(database, now=now, older_than=day)

    with database.transaction() as db:
        remaining = set(db.scalars(select(BrowserSession.id)))
    assert kept <= remaining
    assert not gone & remaining


def test_batches_delete_everything_that_matches_and_nothing_else(database: Database) -> None:
    now = utcnow()
    with database.transaction() as db:
        for age in range(7):
            audit.record(db=db, event="test.old", now=now - timedelta(days=10 + age))
        audit.record(db=db, event="test.new", now=now)

    deleted = delete_in_batches(
        database, AuditEvent, AuditEvent.occurred_at < now - timedelta(days=1), batch_size=2
    )

    assert deleted == 7
    with database.transaction() as db:
        assert db.scalars(select(AuditEvent.event)).all() == ["test.new"]
        assert db.scalar(select(func.count()).select_from(AuditEvent)) == 1
