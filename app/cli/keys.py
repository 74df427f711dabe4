"""``baton keys``: the keys that sign ID tokens."""

from __future__ import annotations

from typing import Any

import click

from app import keys
from app.cli._base import (
    Context,
    as_json_option,
    audit_admin,
    coloured,
    echo_json,
    iso,
    main,
    pass_context,
    table,
)
from app.db import utcnow
from app.models import SigningKey


def _document(row: SigningKey, status: str) -> dict[str, Any]:
    # Never the private key: only what the JWKS shows anyway.
    return {
        "kid": row.kid,
        "alg": row.alg,
        "created_at": iso(row.created_at),
        "retired_at": iso(row.retired_at),
        "status": status,
    }


@main.group("keys")
def keys_group() -> None:
    """Manage the keys that sign ID tokens."""


@keys_group.command("list")
@as_json_option
@pass_context
def keys_list(ctx: Context, as_json: bool) -> None:
    """List signing keys, oldest first.

    \b
    Status:
      signing    signs new ID tokens (published in the JWKS)
      published  retired, still in the JWKS until BATON_ID_TOKEN_TTL after
                 its retirement, so that the ID tokens it signed still verify
      expired    retired longer ago than that; no longer published
    """
    keep = ctx.settings.id_token_ttl
    now = utcnow()
    with ctx.transaction() as db:
        signing = keys.current(db=db)
        rows = [
            _document(row, keys.status(row, signing=signing, now=now, keep=keep))
            for row in keys.all_keys(db=db)
        ]
    if as_json:
        echo_json(rows)
        return
    table(
        ["KID", "ALG", "STATUS", "CREATED", "RETIRED"],
        [
            [r["kid"], r["alg"], coloured(r["status"]), r["created_at"], r["retired_at"] or "-"]
            for r in rows
        ],
    )


@keys_group.command("rotate")
@as_json_option
@pass_context
def keys_rotate(ctx: Context, as_json: bool) -> None:
    """Add a signing key (of BATON_SIGNING_ALG) and retire the current one.

    New ID tokens are signed with the new key at once, by every running
    server. The retired key stays published in the JWKS for
    BATON_ID_TOKEN_TTL, until the ID tokens it signed have expired.

    \b
    Example:
      baton keys rotate --json
    """
    settings = ctx.settings
    now = utcnow()
    with ctx.transaction() as db:
        key, retired = keys.rotate(db=db, alg=settings.signing_alg, now=now)
        kid, alg = key.kid, key.alg
        audit_admin(db, "admin.key_rotated", kid=kid, alg=alg, retired=retired)
    published_until = iso(now + settings.id_token_ttl)
    if as_json:
        echo_json(
            {
                "kid": kid,
                "alg": alg,
                "retired": [{"kid": old, "published_until": published_until} for old in retired],
            }
        )
        return
    click.echo(f"signing key:   {kid} ({alg})")
    for old in retired:
        click.echo(f"retired:       {old} (published until {published_until})")
