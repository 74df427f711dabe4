"""Units of work: writers take SQLite's lock up front, readers never do."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, delete, event, func, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from starlette.testclient import TestClient

from app import db as db_module
from app import migrate
from app.db import Base, Database, PoolOptions, WriteWhileReading
from app.main import create_app
from app.models import User
from app.settings import Settings
from tests.conftest import BASE_URL, POSTGRES_ADMIN_URL, PostgresServer
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


def test_a_reader_refuses_to_write(database: Database) -> None:
    """On PostgreSQL a reader runs in autocommit: a write must never reach it."""
    create_user(database)
    with database.reading() as db:
        user = db.scalars(select(User)).one()
        user.disabled = True
        with pytest.raises(WriteWhileReading):
            db.flush()
    with database.reading() as db, pytest.raises(WriteWhileReading):
        db.execute(delete(User))
    with database.transaction() as db:
        assert db.scalars(select(User)).one().disabled is False


@pytest.mark.parametrize("failing", [False, True], ids=["ends", "raises"])
def test_a_reader_leaves_no_transaction_open(database: Database, failing: bool) -> None:
    """A reading unit hands its connection back with nothing open, whether it
    ends or raises: on SQLite a snapshot left open would keep the WAL from
    being checkpointed; on PostgreSQL a backend would sit idle in transaction."""
    create_user(database)
    with pytest.raises(RuntimeError) if failing else nullcontext(), database.reading() as db:
        assert db.scalar(select(func.count()).select_from(User)) == 1
        if failing:
            raise RuntimeError("the reader fails")

    assert database.engine.pool.checkedout() == 0
    if database.engine.dialect.name == "sqlite":
        path = db_module.sqlite_file(make_url(database.url))
        other = sqlite3.connect(str(path), isolation_level=None)
        try:
            busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            other.close()
        assert busy == 0
    else:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            states = admin.execute(
                "SELECT state FROM pg_stat_activity WHERE datname = %s",
                (make_url(database.url).database,),
            ).fetchall()
        assert ("idle in transaction",) not in states


def test_writers_are_not_refused(database: Database) -> None:
    """The refusal belongs to the reading engine only."""
    create_user(database)
    with database.reading() as db:
        assert db.scalar(select(func.count()).select_from(User)) == 1
    with database.transaction() as db:
        db.execute(update(User).values(disabled=True))
    with database.transaction() as db:
        assert db.scalars(select(User)).one().disabled is True


def _end_connections_to(url: str) -> int:
    """What a PostgreSQL restart does to a pool: the server ends its connections."""
    name = make_url(url).database
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchone()
    assert ended is not None
    return int(ended[0])


@pytest.mark.postgres
def test_an_idle_connection_ended_by_the_server_is_replaced(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = postgres.create_database()
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE", timedelta(0))  # every checkout is "idle"
    database = Database(url, pool=PoolOptions(size=1, max_overflow=0))
    try:
        with database.transaction() as db:
            assert db.scalar(text("SELECT 1")) == 1
        assert _end_connections_to(url) == 1
        with database.transaction() as db:  # pinged, found dead, replaced: no error
            assert db.scalar(text("SELECT 1")) == 1
    finally:
        database.dispose()


@pytest.mark.postgres
def test_a_recently_used_connection_is_not_pinged_and_the_pool_recovers(
    postgres: PostgresServer,
) -> None:
    """The trade-off of pinging idle connections only: a connection that served
    a moment before the server ended it fails once; the pool is then renewed."""
    url = postgres.create_database()
    database = Database(url, pool=PoolOptions(size=2, max_overflow=0))
    try:
        with database.transaction() as db:
            assert db.scalar(text("SELECT 1")) == 1
        assert _end_connections_to(url) == 1
        with pytest.raises(OperationalError), database.transaction() as db:
            db.scalar(text("SELECT 1"))
        with database.transaction() as db:
            assert db.scalar(text("SELECT 1")) == 1
    finally:
        database.dispose()


def test_sqlite_writers_of_one_process_queue_before_the_file_lock(tmp_path: Path) -> None:
    """SQLite's own wait for its write lock is a poll with growing sleeps; a
    writer of the same process waits on a lock of ours instead, so it never
    asks SQLite for the lock while another of ours holds it."""
    url = f"sqlite:///{tmp_path}/baton.db"
    Base.metadata.create_all(create_engine(url))
    database = Database(url)
    order: list[str] = []

    def note(suffix: str) -> Callable[..., None]:
        return lambda *_: order.append(threading.current_thread().name + suffix)

    # Taking a connection comes before asking SQLite for its lock (BEGIN IMMEDIATE).
    event.listen(database.engine, "checkout", note(""))
    event.listen(database.engine, "commit", note(" done"))
    first_inside, release = threading.Event(), threading.Event()

    def first() -> None:
        with database.transaction() as db:
            db.execute(delete(User))
            first_inside.set()
            release.wait(10)

    def second() -> None:
        with database.transaction() as db:
            db.execute(delete(User))

    one = threading.Thread(target=first, name="first")
    two = threading.Thread(target=second, name="second")
    one.start()
    try:
        assert first_inside.wait(10)
        two.start()
        time.sleep(0.2)  # the second writer is waiting by now
        assert order == ["first"], order
    finally:
        release.set()
        one.join()
        two.join()
        database.dispose()
    assert order == ["first", "first done", "second", "second done"]


def _write_until_released(url: str, inside: Any, release: Any) -> None:
    """In another process: hold a write unit of work until told to commit."""
    database = Database(url)
    try:
        with database.transaction() as db:
            db.execute(delete(User))
            inside.set()
            release.wait(20)
    finally:
        database.dispose()


def test_sqlite_writers_of_other_processes_queue_before_the_file_lock(tmp_path: Path) -> None:
    """Across processes (``baton serve --workers N``) too: while another
    process holds a write unit of work, a writer here waits on the lock file
    beside the database, not in SQLite's polling, and goes as soon as it is
    released. Without it the writer would take a connection and sleep in
    BEGIN IMMEDIATE, retrying up to every 100 ms."""
    url = f"sqlite:///{tmp_path}/baton.db"
    Base.metadata.create_all(create_engine(url))
    spawn = multiprocessing.get_context("spawn")
    inside, release = spawn.Event(), spawn.Event()
    other = spawn.Process(target=_write_until_released, args=(url, inside, release))
    database = Database(url)
    checked_out: list[float] = []
    event.listen(database.engine, "checkout", lambda *_: checked_out.append(time.monotonic()))
    committed = threading.Event()

    def write() -> None:
        with database.transaction() as db:
            db.execute(delete(User))
        committed.set()

    writer = threading.Thread(target=write)
    other.start()
    try:
        assert inside.wait(30)
        writer.start()
        time.sleep(0.3)  # the writer is waiting by now
        assert checked_out == []
        assert not committed.is_set()
        released = time.monotonic()
        release.set()
        assert committed.wait(10)
        assert len(checked_out) == 1
        assert checked_out[0] >= released
    finally:
        release.set()
        other.join(30)
        writer.join(10)
        database.dispose()
    assert other.exitcode == 0
    assert (tmp_path / "baton.db-writers").exists()


def test_sqlite_writers_without_a_lock_file_are_left_to_sqlite(tmp_path: Path) -> None:
    """A lock file that cannot be made (here: a directory in its place) is
    no error: the writers queue in SQLite's polling, as any other writer."""
    url = f"sqlite:///{tmp_path}/baton.db"
    Base.metadata.create_all(create_engine(url))
    (tmp_path / "baton.db-writers").mkdir()
    database = Database(url)
    try:
        with database.transaction() as db:
            db.execute(delete(User))
        with database.transaction() as db:
            assert db.scalar(select(func.count()).select_from(User)) == 0
    finally:
        database.dispose()


@pytest.mark.postgres
def test_a_request_on_a_lost_connection_is_told_to_retry(postgres: PostgresServer) -> None:
    """503 with Retry-After (an RFC 7807 problem, or RFC 6749's error on
    /oauth2/*), never a 500; the next request gets a new connection."""
    url = postgres.create_database()
    migrate.upgrade(url)
    settings = Settings(
        database_url=url,
        public_url=BASE_URL,
        hash_workers=1,
        hash_processes=False,
        db_pool_size=1,
        db_max_overflow=0,
    )
    lookup = "/api/v1/login/flow?redirection_token=" + "x" * 43
    introspect = {"token": "unknown", "client_id": "nobody", "client_secret": "nothing"}
    with TestClient(create_app(settings), base_url=BASE_URL) as client:
        assert client.get(lookup).json()["status"] == "unknown"
        _end_connections_to(url)
        lost = client.get(lookup)
        assert lost.status_code == 503, lost.text
        assert lost.headers["retry-after"] == "1"
        assert lost.headers["content-type"] == "application/problem+json"
        assert lost.json()["type"] == "unspecified"
        assert client.get(lookup).json()["status"] == "unknown"

        refused = client.post("/oauth2/introspect", data=introspect)
        assert refused.status_code in (400, 401), refused.text  # no such client
        _end_connections_to(url)
        lost = client.post("/oauth2/introspect", data=introspect)
        assert lost.status_code == 503, lost.text
        assert lost.json()["error"] == "temporarily_unavailable"
        assert lost.headers["retry-after"] == "1"
        assert client.post("/oauth2/introspect", data=introspect).json() == refused.json()
