"""The login use case: check the throttle and the password, then consume the
pending flow and open a session in one transaction. Knows nothing of HTTP."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from anyio import to_thread

from app import audit, flows, problems, sessions, throttle, users
from app.passwords import HashingOverloaded
from app.services import Services

# A login retried by the same browser and user this soon after the flow was
# consumed (a double click, a lost response) gets the same redir_to again.
RETRY_GRACE = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class Attempt:
    username: str
    password: str
    redirection_token: str | None
    ip: str | None
    user_agent: str | None
    request_id: str | None = None
    binding_hash: str | None = None
    previous_session: str | None = None  # the session cookie the browser sent, if any


@dataclass(frozen=True, slots=True)
class LoggedIn:
    session_secret: str
    redir_to: str | None


@dataclass(frozen=True, slots=True)
class _Account:
    id: int
    password_hash: str
    disabled: bool
    failures: int  # recent failed logins of the username, cleared by a success


async def log_in(services: Services, attempt: Attempt) -> LoggedIn:
    """Raises :class:`~app.problems.Problem` for every refusal.

    Unknown users are verified against a dummy hash and disabled users are
    verified too, so all three refusals cost the same and read the same. A
    throttled attempt is refused before any hashing, whatever its password.
    """
    try:
        return await _log_in(services, attempt)
    except HashingOverloaded:
        services.metrics.login("overloaded")
        raise


async def _log_in(services: Services, attempt: Attempt) -> LoggedIn:
    # The throttle is checked holding the hashing slot that the check guards,
    # and a failure is written before the slot is given back: a burst of
    # concurrent guesses cannot all pass the check before the first failure
    # is counted (see app/throttle.py).
    async with services.hashing.slot() as slot:
        account = await to_thread.run_sync(_check_throttle_and_find, services, attempt)
        verification = await services.hashing.verify(
            account.password_hash if account else None, attempt.password, slot=slot
        )
        if account is None or not verification.ok or account.disabled:
            reason = (
                "unknown_user"
                if account is None
                else "wrong_password"
                if not verification.ok
                else "disabled_user"
            )
            await to_thread.run_sync(_record_failure, services, attempt, reason)
            services.metrics.login("invalid_credentials")
            raise problems.unauthorised()
    upgraded = await services.hashing.hash(attempt.password) if verification.needs_rehash else None
    logged_in = await to_thread.run_sync(_open_session, services, attempt, account, upgraded)
    services.metrics.login("success")
    return logged_in


def _check_throttle_and_find(services: Services, attempt: Attempt) -> _Account | None:
    now = services.clock()
    # Reads only: on SQLite it does not queue for the write lock.
    with services.database.reading() as db:
        standing = throttle.standing(
            db=db,
            username=attempt.username,
            ip=attempt.ip,
            now=now,
            policy=services.settings.throttle,
        )
        if not standing.wait:
            user = users.get_by_username(db=db, username=attempt.username)
            if user is None:
                return None
            return _Account(user.id, user.password_hash, user.disabled, standing.user_failures)
    seconds = max(1, math.ceil(standing.wait.total_seconds()))
    with services.database.transaction() as db:
        audit.record(
            db=db,
            event="login.throttled",
            now=now,
            username=attempt.username,
            ip=attempt.ip,
            request_id=attempt.request_id,
            retry_after_seconds=seconds,
        )
    services.metrics.login("throttled")
    raise problems.throttled(seconds)


def _record_failure(services: Services, attempt: Attempt, reason: str) -> None:
    now = services.clock()
    with services.database.transaction() as db:
        throttle.record_failure(db=db, username=attempt.username, ip=attempt.ip, now=now)
        audit.record(
            db=db,
            event="login.failed",
            now=now,
            username=attempt.username,
            ip=attempt.ip,
            request_id=attempt.request_id,
            reason=reason,
        )


def _open_session(
    services: Services, attempt: Attempt, account: _Account, upgraded_hash: str | None
) -> LoggedIn:
    now = services.clock()
    with services.database.transaction() as db:
        flow = None
        retried = False
        if attempt.redirection_token is not None:
            flow = flows.consume(
                db=db,
                token=attempt.redirection_token,
                user_id=account.id,
                now=now,
                binding_hash=attempt.binding_hash,
            )
            if flow is None:
                flow = flows.recently_consumed(
                    db=db,
                    token=attempt.redirection_token,
                    user_id=account.id,
                    binding_hash=attempt.binding_hash,
                    now=now,
                    grace=RETRY_GRACE,
                )
                retried = flow is not None
            if flow is None:
                # Raising rolls the transaction back: no session, nothing changed.
                services.metrics.login("flow_not_found")
                raise problems.flow_not_found()
        if attempt.previous_session:
            # A login replaces the browser's session; the old id stops working.
            sessions.revoke(db=db, secret=attempt.previous_session, now=now)
        session = sessions.create(
            db=db,
            user_id=account.id,
            now=now,
            duration=services.settings.session_duration,
            flow_id=flow.id if flow else None,
            ip=attempt.ip,
            user_agent=attempt.user_agent,
        )
        if upgraded_hash is not None:
            users.upgrade_hash(
                db=db, user_id=account.id, old_hash=account.password_hash, new_hash=upgraded_hash
            )
        if account.failures:
            throttle.reset_user(db=db, username=attempt.username)
        audit.record(
            db=db,
            event="login.succeeded",
            now=now,
            username=attempt.username,
            client_id=flow.client_id if flow else None,
            ip=attempt.ip,
            request_id=attempt.request_id,
            flow=flow.public_id if flow else None,
            retried=retried,
            hash_upgraded=upgraded_hash is not None,
        )
    if flow is not None and not retried:
        services.metrics.flow_consumed()  # committed
    return LoggedIn(session_secret=session.secret, redir_to=flow.redir_to if flow else None)
