"""What the building blocks of Baton's requests cost on this machine: the floor
under the CPU figures of the other benchmarks.

Each row is the CPU time of this process (every thread) per operation, after a
warm-up, on a fresh migrated database: SQLite (a file, WAL, as ``baton serve``
runs it) and PostgreSQL (over loopback). The operations:

- ``thread hop``: ``anyio.to_thread.run_sync`` of a function that does nothing,
  on uvloop (how every request reaches synchronous SQL and authlib);
- ``unit of work``: ``Database.transaction()`` (an ORM session, begin, commit)
  around one Core SELECT, beside a bare ``engine.begin()`` around the same;
- ``SELECT a user by name``: as an ORM entity, as Core columns through the ORM
  session, through the Connection, and through the DBAPI cursor alone;
- ``INSERT a pending flow``: ``flows.create`` (a Core INSERT … RETURNING id
  since the fourth session; an ORM add and flush before) beside a bare Core
  INSERT;
- ``UPDATE a flow … RETURNING``: one conditional UPDATE (as ``flows.consume``
  and the single-use updates run) built on the mapped class, which sends it
  through the ORM's bulk-update path, beside the same statement on the table;
- ``block and wake``: ``time.sleep`` of 0.1, 1 and 19 ms — not the sleep, which
  costs nothing, but what going idle and being woken costs the task that
  blocked (a VM charges it more the longer the CPU was idle). Every wait for
  a thread, a process, a socket or a lock is one; ``bench/whole_flow.py``
  counts them per flow (context switches).

A flow is 5 requests, 5 thread hops, 5 units of work and ~27 statements
(``bench/in_process.py --statements`` counts them), so these rows bound what
any rewrite of Baton's own code could save.

    .venv/bin/python bench/primitives.py [--databases sqlite,postgresql] [--count 3000]
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import harness
from anyio import to_thread
from sqlalchemy import bindparam, insert, select, update

from app import clients, flows, migrate, users
from app.db import Database, utcnow
from app.models import PendingFlow, User

REQUEST = {
    "response_type": "code",
    "client_id": "bench",
    "redirect_uri": "https://app.example/callback",
    "state": "s",
    "code_challenge": "c" * 43,
    "code_challenge_method": "S256",
    "scope": "read",
}


def cpu_per_call(function: Callable[[], object], count: int) -> float:
    """Microseconds of CPU (all threads) per call, after a warm-up."""
    for _ in range(max(50, count // 20)):
        function()
    started = time.process_time()
    for _ in range(count):
        function()
    return (time.process_time() - started) / count * 1e6


def thread_hop(count: int) -> float:
    async def hops() -> float:
        for _ in range(max(50, count // 20)):
            await to_thread.run_sync(lambda: None)
        started = time.process_time()
        for _ in range(count):
            await to_thread.run_sync(lambda: None)
        return (time.process_time() - started) / count * 1e6

    result: float = anyio.run(hops, backend_options={"use_uvloop": True})
    return result


def block_and_wake(seconds: float, count: int) -> float:
    """Microseconds of CPU per ``time.sleep(seconds)``: the cost of blocking."""
    count = max(20, min(count, int(4 / seconds)))  # a few seconds at most
    return cpu_per_call(lambda: time.sleep(seconds), count)


def database_rows(url: str, count: int) -> list[tuple[str, float]]:
    migrate.upgrade(url)
    database = Database(url)
    try:
        now = utcnow()
        with database.transaction() as db:
            users.create(db=db, username="alice", password_hash="$argon2id$x", now=now)  # noqa: S106
            client_pk = clients.register(
                db=db,
                name="bench",
                redirect_uris=["https://app.example/callback"],
                public=True,
                first_party=True,
                scope="read",
                now=now,
            ).client.id
        users_table = User.__table__
        entity = select(User).where(User.username == bindparam("name"))
        columns = select(users_table).where(users_table.c.username == bindparam("name"))
        flow_insert = insert(PendingFlow.__table__)
        flows_table = PendingFlow.__table__.c
        mapped_update = (
            update(PendingFlow)
            .where(PendingFlow.public_id == bindparam("flow"), PendingFlow.resumed_at.is_(None))
            .values(resumed_at=bindparam("now"))
            .returning(PendingFlow.kind, PendingFlow.decision)
            .execution_options(synchronize_session=False)
        )
        table_update = (
            update(PendingFlow.__table__)
            .where(flows_table.public_id == bindparam("flow"), flows_table.resumed_at.is_(None))
            .values(resumed_at=bindparam("now"))
            .returning(flows_table.kind, flows_table.decision)
        )
        no_flow = {"flow": "none", "now": now}
        named = {"name": "alice"}
        with database.engine.connect() as probe:
            driver_sql = str(columns.compile(probe, compile_kwargs={"render_postcompile": True}))
            parameters: Any = ("alice",) if database.engine.dialect.paramstyle == "qmark" else named

        def unit_of_work() -> None:
            with database.transaction() as db:
                db.execute(columns, named).first()

        def bare_transaction() -> None:
            with database.engine.begin() as connection:
                connection.execute(columns, named).first()

        def new_flow(db: Any) -> None:
            flows.create(
                db=db,
                client_pk=client_pk,
                request=REQUEST,
                redir_to="/oauth2/authorize?flow=x",
                now=now,
                ttl=timedelta(minutes=10),
                binding_hash="b" * 64,
                ip="127.0.0.1",
                user_agent="bench",
            )

        def core_flow(db: Any) -> None:
            db.execute(
                flow_insert,
                {
                    "public_id": secrets.token_hex(8),
                    "token_hash": secrets.token_hex(32),
                    "kind": flows.KIND_LOGIN,
                    "client_pk": client_pk,
                    "request": REQUEST,
                    "redir_to": "/oauth2/authorize?flow=x",
                    "binding_hash": "b" * 64,
                    "created_at": now,
                    "expires_at": now + timedelta(minutes=10),
                    "requester_ip": "127.0.0.1",
                    "requester_agent": "bench",
                },
            )

        rows = [
            ("unit of work: Database.transaction() + 1 SELECT", cpu_per_call(unit_of_work, count)),
            ("unit of work: engine.begin() + 1 SELECT", cpu_per_call(bare_transaction, count)),
        ]
        with database.transaction() as db:
            connection = db.connection()
            cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]

            def by_driver() -> None:
                cursor.execute(driver_sql, parameters)
                cursor.fetchone()

            rows += [
                (
                    "SELECT a user by name: ORM entity",
                    cpu_per_call(lambda: db.execute(entity, named).scalar_one(), count),
                ),
                (
                    "SELECT a user by name: Core, through the session",
                    cpu_per_call(lambda: db.execute(columns, named).first(), count),
                ),
                (
                    "SELECT a user by name: Core, through the connection",
                    cpu_per_call(lambda: connection.execute(columns, named).first(), count),
                ),
                ("SELECT a user by name: DBAPI cursor", cpu_per_call(by_driver, count)),
                ("INSERT a pending flow: flows.create", cpu_per_call(lambda: new_flow(db), count)),
                ("INSERT a pending flow: Core", cpu_per_call(lambda: core_flow(db), count)),
                (
                    "UPDATE a flow RETURNING: on the mapped class (ORM)",
                    cpu_per_call(lambda: db.execute(mapped_update, no_flow).first(), count),
                ),
                (
                    "UPDATE a flow RETURNING: on the table (Core)",
                    cpu_per_call(lambda: db.execute(table_update, no_flow).first(), count),
                ),
            ]
            db.rollback()
        return rows
    finally:
        database.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--results", type=Path, help=f"default {harness.RESULTS}")
    args = parser.parse_args()

    report = harness.Report("Primitives: what a request's building blocks cost (issue 7)")
    report.line(f"CPU microseconds per operation (this process, every thread), {args.count} each")
    report.line()
    report.line(f"{'operation':<56} {'database':<10} {'cpu_us':>8}")
    report.line(
        f"{'thread hop: anyio.to_thread.run_sync(noop), uvloop':<56} {'-':<10} "
        f"{thread_hop(args.count):>8.1f}"
    )
    for milliseconds in (0.1, 1, 19):
        name = f"block and wake: time.sleep({milliseconds:g} ms)"
        micros = block_and_wake(milliseconds / 1000, args.count)
        report.line(f"{name:<56} {'-':<10} {micros:>8.1f}")
    with tempfile.TemporaryDirectory(prefix="baton-primitives-") as folder:
        for kind in harness.csv(args.databases):
            assert kind in ("sqlite", "postgresql"), kind
            with harness.fresh_database(kind, Path(folder)) as url:
                for name, micros in database_rows(url, args.count):
                    report.line(f"{name:<56} {kind:<10} {micros:>8.1f}")
    report.record(args.results or harness.RESULTS)


if __name__ == "__main__":
    main()
