"""The whole flow with cheap hashing: Baton (SQLite, PostgreSQL) beside node
oidc-provider 9 (its in-memory store), measured side by side in one run.

A flow is what a person's first sign-in to a first-party app costs, each time
in a new browser: authorize (paused for login) → the login page → the login
(argon2id at OWASP's minimum, t=2 m=19MiB p=1, on both servers) → resume (the
code) → the code exchange with the PKCE verifier. Virtual users run flows back
to back from a separate process over loopback; the server CPU per flow is the
CPU time of the server's own processes (``/proc``) over the measured window,
divided by the flows completed in it, so the load generator's share of the
two cores does not count. Baton's CPU is also split between its hashing
processes ("hashing": the argon2 checks, and what handing them over costs
there) and the rest ("serving"); oidc-provider hashes in its own threads, so
for it only the total is known, and the "-argon2" column subtracts one argon2
verification measured alone. "switches" counts the servers' context switches
per flow (every thread of every process; ``/proc``): each is a thread that
blocked and was woken, or was preempted, and each costs CPU
(``bench/primitives.py``, "block and wake").

    .venv/bin/python bench/whole_flow.py [--quick] [--concurrency 1,4,16]
        [--databases sqlite,postgresql] [--workers 1] [--no-oidc-provider]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlencode, urlsplit

import harness
from loadgen import Http, Load, Outcome, Scenario, Unexpected, once, run_load

PASSWORD = "bench password, long enough"  # noqa: S105 (a benchmark user)
REDIRECT_URI = "http://127.0.0.1:9/cb"  # never followed: the code is read from the Location
STEPS = ("authorize", "login_page", "login", "resume", "token")
USERS = 16
HERE = Path(__file__).resolve().parent
OIDC_DIR = Path(os.environ.get("BATON_BENCH_OIDC_DIR", "/tmp/baton-bench-oidc-provider"))  # noqa: S108


# -- the flow, as a browser and a client drive it ---------------------------------------


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _query(location: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(location).query).items()}


def _code_of(location: str, state: str) -> str:
    if not location.startswith(REDIRECT_URI + "?"):
        raise Unexpected(f"resume: not redirected to the client: {location[:120]}")
    callback = _query(location)
    if callback.get("state") != state or "code" not in callback:
        raise Unexpected(f"resume: bad callback {location[:120]}")
    return callback["code"]


async def _exchange(
    http: Http, path: str, code: str, verifier: str, params: Mapping[str, Any]
) -> dict[str, Any]:
    http.cookies.clear()  # the client's back end, not the browser, redeems the code
    response = await http.request(
        "token",
        "POST",
        path,
        form={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "client_id": params["client_id"],
            "code_verifier": verifier,
        },
        expect=200,
    )
    tokens: dict[str, Any] = response.json()
    if "access_token" not in tokens:
        raise Unexpected(f"token: no access_token in {sorted(tokens)}")
    return tokens


def _authorize_query(params: Mapping[str, Any], challenge: str, state: str) -> str:
    return urlencode(
        {
            "response_type": "code",
            "client_id": params["client_id"],
            "redirect_uri": REDIRECT_URI,
            "scope": params["scope"],
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )


async def baton_flow(http: Http, number: int, params: Mapping[str, Any]) -> dict[str, Any]:
    verifier, challenge = _pkce()
    state = secrets.token_urlsafe(16)
    query = _authorize_query(params, challenge, state)
    paused = await http.request("authorize", "GET", f"/oauth2/authorize?{query}", expect=302)
    if not paused.location.startswith("/login?"):
        raise Unexpected(f"authorize: not paused for login: {paused.location[:120]}")
    await http.request("login_page", "GET", paused.location, expect=200)
    login = await http.request(
        "login",
        "POST",
        "/api/v1/login",
        json_body={
            "username": f"user{number % USERS}",
            "password": PASSWORD,
            "redirection_token": _query(paused.location)["redirection_token"],
        },
        expect=200,
    )
    resumed = await http.request("resume", "GET", login.json()["redir_to"], expect=302)
    code = _code_of(resumed.location, state)
    return await _exchange(http, "/oauth2/token", code, verifier, params)


async def oidc_provider_flow(http: Http, number: int, params: Mapping[str, Any]) -> dict[str, Any]:
    verifier, challenge = _pkce()
    state = secrets.token_urlsafe(16)
    query = _authorize_query(params, challenge, state)
    paused = await http.request("authorize", "GET", f"/auth?{query}", expect=303)
    interaction = http.path_of(paused.location)
    if not interaction.startswith("/interaction/"):
        raise Unexpected(f"authorize: not paused for login: {paused.location[:120]}")
    await http.request("login_page", "GET", interaction, expect=200)
    login = await http.request(
        "login",
        "POST",
        interaction + "/login",
        json_body={"username": f"user{number % USERS}", "password": PASSWORD},
        expect=200,
    )
    resumed = await http.request("resume", "GET", login.json()["redir_to"], expect=303)
    code = _code_of(resumed.location, state)
    return await _exchange(http, "/token", code, verifier, params)


# -- the servers ------------------------------------------------------------------------


def _node(*args: str) -> str:
    return subprocess.run(["node", *args], capture_output=True, text=True, check=True).stdout


def install_oidc_provider() -> str:
    """Install oidc-provider into OIDC_DIR (once) and say which versions run."""
    subprocess.run(["bash", str(HERE / "oidc_provider" / "setup.sh"), str(OIDC_DIR)], check=True)
    versions = json.loads(
        subprocess.run(
            ["npm", "ls", "--json", "--prefix", str(OIDC_DIR)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )["dependencies"]
    found = ", ".join(f"{name} {info['version']}" for name, info in sorted(versions.items()))
    return f"node {_node('--version').strip()} ({found})"


def _node_env(cost: harness.Cost) -> dict[str, str]:
    return {
        "ARGON2_TIME_COST": str(cost.time_cost),
        "ARGON2_MEMORY_COST": str(cost.memory_kib),
        "ARGON2_PARALLELISM": str(cost.parallelism),
        "BENCH_PASSWORD": PASSWORD,
        "BENCH_USERS": str(USERS),
        "CLIENT_ID": "bench",
        "REDIRECT_URI": REDIRECT_URI,
    }


@contextmanager
def oidc_provider(workdir: Path, cost: harness.Cost) -> Iterator[harness.Server]:
    port = harness.free_port()
    env = {**os.environ, **_node_env(cost), "PORT": str(port), "NODE_ENV": "production"}
    with harness.serving(
        ["node", str(OIDC_DIR / "server.mjs")],
        url=f"http://127.0.0.1:{port}",
        ready="/.well-known/openid-configuration",
        env=env,
        log=workdir / f"oidc-provider-{port}.log",
    ) as server:
        yield server


def argon2_cpu_ms(cost: harness.Cost, rounds: int) -> float:
    """CPU ms of one argon2id verification with argon2-cffi (Baton's), here."""
    from argon2 import PasswordHasher

    hasher = PasswordHasher(cost.time_cost, cost.memory_kib, cost.parallelism)
    stored = hasher.hash(PASSWORD)
    hasher.verify(stored, PASSWORD)  # warm: the first one also maps its memory
    started = time.process_time()
    for _ in range(rounds):
        hasher.verify(stored, PASSWORD)
    return (time.process_time() - started) * 1000 / rounds


def node_argon2_cpu_ms(cost: harness.Cost, rounds: int) -> float:
    env = {**os.environ, **_node_env(cost)}
    out = subprocess.run(
        ["node", str(OIDC_DIR / "server.mjs"), "--hash-cpu", str(rounds)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(json.loads(out.splitlines()[-1])["cpu_ms_per_verify"])


# -- the run ----------------------------------------------------------------------------


def _row(label: str, conc: int, outcome: Outcome, hash_ms: float) -> str:
    steps = " | ".join(f"{harness.p50_95_99_ms(outcome.steps.get(s, [])):>16}" for s in STEPS)
    cpu = outcome.server_cpu_ms_per_iteration
    in_hashing = outcome.hashing_cpu_ms_per_iteration
    # oidc-provider hashes in its own threads: no hashing processes to tell apart.
    hashing = f"{in_hashing:>8.2f} {cpu - in_hashing:>8.2f}"
    if not outcome.hashing_cpu:
        hashing = f"{'-':>8} {'-':>8}"
    switches = outcome.server_switches / outcome.done if outcome.done else float("nan")
    loadgen = outcome.loadgen_cpu / outcome.seconds * 100
    return (
        f"{label:<16} {conc:>4} {outcome.rate:>7.1f} {cpu:>8.2f} {cpu - hash_ms:>8.2f} {hashing}"
        f" {switches:>8.1f} {loadgen:>7.0f}% {outcome.failed:>6}   {steps}"
    )


HEADER = (
    f"{'server':<16} {'conc':>4} {'flows/s':>7} {'cpu_ms':>8} {'-argon2':>8} {'hashing':>8}"
    f" {'serving':>8} {'switches':>8} {'loadgen':>8} {'failed':>6}   p50/p95/p99 ms: "
    + " | ".join(f"{s:>16}" for s in STEPS)
)


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}" if theirs > 0 else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--workers", type=int, default=1, help="baton serve --workers")
    parser.add_argument("--scope", default="openid", help="requested (openid: ID tokens)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds measured")
    parser.add_argument("--no-oidc-provider", action="store_true")
    harness.add_run_options(parser)
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.duration = 0.5, 1.5
    concurrencies = [int(c) for c in harness.csv(args.concurrency)]
    kinds = cast(list[harness.DatabaseKind], harness.csv(args.databases))
    cost = harness.CHEAP_COST
    with_node = not args.no_oidc_provider

    node_versions = install_oidc_provider() if with_node else ""
    report = harness.Report(
        "Whole flow, cheap argon2id: Baton beside oidc-provider (issue 7)",
        [node_versions] if with_node else [],
    )
    report.line(
        f"{cost}, scope {args.scope!r}, baton serve --workers {args.workers}, "
        f"{args.warmup:g} s warm-up, {args.duration:g} s measured per row"
    )
    rounds = 10 if args.quick else 40
    hash_ms = {"baton": harness.in_process(argon2_cpu_ms, cost, rounds)}
    if with_node:
        hash_ms["oidc-provider"] = node_argon2_cpu_ms(cost, rounds)
    report.line(
        "CPU ms of one argon2id verification (the '-argon2' column subtracts it): "
        + ", ".join(f"{name} {ms:.2f}" for name, ms in hash_ms.items())
    )

    cpu: dict[tuple[str, int], float] = {}
    serving: dict[tuple[str, int], float] = {}  # outside hashing processes
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        # Every server is up for the whole run and idle but for its own rows;
        # the rows take turns at each concurrency, so a change in the
        # machine's load is spread over all of them.
        targets: list[tuple[str, harness.Server, Scenario, dict[str, Any]]] = []
        if with_node:
            node = stack.enter_context(oidc_provider(workdir, cost))
            targets.append(("oidc-provider", node, oidc_provider_flow, {"client_id": "bench"}))
        for kind in kinds:
            url = stack.enter_context(harness.fresh_database(kind, workdir))
            env = {**cost.env(), **harness.env_pairs(args.env)}
            server = stack.enter_context(
                harness.baton_server(url, workdir, workers=args.workers, env=env)
            )
            harness.add_users(url, [f"user{n}" for n in range(USERS)], PASSWORD, cost)
            client_id = harness.add_first_party_client(server, REDIRECT_URI, args.scope)
            targets.append((f"baton {kind}", server, baton_flow, {"client_id": client_id}))

        for label, server, scenario, params in targets:
            params["scope"] = args.scope
            tokens = once(server.url, scenario, params)
            assert isinstance(tokens, dict)
            report.line(
                f"{label}: one flow works; its token response has {', '.join(sorted(tokens))}"
            )
        report.line()
        report.line(HEADER)
        for conc in concurrencies:
            for label, server, scenario, params in targets:
                load = Load(
                    server.url, scenario, params, conc, args.warmup, args.duration, (server.pid,)
                )
                outcome = run_load(load)
                cpu[label, conc] = outcome.server_cpu_ms_per_iteration
                serving[label, conc] = cpu[label, conc] - outcome.hashing_cpu_ms_per_iteration
                report.line(_row(label, conc, outcome, hash_ms[label.split()[0]]))
                for failure in outcome.failures:
                    report.line(f"    failure: {failure}")
        report.line()
        report.line("RSS MiB after the run (process [workers]):")
        for label, server, _, _ in targets:
            report.line(f"  {label:<16} {harness.rss_of_tree(server.pid)}")

    if with_node:
        report.line()
        report.line("Baton's server CPU per flow / oidc-provider's (target <= 1.0), then without")
        report.line("one argon2 verification on either side (what the rest of the flow costs):")
        for conc in concurrencies:
            theirs = cpu["oidc-provider", conc]
            lean = theirs - hash_ms["oidc-provider"]
            cells = [
                f"{kind} {_ratio(cpu[f'baton {kind}', conc], theirs)}"
                f" ({_ratio(cpu[f'baton {kind}', conc] - hash_ms['baton'], lean)})"
                for kind in kinds
            ]
            report.line(f"  concurrency {conc:>2}: " + "   ".join(cells))
        report.line("Baton's serving process alone (its CPU outside the hashing processes,")
        report.line("measured) / oidc-provider's flow without one argon2 verification:")
        for conc in concurrencies:
            lean = cpu["oidc-provider", conc] - hash_ms["oidc-provider"]
            cells = [f"{kind} {_ratio(serving[f'baton {kind}', conc], lean)}" for kind in kinds]
            report.line(f"  concurrency {conc:>2}: " + "   ".join(cells))

    if args.results or not args.quick:
        report.record(args.results or harness.RESULTS)
    else:
        print("(--quick: not recorded; pass --results PATH to record)")


if __name__ == "__main__":
    main()
