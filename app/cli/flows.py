"""``baton flows``: pending authorization requests waiting at the login step."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import click
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from app import clients, flows
from app.cli._base import (
    Context,
    as_duration,
    as_json_option,
    as_since,
    audit_admin,
    coloured,
    echo_json,
    human,
    iso,
    main,
    pass_context,
    table,
)
from app.db import Database, utcnow
from app.models import BrowserSession
from app.purge import BATCH_SIZE, purge
from app.settings import format_duration


def summary_document(summary: flows.FlowSummary, now: datetime) -> dict[str, Any]:
    """The stable JSON shape of ``flows list`` (documented in the README)."""
    flow = summary.flow
    return {
        "id": flow.public_id,
        "kind": flow.kind,
        "client_id": summary.client_id,
        "client_name": summary.client_name,
        "status": summary.status,
        "created_at": iso(flow.created_at),
        "expires_at": iso(flow.expires_at),
        "consumed_at": iso(flow.consumed_at),
        "revoked_at": iso(flow.revoked_at),
        "age_seconds": int((now - flow.created_at).total_seconds()),
        "seconds_left": (
            int((flow.expires_at - now).total_seconds()) if summary.status == "pending" else None
        ),
        "consumer": summary.consumer,
        "requester_ip": flow.requester_ip,
    }


@main.group("flows")
def flows_group() -> None:
    """Inspect and manage pending flows (authorization requests paused at login)."""


@flows_group.command("list")
@click.option("--status", type=click.Choice(flows.STATUSES), help="Only flows in this status.")
@click.option("--client", "client_id", metavar="CLIENT_ID", help="Only this client's flows.")
@click.option("--user", "consumer", metavar="NAME", help="Only flows consumed by this user.")
@click.option(
    "--since", callback=as_since, help="Created after: a duration back (1h) or an ISO time."
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@as_json_option
@pass_context
def flows_list(
    ctx: Context,
    status: str | None,
    client_id: str | None,
    consumer: str | None,
    since: datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """List flows, newest first.

    \b
    Examples:
      baton flows list --status pending
      baton flows list --client 3f2a… --since 1h --json
    """
    now = utcnow()
    with ctx.transaction() as db:
        listed = flows.list_flows(
            db=db,
            now=now,
            status=status,
            client_id=client_id,
            consumer=consumer,
            since=since,
            limit=limit,
        )
        documents = [summary_document(s, now) for s in listed]
    if as_json:
        echo_json(documents)
        return
    table(
        ["ID", "KIND", "CLIENT", "STATUS", "AGE", "LEFT", "CONSUMER", "REQUESTER IP"],
        [
            [
                d["id"],
                d["kind"],
                d["client_name"][:24],
                coloured(d["status"]),
                human(timedelta(seconds=d["age_seconds"])),
                "-" if d["seconds_left"] is None else human(timedelta(seconds=d["seconds_left"])),
                d["consumer"] or "-",
                d["requester_ip"] or "-",
            ]
            for d in documents
        ],
    )


@flows_group.command("show")
@click.argument("flow_id")
@as_json_option
@pass_context
def flows_show(ctx: Context, flow_id: str, as_json: bool) -> None:
    """Everything stored about one flow, except its secrets.

    The redirection token exists only as a hash and is never shown; the PKCE
    challenge and the client's state are shown only as present or as a length.
    """
    now = utcnow()
    with ctx.transaction() as db:
        summary = flows.get_summary(db=db, public_id=flow_id, now=now)
        if summary is None:
            raise click.ClickException(f"no flow with id {flow_id!r}")
        sessions_opened = (
            db.scalar(
                select(func.count())
                .select_from(BrowserSession)
                .where(BrowserSession.flow_id == summary.flow.id)
            )
            or 0
        )
    document = _detail(summary, now, sessions_opened)
    if as_json:
        echo_json(document)
        return
    for key, value in document.items():
        if isinstance(value, dict):
            click.echo(f"{key}:")
            for inner, shown in value.items():
                click.echo(f"  {inner + ':':<24}{_plain(shown)}")
        else:
            click.echo(f"{key + ':':<26}{coloured(value) if key == 'status' else _plain(value)}")


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return " ".join(str(v) for v in value) or "-"
    return str(value)


def _detail(summary: flows.FlowSummary, now: datetime, sessions_opened: int) -> dict[str, Any]:
    flow = summary.flow
    request = dict(flow.request)
    shown_request = {
        "response_type": request.get("response_type"),
        "client_id": request.get("client_id"),
        "redirect_uri": request.get("redirect_uri"),
        "scope": request.get("scope"),
        "state_length": len(request["state"]) if "state" in request else None,
        "code_challenge": "present" if request.get("code_challenge") else "absent",
        "code_challenge_method": request.get("code_challenge_method"),
        "nonce_length": len(request["nonce"]) if "nonce" in request else None,
    }
    document = summary_document(summary, now)
    document.update(
        {
            "request": shown_request,
            "scopes": (request.get("scope") or "").split(),
            "redirect_uri": request.get("redirect_uri"),
            "binding": "bound to a browser" if flow.binding_hash else "not bound",
            "requester_agent": flow.requester_agent,
            "outcome": _outcome(summary, sessions_opened),
        }
    )
    return document


def _outcome(summary: flows.FlowSummary, sessions_opened: int) -> str:
    flow = summary.flow
    if summary.status == "consumed" and flow.consumed_at is not None:
        waited = human(flow.consumed_at - flow.created_at)
        who = summary.consumer or "a since-removed user"
        return f"consumed by {who} after {waited}; {sessions_opened} session(s) opened"
    if summary.status == "revoked" and flow.revoked_at is not None:
        return f"revoked {human(flow.revoked_at - flow.created_at)} after creation"
    if summary.status == "expired":
        return "expired unused"
    return "waiting for a login"


@flows_group.command("revoke")
@click.argument("flow_ids", nargs=-1, metavar="[ID]...")
@click.option("--client", "client_id", metavar="CLIENT_ID", help="Revoke this client's flows.")
@click.option(
    "--all-pending", is_flag=True, help="With --client: confirm revoking every pending flow."
)
@pass_context
def flows_revoke(
    ctx: Context, flow_ids: tuple[str, ...], client_id: str | None, all_pending: bool
) -> None:
    """Revoke flows: a login with a revoked token fails as with an unknown token.

    \b
    Examples:
      baton flows revoke 9c1e0a7b2f3d4e5f
      baton flows revoke --client 3f2a… --all-pending
    """
    if bool(flow_ids) == bool(client_id):
        raise click.UsageError("give flow ids, or --client with --all-pending")
    if client_id and not all_pending:
        raise click.UsageError("add --all-pending to revoke every pending flow of the client")
    now = utcnow()
    with ctx.transaction() as db:
        if client_id:
            client = clients.get(db=db, client_id=client_id)
            if client is None:
                raise click.ClickException(f"no client with id {client_id!r}")
            revoked = flows.revoke(db=db, now=now, client_pk=client.id)
        else:
            statuses = {}
            for flow_id in dict.fromkeys(flow_ids):
                summary = flows.get_summary(db=db, public_id=flow_id, now=now)
                if summary is None:
                    raise click.ClickException(f"no flow with id {flow_id!r}")
                statuses[flow_id] = summary.status
            revoked = flows.revoke(db=db, now=now, public_ids=list(statuses))
            for flow_id, status in statuses.items():
                if flow_id not in revoked:
                    click.echo(f"flow {flow_id} is {status}; nothing to revoke")
        if revoked:
            audit_admin(db, "admin.flows_revoked", client_id=client_id, flows=revoked)
    click.echo(f"revoked {len(revoked)} flow(s)" + (": " + " ".join(revoked) if revoked else ""))


@flows_group.command("purge")
@click.option(
    "--older-than",
    callback=as_duration,
    default="24h",
    show_default=True,
    help="Delete flows that ended (expired, consumed, revoked) this long ago.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option(
    "--batch-size", default=BATCH_SIZE, show_default=True, type=click.IntRange(1, 100_000)
)
@pass_context
def flows_purge(ctx: Context, older_than: timedelta, dry_run: bool, batch_size: int) -> None:
    """Delete finished flows in batches; pending flows are never touched.

    Safe while Baton serves and while another purge runs: each batch is a
    short transaction, and on PostgreSQL concurrent purges skip each other's rows.

    \b
    Examples:
      baton flows purge --dry-run
      baton flows purge --older-than 0s
    """
    now = utcnow()
    if dry_run:
        with ctx.transaction() as db:
            count = flows.count_purgeable(db=db, cutoff=now - older_than)
        click.echo(
            f"would purge {count} flow(s) that ended more than {format_duration(older_than)} ago"
        )
        return
    database = Database(ctx.settings.database_url)
    try:
        deleted = purge(database, now=now, older_than=older_than, batch_size=batch_size)
    except DBAPIError as error:
        raise ctx.database_error(error) from None
    finally:
        database.dispose()
    click.echo(f"purged {deleted} flow(s) that ended more than {format_duration(older_than)} ago")


@flows_group.command("stats")
@click.option(
    "--window",
    callback=as_duration,
    default="24h",
    show_default=True,
    help="Period for the consumption rate and time to login.",
)
@as_json_option
@pass_context
def flows_stats(ctx: Context, window: timedelta, as_json: bool) -> None:
    """Counts by status and client, pending ages, consumption rate, time to login."""
    now = utcnow()
    with ctx.transaction() as db:
        result = flows.stats(db=db, now=now, window=window)
    median = result.median_time_to_login
    by_client: list[dict[str, Any]] = [
        {"client_id": cid, "client_name": result.client_names[cid], **counts}
        for cid, counts in sorted(result.by_client.items())
    ]
    document = {
        "by_status": result.by_status,
        "by_client": by_client,
        "pending_age": result.pending_ages,
        "window_seconds": int(window.total_seconds()),
        "created_in_window": result.created_in_window,
        "consumed_in_window": result.consumed_in_window,
        "consumption_rate": result.consumption_rate,
        "median_seconds_to_login": None if median is None else median.total_seconds(),
    }
    if as_json:
        echo_json(document)
        return
    click.echo("flows by status:  " + "  ".join(f"{k} {v}" for k, v in result.by_status.items()))
    click.echo("pending by age:   " + "  ".join(f"{k} {v}" for k, v in result.pending_ages.items()))
    rate = "-" if result.consumption_rate is None else f"{result.consumption_rate:.0%}"
    click.echo(
        f"{'last ' + format_duration(window) + ':':<18}{result.created_in_window} created, "
        f"{result.consumed_in_window} consumed ({rate}), "
        f"median time to login {'-' if median is None else human(median)}"
    )
    click.echo()
    table(
        ["CLIENT ID", "NAME", *(s.upper() for s in flows.STATUSES)],
        [
            [c["client_id"], c["client_name"][:24], *(str(c[s]) for s in flows.STATUSES)]
            for c in by_client
        ],
    )
