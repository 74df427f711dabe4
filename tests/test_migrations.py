"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from click.testing import CliRunner, Result
from sqlalchemy import Engine, create_engine, inspect, text

from app import models  # noqa: F401  (registers the tables on Base.metadata)
from app.cli import main
from app.db import Base, Database, utcnow
from app.migrate import alembic_config, upgrade
from app.passwords import hash_password
from app.settings import normalise_database_url
from app.users import create, get_by_username

VERSION_TABLE = "alembic_version"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database with no tables at all, on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'baton.db'}"
    url: str = request.getfixturevalue("postgres").create_database()
    return url


@pytest.fixture
def engine(empty_url: str) -> Iterator[Engine]:
    engine = create_engine(normalise_database_url(empty_url))
    yield engine
    engine.dispose()


def head(url: str) -> str:
    revision = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert revision is not None, "the migrations have no single head"
    return revision


def schema_diff(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def versions(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars())


def assert_at_head(engine: Engine) -> None:
    assert tables(engine) == {*Base.metadata.tables, VERSION_TABLE}
    assert versions(engine) == [head(engine.url.render_as_string(hide_password=False))]
    diff = schema_diff(engine)
    assert diff == [], f"the migrations and the models differ:\n{diff}"


def test_the_models_have_tables() -> None:
    # Guards the tests below: an empty metadata would compare equal to anything.
    assert {"users", "clients", "tokens", "authorization_codes"} <= set(Base.metadata.tables)


def test_upgrade_of_an_empty_database_matches_the_models(empty_url: str, engine: Engine) -> None:
    assert tables(engine) == set()
    upgrade(empty_url)
    assert_at_head(engine)


def test_the_comparison_notices_a_missing_index(empty_url: str, engine: Engine) -> None:
    upgrade(empty_url)
    with engine.begin() as connection:
        connection.execute(text("DROP INDEX ix_tokens_user_id"))
    diff = schema_diff(engine)
    assert [(d[0], d[1].name) for d in diff] == [("add_index", "ix_tokens_user_id")], diff


def test_upgrade_twice_is_a_no_op(empty_url: str, engine: Engine) -> None:
    upgrade(empty_url)
    database = Database(empty_url)
    try:
        with database.transaction() as db:
            create(db=db, username="alice", password_hash=hash_password("pw"), now=utcnow())
        upgrade(empty_url)
        with database.transaction() as db:
            assert get_by_username(db=db, username="alice") is not None
    finally:
        database.dispose()
    assert_at_head(engine)


def test_downgrade_to_base_then_upgrade(empty_url: str, engine: Engine) -> None:
    upgrade(empty_url)
    command.downgrade(alembic_config(empty_url), "base")
    assert tables(engine) == {VERSION_TABLE}
    assert versions(engine) == []
    upgrade(empty_url)
    assert_at_head(engine)


def baton(url: str, *args: str, exit_code: int) -> Result:
    result = CliRunner().invoke(main, ["--database-url", url, *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        assert result.exc_info is not None
        crash = "".join(traceback.format_exception(*result.exc_info))
        pytest.fail(f"baton {' '.join(args)} crashed:\n{crash}")
    assert result.exit_code == exit_code, result.output
    if exit_code:
        assert len(result.stderr.strip().splitlines()) == 1, result.output
    return result


def test_cli_db_upgrade_of_an_empty_database(empty_url: str, engine: Engine) -> None:
    result = baton(empty_url, "db", "upgrade", exit_code=0)
    assert result.stdout.startswith("database ")
    assert result.stdout.endswith(f" is at revision {head(empty_url)}\n")
    assert_at_head(engine)


def test_cli_db_upgrade_creates_the_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "var" / "baton.db"
    result = baton(f"sqlite:///{path}", "db", "upgrade", exit_code=0)
    url = f"sqlite:///{path}"
    assert result.stdout == f"database {url} is at revision {head(url)}\n"
    engine = create_engine(f"sqlite:///{path}")
    try:
        assert_at_head(engine)
    finally:
        engine.dispose()


def test_cli_db_upgrade_to_an_unknown_revision(empty_url: str, engine: Engine) -> None:
    result = baton(empty_url, "db", "upgrade", "--revision", "nonsense", exit_code=1)
    assert "nonsense" in result.stderr
    assert tables(engine) <= {VERSION_TABLE}


def test_cli_db_upgrade_of_a_schema_alembic_did_not_create(empty_url: str, engine: Engine) -> None:
    # Tables made by create_all(), with no alembic_version: upgrade cannot proceed,
    # and must say so in one line on both databases rather than crash.
    Base.metadata.create_all(engine)
    result = baton(empty_url, "db", "upgrade", exit_code=1)
    assert result.stderr.startswith("Error: "), result.output
