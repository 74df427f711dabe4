"""``baton flows list --limit 50`` on 100,000 flows: wall time and query plan.

Fills a fresh database (PostgreSQL and SQLite) with N flows, then times the
command itself (a new process, as an operator runs it) and the query alone,
and prints the query plan to show it walks the ``created_at`` index instead
of sorting the table. The baseline is the same command on 1,000 flows,
measured in the same run.

    .venv/bin/python bench/flows_list.py [--flows 100000] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from app import flows
from app.db import Base, Database
from app.models import Client, PendingFlow, User
from app.settings import normalise_database_url

BATON = str(Path(sys.executable).parent / "baton")
ADMIN_URL = os.environ.get(
    "BATON_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def fill(url: str, count: int) -> None:
    engine = create_engine(url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(User),
            [
                {
                    "username": "alice",
                    "password_hash": "x",
                    "disabled": False,
                    "created_at": now,
                    "password_changed_at": now,
                }
            ],
        )
        conn.execute(
            insert(Client),
            [
                {
                    "client_id": f"client-{i}",
                    "name": f"App {i}",
                    "secret_hash": None,
                    "public": True,
                    "first_party": True,
                    "redirect_uris": ["https://app.example/cb"],
                    "scope": "read",
                    "grant_types": ["authorization_code"],
                    "provenance": "cli",
                    "created_at": now,
                }
                for i in range(10)
            ],
        )
        batch = []
        for i in range(count):
            created = now - timedelta(seconds=count - i)
            consumed = created + timedelta(seconds=20) if i % 3 == 0 else None
            batch.append(
                {
                    "public_id": secrets.token_hex(8),
                    "token_hash": secrets.token_hex(32),
                    "kind": "login",
                    "client_pk": 1 + i % 10,
                    "request": {"scope": "read"},
                    "redir_to": "/oauth2/authorize?x=1",
                    "binding_hash": None,
                    "created_at": created,
                    "expires_at": created + timedelta(minutes=10),
                    "consumed_at": consumed,
                    "revoked_at": None,
                    "consumed_by": 1 if consumed else None,
                    "requester_ip": "203.0.113.7",
                    "requester_agent": None,
                }
            )
            if len(batch) == 10_000:
                conn.execute(insert(PendingFlow), batch)
                batch = []
        if batch:
            conn.execute(insert(PendingFlow), batch)
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
        else:
            conn.execute(text("ANALYZE"))
    engine.dispose()


def time_command(url: str, runs: int, *args: str) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(
            [BATON, "--database-url", url, "flows", "list", "--limit", "50", *args],
            check=True,
            capture_output=True,
        )
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def time_query(url: str, runs: int, **filters: str) -> float:
    database = Database(url)
    samples = []
    try:
        for _ in range(runs + 1):
            started = time.perf_counter()
            with database.transaction() as db:
                flows.list_flows(db=db, now=datetime.now(UTC), limit=50, **filters)  # type: ignore[arg-type]
            samples.append(time.perf_counter() - started)
    finally:
        database.dispose()
    return statistics.median(samples[1:])


def plan(url: str, **filters: str) -> str:
    """The database's plan for the exact query ``baton flows list`` runs."""
    database = Database(url)
    try:
        with database.transaction() as db:
            query = flows.list_query(now=datetime.now(UTC), limit=50, **filters)  # type: ignore[arg-type]
            sql = str(query.compile(db.get_bind(), compile_kwargs={"literal_binds": True}))
            prefix = "EXPLAIN QUERY PLAN " if db.get_bind().dialect.name == "sqlite" else "EXPLAIN "
            rows = db.execute(text(prefix + sql)).all()
            return "\n".join("    " + " ".join(str(c) for c in row) for row in rows)
    finally:
        database.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    databases = []
    with tempfile.TemporaryDirectory() as tmp:
        name = f"baton_bench_{os.getpid()}"
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        pg = make_url(normalise_database_url(ADMIN_URL)).set(database=name)
        databases = [
            ("postgresql", pg.render_as_string(hide_password=False)),
            ("sqlite", f"sqlite:///{tmp}/bench.db"),
        ]
        print(
            f"# flows list benchmark — {platform.node()} {platform.machine()}, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
        )
        print("database    flows    command_s  query_ms  (1,000 flows: command_s query_ms)  ratio")
        try:
            for label, url in databases:
                fill(url, 1_000)
                base_cmd = time_command(url, args.runs)
                base_query = time_query(url, args.runs)
                fill(url, args.flows)
                big_cmd = time_command(url, args.runs)
                big_query = time_query(url, args.runs)
                pending_query = time_query(url, args.runs, status="pending")
                print(
                    f"{label:<11} {args.flows:<8} {big_cmd:9.3f} {big_query * 1000:9.2f}"
                    f"  ({base_cmd:.3f} {base_query * 1000:.2f})"
                    f"  {big_query / base_query:5.2f}x"
                    f"   status=pending: {pending_query * 1000:.2f} ms"
                )
                print(f"  plan ({label}, no filter):\n{plan(url)}")
                print(f"  plan ({label}, --status pending):\n{plan(url, status='pending')}")
        finally:
            with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
