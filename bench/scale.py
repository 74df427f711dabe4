"""Consume and purge at scale: 1,000,000 flows and 100,000 users on PostgreSQL.

Two fresh databases, each behind its own ``baton serve``: a small one (1,000
finished flows) and a big one (1,000,000), both with the same users, filled in
SQL (``INSERT … SELECT generate_series``, no ORM loop). Then:

1. the consume path through HTTP (authorize, which creates a flow, then
   ``POST /api/v1/login`` with its redirection token, cheap argon2id) at a
   steady paced rate on each server in turn, and the bare ``flows.consume`` in
   a loop in this process: p50/p99 at both sizes, the ratio (target: login p99
   at the big size within 1.5x of the small), and ``EXPLAIN (ANALYZE)`` of the
   consume UPDATE and of a purge batch on the big database;
2. the purge of every finished flow of the big database (the server's own
   purge function, or ``baton flows purge``) while logins run at the same
   paced rate: duration, rows/s, login p99 just before and during (target:
   within 2x), then after it and during the VACUUM that autovacuum would run.

    .venv/bin/python bench/scale.py [--quick] [--flows 1000000] [--small 1000]
        [--users 100000] [--rate 15] [--purge server|cli] [--results PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import multiprocessing
import random
import re
import resource
import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import harness
from loadgen import REQUEST_TIMEOUT, Http, Load, Unexpected, once, run_load

PASSWORD = "bench password, long enough"  # noqa: S105 (a benchmark user)
REDIRECT_URI = "http://127.0.0.1:9/cb"  # never followed
AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
CLIENTS = 10  # the bench client (registered with the CLI) and 9 more in SQL
FLOW_TTL = timedelta(minutes=10)  # Baton's default BATON_FLOW_TTL
SESSION_TTL = timedelta(hours=24)  # Baton's default BATON_SESSION_DURATION
PURGE_OLDER_THAN = timedelta(hours=1)  # every seeded finished flow ended before this


# -- the load: authorize (a new flow) then a login that consumes it --------------------


def _challenge() -> str:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


async def authorize_then_login(http: Http, number: int, params: Mapping[str, Any]) -> str:
    """One flow created and consumed, from a new browser; then wait out the
    rest of this virtual user's period, so that the rate stays steady."""
    started = time.monotonic()
    query = urlencode(
        {
            "response_type": "code",
            "client_id": params["client_id"],
            "redirect_uri": REDIRECT_URI,
            "scope": "openid",
            "state": secrets.token_urlsafe(16),
            "code_challenge": _challenge(),
            "code_challenge_method": "S256",
        }
    )
    paused = await http.request("authorize", "GET", f"/oauth2/authorize?{query}", expect=302)
    if not paused.location.startswith("/login?"):
        raise Unexpected(f"authorize: not paused for login: {paused.location[:120]}")
    token = parse_qs(urlsplit(paused.location).query)["redirection_token"][0]
    login = await http.request(
        "login",
        "POST",
        "/api/v1/login",
        json_body={
            "username": f"user{random.randrange(params['users'])}",
            "password": PASSWORD,
            "redirection_token": token,
        },
        expect=200,
    )
    redir_to: str | None = login.json().get("redir_to")
    if not redir_to:
        raise Unexpected("login: no redir_to, so no flow was consumed")
    pause = params["period"] - (time.monotonic() - started)
    if pause > 0:
        await asyncio.sleep(pause)
    return redir_to


@dataclass(frozen=True)
class Sample:
    ended: float  # time.monotonic(), the same clock in every process of this machine
    step: str
    seconds: float


@dataclass(frozen=True)
class PacedRun:
    samples: tuple[Sample, ...]
    failed_at: tuple[float, ...]
    failures: tuple[str, ...]


def paced_logins(
    url: str, params: Mapping[str, Any], users: int, signals: Path, limit: float
) -> dict[str, Any]:
    """``authorize_then_login`` by ``users`` virtual users until the file
    ``signals/stop`` appears, every request timed with its end; run in a
    process of its own (hence builtins only in what it returns: this module is
    ``__mp_main__`` there). ``signals/ready`` appears once the users have started."""
    return asyncio.run(_paced(url, params, users, signals, limit))


def _paced_run(result: dict[str, Any]) -> PacedRun:
    return PacedRun(
        tuple(Sample(*s) for s in result["samples"]),
        tuple(result["failed_at"]),
        tuple(result["failures"]),
    )


def _wait_for(path: Path, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


async def _paced(
    url: str, params: Mapping[str, Any], users: int, signals: Path, limit: float
) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    samples: list[tuple[float, str, float]] = []
    failed_at: list[float] = []
    failures: dict[str, None] = {}
    stopping = False

    def record(step: str, seconds: float) -> None:
        samples.append((time.monotonic(), step, seconds))

    async def user(number: int) -> None:
        await asyncio.sleep(params["period"] * number / users)  # spread the arrivals
        http = Http(host, port, record)
        try:
            while not stopping:
                http.cookies.clear()
                try:
                    await authorize_then_login(http, number, params)
                except (Unexpected, OSError, asyncio.IncompleteReadError, TimeoutError) as error:
                    failed_at.append(time.monotonic())
                    if len(failures) < 5:
                        failures[f"{type(error).__name__}: {error}"] = None
                    await http.close()
                    await asyncio.sleep(0.05)
        finally:
            await http.close()

    tasks = [asyncio.create_task(user(n)) for n in range(users)]
    (signals / "ready").touch()
    await asyncio.to_thread(_wait_for, signals / "stop", limit)
    stopping = True
    _, pending = await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT)
    for task in pending:
        task.cancel()
    return {"samples": samples, "failed_at": failed_at, "failures": list(failures)}


# -- seeding, in SQL --------------------------------------------------------------------

SEED_USERS = """
INSERT INTO users (subject, username, password_hash, disabled, created_at, password_changed_at)
SELECT encode(substr(uuid_send(gen_random_uuid()), 1, 8), 'hex'), 'user' || (i - 1),
       %(hash)s::text, false, %(now)s::timestamptz - i * interval '1 minute',
       %(now)s::timestamptz - i * interval '1 minute'
FROM generate_series(1, %(count)s) AS i
"""

SEED_CLIENTS = """
INSERT INTO clients (client_id, name, secret_hash, public, first_party, redirect_uris, scope,
                     grant_types, provenance, created_at)
SELECT encode(uuid_send(gen_random_uuid()), 'hex'), 'Seeded ' || i, NULL, true, true,
       c.redirect_uris, c.scope, c.grant_types, 'cli', c.created_at
FROM clients AS c, generate_series(1, %(count)s) AS i
WHERE c.client_id = %(client_id)s
"""

# One row per i: a flow as /oauth2/authorize stores it (the request's JSON,
# the resume path, a browser binding), created ``spacing`` apart up to
# ``newest``, then consumed (70 %: a user, resumed a second later), left to
# expire (27 %) or revoked (3 %); 2 % are consent flows. With ``pending``,
# every flow is still waiting for its login.
SEED_FLOWS = """
INSERT INTO pending_flows (
    public_id, token_hash, kind, client_pk, request, redir_to, binding_hash, created_at,
    expires_at, consumed_at, revoked_at, resumed_at, consumed_by, subject_id, decision,
    requester_ip, requester_agent)
SELECT public_id,
       encode(sha256(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())), 'hex'),
       CASE WHEN consent THEN 'consent' ELSE 'login' END,
       client_pk,
       json_build_object('response_type', 'code', 'client_id', client_id,
                         'redirect_uri', %(redirect_uri)s::text, 'scope', 'openid', 'state', state,
                         'code_challenge', challenge, 'code_challenge_method', 'S256'),
       '/oauth2/authorize?response_type=code&client_id=' || client_id || '&redirect_uri='
           || %(redirect_uri_quoted)s::text || '&scope=openid&state=' || state || '&code_challenge='
           || challenge || '&code_challenge_method=S256&flow=' || public_id,
       encode(sha256(uuid_send(gen_random_uuid())), 'hex'),
       created,
       created + %(ttl)s::interval,
       CASE WHEN fate = 'consumed' THEN created + wait END,
       CASE WHEN fate = 'revoked' THEN created + wait END,
       CASE WHEN fate = 'consumed' THEN created + wait + interval '1 second' END,
       CASE WHEN fate = 'consumed' THEN user_id END,
       CASE WHEN consent THEN user_id END,
       CASE WHEN consent AND fate = 'consumed' THEN 'approved' END,
       '198.51.100.' || (i %% 250),
       %(agent)s::text
FROM (
    SELECT i,
           encode(substr(uuid_send(gen_random_uuid()), 1, 8), 'hex') AS public_id,
           translate(rtrim(encode(uuid_send(gen_random_uuid()), 'base64'), '='), '+/', '-_')
               AS state,
           translate(rtrim(encode(sha256(uuid_send(gen_random_uuid())), 'base64'), '='),
                     '+/', '-_') AS challenge,
           %(newest)s::timestamptz - (%(count)s::int - i + random()) * %(spacing)s::interval
               AS created,
           CASE WHEN %(pending)s::boolean THEN 'pending'
                WHEN r < 0.70 THEN 'consumed'
                WHEN r < 0.97 THEN 'expired'
                ELSE 'revoked' END AS fate,
           random() < 0.02 AS consent,
           (%(client_pks)s::int[])[1 + c] AS client_pk,
           (%(client_ids)s::text[])[1 + c] AS client_id,
           %(first_user)s::int + floor(random() * %(users)s::int)::int AS user_id,
           (5 + random() * 115) * interval '1 second' AS wait
    FROM (
        SELECT i, random() AS r, floor(random() * %(clients)s::int)::int AS c
        FROM generate_series(1, %(count)s::int) AS i
    ) AS g
) AS f
"""

# A login opens a session that names its flow (browser_sessions.flow_id,
# ON DELETE SET NULL): purging a consumed flow also updates its session.
SEED_SESSIONS = """
INSERT INTO browser_sessions (id_hash, user_id, flow_id, created_at, expires_at, last_seen_at,
                              ip, user_agent)
SELECT encode(sha256(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())), 'hex'),
       consumed_by, id, consumed_at, consumed_at + %(ttl)s::interval,
       consumed_at, requester_ip, requester_agent
FROM pending_flows
WHERE kind = 'login' AND consumed_by IS NOT NULL AND id > %(after)s
"""

COUNT_FLOWS = """
SELECT count(*) FILTER (WHERE revoked_at IS NULL AND consumed_at IS NULL AND expires_at > now()),
       count(*) FILTER (WHERE consumed_at IS NOT NULL),
       count(*) FILTER (WHERE revoked_at IS NULL AND consumed_at IS NULL AND expires_at <= now()),
       count(*) FILTER (WHERE revoked_at IS NOT NULL),
       count(*)
FROM pending_flows
"""


def _psycopg_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def _connect(url: str, autocommit: bool = False) -> Iterator[Any]:
    import psycopg

    with psycopg.connect(_psycopg_url(url), autocommit=autocommit) as conn:
        yield conn


def seed(
    url: str,
    *,
    users: int,
    finished: int,
    pending: int,
    days: float,
    client_id: str,
    password_hash: str,
    sessions: bool,
) -> dict[str, float]:
    """Users, clients, flows (and a session per consumed login) in SQL, then
    VACUUM ANALYZE (the state autovacuum keeps a busy table in); the seconds
    each part took."""
    seconds: dict[str, float] = {}
    now = datetime.now(UTC)
    with _connect(url) as conn:
        started = time.perf_counter()
        conn.execute(SEED_USERS, {"hash": password_hash, "now": now, "count": users})
        first_user = conn.execute("SELECT min(id) FROM users").fetchone()[0]
        conn.execute(SEED_CLIENTS, {"count": CLIENTS - 1, "client_id": client_id})
        conn.commit()
        seconds["users"] = time.perf_counter() - started
        clients = conn.execute("SELECT id, client_id FROM clients ORDER BY id").fetchall()
        common = {
            "redirect_uri": REDIRECT_URI,
            "redirect_uri_quoted": quote(REDIRECT_URI, safe=""),
            "ttl": FLOW_TTL,
            "agent": AGENT,
            "client_pks": [pk for pk, _ in clients],
            "client_ids": [cid for _, cid in clients],
            "clients": len(clients),
            "first_user": first_user,
            "users": users,
        }
        last_id = conn.execute("SELECT coalesce(max(id), 0) FROM pending_flows").fetchone()[0]
        started = time.perf_counter()
        conn.execute(
            SEED_FLOWS,
            {
                **common,
                "count": finished,
                "pending": False,
                # The newest finished flow ended long before the purge's cutoff.
                "newest": now - PURGE_OLDER_THAN - timedelta(hours=1),
                "spacing": timedelta(days=days) / finished,
            },
        )
        conn.execute(
            SEED_FLOWS,
            {
                **common,
                "count": pending,
                "pending": True,
                "newest": now,
                "spacing": (FLOW_TTL - timedelta(minutes=1)) / max(pending, 1),
            },
        )
        conn.commit()
        seconds["flows"] = time.perf_counter() - started
        if sessions:
            started = time.perf_counter()
            conn.execute(SEED_SESSIONS, {"ttl": SESSION_TTL, "after": last_id})
            conn.commit()
            seconds["sessions"] = time.perf_counter() - started
    with _connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        seconds["vacuum_analyze"] = time.perf_counter() - started
    return seconds


def describe_tables(url: str) -> list[str]:
    with _connect(url) as conn:
        pending, consumed, expired, revoked, total = conn.execute(COUNT_FLOWS).fetchone()
        sizes = conn.execute(
            "SELECT relname, n_live_tup, pg_table_size(relid), pg_indexes_size(relid)"
            " FROM pg_stat_user_tables WHERE relname IN"
            " ('pending_flows', 'users', 'browser_sessions') ORDER BY relname"
        ).fetchall()
    lines = [
        f"pending_flows {total:,} rows: {consumed:,} consumed, {expired:,} expired,"
        f" {revoked:,} revoked, {pending:,} pending"
    ]
    lines += [
        f"  {name:<17} {rows:>10,} rows  table {table / 2**20:7.1f} MiB"
        f"  indexes {indexes / 2**20:7.1f} MiB"
        for name, rows, table, indexes in sizes
    ]
    return lines


def count_flows(url: str) -> int:
    with _connect(url) as conn:
        count: int = conn.execute("SELECT count(*) FROM pending_flows").fetchone()[0]
        return count


def table_activity(url: str) -> list[str]:
    """Dead tuples, updates (HOT: no index touched) and autovacuum, per table."""
    with _connect(url) as conn:
        rows = conn.execute(
            "SELECT relname, n_live_tup, n_dead_tup, n_tup_upd, n_tup_hot_upd, n_tup_del,"
            " autovacuum_count FROM pg_stat_user_tables"
            " WHERE relname IN ('pending_flows', 'browser_sessions') ORDER BY relname"
        ).fetchall()
    return [
        f"{name}: {live:,} live, {dead:,} dead tuples; {updated:,} updates ({hot:,} HOT),"
        f" {deleted:,} deletes; autovacuum runs {runs}"
        for name, live, dead, updated, hot, deleted, runs in rows
    ]


def server_setting(url: str, name: str) -> str:
    with _connect(url) as conn:
        value: str = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0]
        return value


# -- the bare consume, and the plans ----------------------------------------------------


@dataclass(frozen=True)
class Bare:
    consume: list[float]  # flows.consume alone: the UPDATE … RETURNING and the client's id
    unit: list[float]  # the whole transaction: BEGIN, consume, COMMIT


class Sizes:
    """One Database (the server's pool settings) per size, for the bare loop."""

    def __init__(self, urls: Mapping[str, str]) -> None:
        from app.db import Database, PoolOptions

        self.databases = {label: Database(url, pool=PoolOptions()) for label, url in urls.items()}

    def close(self) -> None:
        for database in self.databases.values():
            database.dispose()


def _new_flows(database: Any, count: int, binding_hash: str) -> list[str]:
    from sqlalchemy import select

    from app import flows
    from app.db import utcnow
    from app.models import Client

    tokens = []
    with database.transaction() as db:
        client_pk = db.scalar(select(Client.id).order_by(Client.id).limit(1))
        for _ in range(count):
            created = flows.create(
                db=db,
                client_pk=client_pk,
                request={"response_type": "code", "scope": "openid", "state": "s"},
                redir_to="/oauth2/authorize?response_type=code&scope=openid&state=s",
                now=utcnow(),
                ttl=FLOW_TTL,
                binding_hash=binding_hash,
                ip="127.0.0.1",
                user_agent=AGENT,
            )
            tokens.append(created.token)
    return tokens


def bare_consume(database: Any, count: int) -> Bare:
    """Create ``count`` flows, then consume each in a transaction of its own,
    in random order, as the login does; time the consume and the transaction."""
    from app import flows
    from app import tokens as secrets_
    from app.db import utcnow

    binding = secrets_.digest(secrets_.new_secret())
    created = _new_flows(database, count, binding)
    random.shuffle(created)
    timings = Bare([], [])
    for token in created:
        started = time.perf_counter()
        with database.transaction() as db:
            before = time.perf_counter()
            consumed = flows.consume(
                db=db, token=token, user_id=1, now=utcnow(), binding_hash=binding
            )
            timings.consume.append(time.perf_counter() - before)
        timings.unit.append(time.perf_counter() - started)
        if consumed is None:
            raise RuntimeError("a fresh flow could not be consumed")
    return timings


def _captured(database: Any, action: Any, prefixes: Sequence[str]) -> list[tuple[str, Any]]:
    """The statements (and parameters) starting with ``prefixes`` that
    ``action(db)`` sends, in a transaction that is rolled back."""
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().startswith(tuple(prefixes)):
            seen.append((statement, parameters))

    event.listen(database.engine, "before_cursor_execute", capture)
    try:
        with database.engine.connect() as conn, Session(conn) as db:
            action(db)
            db.rollback()
    finally:
        event.remove(database.engine, "before_cursor_execute", capture)
    return seen


def explain(database: Any, statement: str, parameters: Any) -> list[str]:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of a captured statement, rolled back."""
    raw = database.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
        return [row[0] for row in cursor.fetchall()]
    finally:
        raw.rollback()
        raw.close()


def consume_plan(database: Any) -> list[str]:
    """The plan of the exact UPDATE ``flows.consume`` sends, for a fresh flow."""
    from app import flows
    from app import tokens as secrets_
    from app.db import utcnow

    binding = secrets_.digest(secrets_.new_secret())
    token = _new_flows(database, 1, binding)[0]
    (statement, parameters), *_ = _captured(
        database,
        lambda db: flows.consume(db=db, token=token, user_id=1, now=utcnow(), binding_hash=binding),
        ["UPDATE pending_flows"],
    )
    return explain(database, statement, parameters)


def purge_plans(database: Any, batch_size: int) -> list[tuple[str, list[str]]]:
    """The plans of one batch of the purge (its SELECT … FOR UPDATE SKIP
    LOCKED, then its DELETE), rolled back."""
    from app import flows
    from app.db import utcnow

    cutoff = utcnow() - PURGE_OLDER_THAN
    statements = _captured(
        database,
        lambda db: flows.purge_batch(db=db, cutoff=cutoff, batch_size=batch_size),
        ["SELECT pending_flows.id", "DELETE FROM pending_flows"],
    )
    return [
        (statement.split()[0], explain(database, statement, params))
        for statement, params in statements
    ]


# -- the purge --------------------------------------------------------------------------


@dataclass(frozen=True)
class PurgeRun:
    started: float  # time.monotonic()
    ended: float
    deleted: int
    batches: tuple[tuple[float, int], ...]  # (time.monotonic(), rows deleted so far)
    cpu_seconds: float  # of the purging process (not of its PostgreSQL backend)
    output: str = ""


def server_purge(url: str, batch_size: int) -> dict[str, Any]:
    """``app.purge.purge`` as the server's scheduled purge calls it (its pool
    settings, its batch size), run in a process of its own: a PurgeRun's fields."""
    from app.db import Database, PoolOptions, utcnow
    from app.purge import SCHEDULED_PAUSE, purge

    database = Database(url, pool=PoolOptions())
    batches: list[tuple[float, int]] = []
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    try:
        started = time.monotonic()
        deleted = purge(
            database,
            now=utcnow(),
            older_than=PURGE_OLDER_THAN,
            batch_size=batch_size,
            on_batch=lambda total: batches.append((time.monotonic(), total)),
            pause=SCHEDULED_PAUSE,
        )
        ended = time.monotonic()
    finally:
        database.dispose()
    after = resource.getrusage(resource.RUSAGE_SELF)
    used = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    return {
        "started": started,
        "ended": ended,
        "deleted": deleted,
        "batches": tuple(batches),
        "cpu_seconds": used,
    }


def cli_purge(server: harness.Server, batch_size: int) -> PurgeRun:
    """``baton flows purge --older-than 1h``, as an operator runs it beside the server
    (not ``Server.baton``: its two-minute timeout is too short for a million rows)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    argv = ["flows", "purge", "--older-than", "1h", "--batch-size", str(batch_size)]
    output = subprocess.run(
        [str(harness.BIN / "baton"), *argv],
        env=server.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ended = time.monotonic()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    deleted = int(output.split()[1])  # "purged N flow(s) that ended …"
    return PurgeRun(started, ended, deleted, (), used, output)


# -- the report -------------------------------------------------------------------------


def _ms(values: Sequence[float], q: float) -> float:
    return harness.percentile(values, q) * 1000


def _p(values: Sequence[float]) -> str:
    if not values:
        return f"{'-':>7} {'-':>7} {'-':>7}"
    return f"{_ms(values, 50):7.2f} {_ms(values, 95):7.2f} {_ms(values, 99):7.2f}"


def _verdict(ratio: float, target: float) -> str:
    return f"{ratio:.2f}x (target <= {target:g}x: {'met' if ratio <= target else 'MISSED'})"


def _between(samples: Sequence[Sample], start: float, end: float, step: str) -> list[float]:
    return [s.seconds for s in samples if s.step == step and start <= s.ended < end]


def _purge_profile(run: PurgeRun) -> str:
    """Rows/s over the first and the last tenth of the rows, and the slowest batch."""
    if len(run.batches) < 10:
        return ""
    marks = [(run.started, 0), *run.batches]
    tenth = run.deleted / 10

    def rate(first: float, last: float) -> float:
        t0, n0 = next(m for m in reversed(marks) if m[1] <= first)
        t1, n1 = next(m for m in marks if m[1] >= last)
        return (n1 - n0) / (t1 - t0) if t1 > t0 else float("nan")

    gaps = sorted(b[0] - a[0] for a, b in itertools.pairwise(marks))
    return (
        f"  rows/s over the first tenth {rate(0, tenth):,.0f}, over the last tenth"
        f" {rate(run.deleted - tenth, run.deleted):,.0f}; {len(run.batches)} batches,"
        f" median {gaps[len(gaps) // 2] * 1000:.1f} ms, slowest {gaps[-1] * 1000:.1f} ms"
    )


def _plan(report: harness.Report, title: str, lines: Sequence[str]) -> None:
    report.line(title)
    for line in lines:
        # The DELETE names its batch's 1,000 ids: keep the first and the last.
        line = re.sub(
            r"'\{(\d+),(\d+),\d+(?:,\d+)*,(\d+)\}'",
            lambda m: f"'{{{m[1]},{m[2]},… {m[0].count(',') + 1} ids …,{m[3]}}}'",
            line,
        )
        report.line("    " + line)


# -- the run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One size: its database, its server, and the load's parameters."""

    finished: int
    url: str
    server: harness.Server
    params: dict[str, Any]


def _seed_all(report: harness.Report, targets: Mapping[str, Target], args: Any) -> None:
    cost = harness.CHEAP_COST
    from app.passwords import Argon2Cost, hash_password

    # One hash at the server's cost serves every user (so no login rehashes):
    # a verification costs the same whatever the salt, and hashing 100,000
    # passwords would take minutes.
    stored = hash_password(PASSWORD, Argon2Cost(cost.time_cost, cost.memory_kib, cost.parallelism))
    for label, target in targets.items():
        pending = max(10, target.finished // 200)
        took = seed(
            target.url,
            users=args.users,
            finished=target.finished,
            pending=pending,
            days=args.days,
            client_id=target.params["client_id"],
            password_hash=stored,
            sessions=not args.no_sessions,
        )
        flows = target.finished + pending
        report.line(
            f"seeded {label}: {args.users:,} users + {CLIENTS - 1} clients {took['users']:.1f} s;"
            f" {flows:,} flows {took['flows']:.1f} s ({flows / took['flows']:,.0f} rows/s)"
            + (f"; sessions {took['sessions']:.1f} s" if "sessions" in took else "")
            + f"; VACUUM ANALYZE {took['vacuum_analyze']:.1f} s; total {sum(took.values()):.1f} s"
        )
        for line in describe_tables(target.url):
            report.line("  " + line)


LOAD_HEADER = (
    f"{'flows':>10} {'rows':>10} {'round':>5} {'logins/s':>8} {'cpu_ms':>7} {'failed':>6}"
    "   authorize p50/p95/p99 ms   login p50/p95/p99 ms"
)


def _consume_over_http(report: harness.Report, targets: Mapping[str, Target], args: Any) -> float:
    """Rounds of the paced load on each size in turn; login p99 big / small."""
    report.line(
        "Consume through HTTP: GET /oauth2/authorize then POST /api/v1/login, paced;"
        f" {args.warmup:g} s warm-up, {args.duration:g} s measured per round;"
        " cpu_ms = server CPU per flow"
    )
    report.line(LOAD_HEADER)
    steps: dict[str, dict[str, list[float]]] = {label: {} for label in targets}
    for round_ in range(1, args.rounds + 1):
        for label, target in targets.items():
            outcome = run_load(
                Load(
                    target.server.url,
                    authorize_then_login,
                    target.params,
                    args.virtual_users,
                    args.warmup,
                    args.duration,
                    (target.server.pid,),
                )
            )
            for step, values in outcome.steps.items():
                steps[label].setdefault(step, []).extend(values)
            report.line(
                f"{target.finished:>10,} {count_flows(target.url):>10,} {round_:>5}"
                f" {outcome.rate:>8.1f} {outcome.server_cpu_ms_per_iteration:>7.1f}"
                f" {outcome.failed:>6}   {_p(outcome.steps.get('authorize', []))}"
                f"    {_p(outcome.steps.get('login', []))}"
            )
            for failure in outcome.failures:
                report.line(f"    failure: {failure}")
    for label, target in targets.items():
        logins = steps[label].get("login", [])
        report.line(
            f"{target.finished:>10,} {'all rounds':>37}   {_p(steps[label].get('authorize', []))}"
            f"    {_p(logins)}   ({len(logins)} logins)"
        )
    return _ms(steps["big"].get("login", []), 99) / _ms(steps["small"].get("login", []), 99)


def _bare_consume(
    report: harness.Report, targets: Mapping[str, Target], sizes: Sizes, args: Any
) -> float:
    """The bare consume on each size in turn; its p99 big / small. Then the plans."""
    report.line(
        "Bare consume in this process: flows.consume of fresh flows in random order"
        " (the UPDATE and the client's id); 'unit' adds BEGIN and COMMIT"
    )
    report.line(
        f"{'flows':>10} {'rows':>10} {'n':>6}   consume p50/p95/p99 ms   unit p50/p95/p99 ms"
    )
    timings = {label: Bare([], []) for label in targets}
    turns = 4
    for _ in range(turns):
        for label in targets:
            got = bare_consume(sizes.databases[label], args.bare // turns)
            timings[label].consume.extend(got.consume)
            timings[label].unit.extend(got.unit)
    for label, target in targets.items():
        t = timings[label]
        report.line(
            f"{target.finished:>10,} {count_flows(target.url):>10,} {len(t.consume):>6}"
            f"   {_p(t.consume)}     {_p(t.unit)}"
        )
    big = sizes.databases["big"]
    report.line()
    _plan(report, "EXPLAIN (ANALYZE, BUFFERS) of the consume UPDATE (big):", consume_plan(big))
    for verb, plan in purge_plans(big, args.batch_size):
        _plan(
            report,
            f"EXPLAIN (ANALYZE, BUFFERS) of a purge batch's {verb} (big), rolled back:",
            plan,
        )
    return _ms(timings["big"].consume, 99) / _ms(timings["small"].consume, 99)


def _purge_under_load(
    report: harness.Report, target: Target, database: Any, args: Any, signals: Path
) -> float:
    """Logins at the paced rate before, during and after the purge and during
    the VACUUM that follows; login p99 during the purge / before."""
    signals.mkdir()
    limit = args.warmup + args.baseline + 2 * args.after + 3600
    how = "baton flows purge --older-than 1h" if args.purge == "cli" else "app.purge.purge"
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        driving = pool.submit(
            paced_logins, target.server.url, target.params, args.virtual_users, signals, limit
        )
        try:  # whatever happens, the paced load stops
            deadline = time.monotonic() + 60
            while not (signals / "ready").exists():
                if driving.done() or time.monotonic() > deadline:
                    driving.result()
                    raise RuntimeError("the paced load did not start")
                time.sleep(0.05)
            rows = count_flows(target.url)
            time.sleep(args.warmup + args.baseline)
            baseline_end = time.monotonic()  # before the purging process starts (and imports)
            if args.purge == "cli":
                purged = cli_purge(target.server, args.batch_size)
            else:
                purged = PurgeRun(**harness.in_process(server_purge, target.url, args.batch_size))
            time.sleep(args.after)
            after_end = time.monotonic()
            unvacuumed = dict(purge_plans(database, args.batch_size))
            vacuum_started = time.monotonic()
            with _connect(target.url, autocommit=True) as conn:
                conn.execute("VACUUM pending_flows")
                conn.execute("VACUUM browser_sessions")
            vacuum_ended = time.monotonic()
            time.sleep(args.after)
        finally:
            (signals / "stop").touch()
        paced = _paced_run(driving.result())

    seconds = purged.ended - purged.started
    report.line(
        f"Purge of the big database's finished flows ({how}, batches of {args.batch_size}) while"
        f" logins run at {args.rate:g}/s; {rows:,} rows before"
    )
    report.line(
        f"  deleted {purged.deleted:,} in {seconds:.1f} s = {purged.deleted / seconds:,.0f} rows/s;"
        f" CPU of the purging process {purged.cpu_seconds:.1f} s (its PostgreSQL backend's not"
        " counted)"
    )
    if purged.output:
        report.line(f"  {purged.output}")
    if profile := _purge_profile(purged):
        report.line(profile)
    windows = {
        "before (baseline)": (baseline_end - args.baseline, baseline_end),
        "during the purge": (purged.started, purged.ended),
        "after it": (purged.ended, after_end),
        "during VACUUM": (vacuum_started, vacuum_ended),
    }
    report.line(
        f"  {'window':<18} {'seconds':>7} {'logins/s':>8} {'failed':>6}"
        "   authorize p50/p95/p99 ms   login p50/p95/p99 ms"
    )
    for name, (start, end) in windows.items():
        logins = _between(paced.samples, start, end, "login")
        failed = sum(1 for t in paced.failed_at if start <= t < end)
        report.line(
            f"  {name:<18} {end - start:>7.1f} {len(logins) / max(end - start, 1e-9):>8.1f}"
            f" {failed:>6}   {_p(_between(paced.samples, start, end, 'authorize'))}"
            f"    {_p(logins)}"
        )
    for failure in paced.failures:
        report.line(f"    failure: {failure}")
    report.line(
        f"  VACUUM of pending_flows and browser_sessions: {vacuum_ended - vacuum_started:.1f} s"
    )
    for line in table_activity(target.url):
        report.line(f"  {line}")
    _plan(report, "  the purge's SELECT once done, before VACUUM:", unvacuumed.get("SELECT", []))
    after = dict(purge_plans(database, args.batch_size))
    _plan(report, "  the purge's SELECT once done, after VACUUM:", after.get("SELECT", []))
    baseline = _ms(_between(paced.samples, *windows["before (baseline)"], "login"), 99)
    during = _ms(_between(paced.samples, *windows["during the purge"], "login"), 99)
    return during / baseline


def _arguments() -> Any:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 vs 50,000 flows, 5,000 users")
    parser.add_argument("--flows", type=int, default=1_000_000, help="finished flows, big database")
    parser.add_argument("--small", type=int, default=1_000, help="finished flows, small database")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--days", type=float, default=7, help="the flows' created_at spread")
    parser.add_argument("--no-sessions", action="store_true", help="seed no browser sessions")
    parser.add_argument("--rate", type=float, default=15, help="logins/s of the paced load")
    parser.add_argument("--virtual-users", type=int, default=4, help="of the paced load")
    parser.add_argument("--rounds", type=int, default=3, help="turns of each size, over HTTP")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds per round")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured per round")
    parser.add_argument("--bare", type=int, default=2000, help="bare consumes per size")
    parser.add_argument("--baseline", type=float, default=20.0, help="seconds before the purge")
    parser.add_argument("--after", type=float, default=15.0, help="seconds after it and VACUUM")
    parser.add_argument("--purge", choices=["server", "cli"], default="server")
    parser.add_argument("--batch-size", type=int, default=1000, help="the purge's (Baton's: 1000)")
    parser.add_argument("--workers", type=int, default=1, help="baton serve --workers")
    harness.add_run_options(parser)
    args = parser.parse_args()
    if args.quick:
        args.flows, args.users, args.rounds, args.bare = 50_000, 5_000, 1, 400
        args.warmup, args.duration, args.baseline, args.after = 0.5, 3.0, 3.0, 2.0
    return args


def main() -> None:
    args = _arguments()
    cost = harness.CHEAP_COST
    report = harness.Report("Scale: consume and purge with many flows, PostgreSQL (issue 7)")
    report.line(
        f"{cost}; {args.users:,} users; finished flows {args.small:,} vs {args.flows:,}"
        f" (+0.5 % pending, at least 10) over {args.days:g} days;"
        f" baton serve --workers {args.workers}; paced load {args.rate:g} logins/s"
        f" by {args.virtual_users} virtual users"
    )
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        env = {
            **cost.env(),
            "BATON_PURGE_INTERVAL": "off",  # the benchmark decides when a purge runs
            **harness.env_pairs(args.env),
        }
        targets: dict[str, Target] = {}
        for label, finished in (("small", args.small), ("big", args.flows)):
            url = stack.enter_context(harness.fresh_database("postgresql", workdir))
            server = stack.enter_context(
                harness.baton_server(url, workdir, workers=args.workers, env=env)
            )
            client_id = harness.add_first_party_client(server, REDIRECT_URI, "openid")
            params = {"client_id": client_id, "users": args.users, "period": 0}
            targets[label] = Target(finished, url, server, params)
        big = targets["big"].url
        report.line(
            f"PostgreSQL: autovacuum={server_setting(big, 'autovacuum')}"
            f" shared_buffers={server_setting(big, 'shared_buffers')}"
            f" synchronous_commit={server_setting(big, 'synchronous_commit')}"
        )
        report.line()
        _seed_all(report, targets, args)
        for target in targets.values():
            once(target.server.url, authorize_then_login, target.params)
            target.params["period"] = args.virtual_users / args.rate

        report.line()
        http_ratio = _consume_over_http(report, targets, args)
        report.line()
        sizes = Sizes({label: target.url for label, target in targets.items()})
        stack.callback(sizes.close)
        bare_ratio = _bare_consume(report, targets, sizes, args)
        report.line()
        purge_ratio = _purge_under_load(
            report, targets["big"], sizes.databases["big"], args, workdir / "signals"
        )

    report.line()
    report.line(
        f"login p99 at {args.flows:,} flows / at {args.small:,}: {_verdict(http_ratio, 1.5)}"
    )
    report.line(f"bare consume p99, same ratio: {_verdict(bare_ratio, 1.5)}")
    report.line(f"login p99 during the purge / just before: {_verdict(purge_ratio, 2)}")
    if args.results or not args.quick:
        report.record(args.results or harness.RESULTS)
    else:
        print("(--quick: not recorded; pass --results PATH to record)")


if __name__ == "__main__":
    main()
