"""``baton db``: the schema."""

from __future__ import annotations

import click
from sqlalchemy.exc import DBAPIError

from app.cli._base import Context, main, pass_context


@main.group()
def db() -> None:
    """Manage the database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@pass_context
def db_upgrade(ctx: Context, revision: str) -> None:
    """Bring the database schema up to date (creates it when empty).

    Safe to run on every deploy: at head, it does nothing.
    """
    # Imported here: alembic costs ~0.2 s at start-up, which no other command needs.
    from alembic.util.exc import CommandError

    from app.migrate import current_revision, upgrade

    url = ctx.settings.database_url
    try:
        upgrade(url, revision)
        reached = current_revision(url)
    except DBAPIError as error:
        raise ctx.database_error(error) from None
    except CommandError as error:
        raise click.ClickException(f"cannot upgrade to {revision!r}: {error}") from None
    click.echo(f"database {ctx.safe_url} is at revision {reached}")
