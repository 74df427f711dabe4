"""Engine, transactions and the declarative base shared by models and migrations."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, MetaData, create_engine, event, exc
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

# Alembic's recommended convention: every constraint gets a predictable name,
# so migrations can drop and alter them on both databases.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class PoolOptions:
    """The connection pool of a long-running process (the server).

    SQLite keeps ``size + max_overflow`` connections open (at least 5), never
    waits for one, and waits on the file lock (``timeout``) instead of a
    statement timeout.
    """

    size: int = 10
    max_overflow: int = 10
    timeout: timedelta = timedelta(seconds=10)
    statement_timeout: timedelta | None = timedelta(seconds=30)


def _postgres_pool(url: URL, pool: PoolOptions) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "pool_size": pool.size,
        "max_overflow": pool.max_overflow,
        "pool_timeout": pool.timeout.total_seconds(),
    }
    if pool.statement_timeout is not None:
        # A startup option: the server itself cancels any statement of these
        # sessions that runs longer. Kept beside the URL's own ``options``.
        milliseconds = max(1, round(pool.statement_timeout.total_seconds() * 1000))
        given = url.query.get("options")
        options = [given] if isinstance(given, str) else list(given or ())
        options.append(f"-c statement_timeout={milliseconds}")
        arguments["connect_args"] = {"options": " ".join(options)}
    return arguments


SQLITE_MIN_POOL = 5

# A pooled connection idle this long is pinged before it is handed out.
PING_AFTER_IDLE = timedelta(seconds=2)
_IDLE_SINCE = "baton_idle_since"


def _ping_when_idle(engine: Engine, idle: float) -> None:
    """SQLAlchemy's ``pool_pre_ping``, but only for connections that sat in
    the pool for ``idle`` seconds or more. A ping is a round trip: pinging
    at every checkout cost each unit of work ~0.2 ms of CPU and ~0.3 ms of
    wall time on PostgreSQL, and a connection that served a request a moment
    ago tells as much. A connection found dead invalidates the whole pool (as
    with ``pool_pre_ping``), and the pool hands out a new one."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is None or time.monotonic() - since < idle:
            return  # just connected, or just used
        dialect = engine.dialect
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as error:
            if dialect.is_disconnect(error, dbapi_connection, None):
                raise exc.InvalidatePoolError() from error
            raise


def create_db_engine(url: str, *, pool: PoolOptions | None = None, **kwargs: Any) -> Engine:
    """An engine for ``url``; ``pool`` tunes PostgreSQL's (None: SQLAlchemy's
    defaults and no statement timeout, as for migrations and one-shot commands)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        if pool is not None:
            kwargs = {**_postgres_pool(parsed, pool), **kwargs}
        engine = create_engine(url, **kwargs)
        _ping_when_idle(engine, PING_AFTER_IDLE.total_seconds())
        return engine

    if (database := sqlite_file(parsed)) is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
        if pool is not None:
            # A server keeps the connections its pool settings allow: past
            # SQLAlchemy's default of 5, each busy request opened a connection
            # (and ran the pragmas below) and closed it again, which cost more
            # than the request. Never fewer than 5, and never a wait for a
            # connection: more are opened (then closed) as needed.
            kwargs = {
                "pool_size": max(SQLITE_MIN_POOL, pool.size + pool.max_overflow),
                "max_overflow": -1,
                **kwargs,
            }
    engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock up front, so two concurrent writers
        # queue on busy_timeout instead of failing with "database is locked"
        # when a read lock cannot be upgraded. A unit of work that only reads
        # (introspection, JWKS, describing a flow) takes no lock: under WAL
        # it reads a snapshot while writers go on.
        if connection.get_execution_options().get(READ_ONLY):
            connection.exec_driver_sql("BEGIN DEFERRED")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


READ_ONLY = "baton_read_only"


def storable_text(value: str) -> bool:
    """False for text no row can hold: PostgreSQL's text has no NUL, so a
    lookup by such a value would fail there rather than find nothing."""
    return "\x00" not in value


def sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite database (None: in memory)."""
    return Path(url.database) if url.database and url.database != ":memory:" else None


class SqliteWriters:
    """SQLite has one writer at a time, and a writer that finds the lock taken
    polls for it, sleeping 1, 2, 5, 10 … up to 100 ms between tries: under
    load, most of a write's wait was sleep past the lock's release, and with
    several workers the lock sat free while they slept. Baton's writers queue
    here instead and wake as soon as it is free: the threads of a process on a
    lock, the processes on ``flock`` of a file beside the database
    (``<database>-writers``; released by the kernel if a process dies). Other
    writers (``baton`` commands) still meet SQLite's own lock, which remains
    what keeps writes apart; this only orders Baton's own. A writer waits for
    the file as long as its holder keeps it, with no timeout of its own: a
    process holds it only for one unit of work, whose statements SQLite
    bounds (30 s), and the kernel drops it with the process. Where the file
    cannot be opened (read-only directory, another user's), processes are
    left to SQLite's polling."""

    def __init__(self, database: Path | None) -> None:
        self._threads = threading.RLock()
        self._path = None if database is None else database.with_name(database.name + "-writers")
        self._fd: int | None = None
        self._depth = 0  # the owning thread's nested units of work

    def __enter__(self) -> None:
        self._threads.acquire()
        try:
            if self._depth == 0 and (fd := self._file()) is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise
        self._depth += 1

    def __exit__(self, *_: object) -> None:
        self._depth -= 1
        try:
            if self._depth == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def _file(self) -> int | None:
        if self._fd is None and self._path is not None:
            try:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError:
                self._path = None  # left to SQLite's polling
        return self._fd

    def close(self) -> None:
        with self._threads:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class WriteWhileReading(RuntimeError):
    """A unit of work opened with :meth:`Database.reading` tried to write."""


def _refuse_writes(
    _connection: Any, _cursor: Any, statement: str, _parameters: Any, _context: Any, _many: bool
) -> None:
    if statement.lstrip()[:6].upper() not in ("SELECT", "BEGIN "):
        raise WriteWhileReading(f"a reading unit of work may not run: {statement[:60]!r}")


def _reading_engine(engine: Engine) -> Engine:
    """The engine of :meth:`Database.reading`. On PostgreSQL it reads in
    autocommit: no BEGIN and no ROLLBACK, two round trips of the four an
    introspection took (each statement reads its own snapshot). On SQLite a
    deferred transaction, which takes no lock. On both, anything but a SELECT
    is refused before it reaches the database."""
    options: dict[str, Any] = {READ_ONLY: True}
    if engine.dialect.name != "sqlite":
        options["isolation_level"] = "AUTOCOMMIT"
    reading = engine.execution_options(**options)
    event.listen(reading, "before_cursor_execute", _refuse_writes)
    return reading


class Database:
    """The engine and a factory of units of work; one per process."""

    def __init__(self, url: str, *, pool: PoolOptions | None = None, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = create_db_engine(url, pool=pool, **engine_kwargs)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._writers: AbstractContextManager[object] = (
            SqliteWriters(sqlite_file(self.engine.url))
            if self.engine.dialect.name == "sqlite"
            else nullcontext()
        )
        self._reading = sessionmaker(_reading_engine(self.engine), expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: commits on success, rolls back on any exception."""
        with self._writers, self._sessions.begin() as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A unit of work that only reads: it takes no lock on SQLite and no
        transaction on PostgreSQL; a write raises :class:`WriteWhileReading`."""
        session = self._reading()
        try:
            yield session
        finally:
            # Rolls back what is open (SQLite's deferred transaction) and hands
            # the connection back; a rollback() before it cost ~20 µs for nothing.
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()
        if isinstance(self._writers, SqliteWriters):
            self._writers.close()
