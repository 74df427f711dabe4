"""argon2id hashing, bcrypt compatibility and the bounded hashing pool."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import bcrypt
import pytest
from argon2 import PasswordHasher, extract_parameters

from app import passwords
from app.passwords import HashingOverloaded, HashingPool, hash_password, verify_password

T = TypeVar("T")


def test_argon2id_round_trip() -> None:
    stored = hash_password("s3cret")
    assert stored.startswith("$argon2id$")
    assert verify_password(stored, "s3cret").ok
    assert not verify_password(stored, "S3cret").ok
    assert not verify_password(stored, "s3cret").needs_rehash


def test_bcrypt_is_accepted_and_marked_for_upgrade() -> None:
    stored = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    good = verify_password(stored, "s3cret")
    assert good.ok
    assert good.needs_rehash
    assert not verify_password(stored, "nope").ok


def test_bcrypt_never_matches_beyond_72_bytes() -> None:
    long_password = "x" * 72
    stored = bcrypt.hashpw(long_password.encode(), bcrypt.gensalt(rounds=4)).decode()
    assert verify_password(stored, long_password).ok
    assert not verify_password(stored, long_password + "tail").ok


def test_garbage_hashes_never_match() -> None:
    for stored in ["", "plain", "$argon2id$broken", "$2b$04$broken"]:
        assert not verify_password(stored, "anything").ok


def test_unknown_users_are_checked_against_a_dummy_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    """The unknown-user path must pay for a real argon2 verification."""
    calls: list[str] = []
    real = passwords.verify_password

    def spy(stored: str, password: str, cost: passwords.Argon2Cost) -> passwords.Verification:
        calls.append(stored)
        return real(stored, password, cost)

    monkeypatch.setattr(passwords, "verify_password", spy)

    async def scenario() -> passwords.Verification:
        pool = HashingPool(1, timedelta(seconds=5))
        try:
            return await pool.verify(None, "whatever")
        finally:
            pool.shutdown()

    result = asyncio.run(scenario())
    assert not result.ok
    assert len(calls) == 1
    assert calls[0].startswith("$argon2id$")


def test_the_pool_never_runs_more_hashes_than_its_size(monkeypatch: pytest.MonkeyPatch) -> None:
    running = 0
    peak = 0
    lock = threading.Lock()
    real = passwords.verify_password

    def counting(stored: str, password: str, cost: passwords.Argon2Cost) -> passwords.Verification:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            return real(stored, password, cost)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(passwords, "verify_password", counting)
    stored = hash_password("pw")

    async def scenario() -> None:
        pool = HashingPool(2, timedelta(seconds=30))
        try:
            results = await asyncio.gather(*(pool.verify(stored, "pw") for _ in range(8)))
        finally:
            pool.shutdown()
        assert all(r.ok for r in results)

    asyncio.run(scenario())
    assert peak == 2


def test_a_caller_that_cannot_get_a_slot_in_time_is_refused() -> None:
    stored = hash_password("pw")

    async def scenario() -> list[BaseException | passwords.Verification]:
        pool = HashingPool(1, timedelta(milliseconds=5))
        try:
            return await asyncio.gather(
                *(pool.verify(stored, "pw") for _ in range(3)), return_exceptions=True
            )
        finally:
            pool.shutdown()

    outcomes = asyncio.run(scenario())
    assert any(isinstance(o, HashingOverloaded) for o in outcomes)
    assert any(isinstance(o, passwords.Verification) and o.ok for o in outcomes)


# -- the argon2id cost ---------------------------------------------------------------

CHEAP = passwords.Argon2Cost(time_cost=1, memory_cost=1024, parallelism=1)


def test_a_hash_carries_the_cost_it_was_made_with() -> None:
    made = extract_parameters(hash_password("pw", CHEAP))
    assert (made.time_cost, made.memory_cost, made.parallelism) == (1, 1024, 1)
    default = extract_parameters(hash_password("pw"))
    assert (default.time_cost, default.memory_cost, default.parallelism) == (3, 65536, 4)


@pytest.mark.parametrize(
    "other",
    [
        passwords.Argon2Cost(time_cost=2, memory_cost=1024, parallelism=1),
        passwords.Argon2Cost(time_cost=1, memory_cost=2048, parallelism=1),
        passwords.Argon2Cost(time_cost=1, memory_cost=1024, parallelism=2),
    ],
    ids=["time", "memory", "parallelism"],
)
def test_a_match_made_with_another_cost_needs_a_rehash(other: passwords.Argon2Cost) -> None:
    stored = hash_password("pw", CHEAP)
    assert verify_password(stored, "pw", CHEAP) == passwords.Verification(ok=True)
    assert verify_password(stored, "pw", other) == passwords.Verification(
        ok=True, needs_rehash=True
    )
    # A wrong password is never marked, whatever the cost.
    assert verify_password(stored, "nope", other) == passwords.Verification(ok=False)


def test_the_default_cost_uses_the_module_hasher_tests_swap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tests make hashing cheap by replacing ``passwords._argon2``; that must
    keep reaching every hash made at the default cost, the pool's included."""
    monkeypatch.setattr(
        passwords, "_argon2", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    )
    assert hash_password("pw").startswith("$argon2id$v=19$m=8,t=1,p=1$")
    assert hash_password("pw", passwords.DEFAULT_COST).startswith("$argon2id$v=19$m=8,t=1,p=1$")

    async def scenario() -> str:
        pool = HashingPool(1, timedelta(seconds=5))
        try:
            return await pool.hash("pw")
        finally:
            pool.shutdown()

    assert asyncio.run(scenario()).startswith("$argon2id$v=19$m=8,t=1,p=1$")


def _in_a_hashing_thread(probe: Callable[[], T]) -> T:
    pool = HashingPool(1, timedelta(seconds=5))
    try:
        return pool._executor.submit(probe).result()
    finally:
        pool.shutdown()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_hashing_threads_run_only_on_idle_cpu() -> None:
    """A login storm must not starve token and health requests of CPU."""
    policy = _in_a_hashing_thread(lambda: os.sched_getscheduler(threading.get_native_id()))
    assert policy == os.SCHED_IDLE
    assert os.sched_getscheduler(threading.get_native_id()) != os.SCHED_IDLE


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread niceness is Linux's")
def test_hashing_threads_are_niced_where_sched_idle_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: object) -> None:
        raise PermissionError("not here")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    here = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    niceness = _in_a_hashing_thread(
        lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    )
    assert niceness == min(19, here + passwords.HASHING_NICENESS)


# -- hashing in processes (the server's default) ---------------------------------


def _in_processes(scenario: Callable[[HashingPool], Awaitable[T]]) -> T:
    async def run() -> T:
        pool = HashingPool(1, timedelta(seconds=30), CHEAPEST, processes=True)
        try:
            return await scenario(pool)
        finally:
            pool.shutdown()

    return asyncio.run(run())


CHEAPEST = passwords.Argon2Cost(time_cost=1, memory_cost=8, parallelism=1)


def test_a_process_pool_hashes_and_verifies_in_another_process() -> None:
    async def scenario(pool: HashingPool) -> tuple[int, bool, bool, bool]:
        stored = await pool.hash("pw")
        right, wrong, unknown = (
            await pool.verify(stored, "pw"),
            await pool.verify(stored, "nope"),
            await pool.verify(None, "pw"),
        )
        pid = await asyncio.get_running_loop().run_in_executor(pool._executor, os.getpid)
        return pid, right.ok, wrong.ok, unknown.ok

    pid, right, wrong, unknown = _in_processes(scenario)
    assert pid != os.getpid()
    assert (right, wrong, unknown) == (True, False, False)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_hashing_processes_run_only_on_idle_cpu() -> None:
    async def scenario(pool: HashingPool) -> int:
        policy = functools.partial(os.sched_getscheduler, 0)
        return await asyncio.get_running_loop().run_in_executor(pool._executor, policy)

    assert _in_processes(scenario) == os.SCHED_IDLE


def test_a_hashing_process_ignores_the_signal_that_stops_the_server() -> None:
    """``kill -TERM`` to the process group reaches the hashing processes too;
    the server stops them itself once the logins in flight have finished."""

    async def scenario(pool: HashingPool) -> bool:
        loop = asyncio.get_running_loop()
        pid = await loop.run_in_executor(pool._executor, os.getpid)
        os.kill(pid, signal.SIGTERM)
        await asyncio.sleep(0.2)
        stored = await pool.hash("pw")
        again = await loop.run_in_executor(pool._executor, os.getpid)
        return again == pid and (await pool.verify(stored, "pw")).ok

    assert _in_processes(scenario)


def test_a_pool_whose_process_died_is_replaced(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(pool: HashingPool) -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        pid = await loop.run_in_executor(pool._executor, os.getpid)
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.2)
        stored = await pool.hash("pw")  # the broken pool is replaced, the hash retried
        replaced = await loop.run_in_executor(pool._executor, os.getpid)
        return replaced != pid, (await pool.verify(stored, "pw")).ok

    assert _in_processes(scenario) == (True, True)
    assert "a hashing process died" in caplog.text


_SERVER_LIKE = """
import asyncio, functools, os, sys
from datetime import timedelta
import app.main  # what `baton serve` has imported when its pool starts
from app.passwords import Argon2Cost, HashingPool

async def main():
    pool = HashingPool(2, timedelta(seconds=30), Argon2Cost(1, 8, 1), processes=True)
    loop = asyncio.get_running_loop()
    has = functools.partial(eval, "'app.main' in __import__('sys').modules")
    print("imported-app", await loop.run_in_executor(pool._executor, has), flush=True)
    print("pids", *pool._executor._processes, flush=True)
    if sys.argv[1] == "die":
        os._exit(1)  # gone without shutting the pool down
    pool.shutdown()

asyncio.run(main())
"""


def _run_server_like(tmp_path: Path, how: str) -> list[str]:
    script = tmp_path / "server_like.py"  # a file, as the `baton` command is
    script.write_text(_SERVER_LIKE)
    output = tmp_path / "output.txt"
    with output.open("w") as file:
        # Into a file: the hashing processes inherit it, and a pipe would stay
        # open, unreaped parent and all, until they end.
        subprocess.run(
            [sys.executable, str(script), how],
            stdout=file,
            timeout=60,
            cwd=Path(__file__).resolve().parent.parent,
            check=False,
        )
    return output.read_text().splitlines()


def test_hashing_processes_do_not_import_the_server_s_main_module(tmp_path: Path) -> None:
    """multiprocessing imports the parent's main script in each process it
    starts; for `baton serve` that is the whole application, ~40 MiB more."""
    lines = _run_server_like(tmp_path, "stop")
    assert "imported-app False" in lines


def test_hashing_processes_end_when_the_server_is_killed(tmp_path: Path) -> None:
    lines = _run_server_like(tmp_path, "die")
    pids = [int(pid) for pid in next(line for line in lines if line.startswith("pids")).split()[1:]]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        assert time.monotonic() < deadline, "hashing processes outlived their server"
        time.sleep(0.1)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _minor_faults(pid: int) -> int:
    # /proc/PID/stat: the 10th field, counted after the command's closing parenthesis.
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[7])


def _rss_once_below(pid: int, mib: float) -> float:
    """The RSS of ``pid`` once it is under ``mib``, or after a few seconds."""
    deadline = time.monotonic() + passwords.IDLE_BEFORE_TRIM + 5
    while _rss_mib(pid) >= mib and time.monotonic() < deadline:
        time.sleep(0.1)
    return _rss_mib(pid)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RSS read from /proc")
@pytest.mark.parametrize(
    "cost",
    [
        pytest.param(passwords.OWASP_MINIMUM, id="19MiB"),  # 4,864 pages a hash
        # Above the 32 MiB where glibc stops adapting its mmap threshold: left
        # to itself, it would map and fault in each hash's 10,240 pages afresh.
        pytest.param(passwords.Argon2Cost(1, 40 * 1024, 1), id="40MiB"),
    ],
)
def test_a_hashing_process_reuses_its_memory_then_gives_it_back_at_rest(
    cost: passwords.Argon2Cost,
) -> None:
    """Back-to-back hashes reuse one block (fresh pages would cost each hash
    a page fault per 4 KiB, half again its CPU); once the process has been
    idle, the block goes back to the system (glibc alone would keep it)."""
    mib = cost.memory_cost / 1024

    async def scenario() -> tuple[float, float, int, float]:
        pool = HashingPool(1, timedelta(seconds=30), cost, processes=True)
        try:
            loop = asyncio.get_running_loop()
            pid = await loop.run_in_executor(pool._executor, os.getpid)
            at_rest = _rss_mib(pid)
            for _ in range(2):  # glibc serves the first by mmap, then grows its heap
                await pool.hash("pw")
            faults = _minor_faults(pid)
            for _ in range(3):
                await pool.hash("pw")
            faults = _minor_faults(pid) - faults
            busy = _rss_mib(pid)
            rested = await asyncio.to_thread(_rss_once_below, pid, at_rest + 8)
            return at_rest, busy, faults, rested
        finally:
            pool.shutdown()

    at_rest, busy, faults, rested = asyncio.run(scenario())
    assert faults < 1000, f"{faults} page faults in 3 hashes: memory not reused"
    assert busy - at_rest > mib - 4, (at_rest, busy)  # kept between hashes
    assert rested - at_rest < 8, (at_rest, rested)  # and given back at rest
