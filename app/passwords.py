"""Password hashing: argon2id, with bcrypt accepted for imported users.

Hashing costs ~64 MiB and tens of milliseconds per call, so it never runs on
the event loop: it runs in a dedicated pool whose size bounds both CPU and
memory, and a caller that cannot get a slot within ``wait`` is refused
(``HashingOverloaded``) rather than queued without bound.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
_BCRYPT_MAX_BYTES = 72

_argon2 = PasswordHasher()  # argon2id with argon2-cffi's (RFC 9106 low-memory) defaults


class HashingOverloaded(Exception):
    """No hashing slot became free in time."""


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    needs_rehash: bool = False


def hash_password(password: str) -> str:
    return _argon2.hash(password)


def hash_scheme(stored: str) -> str:
    if stored.startswith("$argon2id$"):
        return "argon2id"
    if stored.startswith(_BCRYPT_PREFIXES):
        return "bcrypt"
    return "unsupported"


_WELL_FORMED = re.compile(
    r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}"  # bcrypt: cost, then 22 + 31 characters
    r"|\$argon2id\$v=19\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+"
)


def is_well_formed_hash(stored: str) -> bool:
    """A complete bcrypt or argon2id hash (for imports: a truncated hash would
    lock its user out without a word)."""
    return _WELL_FORMED.fullmatch(stored) is not None


def is_supported_hash(stored: str) -> bool:
    return stored.startswith(("$argon2id$", *_BCRYPT_PREFIXES))


def verify_password(stored: str, password: str) -> Verification:
    """Check ``password`` against an argon2id or bcrypt hash, in constant time."""
    if stored.startswith(_BCRYPT_PREFIXES):
        encoded = password.encode("utf-8", "surrogatepass")
        if len(encoded) > _BCRYPT_MAX_BYTES:
            # bcrypt ignores (or, in bcrypt>=5, refuses) bytes past 72; a longer
            # password cannot be the one that was hashed. Still pay the cost.
            bcrypt.checkpw(encoded[:_BCRYPT_MAX_BYTES], stored.encode())
            return Verification(ok=False)
        try:
            ok = bcrypt.checkpw(encoded, stored.encode())
        except ValueError:
            return Verification(ok=False)
        return Verification(ok=ok, needs_rehash=ok)
    try:
        _argon2.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return Verification(ok=False)
    return Verification(ok=True, needs_rehash=_argon2.check_needs_rehash(stored))


class HashingPool:
    """A bounded pool of threads for password hashing (argon2 releases the GIL)."""

    def __init__(self, workers: int, wait: timedelta) -> None:
        self.workers = workers
        self._wait = wait.total_seconds()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hash")
        self._slots = asyncio.Semaphore(workers)
        # Unknown users are checked against this hash so that they cost the
        # same time as a wrong password (no username enumeration by timing).
        self._dummy_hash = hash_password(secrets.token_urlsafe(32))

    async def verify(self, stored: str | None, password: str) -> Verification:
        """Verify against ``stored``, or against a dummy hash when it is ``None``."""
        usable = stored is not None and is_supported_hash(stored)
        target = stored if stored is not None and usable else self._dummy_hash
        async with self._slot():
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self._executor, verify_password, target, password)
        return result if usable else Verification(ok=False)

    async def hash(self, password: str) -> str:
        async with self._slot():
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, hash_password, password)

    def _slot(self) -> _Slot:
        return _Slot(self._slots, self._wait)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class _Slot:
    def __init__(self, semaphore: asyncio.Semaphore, wait: float) -> None:
        self._semaphore = semaphore
        self._wait = wait

    async def __aenter__(self) -> None:
        try:
            await asyncio.wait_for(self._semaphore.acquire(), self._wait)
        except TimeoutError:
            raise HashingOverloaded from None

    async def __aexit__(self, *exc: object) -> None:
        self._semaphore.release()
