"""The command group, its context and the helpers every command shares."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, ProgrammingError
from sqlalchemy.orm import Session

from app.db import Database, utcnow
from app.settings import Settings, SettingsError, parse_duration
from app.settings import database_url as parse_database_url

EXIT_CODES = """\b
Exit codes:
  0  success
  1  the operation failed: unknown name or id, duplicate, invalid value,
     unreachable database, bad BATON_* setting
  2  bad usage: unknown command or option, missing argument
"""


class Context:
    """Settings and database access for one invocation."""

    def __init__(self, database_url: str | None) -> None:
        self._database_url = database_url
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                settings = Settings.from_env()
            except SettingsError as error:
                raise click.ClickException(str(error)) from None
            if self._database_url is not None:
                try:
                    url = parse_database_url(self._database_url)
                except ValueError as error:
                    raise click.ClickException(f"--database-url: {error}") from None
                settings = replace(settings, database_url=url)
            self._settings = settings
        return self._settings

    @property
    def safe_url(self) -> str:
        return make_url(self.settings.database_url).render_as_string(hide_password=True)

    def database_error(self, error: DBAPIError) -> click.ClickException:
        detail = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        hint = " (has `baton db upgrade` been run?)" if _missing_schema(error) else ""
        return click.ClickException(f"cannot use the database {self.safe_url}: {detail}{hint}")

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        settings = self.settings
        database = Database(settings.database_url)
        try:
            with database.transaction() as db:
                yield db
        except DBAPIError as error:
            raise self.database_error(error) from None
        finally:
            database.dispose()

    def check_database(self) -> None:
        """Fail early (before prompting for a password) when the database is unusable."""
        with self.transaction() as db:
            db.execute(text("SELECT 1 FROM users WHERE 1 = 0"))


def _missing_schema(error: DBAPIError) -> bool:
    message = str(error.orig).lower()
    return isinstance(error, ProgrammingError) or "no such table" in message


pass_context = click.make_pass_decorator(Context)
as_json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


def audit_admin(db: Session, event: str, **fields: Any) -> None:
    """Record an administrative action in the audit log (actor "cli")."""
    from app import audit

    audit.record(db=db, event=event, now=utcnow(), actor="cli", **fields)


def _is_utf8(text: str) -> bool:
    """False for text Python decoded from bytes that are not UTF-8 (as lone
    surrogates, PEP 383): no database stores it, no UTF-8 stream writes it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escaped(text: str) -> str:
    """``'\\xff'`` for the byte 0xff that was not UTF-8."""
    try:
        return repr(text.encode("utf-8", "surrogateescape"))[1:]
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        return repr(text)


class _Utf8Group(click.Group):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Checked once here, for every command: names, ids and values alike.
        for arg in args:
            if not _is_utf8(arg):
                raise click.ClickException(f"arguments must be valid UTF-8, not {_escaped(arg)}")
        return super().parse_args(ctx, args)


@click.group(
    cls=_Utf8Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES
)
@click.option(
    "--database-url", metavar="URL", help="Use this database instead of BATON_DATABASE_URL."
)
@click.version_option(package_name="baton", prog_name="baton")
@click.pass_context
def main(ctx: click.Context, database_url: str | None) -> None:
    """Baton: an OAuth 2.1 authorization server with an SPA login step.

    Settings come from BATON_* environment variables (see the README).

    \b
    Examples:
      baton db upgrade
      baton flows list --status pending
      baton --database-url postgresql://baton@db/baton users list
    """
    ctx.obj = Context(database_url)


# -- output -------------------------------------------------------------------

STATUS_COLOURS = {"pending": "yellow", "consumed": "green", "expired": "bright_black"}
STATUS_COLOURS |= {"revoked": "red", "active": "green", "disabled": "red"}


def coloured(status: str) -> str:
    """Colour for people; click strips it when stdout is not a terminal."""
    return click.style(status, fg=STATUS_COLOURS.get(status))


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(click.unstyle(c))) for w, c in zip(widths, row, strict=True)]
    for row in [[click.style(h, bold=True) for h in headers], *rows]:
        cells = [c + " " * (w - len(click.unstyle(c))) for c, w in zip(row, widths, strict=True)]
        click.echo("  ".join(cells).rstrip())
    if not rows:
        click.echo("(none)")


def human(delta: timedelta) -> str:
    """``42s``, ``5m12s``, ``2h03m``, ``3d04h``."""
    seconds = int(delta.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days}d{hours:02d}h"
    if hours:
        return f"{sign}{hours}h{minutes:02d}m"
    if minutes:
        return f"{sign}{minutes}m{secs:02d}s"
    return f"{sign}{secs}s"


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


# -- parameters ---------------------------------------------------------------


def duration_option(value: str | None) -> timedelta | None:
    """Parse a duration option (``90s``, ``10m``, ``24h``) or fail as bad usage."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def as_duration(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    return duration_option(value)


def as_since(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """A duration back from now (``1h``) or an ISO 8601 time."""
    if value is None:
        return None
    if re.fullmatch(r"[0-9hmsd]+", value.strip().lower()):
        try:
            return utcnow() - parse_duration(value)
        except ValueError as error:
            raise click.BadParameter(str(error)) from None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"expected a duration such as 1h or an ISO time, got {value!r}"
        ) from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
        raise click.BadParameter(f"{value!r} is out of range in UTC") from None


def check_username(name: str, where: str = "") -> None:
    """Refuse a user name before a password is asked for and hashed."""
    from app import users

    try:
        users.check_username(name)
    except users.InvalidUsername as error:
        raise click.ClickException(f"{where}{error}") from None


_NOT_UTF8 = "the password must be valid UTF-8"


def read_password(password_stdin: bool) -> str:
    if password_stdin:
        try:
            password = sys.stdin.readline().rstrip("\r\n")
        except UnicodeDecodeError:  # stdin decoded strictly, not with surrogateescape
            raise click.ClickException(_NOT_UTF8) from None
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not _is_utf8(password):
        raise click.ClickException(_NOT_UTF8)
    if not password:
        raise click.ClickException("the password must not be empty")
    if len(password) > 1024:
        raise click.ClickException("the password must be at most 1024 characters")
    return password


# -- top-level commands ---------------------------------------------------------


# The application of each worker process of `serve --workers N` (N > 1).
WORKER_APP = "app.main:create_app_from_env"


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Worker processes sharing the port.",
)
@pass_context
def serve(ctx: Context, host: str, port: int, workers: int) -> None:
    """Serve Baton over HTTP with uvicorn.

    With --workers N, N processes accept connections on the same port; a
    parent process restarts a worker that dies and stops them all on SIGTERM.
    Each worker has its own database pool and its own limits:
    BATON_MAX_CONNECTIONS connections and BATON_HASH_WORKERS password hashes
    at once (BATON_ARGON2_MEMORY_COST each), so set BATON_HASH_WORKERS to
    about the number of cores divided by N. Pending flows, sessions and throttling live in the
    database, so any worker (or replica) can finish a flow another started.

    \b
    Examples:
      BATON_PUBLIC_URL=https://auth.example.com baton serve --host 0.0.0.0
      BATON_HASH_WORKERS=2 baton serve --host 0.0.0.0 --workers 4
    """
    import uvicorn

    from app import listening, logs
    from app.http_protocol import CappedHttpToolsProtocol
    from app.main import create_app

    settings = ctx.settings  # fail here, naming the variable, not inside uvicorn
    # uvicorn raises SIGTERM again once it has shut down gracefully, to die of
    # it; a stop that let the requests in flight finish is a success: exit 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    app: Any
    if workers == 1:
        app = create_app(settings)
    else:
        # Workers are spawned processes: uvicorn imports the app by name in
        # each, and the factory reads the settings from the environment they
        # inherit, where --database-url must be too.
        os.environ["BATON_DATABASE_URL"] = settings.database_url
        app = WORKER_APP
    options: dict[str, Any] = dict(
        factory=workers > 1,
        workers=workers,
        # uvicorn applies it in every process it starts, workers included.
        log_config=logs.config(settings),
        log_level=settings.log_level,
        # uvicorn's access log prints query strings, which carry redirection
        # tokens and authorization codes; Baton logs requests without them.
        access_log=False,
        # The client address (throttling, audit) comes from X-Forwarded-For
        # only when the peer is a proxy the operator named.
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=list(settings.trusted_proxies) or None,
        server_header=False,
        # Bounded resources: connections beyond the limit get 503 at once,
        # idle keep-alive connections are closed after a few seconds, and
        # request heads are capped, so slow or greedy clients cannot hold
        # the worker. A reverse proxy should still enforce read timeouts.
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=5,
        # httptools parses in C (h11 cost more CPU than the rest of an
        # introspection); this protocol adds the cap on request heads that
        # httptools lacks. uvloop runs the event loop (both are dependencies).
        http=CappedHttpToolsProtocol,
        # On SIGTERM, requests in flight get this long to finish.
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace.total_seconds()),
    )
    if workers == 1 or not settings.reuse_port:
        uvicorn.run(app, host=host, port=port, **options)
        return
    if not listening.SPREADS_CONNECTIONS:
        raise click.ClickException("BATON_REUSE_PORT: the kernel spreads connections on Linux only")
    # A socket per worker, so that the kernel spreads connections over them
    # (app/listening.py); uvicorn's supervisor still starts, replaces and
    # stops the workers.
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(app, host=host, port=port, **options)
    try:
        parent = listening.reserve(host, port)
    except OSError as error:
        raise click.ClickException(f"cannot listen on {host}:{port}: {error.strerror}") from None
    logging.getLogger("uvicorn.error").info(
        "Uvicorn running on http://%s:%d with %d workers, a socket each (Press CTRL+C to quit)",
        host,
        parent.getsockname()[1],
        workers,
    )
    Multiprocess(config, sockets=[parent]).run()


def _exit_cleanly(signum: int, frame: object) -> None:
    sys.exit(0)


@main.command()
@click.option("--username", default="admin", show_default=True)
@pass_context
def bootstrap(ctx: Context, username: str) -> None:
    """Create a first user with a random password, if the database has none.

    The password is printed once; change it with `baton users passwd`.
    """
    from app import users
    from app.passwords import hash_password

    check_username(username)
    password = secrets.token_urlsafe(12)
    with ctx.transaction() as db:
        if users.any_exist(db=db):
            click.echo("users exist already; nothing to do")
            return
        password_hash = hash_password(password, ctx.settings.argon2_cost)
        users.create(db=db, username=username, password_hash=password_hash, now=utcnow())
        audit_admin(db, "admin.user_created", username=username, bootstrap=True)
    click.echo(f"created user {username!r} with password {password!r} (shown only once)")


@main.command("hash-password")
@click.option(
    "--timing", is_flag=True, help="Also print on stderr how long the hash took, and its cost."
)
@pass_context
def hash_password_command(ctx: Context, timing: bool) -> None:
    """Print the argon2id hash of the password read from stdin, made with the
    BATON_ARGON2_* cost (--timing helps to tune it).

    \b
    Examples:
      printf '%s\\n' "$PASSWORD" | baton hash-password
      printf 'x\\n' | BATON_ARGON2_MEMORY_COST=128MiB baton hash-password --timing
    """
    import time

    from app.passwords import hash_password

    password = read_password(password_stdin=not sys.stdin.isatty())
    cost = ctx.settings.argon2_cost
    started = time.perf_counter()
    click.echo(hash_password(password, cost))
    if timing:
        milliseconds = (time.perf_counter() - started) * 1000
        click.echo(
            f"{milliseconds:.0f} ms with t={cost.time_cost}, m={cost.memory_cost} KiB, "
            f"p={cost.parallelism}",
            err=True,
        )
