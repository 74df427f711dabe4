"""The administrative ``baton`` commands (flows, users, clients, hash-password),
on SQLite and on PostgreSQL, through click's CliRunner.

Rows are created with the domain functions Baton itself uses; every command's
output is checked as a table and, where it has one, as ``--json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import bcrypt
import pytest
from click.testing import Result
from sqlalchemy import func, select

from app import flows, sessions, tokens, users
from app.db import Database, utcnow
from app.models import BrowserSession, Client, PendingFlow
from app.oauth.clients import OAuthClient
from app.passwords import hash_password, verify_password
from tests.factories import create_client, create_user_with_hash
from tests.test_cli import (  # noqa: F401  (_clean_environment: an autouse fixture)
    PASSWORD,
    _clean_environment,
    add_client,
    baton,
    error_of,
    list_json,
    password_works,
    stored_client,
    stored_hash,
    table,
)

FLOW_TTL = timedelta(minutes=10)
STATE = "s3cr3t-state-value"
NONCE = "n0nce-value-for-oidc"
CODE_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM-challenge-value"
FLOWS_HEADER = ["ID", "KIND", "CLIENT", "STATUS", "AGE", "LEFT", "CONSUMER", "REQUESTER IP"]
FLOW_FIELDS = {
    "id", "kind", "client_id", "client_name", "status", "created_at", "expires_at",
    "consumed_at", "revoked_at", "age_seconds", "seconds_left", "consumer", "requester_ip",
}  # fmt: skip
# Ages and time left are computed by the command a moment after the test's "now".
SLACK = 60


@cache
def argon2_hash() -> str:
    """One real hash for users whose password does not matter (hashing is slow)."""
    return hash_password(PASSWORD)


def add_users(database: Database, *names: str) -> None:
    for name in names:
        create_user_with_hash(database, name, argon2_hash())


def user_pk(database: Database, username: str) -> int:
    with database.transaction() as db:
        return users.require(db=db, username=username).id


def client_pk(database: Database, client_id: str) -> int:
    with database.transaction() as db:
        return db.scalars(select(Client.id).where(Client.client_id == client_id)).one()


def at(moment: datetime) -> datetime:
    """A timestamp as read back from the command's ISO output."""
    return datetime.fromisoformat(moment.isoformat())


def parse_iso(value: Any) -> datetime:
    assert isinstance(value, str), value
    moment = datetime.fromisoformat(value)
    assert moment.utcoffset() is not None, value
    return moment


def seconds_of(shown: str) -> int:
    """Invert the CLI's ``human()``: ``42s``, ``5m12s``, ``2h03m``, ``3d04h``."""
    match = re.fullmatch(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", shown)
    assert shown, shown
    assert match, shown
    days, hours, minutes, secs = (int(part or 0) for part in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + secs


def ids_in(rows: list[dict[str, Any]]) -> list[str]:
    return [row["id"] for row in rows]


# -- flows: test data -------------------------------------------------------------


@dataclass(frozen=True)
class MadeFlow:
    id: str  # the public id
    pk: int
    token: str
    token_hash: str
    created_at: datetime


def make_flow(
    database: Database,
    client_id: str,
    created_at: datetime,
    *,
    ip: str | None = "203.0.113.7",
    request: dict[str, Any] | None = None,
    binding_hash: str | None = None,
    user_agent: str | None = None,
) -> MadeFlow:
    pk = client_pk(database, client_id)
    request = request or {"client_id": client_id, "scope": "read", "state": "abc"}
    with database.transaction() as db:
        made = flows.create(
            db=db,
            client_pk=pk,
            request=request,
            redir_to="/oauth2/authorize?" + urlencode(request),  # as the server resumes it
            now=created_at,
            ttl=FLOW_TTL,
            binding_hash=binding_hash,
            ip=ip,
            user_agent=user_agent,
        )
        return MadeFlow(
            made.row.public_id, made.row.id, made.token, made.row.token_hash, created_at
        )


def consume(
    database: Database, flow: MadeFlow, username: str, moment: datetime
) -> flows.ConsumedFlow | None:
    uid = user_pk(database, username)
    with database.transaction() as db:
        return flows.consume(db=db, token=flow.token, user_id=uid, now=moment)


def revoke(database: Database, flow: MadeFlow, moment: datetime) -> None:
    with database.transaction() as db:
        assert flows.revoke(db=db, now=moment, public_ids=[flow.id]) == [flow.id]


def remaining(database: Database) -> set[str]:
    with database.transaction() as db:
        return set(db.scalars(select(PendingFlow.public_id)))


@dataclass(frozen=True)
class Scenario:
    """Two clients, one flow in each status, created minutes apart."""

    now: datetime
    alpha: str  # client ids
    beta: str
    expired: MadeFlow  # alpha, 3h old
    alpha_consumed: MadeFlow  # alpha, 2h old, consumed by alice after 1m
    revoked: MadeFlow  # beta, 40m old, revoked after 1m
    beta_consumed: MadeFlow  # beta, 20m old, consumed by bob after 3m
    alpha_pending: MadeFlow  # alpha, 7m old, no requester IP
    beta_pending: MadeFlow  # beta, 2m old

    def newest_first(self) -> list[MadeFlow]:
        return [
            self.beta_pending,
            self.alpha_pending,
            self.beta_consumed,
            self.revoked,
            self.alpha_consumed,
            self.expired,
        ]


@pytest.fixture
def scenario(database: Database) -> Scenario:
    now = utcnow()
    add_users(database, "alice", "bob")
    alpha = create_client(database, name="Alpha App").client_id
    beta = create_client(database, name="Beta App").client_id
    expired = make_flow(database, alpha, now - timedelta(hours=3))
    alpha_consumed = make_flow(database, alpha, now - timedelta(hours=2))
    assert consume(database, alpha_consumed, "alice", now - timedelta(hours=2, minutes=-1))
    revoked = make_flow(database, beta, now - timedelta(minutes=40))
    revoke(database, revoked, now - timedelta(minutes=39))
    beta_consumed = make_flow(database, beta, now - timedelta(minutes=20))
    assert consume(database, beta_consumed, "bob", now - timedelta(minutes=17))
    alpha_pending = make_flow(database, alpha, now - timedelta(minutes=7), ip=None)
    beta_pending = make_flow(database, beta, now - timedelta(minutes=2))
    return Scenario(
        now, alpha, beta, expired, alpha_consumed, revoked, beta_consumed, alpha_pending,
        beta_pending,
    )  # fmt: skip


def flows_json(url: str, *args: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(baton(url, "flows", "list", *args, "--json").stdout)
    return rows


def show_json(url: str, flow_id: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(baton(url, "flows", "show", flow_id, "--json").stdout)
    return document


# -- flows list -------------------------------------------------------------------


def test_flows_list_table(database_url: str, scenario: Scenario) -> None:
    s = scenario
    header, *rows = table(baton(database_url, "flows", "list"))
    assert header == FLOWS_HEADER
    assert [row[0] for row in rows] == [f.id for f in s.newest_first()]
    assert [row[1:4] for row in rows] == [
        ["login", "Beta App", "pending"],
        ["login", "Alpha App", "pending"],
        ["login", "Beta App", "consumed"],
        ["login", "Beta App", "revoked"],
        ["login", "Alpha App", "consumed"],
        ["login", "Alpha App", "expired"],
    ]
    assert [row[6:] for row in rows] == [
        ["-", "203.0.113.7"],
        ["-", "-"],
        ["bob", "203.0.113.7"],
        ["-", "203.0.113.7"],
        ["alice", "203.0.113.7"],
        ["-", "203.0.113.7"],
    ]
    ages = [2 * 60, 7 * 60, 20 * 60, 40 * 60, 2 * 3600, 3 * 3600]
    for row, age in zip(rows, ages, strict=True):
        assert age <= seconds_of(row[4]) < age + SLACK, row
    lefts = [row[5] for row in rows]
    assert lefts[2:] == ["-"] * 4
    for shown, left in zip(lefts[:2], [8 * 60, 3 * 60], strict=True):
        assert left - SLACK < seconds_of(shown) <= left, lefts


def test_flows_list_json(database_url: str, scenario: Scenario) -> None:
    s = scenario
    rows = flows_json(database_url)
    assert ids_in(rows) == [f.id for f in s.newest_first()]
    for row in rows:
        assert set(row) == FLOW_FIELDS
        assert row["kind"] == "login"
    by_id = {row["id"]: row for row in rows}
    expected = {
        s.beta_pending.id: (s.beta, "Beta App", "pending", None),
        s.alpha_pending.id: (s.alpha, "Alpha App", "pending", None),
        s.beta_consumed.id: (s.beta, "Beta App", "consumed", "bob"),
        s.revoked.id: (s.beta, "Beta App", "revoked", None),
        s.alpha_consumed.id: (s.alpha, "Alpha App", "consumed", "alice"),
        s.expired.id: (s.alpha, "Alpha App", "expired", None),
    }
    for flow_id, (client_id, name, status, consumer) in expected.items():
        row = by_id[flow_id]
        assert (row["client_id"], row["client_name"], row["status"], row["consumer"]) == (
            client_id, name, status, consumer,
        ), row  # fmt: skip

    for flow in s.newest_first():
        row = by_id[flow.id]
        assert parse_iso(row["created_at"]) == at(flow.created_at)
        assert parse_iso(row["expires_at"]) == at(flow.created_at + FLOW_TTL)
        age = int((s.now - flow.created_at).total_seconds())
        assert age <= row["age_seconds"] < age + SLACK, row

    assert by_id[s.alpha_pending.id]["requester_ip"] is None
    assert by_id[s.beta_pending.id]["requester_ip"] == "203.0.113.7"
    # seconds_left only for pending flows
    assert 8 * 60 - SLACK < by_id[s.beta_pending.id]["seconds_left"] <= 8 * 60
    assert 3 * 60 - SLACK < by_id[s.alpha_pending.id]["seconds_left"] <= 3 * 60
    for flow in (s.beta_consumed, s.revoked, s.alpha_consumed, s.expired):
        assert by_id[flow.id]["seconds_left"] is None
    # the end times
    consumed, revoked = by_id[s.alpha_consumed.id], by_id[s.revoked.id]
    assert parse_iso(consumed["consumed_at"]) == at(s.now - timedelta(hours=2, minutes=-1))
    assert consumed["revoked_at"] is None
    assert parse_iso(revoked["revoked_at"]) == at(s.now - timedelta(minutes=39))
    assert revoked["consumed_at"] is None
    for flow in (s.beta_pending, s.alpha_pending, s.expired):
        assert (by_id[flow.id]["consumed_at"], by_id[flow.id]["revoked_at"]) == (None, None)


def _thirty_minutes_ago(s: Scenario, tz: timezone = UTC) -> str:
    return (s.now - timedelta(minutes=30)).astimezone(tz).isoformat()


Arguments = Callable[[Scenario], list[str]]
Expected = Callable[[Scenario], list[MadeFlow]]


def case(name: str, arguments: Arguments, expected: Expected) -> Any:
    return pytest.param(arguments, expected, id=name)


FILTERS = [
    case(
        "status pending",
        lambda s: ["--status", "pending"],
        lambda s: [s.beta_pending, s.alpha_pending],
    ),
    case(
        "status consumed",
        lambda s: ["--status", "consumed"],
        lambda s: [s.beta_consumed, s.alpha_consumed],
    ),
    case("status expired", lambda s: ["--status", "expired"], lambda s: [s.expired]),
    case("status revoked", lambda s: ["--status", "revoked"], lambda s: [s.revoked]),
    case(
        "client",
        lambda s: ["--client", s.alpha],
        lambda s: [s.alpha_pending, s.alpha_consumed, s.expired],
    ),
    case(
        "client and status",
        lambda s: ["--client", s.beta, "--status", "consumed"],
        lambda s: [s.beta_consumed],
    ),
    case("unknown client", lambda s: ["--client", "0" * 32], lambda s: []),
    case("user alice", lambda s: ["--user", "alice"], lambda s: [s.alpha_consumed]),
    case("user bob", lambda s: ["--user", "bob"], lambda s: [s.beta_consumed]),
    case("unknown user", lambda s: ["--user", "nobody"], lambda s: []),
    case("since 1h", lambda s: ["--since", "1h"], lambda s: s.newest_first()[:4]),
    case(
        "since ISO UTC",
        lambda s: ["--since", _thirty_minutes_ago(s)],
        lambda s: s.newest_first()[:3],
    ),
    case(
        "since ISO +05:00",
        lambda s: ["--since", _thirty_minutes_ago(s, timezone(timedelta(hours=5)))],
        lambda s: s.newest_first()[:3],
    ),
    case(
        "since ISO naive is UTC",
        lambda s: ["--since", _thirty_minutes_ago(s).removesuffix("+00:00")],
        lambda s: s.newest_first()[:3],
    ),
    case(
        "since the future",
        lambda s: ["--since", (s.now + timedelta(hours=1)).isoformat()],
        lambda s: [],
    ),
    case("limit", lambda s: ["--limit", "2"], lambda s: [s.beta_pending, s.alpha_pending]),
    case(
        "limit and status",
        lambda s: ["--limit", "1", "--status", "consumed"],
        lambda s: [s.beta_consumed],
    ),
]


@pytest.mark.parametrize(("arguments", "expected"), FILTERS)
def test_flows_list_filters(
    database_url: str,
    scenario: Scenario,
    arguments: Arguments,
    expected: Expected,
) -> None:
    args = arguments(scenario)
    wanted = [f.id for f in expected(scenario)]
    assert ids_in(flows_json(database_url, *args)) == wanted
    header, *rows = table(baton(database_url, "flows", "list", *args))
    assert header == FLOWS_HEADER
    assert [row[0] for row in rows] == (wanted or ["(none)"])


@pytest.mark.parametrize(
    "arguments",
    [
        ["--since", "banana"],
        ["--since", "1x"],
        ["--status", "finished"],
        ["--limit", "0"],
        ["--limit", "lots"],
        # Past what a date can be: an OverflowError, not a usage error, before.
        ["--since", "99999999d"],
        ["--since", "9999999999999999999s"],
        ["--since", "0001-01-01T00:00:00+01:00"],
        ["--since", "9999-12-31T23:59:59-01:00"],
    ],
    ids=" ".join,
)
def test_flows_list_bad_usage(database_url: str, arguments: list[str]) -> None:
    result = baton(database_url, "flows", "list", *arguments, exit_code=2)
    assert result.stdout == ""
    assert arguments[0] in result.stderr


def test_flows_list_shortens_long_client_names_in_the_table(
    database_url: str, database: Database
) -> None:
    name = "A client with a name far longer than the column"
    flow = make_flow(database, create_client(database, name=name).client_id, utcnow())
    [row] = table(baton(database_url, "flows", "list"))[1:]
    assert row[:3] == [flow.id, "login", name[:24]]
    [document] = flows_json(database_url)
    assert document["client_name"] == name


def test_flows_list_of_an_empty_database(database_url: str) -> None:
    assert table(baton(database_url, "flows", "list")) == [FLOWS_HEADER, ["(none)"]]
    assert flows_json(database_url) == []


# -- flows show -------------------------------------------------------------------


def show_fields(result: Result) -> dict[str, str]:
    """``key: value`` lines; nested ones (indented, under ``request:``) as ``request.key``."""
    fields: dict[str, str] = {}
    section = ""
    for line in result.stdout.splitlines():
        match = re.fullmatch(r"( *)([a-z_]+):(?: +(.*))?", line)
        assert match, f"unexpected line {line!r} in:\n{result.stdout}"
        indent, key, value = match.groups()
        if indent:
            assert section, line
            fields[f"{section}.{key}"] = value or ""
        elif value is None:
            section = key
        else:
            section = ""
            fields[key] = value
    return fields


@dataclass(frozen=True)
class DetailedFlow:
    flow: MadeFlow
    client_id: str
    binding_hash: str


@pytest.fixture
def detailed(database: Database) -> DetailedFlow:
    """A pending flow created as ``/oauth2/authorize`` would, with PKCE, state and binding."""
    client_id = create_client(database, name="Alpha App").client_id
    request = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": "https://app.example/cb",
        "scope": "read write",
        "state": STATE,
        "code_challenge": CODE_CHALLENGE,
        "code_challenge_method": "S256",
        "nonce": NONCE,
    }
    binding_hash = tokens.digest("browser-binding-secret")
    flow = make_flow(
        database,
        client_id,
        utcnow() - timedelta(minutes=1),
        request=request,
        binding_hash=binding_hash,
        user_agent="Mozilla/5.0 (X11; Linux x86_64) TestBrowser/1.0",
    )
    return DetailedFlow(flow, client_id, binding_hash)


def assert_no_secret(output: str, detailed: DetailedFlow) -> None:
    secrets = {
        "redirection token": detailed.flow.token,
        "token hash": detailed.flow.token_hash,
        "code challenge": CODE_CHALLENGE,
        "state": STATE,
        "nonce": NONCE,
        "binding hash": detailed.binding_hash,
    }
    for what, value in secrets.items():
        assert value not in output, f"the {what} is shown:\n{output}"


def test_flows_show_json(database_url: str, detailed: DetailedFlow) -> None:
    result = baton(database_url, "flows", "show", detailed.flow.id, "--json")
    assert_no_secret(result.output, detailed)
    document = json.loads(result.stdout)
    assert set(document) == FLOW_FIELDS | {
        "request", "scopes", "redirect_uri", "binding", "requester_agent", "outcome",
    }  # fmt: skip
    assert document["id"] == detailed.flow.id
    assert document["status"] == "pending"
    assert document["client_id"] == detailed.client_id
    assert document["client_name"] == "Alpha App"
    assert document["request"] == {
        "response_type": "code",
        "client_id": detailed.client_id,
        "redirect_uri": "https://app.example/cb",
        "scope": "read write",
        "state_length": len(STATE),
        "code_challenge": "present",
        "code_challenge_method": "S256",
        "nonce_length": len(NONCE),
    }
    assert document["scopes"] == ["read", "write"]
    assert document["redirect_uri"] == "https://app.example/cb"
    assert document["binding"] == "bound to a browser"
    assert document["requester_agent"] == "Mozilla/5.0 (X11; Linux x86_64) TestBrowser/1.0"
    assert document["requester_ip"] == "203.0.113.7"
    assert document["outcome"] == "waiting for a login"
    assert 9 * 60 - SLACK < document["seconds_left"] <= 9 * 60


def test_flows_show_table(database_url: str, detailed: DetailedFlow) -> None:
    result = baton(database_url, "flows", "show", detailed.flow.id)
    assert_no_secret(result.output, detailed)
    fields = show_fields(result)
    assert fields["id"] == detailed.flow.id
    assert fields["kind"] == "login"
    assert fields["client_id"] == detailed.client_id
    assert fields["client_name"] == "Alpha App"
    assert fields["status"] == "pending"
    assert fields["request.state_length"] == str(len(STATE))
    assert fields["request.code_challenge"] == "present"
    assert fields["request.code_challenge_method"] == "S256"
    assert fields["request.nonce_length"] == str(len(NONCE))
    assert fields["request.scope"] == "read write"
    assert fields["request.redirect_uri"] == "https://app.example/cb"
    assert fields["redirect_uri"] == "https://app.example/cb"
    assert fields["binding"] == "bound to a browser"
    assert fields["outcome"] == "waiting for a login"
    assert parse_iso(fields["created_at"]) == at(detailed.flow.created_at)


def test_flows_show_outcomes(database_url: str, database: Database, scenario: Scenario) -> None:
    s = scenario
    with database.transaction() as db:
        sessions.create(
            db=db,
            user_id=users.require(db=db, username="alice").id,
            now=s.now - timedelta(hours=2, minutes=-1),
            duration=timedelta(hours=8),
            flow_id=s.alpha_consumed.pk,
        )
    outcomes = {
        s.alpha_consumed: ("consumed", "consumed by alice after 1m00s; 1 session(s) opened"),
        s.beta_consumed: ("consumed", "consumed by bob after 3m00s; 0 session(s) opened"),
        s.expired: ("expired", "expired unused"),
        s.revoked: ("revoked", "revoked 1m00s after creation"),
        s.alpha_pending: ("pending", "waiting for a login"),
    }
    for flow, (status, outcome) in outcomes.items():
        document = show_json(database_url, flow.id)
        assert (document["status"], document["outcome"]) == (status, outcome)
        fields = show_fields(baton(database_url, "flows", "show", flow.id))
        assert (fields["status"], fields["outcome"]) == (status, outcome)
    assert show_json(database_url, s.alpha_consumed.id)["consumer"] == "alice"
    assert show_json(database_url, s.expired.id)["binding"] == "not bound"


def test_flows_show_a_flow_consumed_by_a_removed_user(
    database_url: str, scenario: Scenario
) -> None:
    baton(database_url, "users", "remove", "alice", "--yes")
    document = show_json(database_url, scenario.alpha_consumed.id)
    assert document["status"] == "consumed"
    assert document["consumer"] is None
    assert document["outcome"] == (
        "consumed by a since-removed user after 1m00s; 0 session(s) opened"
    )


def test_flows_show_of_an_unknown_flow(database_url: str, scenario: Scenario) -> None:
    for extra in ([], ["--json"]):
        result = baton(database_url, "flows", "show", "0123456789abcdef", *extra, exit_code=1)
        assert error_of(result) == "Error: no flow with id '0123456789abcdef'"
        assert result.stdout == ""


# -- flows revoke -----------------------------------------------------------------


def statuses(url: str) -> dict[str, str]:
    return {row["id"]: row["status"] for row in flows_json(url)}


def revoked_ids(result: Result) -> set[str]:
    last = result.stdout.splitlines()[-1]
    match = re.fullmatch(r"revoked (\d+) flow\(s\)(?:: (.+))?", last)
    assert match, result.stdout
    ids = set((match[2] or "").split())
    assert len(ids) == int(match[1]), result.stdout
    return ids


def test_flows_revoke_by_id(database_url: str, database: Database, scenario: Scenario) -> None:
    s = scenario
    before = statuses(database_url)
    result = baton(database_url, "flows", "revoke", s.alpha_pending.id, s.beta_pending.id)
    assert revoked_ids(result) == {s.alpha_pending.id, s.beta_pending.id}
    assert len(result.stdout.splitlines()) == 1
    after = statuses(database_url)
    assert after == before | {s.alpha_pending.id: "revoked", s.beta_pending.id: "revoked"}
    # a login with a revoked token fails as with an unknown one
    assert consume(database, s.alpha_pending, "alice", utcnow()) is None
    assert consume(database, s.beta_pending, "alice", utcnow()) is None


def test_flows_revoke_a_consumed_flow_has_nothing_to_revoke(
    database_url: str, scenario: Scenario
) -> None:
    s = scenario
    before = statuses(database_url)
    result = baton(database_url, "flows", "revoke", s.alpha_consumed.id)
    assert result.stdout == (
        f"flow {s.alpha_consumed.id} is consumed; nothing to revoke\nrevoked 0 flow(s)\n"
    )
    assert statuses(database_url) == before


def test_flows_revoke_an_expired_flow_keeps_its_history(
    database_url: str, scenario: Scenario
) -> None:
    s = scenario
    before = statuses(database_url)
    result = baton(database_url, "flows", "revoke", s.expired.id)
    assert (
        result.stdout == f"flow {s.expired.id} is expired; nothing to revoke\nrevoked 0 flow(s)\n"
    )
    assert statuses(database_url) == before


def test_flows_revoke_a_mix_reports_each(database_url: str, scenario: Scenario) -> None:
    s = scenario
    result = baton(
        database_url, "flows", "revoke", s.beta_pending.id, s.revoked.id, s.beta_pending.id
    )
    assert result.stdout.splitlines() == [
        f"flow {s.revoked.id} is revoked; nothing to revoke",
        f"revoked 1 flow(s): {s.beta_pending.id}",
    ]


def test_flows_revoke_an_unknown_id_revokes_nothing(
    database_url: str, database: Database, scenario: Scenario
) -> None:
    s = scenario
    before = statuses(database_url)
    result = baton(
        database_url, "flows", "revoke", s.alpha_pending.id, "0123456789abcdef", exit_code=1
    )
    assert error_of(result) == "Error: no flow with id '0123456789abcdef'"
    assert statuses(database_url) == before
    assert consume(database, s.alpha_pending, "alice", utcnow()) is not None


def test_flows_revoke_all_pending_of_a_client(
    database_url: str, database: Database, scenario: Scenario
) -> None:
    s = scenario
    before = statuses(database_url)
    result = baton(database_url, "flows", "revoke", "--client", s.beta, "--all-pending")
    assert result.stdout == f"revoked 1 flow(s): {s.beta_pending.id}\n"
    assert statuses(database_url) == before | {s.beta_pending.id: "revoked"}
    assert consume(database, s.beta_pending, "alice", utcnow()) is None
    assert consume(database, s.alpha_pending, "alice", utcnow()) is not None


def test_flows_revoke_all_pending_of_an_unknown_client(
    database_url: str, scenario: Scenario
) -> None:
    before = statuses(database_url)
    result = baton(
        database_url, "flows", "revoke", "--client", "0" * 32, "--all-pending", exit_code=1
    )
    assert error_of(result) == f"Error: no client with id {'0' * 32!r}"
    assert statuses(database_url) == before


@pytest.mark.parametrize(
    "arguments",
    [
        [],
        ["--all-pending"],
        ["--client", "CLIENT"],
        ["ID", "--client", "CLIENT", "--all-pending"],
    ],
    ids=["nothing", "all-pending alone", "client without all-pending", "ids and client"],
)
def test_flows_revoke_bad_usage(
    database_url: str, scenario: Scenario, arguments: list[str]
) -> None:
    s = scenario
    replaced = [{"CLIENT": s.beta, "ID": s.alpha_pending.id}.get(a, a) for a in arguments]
    before = statuses(database_url)
    result = baton(database_url, "flows", "revoke", *replaced, exit_code=2)
    assert result.stdout == ""
    assert "Error" in result.stderr
    assert statuses(database_url) == before


# -- flows purge ------------------------------------------------------------------


def finished_ids(s: Scenario) -> set[str]:
    return {s.expired.id, s.alpha_consumed.id, s.revoked.id, s.beta_consumed.id}


def pending_ids(s: Scenario) -> set[str]:
    return {s.alpha_pending.id, s.beta_pending.id}


def test_flows_purge_dry_run_deletes_nothing(
    database_url: str, database: Database, scenario: Scenario
) -> None:
    everything = remaining(database)
    assert len(everything) == 6
    result = baton(database_url, "flows", "purge", "--dry-run", "--older-than", "0s")
    assert result.stdout == "would purge 4 flow(s) that ended more than 0s ago\n"
    result = baton(database_url, "flows", "purge", "--dry-run", "--older-than", "1h")
    assert result.stdout == "would purge 2 flow(s) that ended more than 1h ago\n"
    result = baton(database_url, "flows", "purge", "--dry-run")
    assert result.stdout == "would purge 0 flow(s) that ended more than 1d ago\n"
    assert remaining(database) == everything


def test_flows_purge_older_than_zero_keeps_only_pending(
    database_url: str, database: Database, scenario: Scenario
) -> None:
    result = baton(database_url, "flows", "purge", "--older-than", "0s")
    assert result.stdout == "purged 4 flow(s) that ended more than 0s ago\n"
    assert remaining(database) == pending_ids(scenario)
    again = baton(database_url, "flows", "purge", "--older-than", "0s")
    assert again.stdout == "purged 0 flow(s) that ended more than 0s ago\n"
    assert remaining(database) == pending_ids(scenario)


def test_flows_purge_older_than_an_hour(
    database_url: str, database: Database, scenario: Scenario
) -> None:
    s = scenario
    result = baton(database_url, "flows", "purge", "--older-than", "1h")
    assert result.stdout == "purged 2 flow(s) that ended more than 1h ago\n"
    assert remaining(database) == pending_ids(s) | {s.revoked.id, s.beta_consumed.id}


def test_flows_purge_by_default_keeps_recently_finished_flows(
    database_url: str, database: Database, scenario: Scenario
) -> None:
    ancient = make_flow(database, scenario.alpha, scenario.now - timedelta(days=3))
    result = baton(database_url, "flows", "purge")
    assert result.stdout == "purged 1 flow(s) that ended more than 1d ago\n"
    assert ancient.id not in remaining(database)
    assert remaining(database) == finished_ids(scenario) | pending_ids(scenario)


def test_flows_purge_in_batches_of_one_deletes_all(
    database_url: str, database: Database, scenario: Scenario
) -> None:
    result = baton(database_url, "flows", "purge", "--older-than", "0s", "--batch-size", "1")
    assert result.stdout == "purged 4 flow(s) that ended more than 0s ago\n"
    assert remaining(database) == pending_ids(scenario)


@pytest.mark.parametrize(
    "arguments",
    [
        ["--older-than", "x"],
        ["--older-than", "-1h"],
        ["--older-than", "99999999999d"],
        ["--older-than", "36501d"],
        ["--batch-size", "0"],
    ],
    ids=" ".join,
)
def test_flows_purge_bad_usage(
    database_url: str, database: Database, scenario: Scenario, arguments: list[str]
) -> None:
    result = baton(database_url, "flows", "purge", *arguments, exit_code=2)
    assert arguments[0] in result.stderr
    assert len(remaining(database)) == 6


# -- flows stats ------------------------------------------------------------------


def stats_json(url: str, *args: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(baton(url, "flows", "stats", *args, "--json").stdout)
    return document


def test_flows_stats_json(database_url: str, scenario: Scenario) -> None:
    s = scenario
    document = stats_json(database_url)
    assert document == {
        "by_status": {"pending": 2, "consumed": 2, "expired": 1, "revoked": 1},
        "by_client": sorted(
            [
                {
                    "client_id": s.alpha,
                    "client_name": "Alpha App",
                    "pending": 1,
                    "consumed": 1,
                    "expired": 1,
                    "revoked": 0,
                },
                {
                    "client_id": s.beta,
                    "client_name": "Beta App",
                    "pending": 1,
                    "consumed": 1,
                    "expired": 0,
                    "revoked": 1,
                },
            ],
            key=lambda c: str(c["client_id"]),
        ),
        "pending_age": {"<1m": 0, "1m-5m": 1, "5m-15m": 1, "15m-1h": 0, ">=1h": 0},
        "window_seconds": 86400,
        "created_in_window": 6,
        "consumed_in_window": 2,
        "consumption_rate": pytest.approx(2 / 6),
        "median_seconds_to_login": 120.0,  # 1m and 3m
    }


def test_flows_stats_json_with_a_window(database_url: str, scenario: Scenario) -> None:
    document = stats_json(database_url, "--window", "1h")
    assert document["window_seconds"] == 3600
    assert document["created_in_window"] == 4
    assert document["consumed_in_window"] == 1
    assert document["consumption_rate"] == pytest.approx(0.25)
    assert document["median_seconds_to_login"] == 180.0
    # the window does not change the counts of what exists
    assert document["by_status"] == {"pending": 2, "consumed": 2, "expired": 1, "revoked": 1}


def test_flows_stats_table(database_url: str, scenario: Scenario) -> None:
    s = scenario
    result = baton(database_url, "flows", "stats")
    lines = result.stdout.splitlines()
    assert lines[:4] == [
        "flows by status:  pending 2  consumed 2  expired 1  revoked 1",
        "pending by age:   <1m 0  1m-5m 1  5m-15m 1  15m-1h 0  >=1h 0",
        "last 1d:          6 created, 2 consumed (33%), median time to login 2m00s",
        "",
    ]
    header, *rows = table(result)[4:]
    assert header == ["CLIENT ID", "NAME", "PENDING", "CONSUMED", "EXPIRED", "REVOKED"]
    assert rows == sorted(
        [[s.alpha, "Alpha App", "1", "1", "1", "0"], [s.beta, "Beta App", "1", "1", "0", "1"]]
    )

    windowed = baton(database_url, "flows", "stats", "--window", "1h").stdout.splitlines()
    assert (
        windowed[2] == "last 1h:          4 created, 1 consumed (25%), median time to login 3m00s"
    )


def test_flows_stats_of_an_empty_database(database_url: str) -> None:
    assert stats_json(database_url) == {
        "by_status": {"pending": 0, "consumed": 0, "expired": 0, "revoked": 0},
        "by_client": [],
        "pending_age": {"<1m": 0, "1m-5m": 0, "5m-15m": 0, "15m-1h": 0, ">=1h": 0},
        "window_seconds": 86400,
        "created_in_window": 0,
        "consumed_in_window": 0,
        "consumption_rate": None,
        "median_seconds_to_login": None,
    }
    lines = baton(database_url, "flows", "stats").stdout.splitlines()
    assert lines[2] == "last 1d:          0 created, 0 consumed (-), median time to login -"
    assert lines[-1] == "(none)"


@pytest.mark.parametrize("window", ["soon", "99999999999d", "36501d"])
def test_flows_stats_bad_window(database_url: str, window: str) -> None:
    result = baton(database_url, "flows", "stats", "--window", window, exit_code=2)
    assert "--window" in result.stderr


def test_flows_durations_go_up_to_100_years(database_url: str, scenario: Scenario) -> None:
    assert len(flows_json(database_url, "--since", "36500d")) == 6
    assert stats_json(database_url, "--window", "36500d")["window_seconds"] == 36500 * 86400
    dry_run = baton(database_url, "flows", "purge", "--older-than", "36500d", "--dry-run")
    assert dry_run.stdout == "would purge 0 flow(s) that ended more than 36500d ago\n"


# -- users: sessions --------------------------------------------------------------


def open_session(
    database: Database,
    username: str,
    *,
    start: datetime | None = None,
    duration: timedelta = timedelta(hours=8),
    ip: str | None = None,
    user_agent: str | None = None,
) -> sessions.NewSession:
    with database.transaction() as db:
        user = users.require(db=db, username=username)
        return sessions.create(
            db=db,
            user_id=user.id,
            now=start or utcnow(),
            duration=duration,
            ip=ip,
            user_agent=user_agent,
        )


def end_session(database: Database, secret: str) -> None:
    with database.transaction() as db:
        assert sessions.revoke(db=db, secret=secret, now=utcnow())


def session_user(database: Database, secret: str) -> str | None:
    """Whom the cookie ``secret`` signs in, as the server would see it."""
    with database.transaction() as db:
        user = sessions.current_user(db=db, secret=secret, now=utcnow())
        return None if user is None else user.username


def session_rows(database: Database) -> int:
    with database.transaction() as db:
        return db.scalar(select(func.count()).select_from(BrowserSession)) or 0


USER_FIELDS = {
    "username", "disabled", "created_at", "password_changed_at", "password_hash_scheme",
}  # fmt: skip


def user_show_json(url: str, name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(baton(url, "users", "show", name, "--json").stdout)
    return document


def test_users_show(database_url: str, database: Database) -> None:
    add_users(database, "alice", "bob")
    open_session(database, "alice")
    open_session(database, "alice")
    end_session(database, open_session(database, "alice").secret)
    open_session(
        database, "alice", start=utcnow() - timedelta(hours=2), duration=timedelta(hours=1)
    )
    open_session(database, "bob")
    stored = stored_hash(database, "alice")

    result = baton(database_url, "users", "show", "alice", "--json")
    document = json.loads(result.stdout)
    assert set(document) == USER_FIELDS | {"live_sessions"}
    assert document["username"] == "alice"
    assert document["disabled"] is False
    assert document["password_hash_scheme"] == "argon2id"
    assert document["live_sessions"] == 2
    assert parse_iso(document["created_at"]) == parse_iso(document["password_changed_at"])
    assert stored not in result.output
    assert "$argon2id$" not in result.output

    shown = baton(database_url, "users", "show", "alice")
    assert shown.stdout.splitlines() == [
        f"{key + ':':<22}{value}"
        for key, value in [
            ("username", "alice"),
            ("disabled", "False"),
            ("created_at", document["created_at"]),
            ("password_changed_at", document["password_changed_at"]),
            ("password_hash_scheme", "argon2id"),
            ("live_sessions", "2"),
        ]
    ]
    assert "$argon2id$" not in shown.output


def test_users_disable_ends_sessions_and_enable_allows_login_again(
    database_url: str, database: Database
) -> None:
    add_users(database, "alice", "bob")
    alice = open_session(database, "alice").secret
    bob = open_session(database, "bob").secret
    assert session_user(database, alice) == "alice"

    result = baton(database_url, "users", "disable", "alice")
    assert result.stdout == "disabled user alice; ended 1 session(s)\n"
    assert session_user(database, alice) is None
    assert user_show_json(database_url, "alice")["disabled"] is True
    assert user_show_json(database_url, "alice")["live_sessions"] == 0

    result = baton(database_url, "users", "enable", "alice")
    assert result.stdout == "enabled user alice\n"
    assert user_show_json(database_url, "alice")["disabled"] is False
    assert [u["username"] for u in list_json(database_url, "users") if not u["disabled"]] == [
        "alice", "bob",
    ]  # fmt: skip
    # the sessions were ended, not merely hidden while the user was disabled
    assert session_user(database, alice) is None
    assert session_user(database, open_session(database, "alice").secret) == "alice"
    assert session_user(database, bob) == "bob"


def test_users_passwd_ends_sessions(database_url: str, database: Database) -> None:
    add_users(database, "alice", "bob")
    first = open_session(database, "alice").secret
    second = open_session(database, "alice").secret
    bob = open_session(database, "bob").secret
    assert session_user(database, first) == "alice"

    result = baton(
        database_url, "users", "passwd", "alice", "--password-stdin", stdin="new password\n"
    )
    assert result.stdout == "changed the password of alice; ended 2 session(s)\n"
    assert password_works(database, "alice", "new password")
    assert session_user(database, first) is None
    assert session_user(database, second) is None
    assert session_user(database, bob) == "bob"


def test_users_remove_with_yes(database_url: str, database: Database) -> None:
    add_users(database, "alice", "bob")
    alice = open_session(database, "alice").secret
    open_session(database, "alice")
    bob = open_session(database, "bob").secret
    assert session_rows(database) == 3

    result = baton(database_url, "users", "remove", "alice", "--yes")
    assert result.stdout == "removed user alice\n"
    assert [u["username"] for u in list_json(database_url, "users")] == ["bob"]
    with database.transaction() as db:
        assert users.get_by_username(db=db, username="alice") is None
    assert session_rows(database) == 1
    assert session_user(database, alice) is None
    assert session_user(database, bob) == "bob"


def test_users_remove_refused_at_the_prompt(database_url: str, database: Database) -> None:
    add_users(database, "alice")
    alice = open_session(database, "alice").secret
    result = baton(database_url, "users", "remove", "alice", stdin="n\n", exit_code=1)
    assert "Delete user 'alice'" in result.output
    assert [u["username"] for u in list_json(database_url, "users")] == ["alice"]
    assert session_user(database, alice) == "alice"


def test_users_remove_confirmed_at_the_prompt(database_url: str, database: Database) -> None:
    add_users(database, "alice")
    result = baton(database_url, "users", "remove", "alice", stdin="y\n")
    assert result.stdout.endswith("removed user alice\n")
    assert list_json(database_url, "users") == []


def test_users_sessions(database_url: str, database: Database) -> None:
    add_users(database, "alice", "bob")
    kept = open_session(
        database, "alice", ip="198.51.100.4", user_agent="Mozilla/5.0 Firefox/128.0"
    )
    ended = open_session(database, "alice", ip="198.51.100.5", user_agent="curl/8.0")
    end_session(database, ended.secret)
    open_session(database, "bob", ip="198.51.100.6")

    result = baton(database_url, "users", "sessions", "alice", "--json")
    assert kept.secret not in result.output
    assert kept.row.id_hash not in result.output
    [row] = json.loads(result.stdout)
    assert set(row) == {"session", "created_at", "expires_at", "ip", "user_agent",
                        "expires_in_seconds"}  # fmt: skip
    assert row["session"] == kept.row.id
    assert parse_iso(row["created_at"]) == at(kept.row.created_at)
    assert parse_iso(row["expires_at"]) == at(kept.row.expires_at)
    assert (row["ip"], row["user_agent"]) == ("198.51.100.4", "Mozilla/5.0 Firefox/128.0")
    assert 8 * 3600 - SLACK < row["expires_in_seconds"] <= 8 * 3600

    header, *rows = table(baton(database_url, "users", "sessions", "alice"))
    assert header == ["SESSION", "CREATED", "EXPIRES IN", "IP", "USER AGENT"]
    [shown] = rows
    assert shown[0] == str(kept.row.id)
    assert shown[1] == kept.row.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert 8 * 3600 - 2 * SLACK < seconds_of(shown[2]) <= 8 * 3600  # shown as 7h59m
    assert shown[3:] == ["198.51.100.4", "Mozilla/5.0 Firefox/128.0"]


def test_users_sessions_of_a_user_without_any(database_url: str, database: Database) -> None:
    add_users(database, "alice")
    header = ["SESSION", "CREATED", "EXPIRES IN", "IP", "USER AGENT"]
    assert table(baton(database_url, "users", "sessions", "alice")) == [header, ["(none)"]]
    assert json.loads(baton(database_url, "users", "sessions", "alice", "--json").stdout) == []


def test_users_logout(database_url: str, database: Database) -> None:
    add_users(database, "alice", "bob")
    mine = [open_session(database, "alice").secret for _ in range(2)]
    bob = open_session(database, "bob").secret
    assert [session_user(database, s) for s in mine] == ["alice", "alice"]

    result = baton(database_url, "users", "logout", "alice")
    assert result.stdout == "ended 2 session(s) of alice\n"
    assert [session_user(database, s) for s in mine] == [None, None]
    assert session_user(database, bob) == "bob"
    assert baton(database_url, "users", "logout", "alice").stdout == "ended 0 session(s) of alice\n"
    assert user_show_json(database_url, "alice")["disabled"] is False


@pytest.mark.parametrize(
    ("command", "stdin"),
    [
        (["show"], None),
        (["show", "--json"], None),
        (["enable"], None),
        (["disable"], None),
        (["remove", "--yes"], None),
        (["remove"], "y\n"),
        (["sessions"], None),
        (["sessions", "--json"], None),
        (["logout"], None),
        (["passwd", "--password-stdin"], "new password\n"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
def test_users_commands_with_an_unknown_name(
    database_url: str, database: Database, command: list[str], stdin: str | None
) -> None:
    add_users(database, "alice")
    result = baton(
        database_url, "users", command[0], "nobody", *command[1:], stdin=stdin, exit_code=1
    )
    assert error_of(result) == "Error: no user named 'nobody'"
    assert result.stdout == ""
    assert [u["username"] for u in list_json(database_url, "users")] == ["alice"]


# -- users import -----------------------------------------------------------------


@cache
def bcrypt_hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def lenses_config(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


def lenses_users(entries: list[tuple[str, str]]) -> str:
    lines = ["auth:", "  users:"]
    for username, password in entries:
        lines += [f"  - username: {username}", f"    password: {password}"]
    return "\n".join(lines) + "\n"


def import_file(url: str, path: Path, *args: str, exit_code: int = 0) -> Result:
    return baton(url, "users", "import", str(path), *args, exit_code=exit_code)


def test_users_import_creates_users_with_their_bcrypt_hash(
    database_url: str, database: Database, tmp_path: Path
) -> None:
    bob, brain = bcrypt_hash("bob's password"), bcrypt_hash("brain's password")
    path = lenses_config(tmp_path, lenses_users([("bob", bob), ("brain", brain)]))
    result = import_file(database_url, path)
    assert result.stdout == "created  bob\ncreated  brain\n2 created, 0 existing\n"

    assert stored_hash(database, "bob") == bob
    assert stored_hash(database, "brain") == brain
    for username in ("bob", "brain"):
        verification = verify_password(stored_hash(database, username), f"{username}'s password")
        assert verification.ok is True
        assert verification.needs_rehash is True
    assert not verify_password(bob, "brain's password").ok
    listed = list_json(database_url, "users")
    assert [(u["username"], u["password_hash_scheme"]) for u in listed] == [
        ("bob", "bcrypt"), ("brain", "bcrypt"),
    ]  # fmt: skip


def test_users_import_twice_reports_existing_users(
    database_url: str, database: Database, tmp_path: Path
) -> None:
    bob, brain = bcrypt_hash("bob's password"), bcrypt_hash("brain's password")
    path = lenses_config(tmp_path, lenses_users([("bob", bob), ("brain", brain)]))
    first = json.loads(import_file(database_url, path, "--json").stdout)
    assert first == {"created": ["bob", "brain"], "existing": []}

    again = import_file(database_url, path)
    assert again.stdout == (
        "existing bob (left unchanged)\nexisting brain (left unchanged)\n0 created, 2 existing\n"
    )
    assert json.loads(import_file(database_url, path, "--json").stdout) == {
        "created": [],
        "existing": ["bob", "brain"],
    }
    assert [u["username"] for u in list_json(database_url, "users")] == ["bob", "brain"]


def test_users_import_leaves_an_existing_user_unchanged(
    database_url: str, database: Database, tmp_path: Path
) -> None:
    add_users(database, "bob")
    path = lenses_config(
        tmp_path, lenses_users([("bob", bcrypt_hash("x")), ("brain", bcrypt_hash("y"))])
    )
    result = json.loads(import_file(database_url, path, "--json").stdout)
    assert result == {"created": ["brain"], "existing": ["bob"]}
    assert stored_hash(database, "bob") == argon2_hash()


INVALID_CONFIGS: list[tuple[str, str, str]] = [
    ("not yaml", "auth:\n  users: [unclosed\n  - {\n", "not a YAML file"),
    ("not a mapping", "- just\n- a list\n", "no auth.users list"),
    ("no auth", "server:\n  port: 9991\n", "no auth.users list"),
    ("empty auth", "auth:\n", "no auth.users list"),
    ("auth not a mapping", "auth: basic\n", "no auth.users list"),
    ("no users", "auth:\n  sessionDuration: 24h\n", "no auth.users list"),
    ("users not a list", "auth:\n  users: bob\n", "no auth.users list"),
    ("entry not a mapping", "auth:\n  users:\n  - bob\n", "auth.users[0]"),
    ("entry without password", "auth:\n  users:\n  - username: bob\n", "auth.users[0] (bob)"),
    (
        "plaintext password",
        "auth:\n  users:\n  - username: bob\n    password: builder\n",
        "auth.users[0] (bob): the password must be a bcrypt or argon2id hash",
    ),
    ("entry without username", "auth:\n  users:\n  - password: HASH\n", "auth.users[0]"),
    (
        "control character in username",
        'auth:\n  users:\n  - username: "bob\\nroot"\n    password: HASH\n',
        "auth.users[0]: the user name must not contain control characters",
    ),
    (
        "truncated bcrypt hash",
        "auth:\n  users:\n  - username: bob\n    password: $2a$12$XQW..XQrtZX\n",
        "auth.users[0] (bob): the password must be a bcrypt or argon2id hash",
    ),
]


@pytest.mark.parametrize(
    ("text", "problem"), [c[1:] for c in INVALID_CONFIGS], ids=[c[0] for c in INVALID_CONFIGS]
)
def test_users_import_refuses_an_invalid_file(
    database_url: str, tmp_path: Path, text: str, problem: str
) -> None:
    path = lenses_config(tmp_path, text.replace("HASH", bcrypt_hash("pw")))
    result = import_file(database_url, path, exit_code=1)
    message = error_of(result)
    assert message.startswith(f"Error: {path}: "), message
    assert problem in message
    assert result.stdout == ""
    assert list_json(database_url, "users") == []


def test_users_import_refuses_a_bad_entry_after_good_ones(
    database_url: str, tmp_path: Path
) -> None:
    entries = [("bob", bcrypt_hash("pw")), ("brain", bcrypt_hash("pw")), ("pinky", "builder")]
    path = lenses_config(tmp_path, lenses_users(entries))
    message = error_of(import_file(database_url, path, exit_code=1))
    assert "auth.users[2] (pinky)" in message
    assert list_json(database_url, "users") == []


def test_users_import_refuses_duplicate_usernames(database_url: str, tmp_path: Path) -> None:
    entries = [("bob", bcrypt_hash("a")), ("brain", bcrypt_hash("b")), ("bob", bcrypt_hash("c"))]
    path = lenses_config(tmp_path, lenses_users(entries))
    result = import_file(database_url, path, exit_code=1)
    assert error_of(result) == f"Error: {path}: duplicate usernames: bob"
    assert list_json(database_url, "users") == []


def test_users_import_of_a_missing_file(database_url: str, tmp_path: Path) -> None:
    result = import_file(database_url, tmp_path / "absent.yaml", exit_code=2)
    assert "absent.yaml" in result.stderr
    assert list_json(database_url, "users") == []


# -- clients show, update, rotate-secret ----------------------------------------


CLIENT_FIELDS = {
    "client_id", "name", "type", "first_party", "redirect_uris", "scope", "grant_types",
    "provenance", "created_at",
}  # fmt: skip


def client_show_json(url: str, client_id: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(baton(url, "clients", "show", client_id, "--json").stdout)
    return document


def confidential_client(url: str) -> dict[str, Any]:
    return add_client(
        url, "--first-party", "--scope", "read write", "--redirect-uri", "https://app.example/cb"
    )


def test_clients_show(database_url: str, database: Database) -> None:
    added = confidential_client(database_url)
    row = stored_client(database, added["client_id"])
    assert row is not None
    assert row.secret_hash is not None

    result = baton(database_url, "clients", "show", added["client_id"], "--json")
    document = json.loads(result.stdout)
    assert set(document) == CLIENT_FIELDS
    assert document == {
        "client_id": added["client_id"],
        "name": "App",
        "type": "confidential",
        "first_party": True,
        "redirect_uris": ["https://app.example/cb"],
        "scope": "read write",
        "grant_types": ["authorization_code", "refresh_token"],
        "provenance": "cli",
        "created_at": document["created_at"],
    }
    parse_iso(document["created_at"])
    shown = baton(database_url, "clients", "show", added["client_id"])
    assert shown.stdout.splitlines() == [
        f"client_id:     {added['client_id']}",
        "name:          App",
        "type:          confidential",
        "first_party:   True",
        "redirect_uris: https://app.example/cb",
        "scope:         read write",
        "grant_types:   authorization_code refresh_token",
        "provenance:    cli",
        f"created_at:    {document['created_at']}",
    ]
    for output in (result.output, shown.output):
        assert added["client_secret"] not in output
        assert row.secret_hash not in output


def test_clients_update(database_url: str) -> None:
    added = confidential_client(database_url)
    other = confidential_client(database_url)
    result = baton(
        database_url, "clients", "update", added["client_id"],
        "--name", "Renamed", "--scope", "read",
        "--redirect-uri", "https://new.example/cb", "--third-party",
    )  # fmt: skip
    assert result.stdout == f"updated client {added['client_id']}\n"
    document = client_show_json(database_url, added["client_id"])
    assert document["name"] == "Renamed"
    assert document["scope"] == "read"
    assert document["redirect_uris"] == ["https://new.example/cb"]
    assert document["first_party"] is False
    assert document["type"] == "confidential"
    shown = baton(database_url, "clients", "show", added["client_id"]).stdout.splitlines()
    assert "name:          Renamed" in shown
    assert "redirect_uris: https://new.example/cb" in shown
    # the other client is untouched
    assert client_show_json(database_url, other["client_id"])["name"] == "App"
    assert client_show_json(database_url, other["client_id"])["first_party"] is True


def test_clients_update_one_field_keeps_the_others(database_url: str) -> None:
    added = confidential_client(database_url)
    before = client_show_json(database_url, added["client_id"])
    baton(database_url, "clients", "update", added["client_id"], "--third-party")
    assert client_show_json(database_url, added["client_id"]) == before | {"first_party": False}
    baton(database_url, "clients", "update", added["client_id"], "--first-party")
    assert client_show_json(database_url, added["client_id"]) == before


def test_clients_update_refuses_an_invalid_redirect_uri(database_url: str) -> None:
    added = confidential_client(database_url)
    before = client_show_json(database_url, added["client_id"])
    result = baton(
        database_url, "clients", "update", added["client_id"],
        "--name", "Renamed", "--redirect-uri", "http://evil.example/cb",
        exit_code=1,
    )  # fmt: skip
    assert error_of(result).startswith("Error: redirect URI 'http://evil.example/cb' ")
    assert client_show_json(database_url, added["client_id"]) == before


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        (
            "--redirect-uri",
            "https://[::1/",
            "Error: redirect URI 'https://[::1/' is not a valid URI",
        ),
        (
            "--redirect-uri",
            "https://app.example/\x01",
            "Error: redirect URI 'https://app.example/\\x01' contains control characters",
        ),
        ("--name", "Renamed\nx", "Error: the client name must not contain control characters"),
    ],
    ids=["unclosed IPv6 literal", "control character in redirect URI", "newline in name"],
)
def test_clients_update_refuses_a_bad_value(
    database_url: str, option: str, value: str, message: str
) -> None:
    added = confidential_client(database_url)
    before = client_show_json(database_url, added["client_id"])
    result = baton(
        database_url, "clients", "update", added["client_id"], option, value, exit_code=1
    )
    assert error_of(result) == message
    assert client_show_json(database_url, added["client_id"]) == before


def test_clients_update_without_options(database_url: str) -> None:
    added = confidential_client(database_url)
    before = client_show_json(database_url, added["client_id"])
    result = baton(database_url, "clients", "update", added["client_id"], exit_code=2)
    assert "nothing to change" in result.stderr
    assert client_show_json(database_url, added["client_id"]) == before


@pytest.mark.parametrize(
    "command",
    [
        ["show"],
        ["show", "--json"],
        ["update", "--name", "X"],
        ["rotate-secret"],
        ["rotate-secret", "--json"],
    ],
    ids=" ".join,
)
def test_clients_commands_with_an_unknown_id(database_url: str, command: list[str]) -> None:
    result = baton(database_url, "clients", command[0], "0" * 32, *command[1:], exit_code=1)
    assert error_of(result) == f"Error: no client with id {'0' * 32!r}"
    assert result.stdout == ""


def test_clients_rotate_secret(database_url: str, database: Database) -> None:
    added = confidential_client(database_url)
    old = added["client_secret"]
    result = baton(database_url, "clients", "rotate-secret", added["client_id"], "--json")
    document = json.loads(result.stdout)
    assert set(document) == {"client_id", "client_secret"}
    assert document["client_id"] == added["client_id"]
    new = document["client_secret"]
    assert isinstance(new, str)
    assert len(new) >= 32
    assert new != old
    row = stored_client(database, added["client_id"])
    assert row is not None
    assert OAuthClient(row).check_client_secret(new) is True
    assert OAuthClient(row).check_client_secret(old) is False


def test_clients_rotate_secret_table(database_url: str, database: Database) -> None:
    added = confidential_client(database_url)
    result = baton(database_url, "clients", "rotate-secret", added["client_id"])
    match = re.fullmatch(r"client_secret: (\S+)  \(shown only once\)\n", result.stdout)
    assert match, result.stdout
    row = stored_client(database, added["client_id"])
    assert row is not None
    assert OAuthClient(row).check_client_secret(match[1]) is True
    assert OAuthClient(row).check_client_secret(added["client_secret"]) is False


def test_clients_rotate_secret_of_a_public_client(database_url: str, database: Database) -> None:
    added = add_client(database_url, "--public", "--redirect-uri", "https://app.example/cb")
    result = baton(database_url, "clients", "rotate-secret", added["client_id"], exit_code=1)
    assert error_of(result) == f"Error: client {added['client_id']!r} is public and has no secret"
    row = stored_client(database, added["client_id"])
    assert row is not None
    assert (row.public, row.secret_hash) == (True, None)


# -- hash-password ----------------------------------------------------------------


def test_hash_password(database_url: str, database: Database) -> None:
    result = baton(None, "hash-password", stdin="pw\n")
    [hashed] = result.stdout.splitlines()
    assert hashed.startswith("$argon2id$")
    assert verify_password(hashed, "pw").ok
    assert not verify_password(hashed, "pw\n").ok
    assert not verify_password(hashed, "other").ok
    # usable as is by an import
    create_user_with_hash(database, "carol", hashed)
    assert password_works(database, "carol", "pw")


@pytest.mark.parametrize("stdin", ["", "\n"], ids=["eof", "newline"])
def test_hash_password_refuses_an_empty_password(stdin: str) -> None:
    result = baton(None, "hash-password", stdin=stdin, exit_code=1)
    assert error_of(result) == "Error: the password must not be empty"
    assert result.stdout == ""


# -- help -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        (["flows"], "Inspect and manage pending flows"),
        (["flows", "list"], "baton flows list --status pending"),
        (["flows", "show"], "Everything stored about one flow"),
        (["flows", "revoke"], "baton flows revoke --client"),
        (["flows", "purge"], "baton flows purge --dry-run"),
        (["flows", "stats"], "Counts by status and client"),
        (["users", "show"], "Show user NAME"),
        (["users", "enable"], "Allow user NAME to sign in again"),
        (["users", "remove"], "Delete user NAME"),
        (["users", "sessions"], "List the live sessions of user NAME"),
        (["users", "logout"], "End every session of user NAME"),
        (["users", "import"], "password: $2a$12$"),
        (["clients", "show"], "Show one client"),
        (["clients", "update"], "baton clients update"),
        (["clients", "rotate-secret"], "Give a confidential client a new secret"),
        (["hash-password"], "baton hash-password"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
def test_help_of_the_admin_commands(command: list[str], shown: str) -> None:
    result = baton(None, *command, "--help")
    assert result.stdout.startswith("Usage: ")
    assert " ".join(["main", *command]) in result.stdout.splitlines()[0]
    assert shown in result.stdout
