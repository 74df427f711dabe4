"""Probes for orchestrators: ``/healthz`` (the process answers) and ``/readyz``
(the database answers and its schema is the one this code was written for)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import timedelta

import anyio
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from anyio import to_thread
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import NullPool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app import migrate
from app.db import sqlite_file
from app.problems import PROBLEM_CONTENT_TYPE, Problem

log = logging.getLogger("baton.health")

# Longer than a healthy database ever takes, shorter than an orchestrator's
# patience: a hung database makes /readyz answer 503 instead of hanging.
READY_TIMEOUT = timedelta(seconds=2)

NO_STORE = {"Cache-Control": "no-store"}


@dataclass(frozen=True, slots=True)
class Failure:
    check: str  # "database" or "migrations"
    title: str


class Readiness:
    """Checks the database with its own one-connection engine, so that probes
    neither wait behind nor take connections from requests."""

    def __init__(self, database_url: str, *, timeout: timedelta = READY_TIMEOUT) -> None:
        self.timeout = timeout.total_seconds()
        # The code's head revisions cannot change while it runs: read them once.
        script = ScriptDirectory.from_config(migrate.alembic_config(database_url))
        self.heads = frozenset(script.get_heads())
        self._engine = _probe_engine(database_url, self.timeout)
        self._last: Failure | None = None

    async def check(self) -> Failure | None:
        try:
            with anyio.fail_after(self.timeout):
                # A thread stuck on a dead connection is left behind (it ends
                # at the connect timeout); the probe answers now.
                found = await to_thread.run_sync(self._revisions, abandon_on_cancel=True)
        except TimeoutError:
            failure: Failure | None = Failure(
                "database", f"The database did not answer within {self.timeout:g}s."
            )
        except SQLAlchemyError as error:
            log.debug("readiness: database error", exc_info=error)
            failure = Failure("database", "The database is unreachable.")
        else:
            failure = None
            if found != self.heads:
                failure = Failure(
                    "migrations",
                    f"The database schema is at {_names(found)}, not at {_names(self.heads)}: "
                    "run `baton db upgrade`.",
                )
        self._report(failure)
        return failure

    def _revisions(self) -> frozenset[str]:
        with self._engine.connect() as connection:
            try:
                return frozenset(connection.execute(_VERSIONS).scalars())
            except DBAPIError:
                # No version table (an empty database), or one that is not
                # what this code expects: alembic has the last word.
                connection.rollback()
                return frozenset(MigrationContext.configure(connection).get_current_heads())

    def _report(self, failure: Failure | None) -> None:
        """Log changes of state only: probes poll every few seconds."""
        if failure != self._last:
            if failure is not None:
                log.warning("not ready: %s", failure.title, extra={"check": failure.check})
            elif self._last is not None:
                log.info("ready again")
        self._last = failure

    def dispose(self) -> None:
        self._engine.dispose()


# What alembic's MigrationContext reads, without the Table it builds and the
# statement it compiles at every call (most of a probe's CPU time).
_VERSIONS = text("SELECT version_num FROM alembic_version")


def _names(revisions: frozenset[str]) -> str:
    return ", ".join(sorted(revisions)) or "no revision"


def _probe_engine(database_url: str, timeout: float) -> Engine:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if sqlite_file(url) is None:
            # Each connection would be a database of its own: nothing to keep.
            return create_engine(url, poolclass=NullPool, connect_args={"timeout": timeout})
        # One connection kept: opening the file (and its WAL) at every probe
        # was a third of a probe's CPU.
        return create_engine(
            url,
            pool_size=1,
            max_overflow=0,
            pool_timeout=timeout,
            connect_args={"timeout": timeout},
        )
    # libpq counts the connect timeout in whole seconds, and at least 2.
    url = url.update_query_dict({"connect_timeout": str(max(2, math.ceil(timeout)))})
    return create_engine(url, pool_size=1, max_overflow=0, pool_timeout=timeout, pool_pre_ping=True)


async def healthz(request: Request) -> Response:
    """The process is alive and its event loop answers; nothing else is checked."""
    return JSONResponse({"status": "ok"}, headers=NO_STORE)


async def readyz(request: Request) -> Response:
    readiness: Readiness = request.app.state.services.readiness
    failure = await readiness.check()
    if failure is None:
        return JSONResponse({"status": "ok"}, headers=NO_STORE)
    request_id = request.scope.get("state", {}).get("request_id")
    body = Problem(503, "unspecified", failure.title).body(request_id)
    body["check"] = failure.check  # an RFC 7807 extension member: which check failed
    return JSONResponse(body, status_code=503, headers=NO_STORE, media_type=PROBLEM_CONTENT_TYPE)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
