"""Brute-force throttling, the audit log, session idle time, and timing."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx2
import pytest
from click.testing import CliRunner
from sqlalchemy import select
from starlette.testclient import TestClient

from app import login, problems, throttle
from app.cli import main as baton
from app.db import Database
from app.main import create_app
from app.models import AuditEvent, LoginFailure
from app.settings import Settings
from tests.conftest import BASE_URL, Clock
from tests.factories import PASSWORD, authorize_params, create_client, create_user, pkce, query_of

LOGIN = "/api/v1/login"


@pytest.fixture
def strict(make_settings: Callable[..., Settings], clock: Clock) -> Iterator[TestClient]:
    """Baton with low thresholds: 3 failures per username, 6 per IP."""
    settings = make_settings(
        throttle_user_failures=3,
        throttle_ip_failures=6,
        throttle_window=timedelta(minutes=15),
        throttle_max_delay=timedelta(seconds=30),
    )
    with TestClient(create_app(settings, clock=clock), base_url=BASE_URL) as client:
        yield client


def attempt(client: TestClient, username: str, password: str) -> httpx2.Response:
    return client.post(LOGIN, json={"username": username, "password": password})


def fail(client: TestClient, username: str, times: int) -> None:
    for _ in range(times):
        assert attempt(client, username, "wrong").status_code == 401


def assert_throttled(response: httpx2.Response, retry_after: int) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == str(retry_after)
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert (body["type"], body["status"]) == ("forbidden", 429)
    assert "set-cookie" not in response.headers


def test_a_correct_password_is_refused_while_throttled(
    strict: TestClient, database: Database, clock: Clock
) -> None:
    create_user(database)
    fail(strict, "alice", 3)
    assert_throttled(attempt(strict, "alice", PASSWORD), 1)
    clock.advance(timedelta(seconds=1))
    assert attempt(strict, "alice", PASSWORD).status_code == 200
    # Success cleared the username's failures: the next mistake is a plain 401.
    assert attempt(strict, "alice", "wrong").status_code == 401


def test_delays_grow_with_each_failure_up_to_the_cap(
    strict: TestClient, database: Database, clock: Clock
) -> None:
    create_user(database)
    fail(strict, "alice", 3)
    for expected in [1, 2, 4, 8, 16, 30, 30]:
        assert_throttled(attempt(strict, "alice", "wrong"), expected)
        clock.advance(timedelta(seconds=expected))
        assert attempt(strict, "alice", "wrong").status_code == 401


def test_failures_age_out_of_the_window(
    strict: TestClient, database: Database, clock: Clock
) -> None:
    create_user(database)
    fail(strict, "alice", 3)
    clock.advance(timedelta(minutes=15, seconds=1))
    assert attempt(strict, "alice", PASSWORD).status_code == 200


def test_unknown_usernames_are_throttled_alike(strict: TestClient, database: Database) -> None:
    create_user(database)
    fail(strict, "alice", 3)
    fail(strict, "nobody", 3)
    known, unknown = attempt(strict, "alice", "x"), attempt(strict, "nobody", "x")
    assert_throttled(known, 1)
    assert_throttled(unknown, 1)
    assert {k: v for k, v in known.json().items() if k != "request_id"} == {
        k: v for k, v in unknown.json().items() if k != "request_id"
    }


def test_one_address_guessing_many_usernames_is_throttled(
    strict: TestClient, database: Database
) -> None:
    create_user(database)
    for name in ["a", "b", "c", "d", "e", "f"]:
        fail(strict, name, 1)
    assert_throttled(attempt(strict, "alice", PASSWORD), 1)


def test_throttling_is_shared_by_every_instance(
    make_settings: Callable[..., Settings], database: Database, clock: Clock
) -> None:
    create_user(database)
    settings = make_settings(throttle_user_failures=3)
    with (
        TestClient(create_app(settings, clock=clock), base_url=BASE_URL) as one,
        TestClient(create_app(settings, clock=clock), base_url=BASE_URL) as two,
    ):
        fail(one, "alice", 2)
        fail(two, "alice", 1)
        assert_throttled(attempt(one, "alice", PASSWORD), 1)
        assert_throttled(attempt(two, "alice", PASSWORD), 1)


def test_an_ipv6_client_is_counted_by_its_slash_64(
    strict: TestClient, database: Database, clock: Clock
) -> None:
    """Six failures (the per-address limit) at six names from six addresses
    of one /64: an attempt from yet another of its addresses is throttled; one
    from the next /64 is not."""
    services = strict.app.state.services  # type: ignore[attr-defined]
    with database.transaction() as db:
        for n in range(6):
            throttle.record_failure(
                db=db, username=f"user{n}", ip=f"2001:db8:1:2::{n + 1:x}", now=clock()
            )

    def check(ip: str) -> None:
        one = login.Attempt(
            username="someone", password="x", redirection_token=None, ip=ip, user_agent=None
        )
        login._check_throttle_and_find(services, one)

    with pytest.raises(problems.Problem) as refused:
        check("2001:db8:1:2:ffff:ffff:ffff:ffff")
    assert refused.value.status == 429
    check("2001:db8:1:3::1")
    assert throttle.ip_key("::ffff:192.0.2.1") == throttle.ip_key("192.0.2.1") == "ip:192.0.2.1"


def test_names_that_differ_in_case_are_throttled_apart(
    strict: TestClient, database: Database, clock: Clock
) -> None:
    """Sign-in compares names exactly: guesses at "bob" neither hold back the
    account "BOB" nor are cleared by its owner signing in."""
    create_user(database, "bob")
    create_user(database, "BOB")
    fail(strict, "bob", 3)
    clock.advance(timedelta(seconds=1))
    fail(strict, "bob", 1)  # the fourth: the next waits 2 s

    assert attempt(strict, "BOB", PASSWORD).status_code == 200
    assert_throttled(attempt(strict, "bob", PASSWORD), 2)


def test_with_one_hashing_slot_a_burst_gets_exactly_the_threshold(
    make_settings: Callable[..., Settings], database: Database, clock: Clock
) -> None:
    """The throttle is checked holding the hashing slot, and a failure is
    written before the slot is given back: with one slot, 20 guesses sent at
    once get exactly the threshold of password checks, like 20 sent in turn."""
    create_user(database)
    settings = make_settings(hash_workers=1, throttle_user_failures=3)
    passwords = [f"guess-{n}" for n in range(19)] + [PASSWORD]
    with (
        TestClient(create_app(settings, clock=clock), base_url=BASE_URL) as one_slot,
        ThreadPoolExecutor(max_workers=len(passwords)) as pool,
    ):
        statuses = list(pool.map(lambda pw: attempt(one_slot, "alice", pw).status_code, passwords))

    assert statuses.count(401) == 3, statuses
    assert statuses.count(429) == 17, statuses


def test_a_concurrent_burst_gets_no_more_password_checks_than_the_threshold(
    strict: TestClient, database: Database
) -> None:
    """20 guesses sent at once, the right password last: at most the
    threshold (3) plus the hashing slots less one are checked; the rest are
    throttled, the right one with them."""
    create_user(database)
    passwords = [f"guess-{n}" for n in range(19)] + [PASSWORD]
    with ThreadPoolExecutor(max_workers=len(passwords)) as pool:
        statuses = list(
            pool.map(lambda password: attempt(strict, "alice", password).status_code, passwords)
        )

    slots = strict.app.state.services.hashing.workers  # type: ignore[attr-defined]
    assert sorted(set(statuses)) <= [401, 429], statuses
    assert statuses.count(401) <= 3 + slots - 1, statuses
    assert statuses[-1] == 429


def test_a_refusal_that_is_not_a_wrong_password_is_no_failure(
    strict: TestClient, database: Database
) -> None:
    """A right password whose flow is gone, and a throttled attempt, leave no
    failure behind: only wrong passwords count."""
    create_user(database)
    gone = strict.post(
        LOGIN, json={"username": "alice", "password": PASSWORD, "redirection_token": "x" * 43}
    )
    assert gone.status_code == 400, gone.text
    fail(strict, "alice", 3)
    assert_throttled(attempt(strict, "alice", "wrong"), 1)
    with database.transaction() as db:
        assert (
            len(
                list(
                    db.scalars(select(LoginFailure.key).where(LoginFailure.key.startswith("user:")))
                )
            )
            == 3
        )


def test_usernames_are_stored_only_hashed(strict: TestClient, database: Database) -> None:
    fail(strict, "my-secret-typed-into-username", 1)
    with database.transaction() as db:
        keys = list(db.scalars(select(LoginFailure.key)))
    assert len(keys) == 2
    assert not any("my-secret" in key for key in keys)


# -- audit ----------------------------------------------------------------------


def audit_rows(database: Database) -> list[AuditEvent]:
    with database.transaction() as db:
        return list(db.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def test_the_flow_is_audited_without_secrets(
    client: TestClient, database: Database, database_url: str
) -> None:
    create_user(database)
    create_user(database, "dora", disabled=True)
    app = create_client(database)
    challenge = pkce()
    paused = client.get(
        "/oauth2/authorize", params=authorize_params(app, challenge), follow_redirects=False
    )
    token = query_of(paused.headers["location"])["redirection_token"]
    assert attempt(client, "alice", "wrong").status_code == 401
    assert attempt(client, "nobody", "wrong").status_code == 401
    assert attempt(client, "dora", PASSWORD).status_code == 401
    login = client.post(
        LOGIN, json={"username": "alice", "password": PASSWORD, "redirection_token": token}
    )
    resumed = client.get(login.json()["redir_to"], follow_redirects=False)
    code = query_of(resumed.headers["location"])["code"]
    issued = client.post(
        "/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": app.redirect_uri,
            "client_id": app.client_id,
            "code_verifier": challenge.verifier,
        },
    ).json()
    client.post("/api/v1/logout")

    rows = audit_rows(database)
    assert [(r.event, r.username) for r in rows] == [
        ("flow.created", None),
        ("login.failed", "alice"),
        ("login.failed", "nobody"),
        ("login.failed", "dora"),
        ("login.succeeded", "alice"),
        ("code.issued", "alice"),
        ("token.issued", "alice"),
        ("session.ended", "alice"),
    ]
    assert [r.detail.get("reason") for r in rows[1:4]] == [
        "wrong_password",
        "unknown_user",
        "disabled_user",
    ]
    assert all(r.request_id for r in rows)
    assert rows[0].client_id == app.client_id
    assert rows[4].detail["flow"] == rows[0].detail["flow"]

    listed = CliRunner().invoke(baton, ["--database-url", database_url, "audit", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    everything = listed.stdout + json.dumps([r.detail for r in rows])
    for secret in (token, code, issued["access_token"], PASSWORD, challenge.verifier):
        assert secret not in everything
    assert json.loads(listed.stdout)[0]["event"] == "session.ended"


def test_admin_actions_are_audited(database_url: str, database: Database) -> None:
    runner = CliRunner()
    for args, stdin in [
        (["users", "add", "erin", "--password-stdin"], "pw-erin-1\n"),
        (["users", "disable", "erin"], None),
        (["clients", "add", "--name", "X", "--redirect-uri", "https://x.example/cb"], None),
    ]:
        result = runner.invoke(baton, ["--database-url", database_url, *args], input=stdin)
        assert result.exit_code == 0, result.output
    rows = audit_rows(database)
    assert [(r.event, r.actor) for r in rows] == [
        ("admin.user_created", "cli"),
        ("admin.user_disabled", "cli"),
        ("admin.client_created", "cli"),
    ]
    table = runner.invoke(
        baton, ["--database-url", database_url, "audit", "list", "--event", "admin.user"]
    )
    assert table.exit_code == 0
    assert "admin.user_disabled" in table.stdout
    assert "admin.client_created" not in table.stdout


# -- sessions -----------------------------------------------------------------


def test_sessions_end_after_idle_time_but_not_while_used(
    client: TestClient, database: Database, clock: Clock
) -> None:
    create_user(database)
    assert attempt(client, "alice", PASSWORD).status_code == 200
    for _ in range(3):
        clock.advance(timedelta(hours=7))
        assert client.get("/api/v1/users/me").status_code == 200
    clock.advance(timedelta(hours=8))
    assert client.get("/api/v1/users/me").status_code == 401


# -- timing ---------------------------------------------------------------------


def test_unknown_disabled_and_wrong_cost_the_same(
    make_settings: Callable[..., Settings], database: Database
) -> None:
    """Medians over interleaved attempts agree within noise. Without the dummy
    hash, an unknown user answers in ~1 ms against ~50 ms for a wrong
    password, far outside the bound."""
    create_user(database, "alice")
    create_user(database, "dora", disabled=True)
    settings = make_settings(throttle_user_failures=1000, throttle_ip_failures=1000)
    cases = {"unknown": ("nobody", "x"), "wrong": ("alice", "x"), "disabled": ("dora", PASSWORD)}
    samples: dict[str, list[float]] = {name: [] for name in cases}
    with TestClient(create_app(settings), base_url=BASE_URL) as client:
        attempt(client, "alice", "warm-up")
        for _ in range(15):
            for name, (username, password) in cases.items():
                started = time.perf_counter()
                assert attempt(client, username, password).status_code == 401
                samples[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    reference = medians["wrong"]
    for median in medians.values():
        assert abs(median - reference) / reference < 0.5, medians


@pytest.mark.parametrize("ending", ["logout", "expiry", "idle", "users logout", "disable"])
def test_authorize_ignores_an_ended_session(
    client: TestClient, database: Database, database_url: str, clock: Clock, ending: str
) -> None:
    create_user(database)
    app = create_client(database)
    assert attempt(client, "alice", PASSWORD).status_code == 200
    secret = client.cookies["session_id"]
    with_session = client.get(
        "/oauth2/authorize", params=authorize_params(app, pkce()), follow_redirects=False
    )
    assert with_session.headers["location"].startswith(app.redirect_uri)
    if ending == "logout":
        client.post("/api/v1/logout")
        client.cookies.set("session_id", secret, domain="baton.test")
    elif ending == "expiry":
        clock.advance(timedelta(hours=24, seconds=1))
    elif ending == "idle":
        clock.advance(timedelta(hours=8, seconds=1))
    else:
        args = (
            ["users", "logout", "alice"]
            if ending == "users logout"
            else ["users", "disable", "alice"]
        )
        result = CliRunner().invoke(baton, ["--database-url", database_url, *args])
        assert result.exit_code == 0, result.output
    paused = client.get(
        "/oauth2/authorize", params=authorize_params(app, pkce()), follow_redirects=False
    )
    assert paused.headers["location"].startswith("/login?redirection_token=")
    assert client.get("/api/v1/users/me").status_code == 401
