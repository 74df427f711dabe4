"""``baton users``: the people who sign in."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from app import sessions, users
from app.cli._base import (
    Context,
    as_json_option,
    audit_admin,
    check_username,
    coloured,
    echo_json,
    human,
    iso,
    main,
    pass_context,
    read_password,
    table,
)
from app.db import utcnow
from app.models import User
from app.oauth import bearer
from app.passwords import hash_password, hash_scheme, is_well_formed_hash

PASSWORD_STDIN = click.option(
    "--password-stdin", is_flag=True, help="Read the password from standard input."
)


def _document(user: User, live_sessions: int | None = None) -> dict[str, Any]:
    document: dict[str, Any] = {
        "username": user.username,
        "disabled": user.disabled,
        "created_at": iso(user.created_at),
        "password_changed_at": iso(user.password_changed_at),
        "password_hash_scheme": hash_scheme(user.password_hash),
    }
    if live_sessions is not None:
        document["live_sessions"] = live_sessions
    return document


@main.group("users")
def users_group() -> None:
    """Manage the people who sign in."""


@users_group.command("add")
@click.argument("name")
@PASSWORD_STDIN
@pass_context
def users_add(ctx: Context, name: str, password_stdin: bool) -> None:
    """Create user NAME; the password is prompted for, or read from stdin.

    \b
    Example:
      printf '%s\\n' "$PASSWORD" | baton users add alice --password-stdin
    """
    check_username(name)
    ctx.check_database()
    password_hash = hash_password(read_password(password_stdin), ctx.settings.argon2_cost)
    with ctx.transaction() as db:
        try:
            users.create(db=db, username=name, password_hash=password_hash, now=utcnow())
        except users.UserExists:
            raise click.ClickException(f"user {name!r} already exists") from None
        audit_admin(db, "admin.user_created", username=name)
    click.echo(f"created user {name}")


@users_group.command("list")
@as_json_option
@pass_context
def users_list(ctx: Context, as_json: bool) -> None:
    """List users."""
    with ctx.transaction() as db:
        rows = [_document(u) for u in users.list_all(db=db)]
    if as_json:
        echo_json(rows)
        return
    table(
        ["USERNAME", "STATUS", "CREATED", "HASH"],
        [
            [
                r["username"],
                coloured("disabled" if r["disabled"] else "active"),
                r["created_at"][:19] + "Z",
                r["password_hash_scheme"],
            ]
            for r in rows
        ],
    )


@users_group.command("show")
@click.argument("name")
@as_json_option
@pass_context
def users_show(ctx: Context, name: str, as_json: bool) -> None:
    """Show user NAME (never the password hash)."""
    now = utcnow()
    with ctx.transaction() as db:
        user = _require(db, name)
        document = _document(user, len(sessions.live_for_user(db=db, user_id=user.id, now=now)))
    if as_json:
        echo_json(document)
        return
    for key, value in document.items():
        click.echo(f"{key + ':':<22}{value}")


def _require(db: Any, name: str) -> User:
    try:
        return users.require(db=db, username=name)
    except users.UnknownUser:
        raise click.ClickException(f"no user named {name!r}") from None


@users_group.command("passwd")
@click.argument("name")
@PASSWORD_STDIN
@pass_context
def users_passwd(ctx: Context, name: str, password_stdin: bool) -> None:
    """Set the password of user NAME and end all of their sessions."""
    with ctx.transaction() as db:
        _require(db, name)
    password_hash = hash_password(read_password(password_stdin), ctx.settings.argon2_cost)
    now = utcnow()
    with ctx.transaction() as db:
        user = users.set_password(db=db, username=name, password_hash=password_hash, now=now)
        ended = sessions.revoke_all_for_user(db=db, user_id=user.id, now=now)
        bearer.revoke_all_for_user(db=db, user_id=user.id, now=now)
        audit_admin(db, "admin.password_changed", username=name, sessions_ended=ended)
    click.echo(f"changed the password of {name}; ended {ended} session(s)")


@users_group.command("disable")
@click.argument("name")
@pass_context
def users_disable(ctx: Context, name: str) -> None:
    """Refuse every future login of user NAME and end their sessions."""
    now = utcnow()
    with ctx.transaction() as db:
        user = _require(db, name)
        user.disabled = True
        ended = sessions.revoke_all_for_user(db=db, user_id=user.id, now=now)
        audit_admin(db, "admin.user_disabled", username=name, sessions_ended=ended)
    click.echo(f"disabled user {name}; ended {ended} session(s)")


@users_group.command("enable")
@click.argument("name")
@pass_context
def users_enable(ctx: Context, name: str) -> None:
    """Allow user NAME to sign in again."""
    with ctx.transaction() as db:
        _require(db, name).disabled = False
        audit_admin(db, "admin.user_enabled", username=name)
    click.echo(f"enabled user {name}")


@users_group.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_context
def users_remove(ctx: Context, name: str, yes: bool) -> None:
    """Delete user NAME with their sessions, codes and tokens."""
    with ctx.transaction() as db:
        _require(db, name)
    if not yes:
        click.confirm(f"Delete user {name!r} and everything issued to them?", abort=True)
    with ctx.transaction() as db:
        users.remove(db=db, username=name)
        audit_admin(db, "admin.user_removed", username=name)
    click.echo(f"removed user {name}")


@users_group.command("sessions")
@click.argument("name")
@as_json_option
@pass_context
def users_sessions(ctx: Context, name: str, as_json: bool) -> None:
    """List the live sessions of user NAME."""
    now = utcnow()
    with ctx.transaction() as db:
        user = _require(db, name)
        rows: list[dict[str, Any]] = [
            {
                "session": s.id,
                "created_at": iso(s.created_at),
                "expires_at": iso(s.expires_at),
                "ip": s.ip,
                "user_agent": s.user_agent,
                "expires_in_seconds": int((s.expires_at - now).total_seconds()),
            }
            for s in sessions.live_for_user(db=db, user_id=user.id, now=now)
        ]
    if as_json:
        echo_json(rows)
        return
    table(
        ["SESSION", "CREATED", "EXPIRES IN", "IP", "USER AGENT"],
        [
            [
                str(r["session"]),
                str(r["created_at"])[:19] + "Z",
                human(timedelta(seconds=r["expires_in_seconds"])),
                r["ip"] or "-",
                (r["user_agent"] or "-")[:40],
            ]
            for r in rows
        ],
    )


@users_group.command("logout")
@click.argument("name")
@pass_context
def users_logout(ctx: Context, name: str) -> None:
    """End every session of user NAME."""
    with ctx.transaction() as db:
        user = _require(db, name)
        ended = sessions.revoke_all_for_user(db=db, user_id=user.id, now=utcnow())
        audit_admin(db, "admin.user_logged_out", username=name, sessions_ended=ended)
    click.echo(f"ended {ended} session(s) of {name}")


@users_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@as_json_option
@pass_context
def users_import(ctx: Context, file: Path, as_json: bool) -> None:
    """Create the users of a Lenses HQ config.yaml (`auth.users`, bcrypt hashes).

    Existing users are left as they are and reported.

    \b
    Example (config.yaml):
      auth:
        users:
          - username: bob
            password: $2a$12$XQW..XQrtZXCvbQWertqQeFi/1KoQW4eNephNXTfHqtoW9Q4qih5G
    """
    entries = _read_lenses_users(file)
    report: dict[str, list[str]] = {"created": [], "existing": []}
    with ctx.transaction() as db:
        for username, password_hash in entries:
            try:
                users.create(db=db, username=username, password_hash=password_hash, now=utcnow())
            except users.UserExists:
                report["existing"].append(username)
            else:
                report["created"].append(username)
                audit_admin(db, "admin.user_created", username=username, imported_from=file.name)
    if as_json:
        echo_json(report)
        return
    for username in report["created"]:
        click.echo(f"created  {username}")
    for username in report["existing"]:
        click.echo(f"existing {username} (left unchanged)")
    click.echo(f"{len(report['created'])} created, {len(report['existing'])} existing")


def _read_lenses_users(file: Path) -> list[tuple[str, str]]:
    import yaml  # only this command reads YAML

    try:
        document = yaml.safe_load(file.read_text("utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise click.ClickException(f"{file}: not a YAML file: {problem}{where}") from None
    except UnicodeDecodeError:
        raise click.ClickException(f"{file}: not a UTF-8 text file") from None
    auth = document.get("auth") if isinstance(document, dict) else None
    entries = auth.get("users") if isinstance(auth, dict) else None
    if not isinstance(entries, list):
        raise click.ClickException(f"{file}: no auth.users list")
    found: list[tuple[str, str]] = []
    for index, entry in enumerate(entries):
        where = f"{file}: auth.users[{index}]"
        if not isinstance(entry, dict):
            raise click.ClickException(f"{where}: expected username and password")
        username, password_hash = entry.get("username"), entry.get("password")
        if not isinstance(username, str):
            raise click.ClickException(f"{where}: the user name must be 1 to 255 characters")
        check_username(username, f"{where}: ")
        if not isinstance(password_hash, str) or not is_well_formed_hash(password_hash.strip()):
            raise click.ClickException(
                f"{where} ({username}): the password must be a bcrypt or argon2id hash"
            )
        found.append((username, password_hash.strip()))
    names = [u for u, _ in found]
    duplicates = sorted({u for u in names if names.count(u) > 1})
    if duplicates:
        raise click.ClickException(f"{file}: duplicate usernames: {', '.join(duplicates)}")
    return found
