"""``baton clients``: OAuth clients."""

from __future__ import annotations

import json
from typing import Any

import click

from app import clients
from app.cli._base import (
    Context,
    as_json_option,
    audit_admin,
    echo_json,
    iso,
    main,
    pass_context,
    table,
)
from app.db import utcnow
from app.models import Client


def _document(client: Client) -> dict[str, Any]:
    return {
        "client_id": client.client_id,
        "name": client.name,
        "type": "public" if client.public else "confidential",
        "first_party": client.first_party,
        "redirect_uris": list(client.redirect_uris),
        "scope": client.scope,
        "grant_types": list(client.grant_types),
        "provenance": client.provenance,
        "created_at": iso(client.created_at),
    }


def _require(db: Any, client_id: str) -> Client:
    try:
        return clients.require(db=db, client_id=client_id)
    except clients.UnknownClient:
        raise click.ClickException(f"no client with id {client_id!r}") from None


@main.group("clients")
def clients_group() -> None:
    """Manage OAuth clients."""


@clients_group.command("add")
@click.option("--name", required=True, help="Shown to users.")
@click.option("--redirect-uri", "redirect_uris", multiple=True, required=True, help="Repeatable.")
@click.option("--public", is_flag=True, help="No secret; PKCE required (SPAs, CLIs, apps).")
@click.option(
    "--first-party",
    is_flag=True,
    help="Trusted, made by you: its users are not asked for consent.",
)
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
    Examples:
      baton clients add --name "My MCP client" --public \\
        --redirect-uri http://127.0.0.1:33418/callback
      baton clients add --name Grafana --redirect-uri https://grafana.example/login/generic_oauth
    """
    with ctx.transaction() as db:
        try:
            registered = clients.register(
                db=db,
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
        audit_admin(db, "admin.client_created", client_id=client_id, name=registered.client.name)
    if as_json:
        click.echo(json.dumps({"client_id": client_id, "client_secret": registered.secret}))
        return
    click.echo(f"client_id:     {client_id}")
    if registered.secret is not None:
        click.echo(f"client_secret: {registered.secret}  (shown only once)")


@clients_group.command("list")
@as_json_option
@pass_context
def clients_list(ctx: Context, as_json: bool) -> None:
    """List clients, with where each came from (cli, dcr, demo)."""
    with ctx.transaction() as db:
        rows = [_document(c) for c in clients.list_all(db=db)]
    if as_json:
        echo_json(rows)
        return
    table(
        ["CLIENT ID", "NAME", "TYPE", "SOURCE", "SCOPE", "REDIRECT URIS"],
        [
            [
                r["client_id"],
                r["name"],
                r["type"],
                r["provenance"],
                r["scope"],
                " ".join(r["redirect_uris"]),
            ]
            for r in rows
        ],
    )


@clients_group.command("show")
@click.argument("client_id")
@as_json_option
@pass_context
def clients_show(ctx: Context, client_id: str, as_json: bool) -> None:
    """Show one client (never its secret)."""
    with ctx.transaction() as db:
        document = _document(_require(db, client_id))
    if as_json:
        echo_json(document)
        return
    for key, value in document.items():
        shown = " ".join(value) if isinstance(value, list) else value
        click.echo(f"{key + ':':<15}{shown}")


@clients_group.command("update")
@click.argument("client_id")
@click.option("--name", help="A new display name.")
@click.option("--redirect-uri", "redirect_uris", multiple=True, help="Replaces all redirect URIs.")
@click.option("--scope", help="Replaces the allowed scopes.")
@click.option("--first-party/--third-party", default=None, help="Whether consent is skipped.")
@pass_context
def clients_update(
    ctx: Context,
    client_id: str,
    name: str | None,
    redirect_uris: tuple[str, ...],
    scope: str | None,
    first_party: bool | None,
) -> None:
    """Change a client's name, redirect URIs, scopes or trust.

    \b
    Example:
      baton clients update 3f2a… --redirect-uri https://app.example/cb --scope "read"
    """
    if name is None and not redirect_uris and scope is None and first_party is None:
        raise click.UsageError(
            "nothing to change: give --name, --redirect-uri, --scope or --first-party"
        )
    with ctx.transaction() as db:
        _require(db, client_id)
        try:
            clients.update_metadata(
                db=db,
                client_id=client_id,
                name=name,
                redirect_uris=list(redirect_uris) or None,
                scope=scope,
                first_party=first_party,
            )
        except clients.InvalidClientMetadata as error:
            raise click.ClickException(str(error)) from None
        audit_admin(db, "admin.client_updated", client_id=client_id)
    click.echo(f"updated client {client_id}")


@clients_group.command("rotate-secret")
@click.argument("client_id")
@as_json_option
@pass_context
def clients_rotate_secret(ctx: Context, client_id: str, as_json: bool) -> None:
    """Give a confidential client a new secret; the old one stops working at once."""
    with ctx.transaction() as db:
        _require(db, client_id)
        try:
            secret = clients.rotate_secret(db=db, client_id=client_id)
        except clients.InvalidClientMetadata as error:
            raise click.ClickException(str(error)) from None
        audit_admin(db, "admin.client_secret_rotated", client_id=client_id)
    if as_json:
        click.echo(json.dumps({"client_id": client_id, "client_secret": secret}))
        return
    click.echo(f"client_secret: {secret}  (shown only once)")


@clients_group.command("remove")
@click.argument("client_id")
@pass_context
def clients_remove(ctx: Context, client_id: str) -> None:
    """Remove a client with its pending flows, codes and tokens."""
    with ctx.transaction() as db:
        if not clients.remove(db=db, client_id=client_id):
            raise click.ClickException(f"no client with id {client_id!r}")
        audit_admin(db, "admin.client_removed", client_id=client_id)
    click.echo(f"removed client {client_id}")
