"""Refresh grants and introspections per second: ``baton serve`` with 1 and 2
workers on SQLite and PostgreSQL, driven from a separate process over loopback.

A refresh is ``POST /oauth2/token`` with ``grant_type=refresh_token`` by a
public first-party client (its ``client_id`` alone), each virtual user on a
chain of its own: every response's new refresh token is the next request's
(rotation, OAuth 2.1 §4.3.1). An introspection is ``POST /oauth2/introspect``
of an access token, as a resource server sends it: with HTTP Basic
credentials of a confidential client (``introspect``), and without any
(``introspect-anon``, allowed by ``BATON_UNAUTHENTICATED_INTROSPECTION``).
The tokens come from whole flows (cheap argon2id) before the rows. Targets, on
2 cores: 240 refreshes/s and 1,500 introspections/s.

    .venv/bin/python bench/token_endpoints.py [--quick] [--concurrency 4,16]
        [--databases sqlite,postgresql] [--workers 2,1]
        [--operations refresh,introspect,introspect-anon] [--py-spy DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, cast

import harness
import token_clients
from loadgen import Load, Outcome, Scenario, once, run_load
from token_clients import Target

OPERATIONS: dict[str, Scenario] = {
    "refresh": token_clients.refresh,
    "introspect": token_clients.introspect,
    "introspect-anon": token_clients.introspect,
}
TARGETS = {"refresh": 240.0, "introspect": 1500.0, "introspect-anon": 1500.0}
INTROSPECTED_TOKENS = 16


def _verdict(rate: float, target: float) -> str:
    return f"{rate / target:>5.2f}x {'met' if rate >= target else 'MISSED'}"


HEADER = (
    f"{'database':<10} {'workers':>7} {'operation':<15} {'conc':>4} {'req/s':>8} {'target':>6}"
    f" {'vs target':>12} {'cpu_ms/req':>10} {'loadgen':>7} {'failed':>6}   p50/p95/p99 ms"
)


def _row(target: Target, operation: str, conc: int, outcome: Outcome) -> str:
    goal = TARGETS[operation]
    latencies = [s for steps in outcome.steps.values() for s in steps]
    return (
        f"{target.kind:<10} {target.workers:>7} {operation:<15} {conc:>4} {outcome.rate:>8.1f}"
        f" {goal:>6.0f} {_verdict(outcome.rate, goal):>12}"
        f" {outcome.server_cpu_ms_per_iteration:>10.2f}"
        f" {outcome.loadgen_cpu / outcome.seconds * 100:>6.0f}% {outcome.failed:>6}"
        f"   {harness.p50_95_99_ms(latencies)}"
    )


def _check(target: Target, anonymous: bool) -> str:
    """One refresh and the introspections work (on a family of their own)."""
    issued = token_clients.issue(target, 1)
    common = {"client_id": target.client_id, "access_tokens": token_clients.access_tokens(issued)}
    refreshed = once(
        target.server.url,
        token_clients.refreshed,
        {**common, "refresh_tokens": token_clients.refresh_tokens(issued)},
    )
    if not isinstance(refreshed, dict):
        raise RuntimeError(f"{target.label}: refresh failed: {refreshed}")
    for auth in (target.introspection_auth, *([None] if anonymous else [])):
        once(target.server.url, token_clients.introspect, {**common, "auth": auth})
    return f"refresh and introspection work; a refresh returns {', '.join(sorted(refreshed))}"


@contextmanager
def py_spy(directory: Path | None, name: str, pids: list[int], seconds: float) -> Iterator[None]:
    """``py-spy record`` of each of ``pids`` for ``seconds`` (collapsed stacks,
    which ``profiles.py`` reads), when a directory is given. py-spy slows the
    server down: rows recorded are not figures to report."""
    if directory is None:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    recorders = [
        subprocess.Popen(
            [
                str(harness.BIN / "py-spy"),
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, round(seconds))),
                "--rate",
                "200",
                "--format",
                "raw",
                "--nonblocking",
                "--gil",  # only the thread holding the GIL: where Python spends its CPU
                "--output",
                str(directory / f"{name}-{pid}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]
    try:
        yield
    finally:
        for recorder in recorders:
            recorder.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--concurrency", default="4,16")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--workers", default="2,1", help="baton serve --workers, each in turn")
    parser.add_argument("--operations", default=",".join(OPERATIONS))
    parser.add_argument("--scope", default="openid", help="of the tokens refreshed")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds measured")
    parser.add_argument(
        "--py-spy", type=Path, metavar="DIR", help="record each worker with py-spy into DIR"
    )
    harness.add_run_options(parser)
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.duration = 0.5, 1.5
    concurrencies = [int(c) for c in harness.csv(args.concurrency)]
    kinds = cast(list[harness.DatabaseKind], harness.csv(args.databases))
    workers_list = [int(w) for w in harness.csv(args.workers)]
    operations = harness.csv(args.operations)
    if unknown := set(operations) - set(OPERATIONS):
        parser.error(f"unknown operations: {', '.join(sorted(unknown))}")
    cost = harness.CHEAP_COST  # hashing only issues the tokens, before the rows
    env = {
        **(
            {"BATON_UNAUTHENTICATED_INTROSPECTION": "true"}
            if "introspect-anon" in operations
            else {}
        ),
        **harness.env_pairs(args.env),
    }

    report = harness.Report("Token endpoints: refresh grants and introspections (issue 7)")
    report.line(
        f"scope {args.scope!r}; tokens issued by whole flows ({cost}); refresh = public client,"
        " rotation, one chain per virtual user; introspect = HTTP Basic of a confidential"
        " client, introspect-anon = no client authentication; "
        f"{args.warmup:g} s warm-up, {args.duration:g} s measured per row"
    )
    if env:
        report.line("baton serve environment: " + " ".join(f"{k}={v}" for k, v in env.items()))

    rates: dict[tuple[str, str, int, int], float] = {}
    cpu: dict[tuple[str, str, int, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        # All servers start first and wait, idle, for their turn; rows take
        # turns at each concurrency, so a change in load spreads over all.
        targets = [
            token_clients.start_target(
                stack, kind, workdir, workers=workers, cost=cost, scope=args.scope, env=env
            )
            for kind in kinds
            for workers in workers_list
        ]
        params: dict[tuple[str, str, int], Mapping[str, Any]] = {}
        for target in targets:
            introspected = token_clients.access_tokens(
                token_clients.issue(target, INTROSPECTED_TOKENS)
            )
            for conc in concurrencies:
                common = {"client_id": target.client_id}
                params[target.label, "refresh", conc] = {
                    **common,
                    "refresh_tokens": token_clients.refresh_tokens(
                        token_clients.issue(target, conc)
                    ),
                }
                params[target.label, "introspect", conc] = {
                    **common,
                    "access_tokens": introspected,
                    "auth": target.introspection_auth,
                }
                params[target.label, "introspect-anon", conc] = {
                    **common,
                    "access_tokens": introspected,
                    "auth": None,
                }
        for target in targets:
            report.line(f"{target.label}: {_check(target, 'introspect-anon' in operations)}")
        report.line()
        report.line(HEADER)
        for operation in operations:
            for conc in concurrencies:
                for target in targets:
                    load = Load(
                        target.server.url,
                        OPERATIONS[operation],
                        params[target.label, operation, conc],
                        conc,
                        args.warmup,
                        args.duration,
                        (target.server.pid,),
                    )
                    name = f"{target.kind}-w{target.workers}-{operation}-c{conc}"
                    pids = token_clients.workers_of(target.server, target.workers)
                    with py_spy(args.py_spy, name, pids, args.warmup + args.duration):
                        outcome = run_load(load)
                    rates[target.kind, operation, target.workers, conc] = outcome.rate
                    cpu[target.kind, operation, target.workers, conc] = (
                        outcome.server_cpu_ms_per_iteration
                    )
                    report.line(_row(target, operation, conc, outcome))
                    for failure in outcome.failures:
                        report.line(f"    failure: {failure}")
        report.line()
        report.line("RSS MiB after the run (process [workers]):")
        for target in targets:
            report.line(f"  {target.label:<14} {harness.rss_of_tree(target.server.pid)}")

    report.line()
    cores = os.cpu_count() or 1
    report.line(
        f"Against the targets: the best row of each database; the CPU budget is what"
        f" {cores} cores allow per request at the target rate, if the server had them all"
    )
    for operation in operations:
        for kind in kinds:
            best = max(
                ((w, c) for w in workers_list for c in concurrencies),
                key=lambda wc: rates[kind, operation, wc[0], wc[1]],
            )
            rate, goal = rates[kind, operation, *best], TARGETS[operation]
            report.line(
                f"  {operation:<15} {kind:<10} {rate:>8.1f}/s (workers {best[0]},"
                f" concurrency {best[1]}) vs >= {goal:.0f}/s: {_verdict(rate, goal).strip()};"
                f" server CPU {cpu[kind, operation, *best]:.2f} ms/req,"
                f" budget {cores * 1000 / goal:.2f}"
            )

    if args.results or not args.quick:
        report.record(args.results or harness.RESULTS)
    else:
        print("(--quick: not recorded; pass --results PATH to record)")


if __name__ == "__main__":
    main()
