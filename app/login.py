"""The login use case: check a password, then consume the pending flow and open
a session in one transaction. Knows nothing of HTTP."""

from __future__ import annotations

from dataclasses import dataclass

from anyio import to_thread

from app import flows, problems, sessions, users
from app.services import Services


@dataclass(frozen=True, slots=True)
class Attempt:
    username: str
    password: str
    redirection_token: str | None
    ip: str | None
    user_agent: str | None


@dataclass(frozen=True, slots=True)
class LoggedIn:
    session_secret: str
    redir_to: str | None


@dataclass(frozen=True, slots=True)
class _Account:
    id: int
    password_hash: str
    disabled: bool


def _find(services: Services, username: str) -> _Account | None:
    with services.database.transaction() as db:
        user = users.get_by_username(db=db, username=username)
        return None if user is None else _Account(user.id, user.password_hash, user.disabled)


async def log_in(services: Services, attempt: Attempt) -> LoggedIn:
    """Raises :class:`~app.problems.Problem` for every refusal.

    Unknown users are verified against a dummy hash and disabled users are
    verified too, so all three refusals cost the same and read the same.
    """
    account = await to_thread.run_sync(_find, services, attempt.username)
    verification = await services.hashing.verify(
        account.password_hash if account else None, attempt.password
    )
    if account is None or not verification.ok or account.disabled:
        raise problems.unauthorised()
    upgraded = await services.hashing.hash(attempt.password) if verification.needs_rehash else None
    return await to_thread.run_sync(_open_session, services, attempt, account, upgraded)


def _open_session(
    services: Services, attempt: Attempt, account: _Account, upgraded_hash: str | None
) -> LoggedIn:
    now = services.clock()
    with services.database.transaction() as db:
        flow = None
        if attempt.redirection_token is not None:
            flow = flows.consume(
                db=db, token=attempt.redirection_token, user_id=account.id, now=now
            )
            if flow is None:
                # Raising rolls the transaction back: no session, nothing changed.
                raise problems.flow_not_found()
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
    return LoggedIn(session_secret=session.secret, redir_to=flow.redir_to if flow else None)
