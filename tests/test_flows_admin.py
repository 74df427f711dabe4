"""Pending-flow administration: listing, revocation, purge and statistics,
including purge and revocation racing logins, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from threading import Barrier

import pytest
from sqlalchemy import func, select

from app import flows
from app.db import Database
from app.models import Client, PendingFlow, User
from app.purge import purge, purge_periodically
from tests.conftest import Clock
from tests.factories import create_client, create_user


def make_flow(
    database: Database, client_id: str, now: datetime, ttl: timedelta = timedelta(minutes=10)
) -> flows.NewFlow:
    with database.transaction() as db:
        pk = db.scalars(select(Client.id).where(Client.client_id == client_id)).one()
        return flows.create(
            db=db,
            client_pk=pk,
            request={"client_id": client_id, "scope": "read", "state": "abc"},
            redir_to="/oauth2/authorize?client_id=" + client_id,
            now=now,
            ttl=ttl,
            ip="203.0.113.7",
        )


def user_id(database: Database, username: str = "alice") -> int:
    with database.transaction() as db:
        return db.scalars(select(User.id).where(User.username == username)).one()


def consume(database: Database, token: str, now: datetime) -> flows.ConsumedFlow | None:
    uid = user_id(database)
    with database.transaction() as db:
        return flows.consume(db=db, token=token, user_id=uid, now=now)


def remaining(database: Database) -> set[str]:
    with database.transaction() as db:
        return set(db.scalars(select(PendingFlow.public_id)))


@pytest.fixture
def scenario(database: Database, clock: Clock) -> dict[str, str]:
    """One flow in each status, created a minute apart; returns status → public id."""
    create_user(database)
    app = create_client(database).client_id
    other = create_client(database, name="Other").client_id
    start = clock()
    expired = make_flow(database, app, start - timedelta(hours=2))
    consumed = make_flow(database, app, start - timedelta(minutes=3))
    consume(database, consumed.token, start - timedelta(minutes=2))
    revoked = make_flow(database, other, start - timedelta(minutes=2))
    with database.transaction() as db:
        flows.revoke(db=db, now=start - timedelta(minutes=1), public_ids=[revoked.row.public_id])
    pending = make_flow(database, other, start - timedelta(minutes=1))
    return {
        "expired": expired.row.public_id,
        "consumed": consumed.row.public_id,
        "revoked": revoked.row.public_id,
        "pending": pending.row.public_id,
        "client": app,
        "other": other,
    }


def test_list_newest_first_with_statuses(
    database: Database, clock: Clock, scenario: dict[str, str]
) -> None:
    with database.transaction() as db:
        listed = flows.list_flows(db=db, now=clock())
    assert [s.status for s in listed] == ["pending", "revoked", "consumed", "expired"]
    assert [s.flow.public_id for s in listed] == [
        scenario[s] for s in ("pending", "revoked", "consumed", "expired")
    ]
    consumed = listed[2]
    assert consumed.consumer == "alice"
    assert consumed.client_id == scenario["client"]


@pytest.mark.parametrize("status", flows.STATUSES)
def test_list_filters_by_status_matching_python(
    database: Database, clock: Clock, scenario: dict[str, str], status: str
) -> None:
    with database.transaction() as db:
        listed = flows.list_flows(db=db, now=clock(), status=status)
    assert [s.flow.public_id for s in listed] == [scenario[status]]
    assert all(flows.status_of(s.flow, clock()) == status for s in listed)


def test_list_filters_by_client_consumer_since_and_limit(
    database: Database, clock: Clock, scenario: dict[str, str]
) -> None:
    now = clock()
    with database.transaction() as db:
        by_client = flows.list_flows(db=db, now=now, client_id=scenario["other"])
        by_user = flows.list_flows(db=db, now=now, consumer="alice")
        recent = flows.list_flows(db=db, now=now, since=now - timedelta(minutes=2, seconds=30))
        limited = flows.list_flows(db=db, now=now, limit=1)
    assert {s.flow.public_id for s in by_client} == {scenario["revoked"], scenario["pending"]}
    assert [s.flow.public_id for s in by_user] == [scenario["consumed"]]
    assert [s.flow.public_id for s in recent] == [scenario["pending"], scenario["revoked"]]
    assert [s.flow.public_id for s in limited] == [scenario["pending"]]


def test_revoked_flow_cannot_be_consumed(database: Database, clock: Clock) -> None:
    create_user(database)
    flow = make_flow(database, create_client(database).client_id, clock())
    with database.transaction() as db:
        assert flows.revoke(db=db, now=clock(), public_ids=[flow.row.public_id]) == [
            flow.row.public_id
        ]
        assert flows.revoke(db=db, now=clock(), public_ids=[flow.row.public_id]) == []
    assert consume(database, flow.token, clock()) is None


def test_revoke_by_client_touches_only_its_pending_flows(
    database: Database, clock: Clock, scenario: dict[str, str]
) -> None:
    with database.transaction() as db:
        pk = db.scalars(select(Client.id).where(Client.client_id == scenario["other"])).one()
        revoked = flows.revoke(db=db, now=clock(), client_pk=pk)
    assert revoked == [scenario["pending"]]


def test_purge_deletes_only_what_ended_long_enough_ago(
    database: Database, clock: Clock, scenario: dict[str, str]
) -> None:
    now = clock()
    assert purge(database, now=now, older_than=timedelta(hours=1)) == 1
    assert scenario["expired"] not in remaining(database)
    assert purge(database, now=now, older_than=timedelta(0), batch_size=1) == 2
    assert remaining(database) == {scenario["pending"]}
    clock.advance(timedelta(minutes=10))
    assert purge(database, now=clock(), older_than=timedelta(0)) == 1
    assert remaining(database) == set()


def test_stats(database: Database, clock: Clock, scenario: dict[str, str]) -> None:
    with database.transaction() as db:
        result = flows.stats(db=db, now=clock(), window=timedelta(hours=1))
    assert result.by_status == {"pending": 1, "consumed": 1, "expired": 1, "revoked": 1}
    assert result.by_client[scenario["client"]]["consumed"] == 1
    assert result.by_client[scenario["other"]] == {
        "pending": 1,
        "consumed": 0,
        "expired": 0,
        "revoked": 1,
    }
    assert result.pending_ages == {"<1m": 0, "1m-5m": 1, "5m-15m": 0, "15m-1h": 0, ">=1h": 0}
    assert (result.created_in_window, result.consumed_in_window) == (3, 1)
    assert result.consumption_rate == pytest.approx(1 / 3)
    assert result.median_time_to_login == timedelta(minutes=1)


def test_purge_racing_logins_never_deletes_a_live_flow(database: Database, clock: Clock) -> None:
    """Logins consume flows while purges with ``older_than=0`` run beside them:
    every consumed flow may go, but no pending, unexpired one ever does."""
    create_user(database)
    app = create_client(database).client_id
    now = clock()
    dead = [make_flow(database, app, now - timedelta(hours=1)) for _ in range(30)]
    live = [make_flow(database, app, now) for _ in range(30)]
    to_consume, untouched = live[:15], live[15:]
    start = Barrier(3)

    def logins() -> int:
        start.wait()
        return sum(consume(database, f.token, now) is not None for f in to_consume)

    def purging() -> int:
        start.wait()
        rounds = (purge(database, now=now, older_than=timedelta(0), batch_size=4) for _ in range(5))
        return sum(rounds)

    with ThreadPoolExecutor(3) as pool:
        consumed_future = pool.submit(logins)
        purged = [pool.submit(purging) for _ in range(2)]
        assert consumed_future.result() == 15
        total_purged = sum(p.result() for p in purged)

    left = remaining(database)
    assert {f.row.public_id for f in untouched} <= left
    assert not {f.row.public_id for f in dead} & left
    assert total_purged + len(left) == 60


def race_revoke_and_login(database: Database, clock: Clock, client_id: str) -> list[bool]:
    flow = make_flow(database, client_id, clock())
    start = Barrier(2)

    def login() -> bool:
        start.wait()
        return consume(database, flow.token, clock()) is not None

    def revoke() -> bool:
        start.wait()
        with database.transaction() as db:
            return bool(flows.revoke(db=db, now=clock(), public_ids=[flow.row.public_id]))

    with ThreadPoolExecutor(2) as pool:
        outcomes = (pool.submit(login), pool.submit(revoke))
        won = [o.result() for o in outcomes]
    with database.transaction() as db:
        row = db.scalars(select(PendingFlow).where(PendingFlow.id == flow.row.id)).one()
        assert (row.consumed_at is None) != (row.revoked_at is None)
    return won


def test_revoke_racing_a_login_has_exactly_one_winner(database: Database, clock: Clock) -> None:
    create_user(database)
    app = create_client(database).client_id
    for _ in range(10):
        won = race_revoke_and_login(database, clock, app)
        assert won.count(True) == 1, won


def test_purge_count_matches_dry_run(
    database: Database, clock: Clock, scenario: dict[str, str]
) -> None:
    with database.transaction() as db:
        expected = flows.count_purgeable(db=db, cutoff=clock())
    assert expected == 3
    assert purge(database, now=clock(), older_than=timedelta(0)) == expected
    with database.transaction() as db:
        assert db.scalar(select(func.count()).select_from(PendingFlow)) == 1


def test_the_server_purges_on_a_schedule(database: Database, clock: Clock) -> None:
    create_user(database)
    app = create_client(database).client_id
    dead = make_flow(database, app, clock() - timedelta(hours=2))
    live = make_flow(database, app, clock())

    async def run_until_purged() -> None:
        task = asyncio.create_task(
            purge_periodically(
                database, clock, interval=timedelta(milliseconds=10), older_than=timedelta(0)
            )
        )
        try:
            for _ in range(500):
                await asyncio.sleep(0.01)
                if dead.row.public_id not in remaining(database):
                    return
            pytest.fail("the scheduled purge never ran")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(run_until_purged())
    assert remaining(database) == {live.row.public_id}
