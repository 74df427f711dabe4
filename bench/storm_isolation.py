"""Whether a login storm slows everything else: p99 of ``/oauth2/token``
(a refresh), ``/oauth2/introspect`` and ``/readyz`` while logins saturate
hashing, against their idle p99.

A probe sends one request at a time, in turn to each endpoint, then pauses
(``--pause``): a refresh on its own chain of refresh tokens, the introspection
(HTTP Basic of a resource server) of the access token it returned, and
``/readyz``. It runs first alone (idle), then during a storm: logins (``POST
/api/v1/login``, argon2id at Baton's default cost t=3 m=64MiB p=4, no
redirection token) at concurrency 16 from another process. The storm starts
first and ends last, so that the probe's window lies inside it. Target: p99
under the storm < 3x idle p99 for each endpoint (oidc-provider: ~150x).

Then the floor: the probe again while processes outside Baton hash with
argon2id of the same cost at SCHED_IDLE (as many as Baton's hashing slots), and
no login is sent. What the machine's CPUs and memory do to an idle server's
answers under that load bounds what any isolation inside Baton can achieve.

    .venv/bin/python bench/storm_isolation.py [--quick] [--databases sqlite,postgresql]
        [--workers 1,2] [--storm-concurrency 16] [--duration 20] [--pause 0.01]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import cast

import harness
import token_clients
from loadgen import Load, Outcome, run_load
from login_hash_limit import login
from token_clients import Target

PROBES = ("token", "introspect", "readyz")
TARGET_RATIO = 3.0
MARGIN = 1.0  # seconds the storm runs before and after the probe's window


def _probe_load(target: Target, args: argparse.Namespace, warmup: float) -> Load:
    """A probe on a refresh family of its own (one family serves one load)."""
    issued = token_clients.issue(target, 1, concurrency=1)
    params = {
        "client_id": target.client_id,
        "refresh_tokens": token_clients.refresh_tokens(issued),
        "auth": target.introspection_auth,
        "pause": args.pause,
    }
    return Load(
        target.server.url,
        token_clients.probe,
        params,
        1,
        warmup,
        args.duration,
        (target.server.pid,),
    )


def _under_storm(
    target: Target, args: argparse.Namespace, margin: float
) -> tuple[Outcome, Outcome]:
    """The probe, and the storm around it: (probe, storm)."""
    probe = _probe_load(target, args, args.warmup + margin)
    storm = Load(
        target.server.url,
        login,
        {},
        args.storm_concurrency,
        args.warmup,
        args.duration + 2 * margin,
        (target.server.pid,),
    )
    with ThreadPoolExecutor(2) as pool:
        storming = pool.submit(run_load, storm)
        probing = pool.submit(run_load, probe)
        return probing.result(), storming.result()


# What the machine does to the probe when it hashes, without Baton: argon2id
# of the same cost in processes set up as Baton's hashing processes are
# (SCHED_IDLE, one hash's memory kept from hash to hash), outside the server,
# no logins. The storm cannot do better than this floor.
_HASHING_ALONE = """
import os, sys
from argon2 import PasswordHasher
from app import passwords
time_cost, memory_cost, parallelism = (int(arg) for arg in sys.argv[1:4])
passwords._start_hashing_process(os.getppid(), memory_cost)
hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism)
while True:
    hasher.hash("floor")
"""


def _beside_hashing(target: Target, args: argparse.Namespace, cost: harness.Cost) -> Outcome:
    """The probe while ``workers x hash-workers`` processes hash, Baton idle."""
    command = [
        str(harness.BIN / "python"),
        "-c",
        _HASHING_ALONE,
        str(cost.time_cost),
        str(cost.memory_kib),
        str(cost.parallelism),
    ]
    hashing = [subprocess.Popen(command) for _ in range(target.workers * args.hash_workers)]
    try:
        return run_load(_probe_load(target, args, args.warmup))
    finally:
        for process in hashing:
            process.kill()
            process.wait()


def _p99_ms(outcome: Outcome, step: str) -> float:
    return harness.percentile(outcome.steps.get(step, []), 99) * 1000


HEADER = (
    f"{'database':<10} {'workers':>7} {'phase':<6} {'logins/s':>8} {'failed':>6}   "
    + "   ".join(f"{p + ' n p50/p99 ms':>26}" for p in PROBES)
)


def _row(target: Target, phase: str, probe: Outcome, storm: Outcome | None) -> str:
    cells = []
    for step in PROBES:
        latencies = probe.steps.get(step, [])
        p50 = harness.percentile(latencies, 50) * 1000
        cells.append(f"{len(latencies):>6} {p50:>8.1f}/{_p99_ms(probe, step):<8.1f}")
    logins = f"{storm.rate:>8.2f}" if storm is not None else f"{'-':>8}"
    failed = probe.failed + (storm.failed if storm is not None else 0)
    return f"{target.kind:<10} {target.workers:>7} {phase:<6} {logins} {failed:>6}   " + "   ".join(
        f"{cell:>26}" for cell in cells
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--workers", default="1,2", help="baton serve --workers, each in turn")
    parser.add_argument("--hash-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--storm-concurrency", type=int, default=16)
    parser.add_argument("--pause", type=float, default=0.01, help="seconds between probes")
    parser.add_argument("--scope", default="openid", help="of the tokens refreshed")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured")
    harness.add_run_options(parser)
    args = parser.parse_args()
    margin = MARGIN
    if args.quick:
        args.warmup, args.duration, margin = 0.5, 2.0, 0.5
    kinds = cast(list[harness.DatabaseKind], harness.csv(args.databases))
    workers_list = [int(w) for w in harness.csv(args.workers)]
    cost = harness.DEFAULT_COST
    env = {"BATON_HASH_WORKERS": str(args.hash_workers)}
    env.update(harness.env_pairs(args.env))

    report = harness.Report("Login storm isolation (issue 7)")
    report.line(
        f"storm: POST /api/v1/login at concurrency {args.storm_concurrency}, {cost},"
        f" BATON_HASH_WORKERS={args.hash_workers} per worker; probe: one request at a time"
        f" (refresh, introspect with HTTP Basic, /readyz) then {args.pause * 1000:g} ms pause;"
        f" {args.warmup:g} s warm-up, {args.duration:g} s measured per phase"
    )
    report.line()
    report.line(HEADER)

    ratios: dict[tuple[str, int, str], float] = {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        targets = [
            token_clients.start_target(
                stack, kind, workdir, workers=workers, cost=cost, scope=args.scope, env=env
            )
            for kind in kinds
            for workers in workers_list
        ]
        for target in targets:
            idle = run_load(_probe_load(target, args, args.warmup))
            report.line(_row(target, "idle", idle, None))
            probe, storm = _under_storm(target, args, margin)
            report.line(_row(target, "storm", probe, storm))
            floor = _beside_hashing(target, args, cost)
            report.line(_row(target, "floor", floor, None))
            for failure in (*idle.failures, *probe.failures, *storm.failures):
                report.line(f"    failure: {failure}")
            cells = []
            for step in PROBES:
                ratio = _p99_ms(probe, step) / _p99_ms(idle, step)
                ratios[target.kind, target.workers, step] = ratio
                verdict = "met" if ratio < TARGET_RATIO else "MISSED"
                cells.append(f"{step} {ratio:.1f}x {verdict}")
            login_p = harness.p50_95_99_ms(storm.steps.get("login", []))
            report.line(
                f"{'':<10} {'':>7} p99 storm/idle (target < {TARGET_RATIO:g}x): "
                + ", ".join(cells)
                + f"; storm login p50/p95/p99 {login_p} ms"
            )
            floors = []
            for step in PROBES:
                floor_ratio = _p99_ms(floor, step) / _p99_ms(idle, step)
                floors.append(f"{step} {floor_ratio:.1f}x")
            report.line(
                f"{'':<10} {'':>7} p99 floor/idle (the same hashing outside Baton, no logins): "
                + ", ".join(floors)
            )
        report.line()
        report.line("RSS MiB after the run (process [workers]):")
        for target in targets:
            report.line(f"  {target.label:<14} {harness.rss_of_tree(target.server.pid)}")

    report.line()
    worst = max(ratios.values())
    report.line(
        f"Worst p99 storm/idle: {worst:.1f}x (target < {TARGET_RATIO:g}x; oidc-provider ~150x)"
    )

    if args.results or not args.quick:
        report.record(args.results or harness.RESULTS)
    else:
        print("(--quick: not recorded; pass --results PATH to record)")


if __name__ == "__main__":
    main()
