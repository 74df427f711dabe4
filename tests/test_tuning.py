"""Tuning that operators expect: the argon2id cost (and rehashing at login when it
changes), the PostgreSQL pool and statement timeout, and a graceful shutdown."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests
from argon2 import extract_parameters
from click.testing import CliRunner
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.testclient import TestClient

from app import passwords
from app.cli import main
from app.db import SQLITE_MIN_POOL, Database, PoolOptions, create_db_engine
from app.main import create_app
from app.models import AuditEvent, User
from app.passwords import Argon2Cost, HashingPool, hash_password
from app.settings import Settings
from tests.conftest import BASE_URL, Clock
from tests.factories import PASSWORD, create_user, create_user_with_hash
from tests.servers import BIN, free_port, stop, wait_until_serving

# Tests build Settings in code, so they may go below the floor that BATON_* refuses.
CURRENT = Argon2Cost(time_cost=2, memory_cost=2048, parallelism=2)
OLDER = {
    "time": Argon2Cost(time_cost=1, memory_cost=2048, parallelism=2),
    "memory": Argon2Cost(time_cost=2, memory_cost=1024, parallelism=2),
    "parallelism": Argon2Cost(time_cost=2, memory_cost=2048, parallelism=1),
}


def cost_of(stored: str) -> Argon2Cost:
    made = extract_parameters(stored)
    return Argon2Cost(made.time_cost, made.memory_cost, made.parallelism)


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        argon2_time_cost=CURRENT.time_cost,
        argon2_memory_cost=CURRENT.memory_cost,
        argon2_parallelism=CURRENT.parallelism,
    )


def login(client: TestClient, username: str, password: str) -> int:
    return client.post(
        "/api/v1/login", json={"username": username, "password": password}
    ).status_code


def stored_hash(database: Database, username: str) -> str:
    with database.transaction() as db:
        return db.scalars(select(User.password_hash).where(User.username == username)).one()


def upgrades_audited(database: Database) -> list[bool]:
    with database.transaction() as db:
        details = db.scalars(
            select(AuditEvent.detail)
            .where(AuditEvent.event == "login.succeeded")
            .order_by(AuditEvent.id)
        )
        return [detail["hash_upgraded"] for detail in details]


@pytest.fixture
def hashing_threads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Argon2Cost]]:
    """The thread and the cost of every hash made from now on."""
    made: list[tuple[str, Argon2Cost]] = []
    real = passwords.hash_password

    def spy(password: str, cost: Argon2Cost = passwords.DEFAULT_COST) -> str:
        made.append((threading.current_thread().name, cost))
        return real(password, cost)

    monkeypatch.setattr(passwords, "hash_password", spy)
    return made


# -- rehashing at login --------------------------------------------------------------


@pytest.mark.parametrize("changed", sorted(OLDER))
def test_a_login_rehashes_a_hash_of_another_cost(
    client: TestClient,
    database: Database,
    hashing_threads: list[tuple[str, Argon2Cost]],
    changed: str,
) -> None:
    create_user_with_hash(database, "alice", hash_password(PASSWORD, OLDER[changed]))
    hashing_threads.clear()
    assert login(client, "alice", PASSWORD) == 200
    upgraded = stored_hash(database, "alice")
    assert cost_of(upgraded) == CURRENT
    assert passwords.verify_password(upgraded, PASSWORD, CURRENT) == passwords.Verification(ok=True)
    # Made in the bounded hashing pool (threads "hash_N"), not on the event loop.
    assert len(hashing_threads) == 1
    thread, cost = hashing_threads[0]
    assert thread.startswith("hash_")
    assert thread != threading.main_thread().name
    assert cost == CURRENT
    assert upgrades_audited(database) == [True]
    # Once upgraded, the next login leaves it alone.
    assert login(client, "alice", PASSWORD) == 200
    assert stored_hash(database, "alice") == upgraded
    assert upgrades_audited(database) == [True, False]


def test_a_login_keeps_a_hash_of_the_current_cost(
    client: TestClient, database: Database, hashing_threads: list[tuple[str, Argon2Cost]]
) -> None:
    current = hash_password(PASSWORD, CURRENT)
    create_user_with_hash(database, "alice", current)
    hashing_threads.clear()
    assert login(client, "alice", PASSWORD) == 200
    assert stored_hash(database, "alice") == current
    assert hashing_threads == []
    assert upgrades_audited(database) == [False]


def test_a_refused_login_never_rehashes(
    client: TestClient, database: Database, hashing_threads: list[tuple[str, Argon2Cost]]
) -> None:
    older = hash_password(PASSWORD, OLDER["time"])
    create_user_with_hash(database, "alice", older)
    create_user_with_hash(database, "bob", older)
    with database.transaction() as db:
        db.scalars(select(User).where(User.username == "bob")).one().disabled = True
    hashing_threads.clear()
    assert login(client, "alice", "not " + PASSWORD) == 401
    assert login(client, "bob", PASSWORD) == 401  # the right password, but disabled
    assert stored_hash(database, "alice") == older
    assert stored_hash(database, "bob") == older
    assert hashing_threads == []
    assert login(client, "alice", PASSWORD) == 200  # the control: it would have been
    assert cost_of(stored_hash(database, "alice")) == CURRENT


def test_bcrypt_becomes_argon2id_of_the_current_cost(
    client: TestClient, database: Database
) -> None:
    legacy = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    create_user_with_hash(database, "carol", legacy)
    assert login(client, "carol", PASSWORD) == 200
    upgraded = stored_hash(database, "carol")
    assert upgraded.startswith("$argon2id$")
    assert cost_of(upgraded) == CURRENT


def test_unknown_users_are_checked_against_a_dummy_hash_of_the_current_cost(
    client: TestClient, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []
    real = passwords.verify_password

    def spy(stored: str, password: str, cost: Argon2Cost) -> passwords.Verification:
        checked.append(stored)
        return real(stored, password, cost)

    monkeypatch.setattr(passwords, "verify_password", spy)
    create_user_with_hash(database, "alice", hash_password(PASSWORD, CURRENT))
    assert login(client, "nobody", PASSWORD) == 401
    assert login(client, "alice", "wrong") == 401
    dummy, real_hash = checked
    assert dummy != real_hash
    # Same cost, so an unknown user costs what a wrong password costs.
    assert cost_of(dummy) == cost_of(real_hash) == CURRENT


def test_the_pool_s_dummy_hash_follows_its_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[str] = []
    real = passwords.verify_password

    def spy(stored: str, password: str, cost: Argon2Cost) -> passwords.Verification:
        checked.append(stored)
        return real(stored, password, cost)

    monkeypatch.setattr(passwords, "verify_password", spy)

    async def scenario(cost: Argon2Cost) -> None:
        pool = HashingPool(1, timedelta(seconds=5), cost)
        try:
            assert not (await pool.verify(None, PASSWORD)).ok
        finally:
            pool.shutdown()

    for cost in [CURRENT, *OLDER.values()]:
        asyncio.run(scenario(cost))
        assert cost_of(checked.pop()) == cost


# -- the admin command ---------------------------------------------------------------

MINIMUM_ENV = {
    "BATON_ARGON2_TIME_COST": "2",
    "BATON_ARGON2_MEMORY_COST": "19MiB",
    "BATON_ARGON2_PARALLELISM": "1",
}
MINIMUM = Argon2Cost(time_cost=2, memory_cost=19 * 1024, parallelism=1)


def baton(database_url: str, *args: str, stdin: str, env: dict[str, str]) -> str:
    result = CliRunner().invoke(main, ["--database-url", database_url, *args], stdin, env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_the_admin_command_hashes_with_the_configured_cost(
    database_url: str, database: Database
) -> None:
    [printed] = baton(database_url, "hash-password", stdin="pw\n", env=MINIMUM_ENV).splitlines()
    assert cost_of(printed) == MINIMUM
    assert passwords.verify_password(printed, "pw").ok

    baton(database_url, "users", "add", "alice", "--password-stdin", stdin="a\n", env=MINIMUM_ENV)
    assert cost_of(stored_hash(database, "alice")) == MINIMUM

    create_user(database, "bob")  # at the default cost
    assert cost_of(stored_hash(database, "bob")) == passwords.DEFAULT_COST
    baton(database_url, "users", "passwd", "bob", "--password-stdin", stdin="b\n", env=MINIMUM_ENV)
    assert cost_of(stored_hash(database, "bob")) == MINIMUM


def test_hash_password_can_time_itself() -> None:
    result = CliRunner().invoke(main, ["hash-password", "--timing"], "pw\n", env=MINIMUM_ENV)
    assert result.exit_code == 0, result.output
    [printed] = result.stdout.splitlines()
    assert cost_of(printed) == MINIMUM
    assert re.fullmatch(r"\d+ ms with t=2, m=19456 KiB, p=1\n", result.stderr)


def test_bootstrap_hashes_with_the_configured_cost(database_url: str, database: Database) -> None:
    baton(database_url, "bootstrap", "--username", "root", stdin="", env=MINIMUM_ENV)
    assert cost_of(stored_hash(database, "root")) == MINIMUM


def test_the_admin_command_refuses_a_cost_below_the_minimum() -> None:
    result = CliRunner().invoke(
        main, ["hash-password"], "pw\n", env={**MINIMUM_ENV, "BATON_ARGON2_MEMORY_COST": "16MiB"}
    )
    assert result.exit_code == 1
    assert "BATON_ARGON2_MEMORY_COST: 16384 KiB is below OWASP's minimum" in result.output
    assert "$argon2id$" not in result.output


# -- the database pool ---------------------------------------------------------------


def pool_options(**changes: Any) -> PoolOptions:
    values: dict[str, Any] = {
        "size": 2,
        "max_overflow": 1,
        "timeout": timedelta(milliseconds=300),
        "statement_timeout": timedelta(milliseconds=1500),
    }
    values.update(changes)
    return PoolOptions(**values)


@pytest.mark.postgres
def test_the_pool_settings_reach_the_server_s_postgres_engine(postgres_schema_url: str) -> None:
    settings = Settings(
        database_url=postgres_schema_url,
        public_url=BASE_URL,
        hash_workers=1,
        argon2_time_cost=CURRENT.time_cost,
        argon2_memory_cost=CURRENT.memory_cost,
        argon2_parallelism=CURRENT.parallelism,
        db_pool_size=3,
        db_max_overflow=4,
        db_pool_timeout=timedelta(seconds=7),
        db_statement_timeout=timedelta(seconds=12),
    )
    app = create_app(settings, clock=Clock())
    with TestClient(app, base_url=BASE_URL):
        engine = app.state.services.database.engine
        assert engine.pool.size() == 3
        assert engine.pool._max_overflow == 4
        assert engine.pool.timeout() == 7
        with engine.connect() as connection:
            assert connection.execute(text("SHOW statement_timeout")).scalar() == "12s"


def test_a_server_s_sqlite_engine_keeps_the_connections_it_opened(tmp_path: Path) -> None:
    """Connections past SQLAlchemy's default pool of 5 were closed on return,
    so a busy server opened (and set up) one per request."""
    database = Database(
        f"sqlite:///{tmp_path / 'pool.db'}", pool=pool_options(size=4, max_overflow=3)
    )
    try:
        held = [database.engine.connect() for _ in range(8)]  # one more than it keeps
        for connection in held:
            connection.close()
        assert database.engine.pool.checkedin() == 7
    finally:
        database.dispose()


@pytest.mark.postgres
def test_a_full_pool_waits_for_the_pool_timeout_then_fails(postgres_schema_url: str) -> None:
    database = Database(postgres_schema_url, pool=pool_options())
    try:
        held = [database.engine.connect() for _ in range(3)]  # size 2 + overflow 1
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            database.engine.connect()
        assert 0.25 < time.monotonic() - started < 5
        for connection in held:
            connection.close()
        database.engine.connect().close()  # a slot again
    finally:
        database.dispose()


@pytest.mark.postgres
def test_the_statement_timeout_is_enforced_by_postgres(postgres_schema_url: str) -> None:
    database = Database(postgres_schema_url, pool=pool_options())
    try:
        with database.transaction() as db:
            assert db.execute(text("SHOW statement_timeout")).scalar() == "1500ms"
            db.execute(text("SELECT pg_sleep(1)"))  # under the limit
        with (
            pytest.raises(OperationalError, match="statement timeout"),
            database.transaction() as db,
        ):
            db.execute(text("SELECT pg_sleep(3)"))
    finally:
        database.dispose()


@pytest.mark.postgres
def test_the_statement_timeout_can_be_off(postgres_schema_url: str) -> None:
    for database in (
        Database(postgres_schema_url, pool=pool_options(statement_timeout=None)),
        Database(postgres_schema_url),  # migrations, one-shot commands: no pool settings
    ):
        try:
            with database.engine.connect() as connection:
                assert connection.execute(text("SHOW statement_timeout")).scalar() == "0"
        finally:
            database.dispose()


@pytest.mark.postgres
def test_the_statement_timeout_keeps_the_url_s_own_options(postgres_schema_url: str) -> None:
    url = make_url(postgres_schema_url).update_query_dict(
        {"options": "-c search_path=baton,public"}
    )
    database = Database(url.render_as_string(hide_password=False), pool=pool_options())
    try:
        with database.engine.connect() as connection:
            assert connection.execute(text("SHOW statement_timeout")).scalar() == "1500ms"
            assert connection.execute(text("SHOW search_path")).scalar() == "baton,public"
    finally:
        database.dispose()


def test_sqlite_keeps_its_own_pool(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/baton.db"
    untuned = create_db_engine(url)
    tuned = Database(url, pool=pool_options(size=1, max_overflow=0))
    try:
        assert tuned.engine.pool.size() == untuned.pool.size() == SQLITE_MIN_POOL
        assert tuned.engine.pool.timeout() == untuned.pool.timeout() != 0.3
        held = [tuned.engine.connect() for _ in range(9)]  # never waits for a connection
        for connection in held:
            connection.close()
    finally:
        tuned.dispose()
        untuned.dispose()


# -- graceful shutdown ---------------------------------------------------------------

# A stored hash whose verification takes a few seconds (the settings' own cost
# stays cheap, so that the server starts at once and rehashes quickly).
SLOW = Argon2Cost(time_cost=100, memory_cost=64 * 1024, parallelism=4)


@pytest.fixture(scope="module")
def slow_hash() -> str:
    return hash_password(PASSWORD, SLOW)


@dataclass(frozen=True)
class Running:
    process: subprocess.Popen[bytes]
    url: str
    log: Path


@contextmanager
def baton_serve(database_url: str, workdir: Path, **env: str) -> Iterator[Running]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environ = {
        **os.environ,
        "BATON_DATABASE_URL": database_url,
        "BATON_PUBLIC_URL": url,
        "BATON_SECURE_COOKIES": "false",
        "BATON_HASH_WORKERS": "1",
        **MINIMUM_ENV,
        **env,
    }
    subprocess.run([str(BIN / "baton"), "db", "upgrade"], env=environ, check=True, timeout=60)
    log = workdir / f"baton-{port}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(BIN / "baton"), "serve", "--port", str(port)],
            env=environ,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_serving(url, process, log)
        yield Running(process, url, log)
    finally:
        stop(process)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, all its threads, and of the
    processes it started (its hashing processes), as long as they live (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = [
            int(child)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(child) for child in children)


@dataclass(frozen=True)
class Outcome:
    status: int | None
    error: Exception | None
    at: float


def log_in_while_stopping(server: Running) -> tuple[Outcome, float]:
    """Start a login, SIGTERM the server while its password is being hashed;
    return how the login ended and when the signal was sent."""

    def attempt() -> Outcome:
        try:
            response = requests.post(
                server.url + "/api/v1/login",
                json={"username": "alice", "password": PASSWORD},
                timeout=60,
            )
        except requests.RequestException as error:
            return Outcome(None, error, time.monotonic())
        return Outcome(response.status_code, None, time.monotonic())

    idle = cpu_seconds(server.process.pid)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(attempt)
        # In flight: the server is burning CPU on the slow hash (and idles otherwise).
        deadline = time.monotonic() + 20
        while cpu_seconds(server.process.pid) - idle < 0.2:
            assert not pending.done(), "the login ended before the server was stopped"
            assert time.monotonic() < deadline, "the login never started hashing"
            time.sleep(0.01)
        signalled = time.monotonic()
        os.killpg(server.process.pid, signal.SIGTERM)
        return pending.result(timeout=60), signalled


@pytest.mark.slow
def test_a_login_in_flight_completes_when_the_server_is_stopped(
    empty_database_url: str, tmp_path: Path, slow_hash: str
) -> None:
    with baton_serve(empty_database_url, tmp_path, BATON_SHUTDOWN_GRACE="30s") as server:
        database = Database(empty_database_url)
        try:
            create_user_with_hash(database, "alice", slow_hash)
            outcome, signalled = log_in_while_stopping(server)
            assert outcome.error is None
            assert outcome.status == 200
            assert outcome.at > signalled  # answered after the signal, not before
            assert server.process.wait(timeout=30) == 0
            # ... and finished its work: the slow hash was replaced at the configured cost.
            assert cost_of(stored_hash(database, "alice")) == MINIMUM
        finally:
            database.dispose()
    log = server.log.read_text()
    assert "Waiting for connections to close" in log  # uvicorn saw it in flight
    assert "POST /api/v1/login 200" in log
    assert "timeout graceful shutdown exceeded" not in log


@pytest.mark.slow
def test_a_login_outlasting_the_shutdown_grace_is_cut_off(tmp_path: Path, slow_hash: str) -> None:
    """The control: BATON_SHUTDOWN_GRACE reaches uvicorn, so a grace shorter than
    the hash ends the request; the process still exits 0."""
    url = f"sqlite:///{tmp_path}/baton.db"
    with baton_serve(url, tmp_path, BATON_SHUTDOWN_GRACE="1s") as server:
        database = Database(url)
        try:
            create_user_with_hash(database, "alice", slow_hash)
            outcome, _ = log_in_while_stopping(server)
            assert outcome.status == 500  # uvicorn's answer for the request it cancels
            assert server.process.wait(timeout=30) == 0
            assert stored_hash(database, "alice") == slow_hash  # no session, no rehash
        finally:
            database.dispose()
    assert "timeout graceful shutdown exceeded" in server.log.read_text()
