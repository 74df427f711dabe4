"""Probes (/healthz, /readyz), Prometheus metrics (/metrics) and JSON logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx2
import pytest
import requests
import sqlalchemy
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from app import migrate, passwords
from app.db import Database
from app.health import Readiness
from app.logs import JsonFormatter
from app.main import create_app
from app.metrics import LOGIN_OUTCOMES, UNMATCHED, Metrics
from app.passwords import HashingOverloaded, HashingPool
from app.settings import Settings
from tests.conftest import BASE_URL, Clock, PostgresServer
from tests.factories import (
    PASSWORD,
    ClientInfo,
    authorize_params,
    create_client,
    create_user,
    pkce,
    query_of,
)
from tests.servers import Server, free_port, serving

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["cache-control"] == "no-store"
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for sample, labels in samples if sample == name}


def settings_for(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"database_url": database_url, "public_url": BASE_URL}
    values["hash_workers"] = 1
    values.update(overrides)
    return Settings(**values)


def closed_port_url() -> str:
    """A PostgreSQL URL where nothing listens: connections are refused at once."""
    return f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/baton"


# -- /healthz -------------------------------------------------------------------


def test_healthz_answers_without_touching_the_database() -> None:
    # The database does not exist at all: the process is still alive.
    with TestClient(create_app(settings_for(closed_port_url())), base_url=BASE_URL) as client:
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["cache-control"] == "no-store"


# -- /readyz --------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def migrated_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database brought to head by the migrations, as `baton db upgrade` does."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/baton.db"
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        url = postgres.create_database()
    migrate.upgrade(url)
    return url


def readyz(settings: Settings) -> httpx2.Response:
    with TestClient(create_app(settings), base_url=BASE_URL) as client:
        return client.get("/readyz")


def test_readyz_is_ok_on_a_database_at_head(migrated_url: str) -> None:
    response = readyz(settings_for(migrated_url))
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok"}
    assert response.headers["cache-control"] == "no-store"


def assert_not_ready(response: httpx2.Response, check: str) -> dict[str, Any]:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    assert body["type"] == "unspecified"
    assert body["status"] == 503
    assert body["check"] == check
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def test_readyz_refuses_a_database_without_migrations(database_url: str) -> None:
    # The fixture's schema comes from create_all(): tables, but no Alembic revision.
    body = assert_not_ready(readyz(settings_for(database_url)), "migrations")
    assert "no revision" in body["title"]
    assert "baton db upgrade" in body["title"]


def test_readyz_refuses_a_database_behind_head(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/baton.db"
    migrate.upgrade(url, "0001")
    body = assert_not_ready(readyz(settings_for(url)), "migrations")
    assert body["title"].startswith("The database schema is at 0001, not at ")


def test_readyz_refuses_an_unreachable_database() -> None:
    started = time.monotonic()
    body = assert_not_ready(readyz(settings_for(closed_port_url())), "database")
    assert body["title"] == "The database is unreachable."
    assert time.monotonic() - started < 10


def test_readyz_does_not_hang_on_a_database_that_never_answers() -> None:
    # A socket that accepts connections (the kernel completes the handshake)
    # and never says a word: the client would wait forever without a bound.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        readiness = Readiness(
            f"postgresql+psycopg://postgres@127.0.0.1:{port}/baton",
            timeout=timedelta(milliseconds=300),
        )
        try:
            started = time.monotonic()
            failure = asyncio.run(readiness.check())
            elapsed = time.monotonic() - started
        finally:
            readiness.dispose()
    assert failure is not None
    assert failure.check == "database"
    assert failure.title == "The database did not answer within 0.3s."
    assert elapsed < 1.5


def test_readyz_keeps_one_sqlite_connection_and_sees_an_upgrade(tmp_path: Path) -> None:
    """Opening the file at every probe cost a third of its CPU; the kept
    connection still sees the schema change under it."""
    url = f"sqlite:///{tmp_path}/baton.db"
    migrate.upgrade(url, "0001")
    readiness = Readiness(url)
    connections: list[object] = []
    sqlalchemy.event.listen(readiness._engine, "connect", lambda *_: connections.append(1))
    try:
        behind = asyncio.run(readiness.check())
        migrate.upgrade(url)
        at_head = [asyncio.run(readiness.check()) for _ in range(3)]
    finally:
        readiness.dispose()
    assert behind is not None
    assert behind.check == "migrations"
    assert at_head == [None, None, None]
    assert len(connections) == 1


# -- /metrics -------------------------------------------------------------------


def start_flow(client: TestClient, app_client: ClientInfo) -> tuple[str, str]:
    """Authorize without a session; return the redirection token and the PKCE verifier."""
    challenge = pkce()
    paused = client.get(
        "/oauth2/authorize", params=authorize_params(app_client, challenge), follow_redirects=False
    )
    assert paused.status_code == 302, paused.text
    return query_of(paused.headers["location"])["redirection_token"], challenge.verifier


def login(client: TestClient, username: str, password: str, **extra: str) -> httpx2.Response:
    return client.post("/api/v1/login", json={"username": username, "password": password, **extra})


def test_login_and_flow_counters_move(
    make_settings: Callable[..., Settings], database: Database, clock: Clock
) -> None:
    create_user(database)
    app_client = create_client(database)
    settings = make_settings(throttle_user_failures=1)
    with TestClient(create_app(settings, clock=clock), base_url=BASE_URL) as client:
        before = scrape(client)
        assert {o for o in LOGIN_OUTCOMES} <= label_values(before, "baton_logins_total", "outcome")

        token, _ = start_flow(client, app_client)
        assert login(client, "mallory", "guess").status_code == 401
        assert login(client, "mallory", "guess again").status_code == 429
        assert login(client, "alice", PASSWORD, redirection_token="nope").status_code == 400
        assert login(client, "alice", PASSWORD, redirection_token=token).status_code == 200
        after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("baton_flows_created_total") == 1
    assert moved("baton_flows_consumed_total") == 1
    assert moved("baton_logins_total", outcome="invalid_credentials") == 1
    assert moved("baton_logins_total", outcome="throttled") == 1
    assert moved("baton_logins_total", outcome="flow_not_found") == 1
    assert moved("baton_logins_total", outcome="success") == 1
    assert moved("baton_logins_total", outcome="overloaded") == 0
    # mallory's first attempt, then alice's two (the throttled one never hashes,
    # but it too waits for the slot its throttle check is made in).
    assert moved("baton_hashing_seconds_count") == 3
    assert moved("baton_hashing_wait_seconds_count") == 4
    assert value(after, "baton_hashing_queue_depth") == 0

    login_route = {"route": "/api/v1/login", "method": "POST"}
    for status, count in (("401", 1), ("429", 1), ("400", 1), ("200", 1)):
        assert moved("baton_http_requests_total", **login_route, status=status) == count
    assert moved("baton_http_request_duration_seconds_count", **login_route) == 4
    authorize = {"route": "/oauth2/authorize", "method": "GET", "status": "302"}
    assert moved("baton_http_requests_total", **authorize) == 1
    # The first scrape itself was counted, under its own template.
    assert moved("baton_http_requests_total", route="/metrics", method="GET", status="200") == 1


def test_a_second_login_retried_on_a_consumed_flow_is_not_a_second_consumption(
    client: TestClient, database: Database
) -> None:
    create_user(database)
    token, _ = start_flow(client, create_client(database))
    before = scrape(client)
    for _ in range(2):  # a double click: the same browser, the same answer
        assert login(client, "alice", PASSWORD, redirection_token=token).status_code == 200
    after = scrape(client)
    assert (
        value(after, "baton_flows_consumed_total") - value(before, "baton_flows_consumed_total")
        == 1
    )
    success = {"outcome": "success"}
    assert (
        value(after, "baton_logins_total", **success)
        - value(before, "baton_logins_total", **success)
        == 2
    )


def test_an_overloaded_login_is_counted(
    client: TestClient, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def busy(*_: object, **__: object) -> None:
        raise HashingOverloaded

    monkeypatch.setattr(client.app.state.services.hashing, "verify", busy)
    before = scrape(client)
    assert login(client, "alice", PASSWORD).status_code == 503
    after = scrape(client)
    overloaded = {"outcome": "overloaded"}
    assert value(after, "baton_logins_total", **overloaded) == (
        value(before, "baton_logins_total", **overloaded) + 1
    )


def test_route_labels_stay_bounded(client: TestClient) -> None:
    paths = [f"/{secrets.token_hex(8)}/{secrets.token_hex(4)}" for _ in range(30)]
    for path in paths:
        assert client.get(path).status_code == 404
    assert client.request("PROPFIND", "/" + secrets.token_hex(8)).status_code == 404
    # Matched templates, even when a middleware or the router answers first.
    assert client.get("/api/v1/login").status_code == 405
    refused = client.post("/api/v1/login", content=b"x", headers={"content-type": "text/plain"})
    assert refused.status_code == 415
    assert client.get("/static/baton.css").status_code == 200
    samples = scrape(client)
    body = client.get("/metrics").text

    for path in paths:
        assert path not in body
    routes = label_values(samples, "baton_http_requests_total", "route")
    templates = {getattr(route, "path", None) for route in client.app.routes}
    assert routes <= templates | {UNMATCHED}
    assert UNMATCHED in routes
    unmatched = {
        (dict(labels)["method"], dict(labels)["status"]): count
        for (name, labels), count in samples.items()
        if name == "baton_http_requests_total" and dict(labels)["route"] == UNMATCHED
    }
    assert unmatched == {("GET", "404"): 30, ("other", "404"): 1}
    requests_total = "baton_http_requests_total"
    login_route = "/api/v1/login"
    assert value(samples, requests_total, route=login_route, method="GET", status="405") == 1
    assert value(samples, requests_total, route=login_route, method="POST", status="415") == 1
    assert value(samples, requests_total, route="/static", method="GET", status="200") == 1


def test_metrics_can_be_switched_off(make_settings: Callable[..., Settings]) -> None:
    with TestClient(create_app(make_settings(metrics=False)), base_url=BASE_URL) as client:
        assert client.get("/metrics").status_code == 404
        assert client.get("/healthz").status_code == 200


def test_apps_do_not_share_their_counters(make_settings: Callable[..., Settings]) -> None:
    with (
        TestClient(create_app(make_settings()), base_url=BASE_URL) as first,
        TestClient(create_app(make_settings()), base_url=BASE_URL) as second,
    ):
        for _ in range(3):
            first.get("/healthz")
        healthz = {"route": "/healthz", "method": "GET", "status": "200"}
        assert value(scrape(first), "baton_http_requests_total", **healthz) == 3
        assert value(scrape(second), "baton_http_requests_total", **healthz) == 0


# -- the hashing pool -----------------------------------------------------------


def test_hashing_queue_depth_counts_callers_waiting_for_a_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()

    def held(stored: str, password: str, cost: passwords.Argon2Cost) -> passwords.Verification:
        release.wait(10)
        return passwords.Verification(ok=False)

    monkeypatch.setattr(passwords, "verify_password", held)
    metrics = Metrics()

    def depth() -> float | None:
        return metrics.registry.get_sample_value("baton_hashing_queue_depth")

    async def scenario() -> list[float | None]:
        pool = HashingPool(1, timedelta(seconds=30), observer=metrics)
        try:
            seen = [depth()]
            calls = [asyncio.create_task(pool.verify(None, "pw")) for _ in range(3)]
            for _ in range(500):  # at most 5 s
                if depth() == 2:
                    break
                await asyncio.sleep(0.01)
            seen.append(depth())  # one hashing, two waiting
            release.set()
            await asyncio.gather(*calls)
            seen.append(depth())
            return seen
        finally:
            release.set()
            pool.shutdown()

    assert asyncio.run(scenario()) == [0, 2, 0]
    assert metrics.registry.get_sample_value("baton_hashing_wait_seconds_count") == 3
    assert metrics.registry.get_sample_value("baton_hashing_seconds_count") == 3


def test_a_wait_that_times_out_is_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def held(stored: str, password: str, cost: passwords.Argon2Cost) -> passwords.Verification:
        release.wait(10)
        return passwords.Verification(ok=False)

    monkeypatch.setattr(passwords, "verify_password", held)
    metrics = Metrics()

    async def scenario() -> list[object]:
        pool = HashingPool(1, timedelta(milliseconds=50), observer=metrics)
        try:
            first = asyncio.create_task(pool.verify(None, "pw"))
            await asyncio.sleep(0.01)
            second = await asyncio.gather(pool.verify(None, "pw"), return_exceptions=True)
            release.set()
            await first
            return second
        finally:
            release.set()
            pool.shutdown()

    outcomes = asyncio.run(scenario())
    assert isinstance(outcomes[0], HashingOverloaded)
    registry = metrics.registry
    assert registry.get_sample_value("baton_hashing_wait_seconds_count") == 2
    assert (registry.get_sample_value("baton_hashing_wait_seconds_sum") or 0) >= 0.05
    assert registry.get_sample_value("baton_hashing_seconds_count") == 1
    assert registry.get_sample_value("baton_hashing_queue_depth") == 0


_WORKER = """
import sys
from app.metrics import MULTIPROCESS, Metrics
assert MULTIPROCESS
metrics = Metrics()
if sys.argv[1] == "count":
    metrics.login("success")
    metrics.waiting(1)
    if sys.argv[2] == "stop":
        metrics.close()
else:
    sys.stdout.buffer.write(metrics.render())
"""


def test_multiprocess_mode_adds_up_every_worker(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def worker(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-c", _WORKER, *args],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout

    worker("count", "running")  # still counts as alive: it never closed
    worker("count", "stop")  # stopped cleanly: its queue depth is gone, its counts stay
    samples: Samples = {}
    for family in text_string_to_metric_families(worker("render")):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    assert value(samples, "baton_logins_total", outcome="success") == 2
    assert value(samples, "baton_hashing_queue_depth") == 1


# -- logs -----------------------------------------------------------------------


@pytest.fixture
def json_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Every record from INFO up, formatted by Baton's JSON formatter."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_json_lines_carry_the_request_id_of_their_request(
    client: TestClient, database: Database, json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    create_user(database)
    token, _ = start_flow(client, create_client(database))
    response = login(client, "alice", PASSWORD, redirection_token=token)
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    lines = json_lines()

    for line in lines:
        assert {"ts", "level", "logger", "message"} <= line.keys()
    mine = [line for line in lines if line.get("request_id") == request_id]
    access = [line for line in mine if line["logger"] == "baton.access"]
    assert len(access) == 1
    assert access[0]["level"] == "INFO"
    fields = {key: access[0][key] for key in ("method", "path", "status")}
    assert fields == {"method": "POST", "path": "/api/v1/login", "status": 200}
    assert access[0]["duration_ms"] > 0
    # Written from a worker thread: the request id followed the request there.
    audit = [line for line in mine if line["logger"] == "baton.audit"]
    assert [line["message"] for line in audit] == ["login.succeeded"]
    assert audit[0]["audit"]["username"] == "alice"
    assert audit[0]["audit"]["request_id"] == request_id
    assert PASSWORD not in json.dumps(lines)
    assert token not in json.dumps(lines)
    assert client.cookies["session_id"] not in json.dumps(lines)


def test_probes_are_quiet_in_the_access_log_unless_they_fail(
    client: TestClient, json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503  # the fixture's schema has no revision
    assert client.get("/metrics").status_code == 200
    assert client.get("/nowhere").status_code == 404
    access = [line["path"] for line in json_lines() if line["logger"] == "baton.access"]
    assert access == ["/readyz", "/nowhere"]


def test_the_formatter_keeps_extras_and_exceptions() -> None:
    formatter = JsonFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("baton", logging.ERROR, __file__, 1, "failed %s", ("x",), None)
        record.exc_info = sys.exc_info()
    record.request_id = "abc"
    record.flow = "f1"
    line = json.loads(formatter.format(record))
    assert line["message"] == "failed x"
    assert line["level"] == "ERROR"
    assert line["request_id"] == "abc"
    assert line["flow"] == "f1"
    assert "ValueError: boom" in line["exc_info"]


# -- a real server: uvicorn's lines too, and no secret at DEBUG ------------------

REDIRECT_URI = "http://127.0.0.1:8123/callback"


@pytest.mark.slow
def test_a_served_flow_logs_json_lines_without_any_secret(tmp_path: Path) -> None:
    env = {"BATON_LOG_FORMAT": "json", "BATON_LOG_LEVEL": "debug"}
    secrets_seen: dict[str, str] = {"password": PASSWORD}
    request_ids: dict[str, str] = {}
    with serving(f"sqlite:///{tmp_path}/baton.db", tmp_path, env) as server:
        server.baton("users", "add", "alice", "--password-stdin", stdin=PASSWORD + "\n")
        created = json.loads(
            server.baton(
                "clients",
                "add",
                "--name",
                "Logs",
                "--public",
                "--first-party",
                "--redirect-uri",
                REDIRECT_URI,
                "--json",
            ).stdout
        )
        run_flow(server, created["client_id"], secrets_seen, request_ids)
    log = server.log.read_text()
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]

    for name, secret in secrets_seen.items():
        assert secret not in log, f"the {name} is in the log"
    assert any(line["logger"].startswith("uvicorn") for line in lines)
    assert not any(line["logger"].startswith("authlib") for line in lines)
    events = {line["message"] for line in lines if line["logger"] == "baton.audit"}
    assert {"flow.created", "login.succeeded", "token.issued"} <= events
    access = {line["request_id"]: line for line in lines if line["logger"] == "baton.access"}
    for path, request_id in request_ids.items():
        assert access[request_id]["path"] == path
    assert access[request_ids["/healthz"]]["level"] == "DEBUG"
    assert access[request_ids["/oauth2/token"]]["level"] == "INFO"


def run_flow(
    server: Server, client_id: str, seen: dict[str, str], request_ids: dict[str, str]
) -> None:
    """What a browser and a public client do; every secret met is kept in ``seen``."""
    browser = requests.Session()

    def remember(path: str, response: requests.Response) -> requests.Response:
        request_ids[path] = response.headers["x-request-id"]
        return response

    challenge = pkce()
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT_URI,
        "scope": "read",
        "state": secrets.token_urlsafe(16),
        "code_challenge": challenge.challenge,
        "code_challenge_method": "S256",
    }
    paused = remember(
        "/oauth2/authorize",
        browser.get(
            server.url + "/oauth2/authorize", params=params, allow_redirects=False, timeout=10
        ),
    )
    assert paused.status_code == 302, paused.text
    seen["redirection token"] = query_of(paused.headers["location"])["redirection_token"]
    seen["PKCE verifier"] = challenge.verifier
    signed_in = remember(
        "/api/v1/login",
        browser.post(
            server.url + "/api/v1/login",
            json={
                "username": "alice",
                "password": PASSWORD,
                "redirection_token": seen["redirection token"],
            },
            timeout=10,
        ),
    )
    assert signed_in.status_code == 200, signed_in.text
    seen["session id"] = browser.cookies["session_id"]
    resumed = browser.get(
        urljoin(server.url, signed_in.json()["redir_to"]), allow_redirects=False, timeout=10
    )
    assert resumed.status_code == 302, resumed.text
    seen["code"] = query_of(resumed.headers["location"])["code"]
    issued = remember(
        "/oauth2/token",
        requests.post(
            server.url + "/oauth2/token",
            data={
                "grant_type": "authorization_code",
                "code": seen["code"],
                "redirect_uri": REDIRECT_URI,
                "client_id": client_id,
                "code_verifier": challenge.verifier,
            },
            timeout=10,
        ),
    )
    assert issued.status_code == 200, issued.text
    seen["access token"] = issued.json()["access_token"]
    if "refresh_token" in issued.json():
        seen["refresh token"] = issued.json()["refresh_token"]
    me = remember(
        "/api/v1/users/me",
        requests.get(
            server.url + "/api/v1/users/me",
            headers={"Authorization": "Bearer " + seen["access token"]},
            timeout=10,
        ),
    )
    assert me.status_code == 200, me.text
    assert remember("/healthz", requests.get(server.url + "/healthz", timeout=10)).ok
