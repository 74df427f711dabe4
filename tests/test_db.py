"""Units of work: writers take SQLite's lock up front, readers never do."""

from __future__ import annotations

import threading
import time

from sqlalchemy import func, select

from app.db import Database
from app.models import User
from tests.factories import create_user


def test_a_reader_is_not_blocked_by_a_writer_holding_the_lock(database: Database) -> None:
    create_user(database)
    writer_has_lock = threading.Event()
    release = threading.Event()

    def writer() -> None:
        with database.transaction() as db:
            db.scalar(select(func.count()).select_from(User))  # takes the write lock on SQLite
            writer_has_lock.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert writer_has_lock.wait(10)
        started = time.monotonic()
        with database.reading() as db:
            assert db.scalar(select(func.count()).select_from(User)) == 1
        assert time.monotonic() - started < 1.0
    finally:
        release.set()
        thread.join()


def test_what_a_reader_writes_is_never_committed(database: Database) -> None:
    create_user(database)
    with database.reading() as db:
        user = db.scalars(select(User)).one()
        user.disabled = True
        db.flush()
    with database.transaction() as db:
        assert db.scalars(select(User)).one().disabled is False
