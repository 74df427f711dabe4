"""Brute-force throttling, shared by every instance through the database.

Failed logins are counted per username and per client IP over a sliding
window. Past a threshold, each further attempt must wait a delay that doubles
with every failure (1 s, 2 s, 4 s, … up to a cap) after the latest one. There
is no hard lock: an attacker can hold a username back for at most the cap
after their last failure, while a guessing rate of a few attempts per window
stays out of reach (the trade-off Keycloak documents for lockout-DoS).

An attempt is checked once it holds a hashing slot (``app/login.py``), and
its failure is written before the slot is given back: between a check and
the failure it leads to, at most one attempt per slot is in flight. A burst
of concurrent guesses therefore gets at most the threshold plus the slots
of every process, less one, password checks, however many it sends.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, delete, func, insert, select
from sqlalchemy.orm import Session

from app.models import LoginFailure

BASE_DELAY = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class Policy:
    user_failures: int = 5
    ip_failures: int = 20
    window: timedelta = timedelta(minutes=15)
    max_delay: timedelta = timedelta(minutes=15)


def user_key(username: str) -> str:
    """The name exactly as typed, as the user lookup compares it: "BOB" is not
    "bob", so failures against one neither throttle nor are cleared by the
    other (a success as one's own "BOB" must not clear guesses at "bob").
    Hashed: what people type into the username field is sometimes a password."""
    return "user:" + hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()


def ip_key(ip: str | None) -> str | None:
    """An IPv6 client is counted by its /64, the block one subscriber gets
    (RFC 6177): within it an attacker has 2**64 addresses to rotate through."""
    if not ip:
        return None
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return "ip:" + ip[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"ip:{address.ipv4_mapped}"
        return f"ip:{ipaddress.IPv6Network((address, 64), strict=False)}"
    return f"ip:{address}"


# Built once: building a statement and its cache key costs more than running
# it. Both keys of an attempt are counted in one statement.
_TABLE = LoginFailure.metadata.tables[LoginFailure.__tablename__]
_FAILURES = _TABLE.c
_RECENT = (
    select(_FAILURES.key, func.count(), func.max(_FAILURES.occurred_at))
    .where(
        _FAILURES.key.in_([bindparam("user"), bindparam("ip")]),
        _FAILURES.occurred_at > bindparam("since"),
    )
    .group_by(_FAILURES.key)
)


def _wait(
    count: int, latest: datetime | None, threshold: int, policy: Policy, now: datetime
) -> timedelta:
    if count < threshold or latest is None:
        return timedelta(0)
    exponent = min(count - threshold, 30)
    delay = min(policy.max_delay, BASE_DELAY * (1 << exponent))
    if latest.tzinfo is None:  # SQLite aggregates bypass the column type
        latest = datetime.fromisoformat(str(latest)).replace(tzinfo=now.tzinfo)
    return max(timedelta(0), latest + delay - now)


@dataclass(frozen=True, slots=True)
class Standing:
    """Where an attempt stands before its password is checked."""

    wait: timedelta  # zero when it may proceed
    user_failures: int  # the username's failures in the window, for a success to clear


def standing(
    *,
    db: Session,
    username: str,
    ip: str | None,
    now: datetime,
    policy: Policy,
) -> Standing:
    user, address = user_key(username), ip_key(ip)
    recent: dict[str, tuple[int, datetime | None]] = {
        key: (count, latest)
        for key, count, latest in db.execute(
            _RECENT,
            {"user": user, "ip": address or user, "since": now - policy.window},
        )
    }
    none: tuple[int, datetime | None] = (0, None)
    user_count, latest = recent.get(user, none)
    waits = [_wait(user_count, latest, policy.user_failures, policy, now)]
    if address is not None:
        count, latest = recent.get(address, none)
        waits.append(_wait(count, latest, policy.ip_failures, policy, now))
    return Standing(wait=max(waits), user_failures=user_count)


def record_failure(*, db: Session, username: str, ip: str | None, now: datetime) -> None:
    rows = [{"key": user_key(username), "occurred_at": now}]
    address = ip_key(ip)
    if address is not None:
        rows.append({"key": address, "occurred_at": now})
    db.execute(_RECORD, rows)


_RECORD = insert(_TABLE)
_RESET = delete(LoginFailure).where(LoginFailure.key == bindparam("key"))


def reset_user(*, db: Session, username: str) -> None:
    """A successful login clears the username's failures (not the IP's)."""
    db.execute(_RESET, {"key": user_key(username)})
