"""More than one process: two ``baton serve`` on one PostgreSQL database racing
for one redirection token, and ``baton serve --workers 2``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from select import select as wait_until_ready
from threading import Barrier

import pytest
import requests
from sqlalchemy import delete, func, select

from app import pages
from app.db import Database, utcnow
from app.main import ensure_demo_client
from app.migrate import upgrade
from app.models import AuditEvent, BrowserSession, Client, PendingFlow, User
from app.passwords import hash_password
from app.settings import Settings
from tests.conftest import PostgresServer
from tests.factories import (
    authorize_params,
    create_client,
    create_user_with_hash,
    pkce,
    query_of,
)
from tests.servers import BIN, Server, free_port, serving, stop, wait_until_serving

PASSWORD = "multiprocess password, long enough"
RACERS = 50

pytestmark = pytest.mark.slow


@pytest.fixture
def shared_postgres_url(postgres: PostgresServer) -> str:
    """An empty PostgreSQL database; the servers' ``baton db upgrade`` creates the schema."""
    return postgres.create_database()


@pytest.fixture
def two_servers(shared_postgres_url: str, tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    """Two replicas behind one public URL, as behind a load balancer."""
    public_port = free_port()
    env = {
        "BATON_PUBLIC_URL": f"http://127.0.0.1:{public_port}",
        # Fifty argon2 checks on two shared cores: wait for a hashing slot or a
        # database connection rather than answer 503 or 500.
        "BATON_HASH_WAIT": "2m",
        "BATON_DB_POOL_TIMEOUT": "2m",
    }
    with (
        serving(shared_postgres_url, tmp_path, env, port=public_port) as first,
        serving(shared_postgres_url, tmp_path, env) as second,
    ):
        yield first, second


@pytest.mark.postgres
def test_fifty_logins_on_two_servers_consume_one_flow_once(
    two_servers: tuple[Server, Server], shared_postgres_url: str
) -> None:
    first, second = two_servers
    database = Database(shared_postgres_url)
    try:
        client = create_client(database)
        # Every racer is another user: the same user's retry grace (one browser,
        # one user, one flow: the same redir_to again) cannot blur the race.
        password_hash = hash_password(PASSWORD)
        for n in range(RACERS):
            create_user_with_hash(database, f"racer{n}", password_hash)
    finally:
        database.dispose()

    paused = requests.get(
        first.url + "/oauth2/authorize",
        params=authorize_params(client, pkce()),
        allow_redirects=False,
        timeout=10,
    )
    assert paused.status_code == 302, paused.text
    token = query_of(paused.headers["location"])["redirection_token"]
    binding = paused.cookies["baton_binding"]

    start = Barrier(RACERS)

    def attempt(n: int) -> tuple[str, requests.Response]:
        server = (first, second)[n % 2]
        with requests.Session() as browser:  # its own cookie jar, the flow's binding
            browser.cookies.set("baton_binding", binding)
            start.wait()
            response = browser.post(
                server.url + "/api/v1/login",
                json={"username": f"racer{n}", "password": PASSWORD, "redirection_token": token},
                timeout=120,
            )
            return server.url, response

    with ThreadPoolExecutor(max_workers=RACERS) as pool:
        answers = list(pool.map(attempt, range(RACERS)))

    statuses = [response.status_code for _, response in answers]
    winners = [n for n, (_, response) in enumerate(answers) if response.status_code == 200]
    assert len(winners) == 1, statuses
    won = answers[winners[0]][1]
    assert won.json()["redir_to"].startswith("/oauth2/authorize?")
    assert "session_id" in won.cookies
    refused_by = {first.url: 0, second.url: 0}
    for url, response in answers:
        if response.status_code == 200:
            continue
        assert response.status_code == 400, response.text
        problem = response.json()
        assert problem["type"] == "validation_error"
        assert [(f["name"], f["error"]) for f in problem["invalid_fields"]] == [
            ("redirection_token", "reference_not_found")
        ]
        assert "set-cookie" not in response.headers
        refused_by[url] += 1
    # Both processes took part: each refused its share of the losers.
    assert sorted(refused_by.values()) == [RACERS // 2 - 1, RACERS // 2]

    database = Database(shared_postgres_url)
    try:
        with database.transaction() as db:
            flow = db.scalars(select(PendingFlow)).one()
            winner = db.scalars(select(User).where(User.username == f"racer{winners[0]}")).one()
            sessions = db.scalars(select(BrowserSession)).all()
            succeeded = db.scalars(
                select(AuditEvent).where(AuditEvent.event == "login.succeeded")
            ).all()
            failed = db.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.event == "login.failed")
            )
    finally:
        database.dispose()
    assert flow.consumed_at is not None
    assert flow.consumed_by == winner.id
    assert [(s.flow_id, s.user_id) for s in sessions] == [(flow.id, winner.id)]
    assert len(succeeded) == 1
    assert failed == 0  # every racer's password was right: the token alone decided


# -- baton serve --workers ------------------------------------------------------------


def _children(pid: int) -> dict[int, str]:
    """The child processes of ``pid`` and their command lines (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # it ended while we looked
            continue
        # The command name, in parentheses, may hold spaces: fields follow the last ")".
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid:
            found[int(entry.name)] = cmdline
    return found


def _workers(pid: int) -> set[int]:
    """uvicorn's workers: processes spawned by multiprocessing (not its resource tracker)."""
    return {child for child, cmdline in _children(pid).items() if "spawn_main" in cmdline}


def _wait_for(condition: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting until {condition}")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/baton.db"
    postgres: PostgresServer = request.getfixturevalue("postgres")
    return postgres.create_database()


def test_serve_with_two_workers_serves_survives_a_dead_worker_and_stops_on_sigterm(
    fresh_database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    env = {
        **os.environ,
        "BATON_PUBLIC_URL": url,
        "BATON_SECURE_COOKIES": "false",
        # Every worker registers the demo client as it starts, at the same moment.
        "BATON_DEMO": "true",
        # As docker-compose.yml runs it: the workers' metrics in one directory.
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
    }
    env.pop("BATON_DATABASE_URL", None)
    baton = str(BIN / "baton")
    # --database-url, not the environment: the workers must get it all the same.
    database = ["--database-url", fresh_database_url]
    subprocess.run([baton, *database, "db", "upgrade"], env=env, check=True, timeout=60)
    log = tmp_path / "workers.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [baton, *database, "serve", "--port", str(port), "--workers", "2"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_serving(url, process, log)
        _wait_for("two workers run", lambda: len(_workers(process.pid)) == 2)
        _wait_for("both have started", lambda: _started(log) == 2)
        workers = _workers(process.pid)
        for _ in range(20):
            assert requests.get(url + "/demo/config.json", timeout=5).status_code == 200

        # One worker dies: the other keeps serving, and uvicorn replaces it.
        started = _started(log)
        dead = min(workers)
        os.kill(dead, signal.SIGKILL)
        for _ in range(20):
            assert requests.get(url + "/api/v1/openapi.json", timeout=5).status_code == 200
        _wait_for(
            "the dead worker is replaced",
            lambda: len(_workers(process.pid) - {dead}) == 2 and _started(log) == started + 1,
        )

        # What `docker stop` does: SIGTERM to the parent alone.
        alive = _workers(process.pid)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=40) == 0, log.read_text()
        _wait_for("every worker has exited", lambda: not any(_running(p) for p in alive))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    text = log.read_text()
    # Baton's own request log comes from the workers too (logging set up in each).
    assert text.count("GET /demo/config.json 200") == 20, text
    assert "Traceback" not in text, text
    assert "Application startup failed" not in text, text


def _started(log: Path) -> int:
    """Workers that have started (each listens on its own socket from then on)."""
    return log.read_text().count("Application startup complete.")


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("workers", ["0", "-1", "two"])
def test_serve_refuses_a_worker_count_below_one(workers: str) -> None:
    result = subprocess.run(
        [str(BIN / "baton"), "serve", "--workers", workers],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Invalid value for '--workers'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.postgres
def test_workers_starting_together_register_the_demo_client_once(
    shared_postgres_url: str,
) -> None:
    """Each worker (and replica) registers the demo client in its start-up; the
    ones that lose the insert must start all the same, or uvicorn stops them all."""
    upgrade(shared_postgres_url)
    settings = Settings(database_url=shared_postgres_url, public_url="https://auth.example.com")
    workers = 4

    def start_worker(start: Barrier) -> None:
        database = Database(shared_postgres_url)
        try:
            start.wait()
            ensure_demo_client(database, settings, utcnow())
        finally:
            database.dispose()

    for _ in range(5):
        start = Barrier(workers)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(start_worker, start) for _ in range(workers)]:
                future.result()  # raises what the worker raised

        database = Database(shared_postgres_url)
        try:
            with database.transaction() as db:
                demo = db.scalars(select(Client)).all()
                assert [(c.client_id, c.redirect_uris) for c in demo] == [
                    (pages.DEMO_CLIENT_ID, [pages.demo_redirect_uri(settings.public_url)])
                ]
                db.execute(delete(Client))
        finally:
            database.dispose()


def test_serve_with_workers_names_a_bad_setting_before_starting_any() -> None:
    env = {**os.environ, "BATON_PUBLIC_URL": "ftp://auth.example.com"}
    result = subprocess.run(
        [str(BIN / "baton"), "serve", "--port", str(free_port()), "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("Error: BATON_PUBLIC_URL: "), result.stderr
    assert "Traceback" not in result.stderr
    assert "Started parent process" not in result.stderr


# -- one listening socket per worker --------------------------------------------------


@contextmanager
def _serving_with_workers(
    tmp_path: Path, workers: int, *, reuse_port: bool
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    port = free_port()
    env = {
        **os.environ,
        "BATON_DATABASE_URL": f"sqlite:///{tmp_path}/baton.db",
        "BATON_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "BATON_SECURE_COOKIES": "false",
        "BATON_REUSE_PORT": str(reuse_port).lower(),
    }
    baton = str(BIN / "baton")
    subprocess.run([baton, "db", "upgrade"], env=env, check=True, timeout=60)
    log = tmp_path / f"serve-{port}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [baton, "serve", "--port", str(port), "--workers", str(workers)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}", process, log)
        _wait_for(f"{workers} workers have started", lambda: _started(log) == workers)
        yield process, port, log
    finally:
        stop(process)


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _listening_inodes(port: int) -> set[int]:
    """Sockets listening on ``port`` (Linux ``/proc/net/tcp``)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
            found.add(int(fields[9]))
    return found


def _server_side_inodes(port: int) -> dict[int, int]:
    """Established connections to ``port`` on loopback: the client's port -> the
    inode of the server's end (Linux ``/proc/net/tcp``)."""
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
        if state == "01" and int(local.split(":")[1], 16) == port:
            found[int(remote.split(":")[1], 16)] = inode
    return found


def _connect_at_once(port: int, count: int) -> list[socket.socket]:
    """``count`` connections whose handshakes all start before any completes."""
    connections = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    for connection in connections:
        connection.setblocking(False)
        connection.connect_ex(("127.0.0.1", port))
    for connection in connections:
        assert wait_until_ready([], [connection], [], 5)[1], "no connection in 5 s"
        connection.setblocking(True)
    return connections


def _rounds_on_one_worker(port: int, workers: set[int], rounds: int = 5) -> int:
    """Rounds of 8 connections opened at once that all went to one worker."""
    on_one = 0
    for _ in range(rounds):
        connections = _connect_at_once(port, 8)
        try:
            for connection in connections:
                connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: baton\r\n\r\n")
            for connection in connections:
                assert connection.recv(4096).startswith(b"HTTP/1.1 200")
            server_ends = _server_side_inodes(port)
            inodes = {worker: _socket_inodes(worker) for worker in workers}
            owners = {
                next(w for w, held in inodes.items() if server_ends[c.getsockname()[1]] in held)
                for c in connections
            }
        finally:
            for connection in connections:
                connection.close()
        on_one += len(owners) == 1
    return on_one


def test_with_reuse_port_connections_that_arrive_together_spread_over_the_workers(
    tmp_path: Path,
) -> None:
    """uvicorn's one shared socket gives every connection opened at once to the
    worker that wakes first (all 8 on one worker in nearly every round; the
    last test checks that this is what happens without the setting). With
    BATON_REUSE_PORT each worker has a socket and the kernel spreads them:
    all 8 on one worker 1 time in 128. A worker that replaces a dead one
    gets its share too."""
    with _serving_with_workers(tmp_path, workers=2, reuse_port=True) as (process, port, log):
        _assert_a_listening_socket_each(process.pid, port)
        assert _rounds_on_one_worker(port, _workers(process.pid)) <= 1

        dead = min(_workers(process.pid))
        os.kill(dead, signal.SIGKILL)
        _wait_for(
            "the dead worker is replaced and has started",
            lambda: len(_workers(process.pid) - {dead}) == 2 and _started(log) == 3,
        )
        _assert_a_listening_socket_each(process.pid, port)
        assert _rounds_on_one_worker(port, _workers(process.pid)) <= 1


def _assert_a_listening_socket_each(parent: int, port: int) -> None:
    """Each worker listens on a socket of its own; the parent's (which holds
    the port) does not listen, or connections would wait there forever."""
    listening = _listening_inodes(port)
    held = {worker: _socket_inodes(worker) & listening for worker in _workers(parent)}
    assert all(len(inodes) == 1 for inodes in held.values()), held
    assert len(set().union(*held.values())) == len(held) == len(listening)
    assert not _socket_inodes(parent) & listening


@pytest.mark.parametrize(("first", "second"), [(2, 2), (2, 1), (1, 2)])
def test_with_reuse_port_a_second_server_on_a_port_in_use_is_refused(
    tmp_path: Path, first: int, second: int
) -> None:
    """The workers' sockets share the port with one another, never with a
    server started on it by mistake; and that one does not take it over."""
    with _serving_with_workers(tmp_path, workers=first, reuse_port=True) as (process, port, _log):
        result = subprocess.run(
            [str(BIN / "baton"), "serve", "--port", str(port), "--workers", str(second)],
            env={
                **os.environ,
                "BATON_DATABASE_URL": f"sqlite:///{tmp_path}/baton.db",
                "BATON_REUSE_PORT": "true",
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode != 0
        assert "address already in use" in (result.stdout + result.stderr).lower(), result
        assert "Traceback" not in result.stderr
        for _ in range(20):  # none of them lands in the refused server
            assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        assert process.poll() is None
