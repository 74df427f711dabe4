"""The purge's housekeeping beyond flows: ended sessions go first (so that
deleting flows does not rewrite them), and every table is emptied in bounded
batches."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app import audit, sessions
from app.db import Database, utcnow
from app.models import AuditEvent, BrowserSession, Client, User
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
        recently_revoked = sessions.create(db=db, user_id=user_id, now=now - day, duration=9 * day)
        live = sessions.create(db=db, user_id=user_id, now=now - 3 * day, duration=9 * day)
        for revoked_at, session in (
            (now - 2 * day, revoked),
            (now - timedelta(hours=1), recently_revoked),
        ):
            db.execute(
                update(BrowserSession)
                .where(BrowserSession.id == session.row.id)
                .values(revoked_at=revoked_at)
            )
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


def test_the_scheduled_purge_rests_between_full_batches(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app import flows
    from app import purge as purge_module
    from tests.factories import create_client

    client = create_client(database)
    now = utcnow()
    with database.transaction() as db:
        client_pk = db.scalars(select(Client.id).where(Client.client_id == client.client_id)).one()
        for _ in range(5):
            flows.create(
                db=db,
                client_pk=client_pk,
                request={},
                redir_to="/oauth2/authorize?",
                now=now - timedelta(days=3),
                ttl=timedelta(minutes=10),
            )
    rests: list[float] = []
    monkeypatch.setattr(purge_module.time, "sleep", rests.append)

    deleted = purge(database, now=now, older_than=timedelta(days=1), batch_size=2, pause=1.0)

    assert deleted == 5
    assert len(rests) == 2  # after each full batch, not after the last, partial one
    assert all(rest >= 0 for rest in rests)
    assert purge_module.SCHEDULED_PAUSE > 0
