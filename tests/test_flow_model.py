"""The pending-flow store against a model: a Hypothesis state machine creates,
consumes, revokes and purges flows while time passes, and after every step the
store must say what the model says.

The model's rules, from ``app.flows``:

- a flow is pending from its creation until ``expires_at`` (exclusive), unless
  consumed or revoked first;
- consuming needs the flow's token, the ``login`` kind, a pending flow and,
  for a flow bound to a browser, that browser's binding;
- revoking (by public ids, by client, or both) touches only pending flows, so
  an expired flow stays expired and of consume and revoke at most one ever wins;
- a purge with ``older_than`` deletes exactly the flows that ended (were
  consumed, revoked or expired) before ``now - max(older_than, 0)``, never a
  pending one.

Each run gets a fresh SQLite file (on PostgreSQL: emptied tables).
``BATON_FUZZ_EXAMPLES`` raises the number of runs (``make fuzz``).
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from app import clients, flows, users
from app.db import Base, Database
from app.purge import purge
from app.redirects import resume_path

EXAMPLES = int(os.environ.get("BATON_FUZZ_EXAMPLES", "25"))
START = datetime(2030, 1, 1, 12, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
CLIENTS = 2
UNKNOWN_PUBLIC_ID = "0" * 16  # the shape of a public id, never issued (they are random)
BINDINGS = ["a" * 64, "b" * 64]  # two browsers' binding hashes


@dataclass
class ModelFlow:
    token: str
    client: int
    binding: str | None
    redir_to: str
    expires_at: datetime
    consumed_at: datetime | None = None
    revoked_at: datetime | None = None

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.consumed_at is not None:
            return "consumed"
        if self.expires_at <= now:
            return "expired"
        return "pending"

    def ended_at(self) -> datetime:
        """When it stopped being pending: consumed, revoked, else expired."""
        return self.consumed_at or self.revoked_at or self.expires_at


class FlowStore(RuleBasedStateMachine):
    issued = Bundle("issued")  # public ids of every flow created, purged ones included

    def __init__(self, database: Database, cleanup: Callable[[], None]) -> None:
        super().__init__()
        self.database = database
        self.cleanup = cleanup
        self.now = START
        self.present: dict[str, ModelFlow] = {}
        self.purged: dict[str, ModelFlow] = {}
        with database.transaction() as db:
            user = users.create(db=db, username="alice", password_hash="unused", now=START)
            registered = [
                clients.register(
                    db=db,
                    name=f"App {n}",
                    redirect_uris=[f"https://app{n}.example/callback"],
                    public=True,
                    first_party=True,
                    scope="read",
                    now=START,
                ).client
                for n in range(CLIENTS)
            ]
            self.client_pks = [client.id for client in registered]
            self.client_ids = [client.client_id for client in registered]
            self.user_id = user.id

    def teardown(self) -> None:
        self.cleanup()

    def status(self, public_id: str) -> str | None:
        flow = self.present.get(public_id)
        return None if flow is None else flow.status(self.now)

    def unexpired(self) -> list[str]:
        """Flows whose expiry is still ahead, in creation order (public ids are
        random: an order by them would not replay)."""
        return [pid for pid, flow in self.present.items() if flow.expires_at > self.now]

    def ended(self) -> list[str]:
        """Flows no longer pending, in creation order."""
        return [pid for pid, flow in self.present.items() if flow.ended_at() <= self.now]

    def pending(self) -> set[str]:
        return {pid for pid, flow in self.present.items() if flow.status(self.now) == "pending"}

    def stored_statuses(self, **filters: object) -> dict[str, str]:
        """What the store lists: public id → status."""
        with self.database.transaction() as db:
            listed = flows.list_flows(db=db, now=self.now, limit=10_000, **filters)
        return {summary.flow.public_id: summary.status for summary in listed}

    # -- rules -----------------------------------------------------------------

    @rule(
        target=issued,
        client=st.integers(0, CLIENTS - 1),
        binding=st.sampled_from([None, BINDINGS[0]]),
        ttl=st.integers(1, 1800),
    )
    def create(self, client: int, binding: str | None, ttl: int) -> str:
        params = {"response_type": "code", "client_id": f"app{client}", "state": str(ttl)}
        redir_to = resume_path(params)
        with self.database.transaction() as db:
            created = flows.create(
                db=db,
                client_pk=self.client_pks[client],
                request=params,
                redir_to=redir_to,
                now=self.now,
                ttl=timedelta(seconds=ttl),
                binding_hash=binding,
            )
        public_id = created.row.public_id
        assert public_id not in self.present
        assert public_id not in self.purged
        self.present[public_id] = ModelFlow(
            created.token, client, binding, redir_to, self.now + timedelta(seconds=ttl)
        )
        return public_id

    @rule(
        public_id=issued,
        kind=st.sampled_from([flows.KIND_LOGIN, "device"]),
        binding=st.sampled_from([None, *BINDINGS]),
    )
    def consume(self, public_id: str, kind: str, binding: str | None) -> None:
        flow = self.present.get(public_id) or self.purged[public_id]
        with self.database.transaction() as db:
            result = flows.consume(
                db=db,
                token=flow.token,
                user_id=self.user_id,
                now=self.now,
                kind=kind,
                binding_hash=binding,
            )
        expected = (
            self.status(public_id) == "pending"
            and kind == flows.KIND_LOGIN
            and flow.binding in {None, binding}
        )
        assert (result is not None) == expected, (self.status(public_id), kind, binding)
        if result is not None:
            assert result.public_id == public_id
            assert result.redir_to == flow.redir_to
            assert result.client_id == self.client_ids[flow.client]
            flow.consumed_at = self.now

    @rule(
        token=st.one_of(
            st.text(max_size=64),
            st.text(min_size=flows.MAX_TOKEN_LENGTH + 1, max_size=flows.MAX_TOKEN_LENGTH + 8),
        )
    )
    def consume_unknown_token(self, token: str) -> None:
        with self.database.transaction() as db:
            result = flows.consume(db=db, token=token, user_id=self.user_id, now=self.now)
        assert result is None

    @rule(
        public_ids=st.lists(st.one_of(issued, st.just(UNKNOWN_PUBLIC_ID)), max_size=4),
        client=st.none() | st.integers(0, CLIENTS - 1),
    )
    def revoke(self, public_ids: list[str], client: int | None) -> None:
        client_pk = None if client is None else self.client_pks[client]
        if not public_ids and client_pk is None:
            with (
                pytest.raises(ValueError, match="name the flows or the client"),
                self.database.transaction() as db,
            ):
                flows.revoke(db=db, now=self.now, public_ids=public_ids)
            return
        with self.database.transaction() as db:
            revoked = flows.revoke(db=db, now=self.now, public_ids=public_ids, client_pk=client_pk)
        expected = {
            pid
            for pid in self.pending()
            if (not public_ids or pid in public_ids)
            and (client is None or self.present[pid].client == client)
        }
        assert sorted(revoked) == sorted(expected)
        for pid in expected:
            self.present[pid].revoked_at = self.now

    @rule(seconds=st.integers(0, 900))
    def advance(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @precondition(lambda self: bool(self.unexpired()))
    @rule(data=st.data(), offset=st.sampled_from([-MICROSECOND, timedelta(0), MICROSECOND]))
    def advance_to_an_expiry(self, data: st.DataObject, offset: timedelta) -> None:
        """Land on the edges of an expiry: just before, exactly at, just after."""
        public_id = data.draw(st.sampled_from(self.unexpired()))
        self.now = self.present[public_id].expires_at + offset

    @rule(older_than=st.integers(-600, 3600), batch_size=st.integers(1, 4))
    def purge(self, older_than: int, batch_size: int) -> None:
        self.check_purge(timedelta(seconds=older_than), batch_size)

    @precondition(lambda self: bool(self.ended()))
    @rule(
        data=st.data(),
        offset=st.sampled_from([-MICROSECOND, timedelta(0), MICROSECOND]),
        batch_size=st.integers(1, 4),
    )
    def purge_at_an_end(self, data: st.DataObject, offset: timedelta, batch_size: int) -> None:
        """Put the purge's cutoff on the edges of when a flow ended."""
        public_id = data.draw(st.sampled_from(self.ended()))
        older_than = self.now - self.present[public_id].ended_at() + offset
        self.check_purge(older_than, batch_size)

    def check_purge(self, older_than: timedelta, batch_size: int) -> None:
        cutoff = self.now - max(older_than, timedelta(0))
        expected = {pid for pid, flow in self.present.items() if flow.ended_at() < cutoff}
        pending_before = self.stored_statuses(status="pending")
        with self.database.transaction() as db:
            assert flows.count_purgeable(db=db, cutoff=cutoff) == len(expected)

        deleted = purge(self.database, now=self.now, older_than=older_than, batch_size=batch_size)

        assert deleted == len(expected)
        remaining = set(self.stored_statuses())
        assert remaining == set(self.present) - expected
        assert set(pending_before) <= remaining, "a purge deleted a pending flow"
        for pid in expected:
            self.purged[pid] = self.present.pop(pid)

    # -- the invariant -----------------------------------------------------------

    @invariant()
    def the_store_agrees_with_the_model(self) -> None:
        """Listing (Python's ``status_of``), its status filters (SQL's
        ``status_is``) and the statistics all say what the model says."""
        expected = {pid: flow.status(self.now) for pid, flow in self.present.items()}
        with self.database.transaction() as db:
            listed = flows.list_flows(db=db, now=self.now, limit=10_000)
            by_filter = {
                status: {
                    summary.flow.public_id
                    for summary in flows.list_flows(
                        db=db, now=self.now, limit=10_000, status=status
                    )
                }
                for status in flows.STATUSES
            }
            stats = flows.stats(db=db, now=self.now, window=timedelta(hours=1))

        assert {summary.flow.public_id: summary.status for summary in listed} == expected
        for status in flows.STATUSES:
            assert by_filter[status] == {p for p, s in expected.items() if s == status}, status
        counts = Counter(expected.values())
        assert stats.by_status == {status: counts[status] for status in flows.STATUSES}
        for summary in listed:
            row = summary.flow
            assert row.consumed_at is None or row.revoked_at is None, row.public_id
            assert (row.consumed_by is None) == (row.consumed_at is None), row.public_id
            assert summary.consumer == ("alice" if row.consumed_at is not None else None)


def fresh_databases(
    database_url: str, directory: Path
) -> Callable[[], tuple[Database, Callable[[], None]]]:
    """A new empty database for each run: a new SQLite file, or PostgreSQL's
    tables emptied."""
    runs = itertools.count()
    if make_url(database_url).get_backend_name() == "sqlite":

        def sqlite() -> tuple[Database, Callable[[], None]]:
            path = directory / f"flows-{next(runs)}.db"
            url = f"sqlite:///{path}"
            engine = create_engine(url)
            Base.metadata.create_all(engine)
            engine.dispose()
            database = Database(url)

            def cleanup() -> None:
                database.dispose()
                for leftover in directory.glob(path.name + "*"):
                    leftover.unlink()

            return database, cleanup

        return sqlite

    def postgresql() -> tuple[Database, Callable[[], None]]:
        database = Database(database_url)
        with database.transaction() as db:
            # DELETE, not TRUNCATE: on a handful of rows it is many times faster.
            for table in reversed(Base.metadata.sorted_tables):
                db.execute(table.delete())
        return database, database.dispose

    return postgresql


def test_flow_store_matches_its_model(database_url: str, tmp_path: Path) -> None:
    fresh = fresh_databases(database_url, tmp_path)

    class OnAFreshDatabase(FlowStore):
        def __init__(self) -> None:
            super().__init__(*fresh())

    run_state_machine_as_test(
        OnAFreshDatabase,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
