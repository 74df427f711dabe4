"""The ``baton`` admin command.

Exit codes: 0 success, 1 the operation failed (unknown name, duplicate,
unreachable database, bad setting), 2 bad usage (click's own).
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app import clients, users
from app.db import Database, utcnow
from app.passwords import hash_password
from app.settings import Settings, SettingsError, normalise_database_url


class Context:
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
            if self._database_url:
                url = normalise_database_url(self._database_url)
                settings = Settings(**{**_fields(settings), "database_url": url})
            self._settings = settings
        return self._settings

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        database = Database(self.settings.database_url)
        try:
            with database.transaction() as db:
                yield db
        except OperationalError as error:
            raise click.ClickException(
                f"cannot use the database {_safe_url(self.settings.database_url)}: "
                f"{str(error.orig).strip().splitlines()[0]}"
            ) from None
        finally:
            database.dispose()


def _fields(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in settings.__dataclass_fields__}


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


pass_context = click.make_pass_decorator(Context)


def _read_password(password_stdin: bool, *, confirm: bool = True) -> str:
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=confirm)
    if not password:
        raise click.ClickException("the password must not be empty")
    if len(password) > 1024:
        raise click.ClickException("the password must be at most 1024 characters")
    return password


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def _table(rows: list[list[str]], headers: list[str]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=False)]
    for row in [headers, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database-url",
    metavar="URL",
    help="Use this database instead of BATON_DATABASE_URL.",
)
@click.pass_context
def main(ctx: click.Context, database_url: str | None) -> None:
    """Baton: an OAuth 2.1 authorization server with an SPA login step.

    Settings come from BATON_* environment variables (see the README).
    """
    ctx.obj = Context(database_url)


# -- serve ------------------------------------------------------------------


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@pass_context
def serve(ctx: Context, host: str, port: int) -> None:
    """Serve Baton over HTTP with uvicorn.

    \b
    Example:
      BATON_PUBLIC_URL=https://auth.example.com baton serve --host 0.0.0.0 --port 8000
    """
    import uvicorn

    settings = ctx.settings  # fail here, with the variable's name, not inside uvicorn
    from app.main import create_app

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=settings.log_level,
        # uvicorn's access log prints query strings, which carry redirection
        # tokens and authorization codes; Baton logs requests without them.
        access_log=False,
        proxy_headers=False,
        server_header=False,
    )


# -- db -----------------------------------------------------------------------


@main.group()
def db() -> None:
    """Manage the database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@pass_context
def db_upgrade(ctx: Context, revision: str) -> None:
    """Bring the database schema up to date (creates it when empty)."""
    from app.migrate import upgrade

    try:
        upgrade(ctx.settings.database_url, revision)
    except OperationalError as error:
        raise click.ClickException(
            f"cannot use the database {_safe_url(ctx.settings.database_url)}: "
            f"{str(error.orig).strip().splitlines()[0]}"
        ) from None
    click.echo(f"database {_safe_url(ctx.settings.database_url)} is at {revision}")


# -- users --------------------------------------------------------------------


@main.group("users")
def users_group() -> None:
    """Manage the people who sign in."""


@users_group.command("add")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@pass_context
def users_add(ctx: Context, name: str, password_stdin: bool) -> None:
    """Create user NAME; the password is prompted for, or read from stdin.

    \b
    Example:
      printf '%s\\n' "$PASSWORD" | baton users add alice --password-stdin
    """
    if not name.strip() or len(name) > 255:
        raise click.ClickException("the user name must be 1 to 255 characters")
    password_hash = hash_password(_read_password(password_stdin))
    with ctx.transaction() as session:
        try:
            users.create(db=session, username=name, password_hash=password_hash, now=utcnow())
        except users.UserExists:
            raise click.ClickException(f"user {name!r} already exists") from None
    click.echo(f"created user {name}")


@users_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_context
def users_list(ctx: Context, as_json: bool) -> None:
    """List users."""
    with ctx.transaction() as session:
        rows = [
            {
                "username": u.username,
                "disabled": u.disabled,
                "created_at": u.created_at.isoformat(),
                "password_hash_scheme": u.password_hash.split("$")[1],
            }
            for u in users.list_all(db=session)
        ]
    if as_json:
        _echo_json(rows)
        return
    _table(
        [
            [str(r["username"]), "disabled" if r["disabled"] else "active", str(r["created_at"])]
            for r in rows
        ],
        ["USERNAME", "STATUS", "CREATED"],
    )


@users_group.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@pass_context
def users_passwd(ctx: Context, name: str, password_stdin: bool) -> None:
    """Set the password of user NAME."""
    password_hash = hash_password(_read_password(password_stdin))
    with ctx.transaction() as session:
        try:
            users.set_password(db=session, username=name, password_hash=password_hash, now=utcnow())
        except users.UnknownUser:
            raise click.ClickException(f"no user named {name!r}") from None
    click.echo(f"changed the password of {name}")


@users_group.command("disable")
@click.argument("name")
@pass_context
def users_disable(ctx: Context, name: str) -> None:
    """Refuse every future login of user NAME."""
    with ctx.transaction() as session:
        try:
            users.set_disabled(db=session, username=name, disabled=True)
        except users.UnknownUser:
            raise click.ClickException(f"no user named {name!r}") from None
    click.echo(f"disabled user {name}")


@main.command()
@click.option("--username", default="admin", show_default=True)
@pass_context
def bootstrap(ctx: Context, username: str) -> None:
    """Create a first user with a random password, if the database has none.

    The password is printed once; change it with `baton users passwd`.
    """
    password = secrets.token_urlsafe(12)
    with ctx.transaction() as session:
        if users.any_exist(db=session):
            click.echo("users exist already; nothing to do")
            return
        users.create(
            db=session, username=username, password_hash=hash_password(password), now=utcnow()
        )
    click.echo(f"created user {username!r} with password {password!r} (shown only once)")


# -- clients ------------------------------------------------------------------


def _client_document(client: Any) -> dict[str, Any]:
    return {
        "client_id": client.client_id,
        "name": client.name,
        "type": "public" if client.public else "confidential",
        "first_party": client.first_party,
        "redirect_uris": list(client.redirect_uris),
        "scope": client.scope,
        "provenance": client.provenance,
        "created_at": client.created_at.isoformat(),
    }


@main.group("clients")
def clients_group() -> None:
    """Manage OAuth clients."""


@clients_group.command("add")
@click.option("--name", required=True, help="Shown to users.")
@click.option("--redirect-uri", "redirect_uris", multiple=True, required=True, help="Repeatable.")
@click.option("--public", is_flag=True, help="No secret; PKCE required (SPAs, CLIs, apps).")
@click.option("--first-party", is_flag=True, help="Trusted: never asks the user for consent.")
@click.option("--scope", default=clients.DEFAULT_SCOPE, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print {client_id, client_secret}.")
@pass_context
def clients_add(
    ctx: Context,
    name: str,
    redirect_uris: tuple[str, ...],
    public: bool,
    first_party: bool,
    scope: str,
    as_json: bool,
) -> None:
    """Register a client. The secret of a confidential client is shown once.

    \b
    Example:
      baton clients add --name "My MCP server" --public \\
        --redirect-uri http://127.0.0.1:33418/callback --scope "read write"
    """
    with ctx.transaction() as session:
        try:
            registered = clients.register(
                db=session,
                name=name,
                redirect_uris=list(redirect_uris),
                public=public,
                first_party=first_party,
                scope=scope,
                now=utcnow(),
            )
        except clients.InvalidClientMetadata as error:
            raise click.ClickException(str(error)) from None
        client_id = registered.client.client_id
    if as_json:
        click.echo(json.dumps({"client_id": client_id, "client_secret": registered.secret}))
        return
    click.echo(f"client_id:     {client_id}")
    if registered.secret is not None:
        click.echo(f"client_secret: {registered.secret}  (shown only once)")


@clients_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_context
def clients_list(ctx: Context, as_json: bool) -> None:
    """List clients."""
    with ctx.transaction() as session:
        rows = [_client_document(c) for c in clients.list_all(db=session)]
    if as_json:
        _echo_json(rows)
        return
    _table(
        [
            [r["client_id"], r["name"], r["type"], r["provenance"], " ".join(r["redirect_uris"])]
            for r in rows
        ],
        ["CLIENT ID", "NAME", "TYPE", "SOURCE", "REDIRECT URIS"],
    )


@clients_group.command("remove")
@click.argument("client_id")
@pass_context
def clients_remove(ctx: Context, client_id: str) -> None:
    """Remove a client with its pending flows, codes and tokens."""
    with ctx.transaction() as session:
        if not clients.remove(db=session, client_id=client_id):
            raise click.ClickException(f"no client with id {client_id!r}")
    click.echo(f"removed client {client_id}")
