"""``baton audit``: the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from app import audit
from app.cli._base import Context, as_since, echo_json, iso, main, pass_context, table


@main.group("audit")
def audit_group() -> None:
    """Read the audit log (logins, flows, tokens, admin actions)."""


@audit_group.command("list")
@click.option("--event", help="Only events starting with this (login, admin., flow.created).")
@click.option("--user", "username", metavar="NAME", help="Only events about this username.")
@click.option("--since", callback=as_since, help="A duration back (1h) or an ISO time.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_context
def audit_list(
    ctx: Context,
    event: str | None,
    username: str | None,
    since: datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """List audit events, newest first.

    \b
    Examples:
      baton audit list --event login.failed --since 1h
      baton audit list --user alice --json
    """
    with ctx.transaction() as db:
        rows: list[dict[str, Any]] = [
            {
                "at": iso(e.occurred_at),
                "event": e.event,
                "actor": e.actor,
                "username": e.username,
                "client_id": e.client_id,
                "ip": e.ip,
                "request_id": e.request_id,
                "detail": dict(e.detail),
            }
            for e in audit.recent(db=db, limit=limit, event=event, username=username, since=since)
        ]
    if as_json:
        echo_json(rows)
        return
    table(
        ["AT", "EVENT", "USER", "CLIENT", "IP", "DETAIL"],
        [
            [
                str(r["at"])[:19] + "Z",
                r["event"],
                r["username"] or "-",
                (r["client_id"] or "-")[:16],
                r["ip"] or "-",
                " ".join(f"{k}={v}" for k, v in r["detail"].items() if v is not None)[:60] or "-",
            ]
            for r in rows
        ],
    )
