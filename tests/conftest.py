"""Fixtures: a fresh database per test on SQLite and on PostgreSQL.

PostgreSQL is found at ``BATON_TEST_POSTGRES_URL`` (default: the local server,
``postgresql://postgres@127.0.0.1:5432/postgres``). Each test run creates its
own database there and drops it at the end, so runs never collide. When it is
unreachable the PostgreSQL tests skip, unless ``BATON_TEST_POSTGRES=required``
(as in CI), where they fail.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from starlette.testclient import TestClient

from app import models  # noqa: F401
from app.db import Base, Database
from app.main import create_app
from app.settings import Settings, normalise_database_url

POSTGRES_ADMIN_URL = os.environ.get(
    "BATON_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
POSTGRES_REQUIRED = os.environ.get("BATON_TEST_POSTGRES", "").lower() == "required"
BASE_URL = "https://baton.test"


class Clock:
    """A controllable clock for tests that need time to pass."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


class PostgresServer:
    """Creates throw-away databases on the test PostgreSQL server."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    def create_database(self) -> str:
        name = f"baton_test_{os.getpid()}_{secrets.token_hex(4)}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        url = make_url(normalise_database_url(self.admin_url)).set(database=name)
        return url.render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3):
            pass
    except psycopg.Error as error:
        message = f"PostgreSQL at {POSTGRES_ADMIN_URL} is unreachable: {error}"
        if POSTGRES_REQUIRED:
            pytest.fail(message + " (BATON_TEST_POSTGRES=required)")
        pytest.skip(message + " (set BATON_TEST_POSTGRES=required to make this fail)")
    server = PostgresServer(POSTGRES_ADMIN_URL)
    yield server
    server.drop_all()


@pytest.fixture(scope="session")
def postgres_schema_url(postgres: PostgresServer) -> str:
    """One database for the run, with the schema; tests truncate it."""
    url = postgres.create_database()
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database with the schema and no rows, on each backend."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("db") / "baton.db"
        url = f"sqlite:///{path}"
        engine = create_engine(url)
        Base.metadata.create_all(engine)
        engine.dispose()
        return url
    url: str = request.getfixturevalue("postgres_schema_url")
    engine = create_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database without any table (as PostgreSQL's image creates it), on
    each backend: ``baton db upgrade`` or ``baton serve`` creates the schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/baton.db"
    postgres: PostgresServer = request.getfixturevalue("postgres")
    return postgres.create_database()


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    yield db
    db.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_settings(database_url: str) -> Callable[..., Settings]:
    def build(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "database_url": database_url,
            "public_url": BASE_URL,
            "hash_workers": 2,
            # Threads: tests swap cheap hashers in this process. The server's
            # default, processes, is what the real-server tests run.
            "hash_processes": False,
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return build


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def client(settings: Settings, clock: Clock) -> Iterator[TestClient]:
    """An in-process HTTP client (a browser with a cookie jar) against Baton."""
    with TestClient(create_app(settings, clock=clock), base_url=BASE_URL) as test_client:
        yield test_client
