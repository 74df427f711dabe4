"""Memory of Baton's workers: no leak over 100,000 requests of a mixed
workload, and a login storm whose memory the hashing pool bounds.

Mixed workload (argon2id at OWASP's minimum, so that hashing does not
dominate): each iteration is a whole flow in a new browser (authorize → login
page → login → resume → token, 5 requests), then ``--refreshes`` times a
refresh grant on the flow's refresh token and the introspection (HTTP Basic
of a resource server) of the access token it returned. The RSS of each worker
(``VmRSS`` from ``/proc``) is read at rest after 10,000 requests and at each
further checkpoint up to 100,000. Target: the last within 10% of the first.

Login storm: ``POST /api/v1/login`` at concurrency 32 with argon2id at
Baton's default cost (t=3, m=64 MiB, p=4), the RSS of each worker sampled
every 100 ms. Each worker hashes at most ``BATON_HASH_WORKERS`` passwords at
once, so its peak should stay under its RSS at rest before the storm plus
``BATON_HASH_WORKERS`` x 64 MiB plus a margin (not 32 x 64 MiB).

    .venv/bin/python bench/memory.py [--quick] [--databases sqlite,postgresql]
        [--workers 2] [--checkpoints 10000,20000,50000,100000] [--refreshes 2]
        [--storm-concurrency 32] [--storm-duration 20] [--margin-mib 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import harness
import token_clients
from loadgen import Http, Load, Unexpected, run_load
from login_hash_limit import login
from token_clients import Target
from whole_flow import baton_flow

SAMPLE_EVERY = 0.1  # seconds, during the storm
FLOW_REQUESTS = 5
# Hashing processes give their hashes' memory back after a second without one
# (app.passwords.IDLE_BEFORE_TRIM, checked every half second): RSS "at rest"
# is read after this long without a request.
AT_REST = 2.0  # seconds
LEAK_TOLERANCE = 0.10


# -- the mixed workload, driven by a request count ------------------------------------


async def mixed(http: Http, number: int, params: Mapping[str, Any]) -> None:
    """A whole flow, then refreshes of its family, each with an introspection."""
    tokens = await baton_flow(http, number, params)
    for _ in range(params["refreshes"]):
        tokens = await token_clients.refresh_grant(
            http, tokens["refresh_token"], params["client_id"]
        )
        await token_clients.introspected(http, tokens["access_token"], params)


@dataclass(frozen=True)
class Driven:
    requests: int  # requests answered (including those of failed iterations)
    failed: int  # iterations failed
    failures: tuple[str, ...]
    seconds: float


def drive(url: str, params: Mapping[str, Any], concurrency: int, requests: int) -> Driven:
    """Run ``mixed`` by ``concurrency`` virtual users until ``requests``
    requests have been answered (iterations under way finish: a few more).
    Runs in a process of its own (``harness.in_process``)."""
    return asyncio.run(_drive(url, params, concurrency, requests))


async def _drive(url: str, params: Mapping[str, Any], concurrency: int, requests: int) -> Driven:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    answered = failed = 0
    failures: dict[str, None] = {}

    def record(step: str, seconds: float) -> None:
        nonlocal answered
        answered += 1

    async def user(number: int) -> None:
        nonlocal failed
        http = Http(host, port, record)
        try:
            while answered < requests:
                http.cookies.clear()  # every iteration is a new browser
                try:
                    await mixed(http, number, params)
                except (Unexpected, OSError, asyncio.IncompleteReadError, TimeoutError) as error:
                    failed += 1
                    if len(failures) < 5:
                        failures[f"{type(error).__name__}: {error}"] = None
                    await http.close()
                    await asyncio.sleep(0.05)  # no hot loop against a failing server
        finally:
            await http.close()

    started = time.perf_counter()
    await asyncio.gather(*(user(n) for n in range(concurrency)))
    return Driven(answered, failed, tuple(failures), time.perf_counter() - started)


def _rss(pids: Sequence[int]) -> list[float]:
    """RSS of each worker with the processes it started (its hashing
    processes, ``BATON_HASH_PROCESSES``): the memory a worker costs."""
    return [sum(harness.rss_mib(p) for p in harness.process_tree(pid)) for pid in pids]


def _mib(values: Sequence[float]) -> str:
    return " ".join(f"{value:.1f}" for value in values)


def leak_check(
    report: harness.Report,
    target: Target,
    checkpoints: Sequence[int],
    concurrency: int,
    refreshes: int,
) -> bool:
    """Rows of RSS per worker at each checkpoint; whether the target is met."""
    params = {
        "client_id": target.client_id,
        "scope": target.scope,
        "auth": target.introspection_auth,
        "refreshes": refreshes,
    }
    workers = token_clients.workers_of(target.server, target.workers)
    total = 0
    first: list[float] | None = None
    last: list[float] = []
    for checkpoint in checkpoints:
        cpu = harness.cpu_seconds([target.server.pid])
        driven = harness.in_process(
            drive, target.server.url, params, concurrency, checkpoint - total
        )
        cpu = harness.cpu_seconds([target.server.pid]) - cpu
        total += driven.requests
        now = token_clients.workers_of(target.server, target.workers)
        if now != workers:
            report.line(f"    workers changed: {workers} -> {now} (a worker restarted)")
            workers = now
        time.sleep(AT_REST)
        last = _rss(workers)
        first = first or last
        ratios = " ".join(f"{b / a:.3f}" for a, b in zip(first, last, strict=False))
        rate = driven.requests / driven.seconds
        report.line(
            f"{target.kind:<10} {target.workers:>7} {total:>9,} {rate:>7.1f}"
            f" {cpu * 1000 / driven.requests:>10.2f} {driven.failed:>6}"
            f"   {harness.rss_mib(target.server.pid):>6.1f} [{_mib(last)}]   [{ratios}]"
        )
        for failure in driven.failures:
            report.line(f"    failure: {failure}")
    assert first is not None
    return all(b <= a * (1 + LEAK_TOLERANCE) for a, b in zip(first, last, strict=False))


LEAK_HEADER = (
    f"{'database':<10} {'workers':>7} {'requests':>9} {'req/s':>7} {'cpu_ms/req':>10} {'failed':>6}"
    "   RSS MiB parent [workers]   [worker RSS / at the first checkpoint]"
)


# -- the login storm --------------------------------------------------------------------


def _hwm_mib(pid: int) -> float:
    """The kernel's high-water marks of RSS (``VmHWM``) of a worker and of the
    processes it started, added up: an upper bound of their peak together."""
    total = 0.0
    for process in harness.process_tree(pid):
        for line in Path(f"/proc/{process}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) / 1024
    return total


def storm_check(
    report: harness.Report,
    target: Target,
    *,
    concurrency: int,
    duration: float,
    hash_workers: int,
    margin_mib: float,
) -> bool:
    """Peak RSS of each worker during a login storm against its bound; whether it holds."""
    url, pid = target.server.url, target.server.pid
    # A few logins first, so that each worker has served the path once;
    # the baseline is read at rest afterwards.
    run_load(Load(url, login, {}, 2 * target.workers, 0.0, 1.0, (pid,)))
    time.sleep(AT_REST)  # the hashing processes keep a hash's memory until then
    workers = token_clients.workers_of(target.server, target.workers)
    baseline = _rss(workers)
    peak = list(baseline)
    samples = 0
    storm = Load(url, login, {}, concurrency, 0.0, duration, (pid,))
    with ThreadPoolExecutor(1) as pool:
        storming = pool.submit(run_load, storm)
        while not storming.done():
            peak = [max(p, now) for p, now in zip(peak, _rss(workers), strict=True)]
            samples += 1
            time.sleep(SAMPLE_EVERY)
        outcome = storming.result()
    hwm = [_hwm_mib(w) for w in workers]
    memory_mib = harness.DEFAULT_COST.memory_kib / 1024
    bound = [b + hash_workers * memory_mib + margin_mib for b in baseline]
    held = all(p <= b for p, b in zip(peak, bound, strict=True))
    report.line(
        f"{target.kind:<10} {target.workers:>7} {concurrency:>4} {outcome.rate:>8.2f}"
        f" {outcome.failed:>6} {samples:>7}   [{_mib(baseline)}]   [{_mib(peak)}]"
        f"   [{_mib(bound)}] {'held' if held else 'EXCEEDED'}   [{_mib(hwm)}]"
    )
    for failure in outcome.failures:
        report.line(f"    failure: {failure}")
    return held


STORM_HEADER = (
    f"{'database':<10} {'workers':>7} {'conc':>4} {'logins/s':>8} {'failed':>6} {'samples':>7}"
    "   RSS MiB of each worker: [at rest before]   [peak sampled]   [bound]   [VmHWM]"
)


# -- the run ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--workers", type=int, default=2, help="baton serve --workers")
    parser.add_argument("--checkpoints", default="10000,20000,50000,100000", help="requests")
    parser.add_argument("--concurrency", type=int, default=8, help="of the mixed workload")
    parser.add_argument("--refreshes", type=int, default=2, help="per flow, each introspected")
    parser.add_argument("--scope", default="openid")
    parser.add_argument("--hash-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--storm-concurrency", type=int, default=32)
    parser.add_argument("--storm-duration", type=float, default=20.0, help="seconds")
    parser.add_argument(
        "--margin-mib", type=float, default=32.0, help="allowed above the pool's bound, per worker"
    )
    harness.add_run_options(parser)
    args = parser.parse_args()
    if args.quick:
        args.checkpoints, args.storm_duration = "500,2000", 3.0
    checkpoints = [int(c) for c in harness.csv(args.checkpoints)]
    kinds = cast(list[harness.DatabaseKind], harness.csv(args.databases))
    env = {"BATON_HASH_WORKERS": str(args.hash_workers)}
    env.update(harness.env_pairs(args.env))
    per_iteration = FLOW_REQUESTS + 2 * args.refreshes

    report = harness.Report("Memory: leaks and the login storm (issue 7)")
    report.line(
        f"Mixed workload: {harness.CHEAP_COST}, baton serve --workers {args.workers},"
        f" concurrency {args.concurrency}; an iteration = a whole flow + {args.refreshes} x"
        f" (refresh + introspection) = {per_iteration} requests. RSS read at rest after each"
        f" checkpoint; target: last <= {1 + LEAK_TOLERANCE:.2f} x first, for each worker."
    )
    report.line()
    report.line(LEAK_HEADER)
    leaks: dict[str, bool] = {}
    storms: dict[str, bool] = {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        for kind in kinds:
            target = token_clients.start_target(
                stack,
                kind,
                workdir,
                workers=args.workers,
                cost=harness.CHEAP_COST,
                scope=args.scope,
                env=env,
            )
            leaks[kind] = leak_check(report, target, checkpoints, args.concurrency, args.refreshes)
            tree = harness.rss_of_tree(target.server.pid)
            report.line(f"    RSS MiB of the process tree, parent [children]: {tree}")

        memory_mib = harness.DEFAULT_COST.memory_kib / 1024
        report.line()
        report.line(
            f"Login storm: {harness.DEFAULT_COST}, BATON_HASH_WORKERS={args.hash_workers} per"
            f" worker, {args.storm_duration:g} s, RSS sampled every {SAMPLE_EVERY * 1000:.0f} ms;"
            f" bound per worker = at rest + {args.hash_workers} x {memory_mib:.0f} MiB"
            f" + {args.margin_mib:g} MiB (unbounded, {args.storm_concurrency} hashes at once"
            f" would take {args.storm_concurrency * memory_mib:.0f} MiB)"
        )
        report.line()
        report.line(STORM_HEADER)
        for kind in kinds:
            target = token_clients.start_target(
                stack,
                kind,
                workdir,
                workers=args.workers,
                cost=harness.DEFAULT_COST,
                scope=args.scope,
                env=env,
            )
            storms[kind] = storm_check(
                report,
                target,
                concurrency=args.storm_concurrency,
                duration=args.storm_duration,
                hash_workers=args.hash_workers,
                margin_mib=args.margin_mib,
            )

    report.line()
    for kind in kinds:
        report.line(
            f"{kind}: no leak (within {LEAK_TOLERANCE:.0%}): {'met' if leaks[kind] else 'MISSED'};"
            f" storm bounded by the pool: {'met' if storms[kind] else 'MISSED'}"
        )

    if args.results or not args.quick:
        report.record(args.results or harness.RESULTS)
    else:
        print("(--quick: not recorded; pass --results PATH to record)")


if __name__ == "__main__":
    main()
