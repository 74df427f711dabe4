"""Logins per second against the argon2 limit of the machine, measured in the
same run.

A login here is a plain ``POST /api/v1/login`` with a username and password
and no redirection token, from a new browser each time (no cookies): it checks
the throttle, verifies the password with argon2id at Baton's default cost
(t=3, m=64 MiB, p=4) in the hashing pool, and opens a session. The limit is the
hashes per second of a bare ``app.passwords.HashingPool`` with as many slots as
the server has in all (``--workers`` x ``BATON_HASH_WORKERS``), at the same
cost, hashing in processes as the server does (in threads with ``--env
BATON_HASH_PROCESSES=false``), driven at the same concurrency in a process of
its own, just before the logins. The ratio logins/s / hashes/s should be at
least 0.95 at concurrency 4 and above: a login should cost little beyond its
hash.

    .venv/bin/python bench/login_hash_limit.py [--quick] [--concurrency 1,4,16]
        [--databases sqlite,postgresql] [--workers 1,2] [--hash-workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import harness
from loadgen import Http, Load, once, run_load

PASSWORD = "bench password, long enough"  # noqa: S105 (a benchmark user)
USERS = 16


async def login(http: Http, number: int, params: Mapping[str, Any]) -> None:
    await http.request(
        "login",
        "POST",
        "/api/v1/login",
        json_body={"username": f"user{number % USERS}", "password": PASSWORD},
        expect=200,
    )


@dataclass(frozen=True)
class Limit:
    hashes_per_second: float
    cpu_ms_per_hash: float


def bare_pool(
    size: int,
    cost: harness.Cost,
    concurrency: int,
    warmup: float,
    duration: float,
    processes: bool,
) -> Limit:
    """Verifications per second of a bare HashingPool (run in its own process),
    hashing in processes or threads as the server does (``BATON_HASH_PROCESSES``).
    Its CPU is that of its whole process tree."""
    from app.passwords import Argon2Cost, HashingPool, hash_password

    argon2 = Argon2Cost(cost.time_cost, cost.memory_kib, cost.parallelism)
    stored = hash_password(PASSWORD, argon2)

    async def drive() -> Limit:
        pool = HashingPool(size, timedelta(minutes=5), argon2, processes=processes)
        measuring, stopping, done = False, False, 0

        async def caller() -> None:
            nonlocal done
            while not stopping:
                verified = await pool.verify(stored, PASSWORD)
                assert verified.ok
                done += measuring

        callers = [asyncio.create_task(caller()) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        tree = [os.getpid()]
        cpu, started, measuring = harness.cpu_seconds(tree), time.perf_counter(), True
        await asyncio.sleep(duration)
        measuring = False
        seconds, cpu = time.perf_counter() - started, harness.cpu_seconds(tree) - cpu
        stopping = True
        await asyncio.gather(*callers)
        pool.shutdown()
        return Limit(done / seconds, cpu * 1000 / done if done else float("nan"))

    return asyncio.run(drive())


FALSE = ("false", "0", "no", "off")

HEADER = (
    f"{'database':<10} {'workers':>7} {'slots':>5} {'conc':>4} {'logins/s':>8} {'hashes/s':>8}"
    f" {'ratio':>5} {'cpu_ms/login':>12} {'cpu_ms/hash':>11} {'loadgen':>7} {'failed':>6}"
    f"   login p50/p95/p99 ms"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--workers", default="1,2", help="baton serve --workers, each in turn")
    parser.add_argument("--hash-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured")
    harness.add_run_options(parser)
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.duration = 0.5, 1.5
    concurrencies = [int(c) for c in harness.csv(args.concurrency)]
    kinds = cast(list[harness.DatabaseKind], harness.csv(args.databases))
    workers_list = [int(w) for w in harness.csv(args.workers)]
    cost = harness.DEFAULT_COST
    extra_env = harness.env_pairs(args.env)
    # The bare pool hashes as the servers do: in processes unless told otherwise.
    processes = extra_env.get("BATON_HASH_PROCESSES", "true").lower() not in FALSE

    report = harness.Report("Login vs. the argon2 limit (issue 7)")
    report.line(
        f"{cost}, BATON_HASH_WORKERS={args.hash_workers} per worker, login = POST /api/v1/login"
        f" without redirection_token; {args.warmup:g} s warm-up, {args.duration:g} s measured"
    )
    report.line(
        "hashes/s: a bare HashingPool with the server's slots in all, same concurrency, "
        + ("hashing in processes" if processes else "hashing in threads")
    )
    report.line()
    report.line(HEADER)

    rates: dict[tuple[str, int, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        # All servers are started first and wait, idle, for their turn; the
        # rows take turns at each concurrency, so that a change in the
        # machine's load is spread over all of them.
        servers: list[tuple[harness.DatabaseKind, int, harness.Server]] = []
        for kind in kinds:
            for workers in workers_list:
                url = stack.enter_context(harness.fresh_database(kind, workdir))
                env = {**cost.env(), "BATON_HASH_WORKERS": str(args.hash_workers), **extra_env}
                server = stack.enter_context(
                    harness.baton_server(url, workdir, workers=workers, env=env)
                )
                harness.add_users(url, [f"user{n}" for n in range(USERS)], PASSWORD, cost)
                once(server.url, login, {})
                servers.append((kind, workers, server))

        for conc in concurrencies:
            for kind, workers, server in servers:
                slots = workers * args.hash_workers
                limit = harness.in_process(
                    bare_pool, slots, cost, conc, args.warmup, args.duration, processes
                )
                load = Load(server.url, login, {}, conc, args.warmup, args.duration, (server.pid,))
                outcome = run_load(load)
                rates[kind, workers, conc] = outcome.rate
                report.line(
                    f"{kind:<10} {workers:>7} {slots:>5} {conc:>4} {outcome.rate:>8.2f}"
                    f" {limit.hashes_per_second:>8.2f}"
                    f" {outcome.rate / limit.hashes_per_second:>5.2f}"
                    f" {outcome.server_cpu_ms_per_iteration:>12.1f} {limit.cpu_ms_per_hash:>11.1f}"
                    f" {outcome.loadgen_cpu / outcome.seconds * 100:>6.0f}% {outcome.failed:>6}"
                    f"   {harness.p50_95_99_ms(outcome.steps.get('login', []))}"
                )
                for failure in outcome.failures:
                    report.line(f"    failure: {failure}")
        report.line()
        report.line("RSS MiB after the run (process [workers]):")
        for kind, workers, server in servers:
            report.line(f"  {kind:<10} workers={workers}: {harness.rss_of_tree(server.pid)}")

    report.line()
    report.line("Best --workers by logins/s at concurrency >= 4 (mean over those rows):")
    for kind in kinds:
        means = {
            w: sum(rates[kind, w, c] for c in concurrencies if c >= 4)
            / max(1, sum(1 for c in concurrencies if c >= 4))
            for w in workers_list
        }
        best = max(means, key=lambda w: means[w])
        shown = ", ".join(f"workers={w}: {m:.2f}/s" for w, m in means.items())
        report.line(f"  {kind:<10} {shown}  -> best: workers={best}")

    if args.results or not args.quick:
        report.record(args.results or harness.RESULTS)
    else:
        print("(--quick: not recorded; pass --results PATH to record)")


if __name__ == "__main__":
    main()
