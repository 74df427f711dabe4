"""Password hashing: argon2id, with bcrypt accepted for imported users.

Hashing costs ~64 MiB and tens of milliseconds per call, so it never runs on
the event loop: it runs in a dedicated pool whose size bounds both CPU and
memory, and a caller that cannot get a slot within ``wait`` is refused
(``HashingOverloaded``) rather than queued without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import multiprocessing
import os
import re
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol, TypeVar

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

log = logging.getLogger("baton.passwords")
_R = TypeVar("_R")

_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
_BCRYPT_MAX_BYTES = 72


@dataclass(frozen=True, slots=True)
class Argon2Cost:
    """argon2id's cost (RFC 9106 §3.1): passes, memory in KiB, lanes."""

    time_cost: int = 3
    memory_cost: int = 64 * 1024
    parallelism: int = 4


# RFC 9106 §4's second recommended option (argon2-cffi's defaults), and the
# floor Baton's settings accept: OWASP's argon2id minimum, m=19 MiB, t=2, p=1.
DEFAULT_COST = Argon2Cost()
OWASP_MINIMUM = Argon2Cost(time_cost=2, memory_cost=19 * 1024, parallelism=1)


@functools.lru_cache(maxsize=8)
def _hasher_with(cost: Argon2Cost) -> PasswordHasher:
    return PasswordHasher(
        time_cost=cost.time_cost, memory_cost=cost.memory_cost, parallelism=cost.parallelism
    )


_argon2 = _hasher_with(DEFAULT_COST)


def _hasher(cost: Argon2Cost) -> PasswordHasher:
    # The default cost is served by the module's hasher, read at each call, so
    # that a test can swap in a cheap one for everything at once.
    return _argon2 if cost == DEFAULT_COST else _hasher_with(cost)


class HashingOverloaded(Exception):
    """No hashing slot became free in time."""


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    needs_rehash: bool = False


def hash_password(password: str, cost: Argon2Cost = DEFAULT_COST) -> str:
    return _hasher(cost).hash(password)


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


def verify_password(stored: str, password: str, cost: Argon2Cost = DEFAULT_COST) -> Verification:
    """Check ``password`` against an argon2id or bcrypt hash, in constant time.

    A match is marked for rehashing when it is bcrypt or an argon2id hash made
    with another cost than ``cost``.
    """
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
    hasher = _hasher(cost)
    try:
        hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return Verification(ok=False)
    return Verification(ok=True, needs_rehash=hasher.check_needs_rehash(stored))


class HashingObserver(Protocol):
    """What a pool reports as it works (``app.metrics.Metrics`` listens)."""

    def waiting(self, change: int) -> None: ...  # callers waiting for a slot: +1, then -1

    def waited(self, seconds: float) -> None: ...  # one wait for a slot, got or timed out

    def hashed(self, seconds: float) -> None: ...  # one hash or verification


class _Unobserved:
    def waiting(self, change: int) -> None:
        pass

    def waited(self, seconds: float) -> None:
        pass

    def hashed(self, seconds: float) -> None:
        pass


HASHING_NICENESS = 19


def _yield_to_requests() -> None:
    """Run this hashing thread (and the lanes argon2 starts from it, which
    inherit it) below every request: a login storm then slows logins, not
    token, introspection and health requests. On Linux the thread takes the
    ``SCHED_IDLE`` policy, which runs it only on a CPU that nothing else
    wants (niceness 19 still lets it hold a CPU for a whole time slice while
    the event loop waits); where that is refused it is niced instead.
    Elsewhere this does nothing."""
    thread = threading.get_native_id()
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))
        return
    with contextlib.suppress(AttributeError, OSError):
        current = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, current + HASHING_NICENESS))


def _start_hashing_process(server: int, memory_kib: int) -> None:
    """A hashing process ignores the signals that stop the server (a SIGTERM
    to the whole process group must not kill a login in flight; the server
    shuts the pool down once its requests have finished), keeps one hash's
    memory from one hash to the next and gives it back when it has been idle
    a while, and ends when the server has gone without stopping it (killed)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _keep_hash_memory(memory_kib)
    _yield_to_requests()
    threading.Thread(target=_watch, args=(server,), name="watch", daemon=True).start()


def _in_hashing_process(function: Callable[..., _R], *args: object) -> _R:
    """What a hashing process runs for each hash: the hash, then a note of when
    it ended, for ``_watch``."""
    global _last_hash_ended
    try:
        return function(*args)
    finally:
        _last_hash_ended = time.monotonic()


_last_hash_ended = 0.0
_WATCH_EVERY = 0.5  # seconds
IDLE_BEFORE_TRIM = 1.0  # seconds without a hash before its memory goes back


def _watch(server: int) -> None:
    """Every half second: exit when the server has gone; and, once no hash has
    ended for ``IDLE_BEFORE_TRIM``, give the freed hash memory back to the
    system (``malloc_trim``). Between hashes the block stays resident
    (``_keep_hash_memory``), which saves the next hash from faulting in every
    page afresh (measured: argon2id t=2 m=19MiB went from 25-29 ms of CPU to
    42-45 when each hash had fresh pages); so a login storm reuses the memory,
    and a process at rest holds none of it."""
    trim = _malloc_trim()
    trimmed_after = 0.0
    while True:
        time.sleep(_WATCH_EVERY)
        try:
            os.kill(server, 0)
        except (ProcessLookupError, PermissionError):  # gone, or another user's process now
            os._exit(0)
        ended = _last_hash_ended
        if ended > trimmed_after and time.monotonic() - ended >= IDLE_BEFORE_TRIM:
            trim()
            trimmed_after = ended


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
_MALLOC_SLACK = 1 << 20  # bytes beyond a hash's blocks: argon2's bookkeeping, malloc's


def _keep_hash_memory(memory_kib: int) -> None:
    """Serve a hash of ``memory_kib`` from the heap, and keep the heap when it
    is freed. glibc maps a block above its mmap threshold afresh for each
    call and unmaps it on free; the threshold adapts to blocks that are freed,
    but only up to 32 MiB, so at Baton's default 64 MiB every hash faulted in
    16,384 new pages: measured here, argon2id t=3 m=64MiB p=4 took 156 ms of
    CPU (100 ms wall) with fresh pages and 114 ms (77 ms) with the block
    reused. ``_watch`` still gives the memory back once the process is idle.
    A stored hash made with more memory than this (before a change of cost)
    is mapped afresh, as before. Elsewhere than glibc, nothing."""
    block = memory_kib * 1024 + _MALLOC_SLACK
    if 2 * block > 2**31 - 1:  # mallopt takes an int
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = _libc()
        if libc.mallopt(_M_MMAP_THRESHOLD, block):
            libc.mallopt(_M_TRIM_THRESHOLD, 2 * block)  # glibc's own rule: twice the threshold


def _malloc_trim() -> Callable[[], object]:
    """glibc's ``malloc_trim(0)``: free heap memory goes back to the system.
    Elsewhere, nothing."""
    try:
        return functools.partial(_libc().malloc_trim, 0)
    except (OSError, AttributeError):
        return lambda: None


def _libc() -> ctypes.CDLL:
    """The C library (raises ``OSError`` where there is none to load; a
    function it lacks raises ``AttributeError``)."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Processes that multiprocessing starts import the parent's main module
    first; for ``baton serve`` that is the whole application (~57 MiB a
    process instead of ~15). Hidden while the hashing processes start."""
    main = sys.modules.get("__main__")
    path, spec = getattr(main, "__file__", None), getattr(main, "__spec__", None)
    if main is None or path is None or spec is not None:
        yield  # run as ``python -m``: the module's name is imported, guarded
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


class HashingPool:
    """A bounded pool for password hashing: ``workers`` hashes at once.

    With ``processes`` (the server's default) each hash runs in a process of
    its own pool. In threads, argon2 releases the GIL while it hashes, but a
    hashing thread must take the GIL back at the end of each hash, and at low
    CPU priority it waits behind the other lanes for a CPU while the event
    loop waits for the GIL: measured here, the loop's p99 scheduling delay
    under a storm was 2.1-2.8 ms with threads, 0.6-0.75 ms with processes
    (0.6 ms without a storm). Threads use less memory (no interpreter each).
    """

    def __init__(
        self,
        workers: int,
        wait: timedelta,
        cost: Argon2Cost = DEFAULT_COST,
        *,
        observer: HashingObserver | None = None,
        processes: bool = False,
    ) -> None:
        self.workers = workers
        self.processes = processes
        self._observer = observer or _Unobserved()
        self.cost = cost
        self._wait = wait.total_seconds()
        self._executor = self._new_executor()
        self._slots = asyncio.Semaphore(workers)
        # Unknown users are checked against this hash so that they cost the
        # same time as a wrong password (no username enumeration by timing):
        # hence the same cost as the hashes this pool makes.
        self._dummy_hash = hash_password(secrets.token_urlsafe(32), cost)

    def _new_executor(self) -> Executor:
        if not self.processes:
            return ThreadPoolExecutor(
                max_workers=self.workers, thread_name_prefix="hash", initializer=_yield_to_requests
            )
        # Forked from multiprocessing's fork server, not from the server: its
        # threads and locks stay out of them. The fork server imports this
        # module only (by default it would import the whole ``baton`` command).
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        executor = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=context,
            initializer=_start_hashing_process,
            initargs=(os.getpid(), self.cost.memory_cost),
        )
        with _main_module_hidden():
            for _ in range(self.workers):
                executor.submit(os.getpid)  # all of them now, not at the first logins
        return executor

    async def verify(
        self, stored: str | None, password: str, *, slot: Slot | None = None
    ) -> Verification:
        """Verify against ``stored``, or against a dummy hash when it is
        ``None``; in ``slot`` when the caller holds one (see :meth:`slot`)."""
        if slot is None:
            async with self.slot() as own:
                return await self.verify(stored, password, slot=own)
        usable = stored is not None and is_supported_hash(stored)
        target = stored if stored is not None and usable else self._dummy_hash
        slot.hashed = True
        result = await self._run(verify_password, target, password, self.cost)
        return result if usable else Verification(ok=False)

    async def hash(self, password: str) -> str:
        async with self.slot() as own:
            own.hashed = True
            return await self._run(hash_password, password, self.cost)

    async def _run(self, function: Callable[..., _R], *args: object) -> _R:
        loop = asyncio.get_running_loop()
        if self.processes:
            function, args = _in_hashing_process, (function, *args)
        try:
            return await loop.run_in_executor(self._executor, function, *args)
        except BrokenProcessPool:
            # A hashing process died (killed, out of memory): the pool is
            # unusable from then on. Replace it and try this hash once more.
            log.warning("a hashing process died; starting a new pool")
            broken, self._executor = self._executor, self._new_executor()
            broken.shutdown(wait=False, cancel_futures=True)
            return await loop.run_in_executor(self._executor, function, *args)

    def slot(self) -> Slot:
        """One of the pool's slots, held across what must happen just before
        a hash (a login's throttle check) and the hash itself; raises
        :class:`HashingOverloaded` when none frees up in time."""
        return Slot(self._slots, self._wait, self._observer)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class Slot:
    """A slot is held for one hash (and, at a login, the throttle check
    before it), so holding it times the hash."""

    def __init__(
        self, semaphore: asyncio.Semaphore, wait: float, observer: HashingObserver
    ) -> None:
        self._semaphore = semaphore
        self._wait = wait
        self._observer = observer
        self._acquired = 0.0
        self.hashed = False  # a slot a login gave back throttled timed no hash

    async def __aenter__(self) -> Slot:
        started = time.perf_counter()
        self._observer.waiting(1)
        try:
            await asyncio.wait_for(self._semaphore.acquire(), self._wait)
        except TimeoutError:
            raise HashingOverloaded from None
        finally:
            self._observer.waiting(-1)
            self._acquired = time.perf_counter()
            self._observer.waited(self._acquired - started)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._semaphore.release()
        if self.hashed:
            self._observer.hashed(time.perf_counter() - self._acquired)
