"""What every benchmark needs: a real ``baton serve`` (or another server) on a
fresh database, the CPU time and memory of its processes from ``/proc``, a
function run in a process of its own, percentiles, and a report that prints
its rows and appends them to ``RESULTS.md`` with the command and the machine.

Only the standard library is imported at the top: the load generator's
process imports this module too.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, ParamSpec, TypeVar

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
BIN = Path(sys.executable).parent
ADMIN_URL = os.environ.get(
    "BATON_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
DatabaseKind = Literal["sqlite", "postgresql"]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

P = ParamSpec("P")
R = TypeVar("R")


# -- processes, from /proc ----------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may hold spaces and parentheses: fields start after the last ")".
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants alive now (uvicorn's workers, say)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(roots: Sequence[int]) -> float:
    """User + system CPU seconds of every process in the trees of ``roots``
    (all of each process's threads; children that exited are not counted)."""
    return sum(cpu_split(roots))


def _forked_by_fork_server(pid: int) -> bool:
    # Children of multiprocessing's fork server keep its command line.
    try:
        return b"multiprocessing.forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def cpu_split(roots: Sequence[int]) -> tuple[float, float]:
    """``cpu_seconds`` in two: the processes that serve, and those that hash
    (Baton's hashing processes and their fork server; none in a server that
    hashes in its own threads, such as node oidc-provider)."""
    serving = hashing = 0
    for root in roots:
        for pid in process_tree(root):
            if (fields := _stat(pid)) is not None:
                ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
                if _forked_by_fork_server(pid):
                    hashing += ticks
                else:
                    serving += ticks
    return serving / _CLOCK_TICKS, hashing / _CLOCK_TICKS


def context_switches(roots: Sequence[int]) -> int:
    """Voluntary (a thread blocked: on a socket, a lock, a queue) and forced
    context switches of every thread of every process in the trees of ``roots``."""
    total = 0
    for root in roots:
        for pid in process_tree(root):
            try:
                tasks = list(Path(f"/proc/{pid}/task").iterdir())
            except OSError:
                continue
            for task in tasks:
                try:
                    lines = (task / "status").read_text().splitlines()
                except OSError:
                    continue
                total += sum(int(line.split()[1]) for line in lines if "ctxt_switches" in line)
    return total


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def rss_of_tree(root: int) -> str:
    """RSS of the root process and of each descendant, e.g. ``61 [118 121]`` MiB."""
    root_rss, *others = (rss_mib(pid) for pid in process_tree(root))
    text = f"{root_rss:.0f}"
    return f"{text} [{' '.join(f'{r:.0f}' for r in others)}]" if others else text


def in_process(function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``function(*args)`` in a fresh spawned process; ``function`` must be importable."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args, **kwargs).result()


# -- servers ------------------------------------------------------------------------


# -- command lines ----------------------------------------------------------------


def csv(text: str) -> list[str]:
    """``"sqlite, postgresql"`` -> ``["sqlite", "postgresql"]``."""
    return [item.strip() for item in text.split(",") if item.strip()]


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """``--env NAME=VALUE`` (repeatable) for ``baton serve``, and ``--results``."""
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for baton serve (repeatable)",
    )
    parser.add_argument("--results", type=Path, help=f"default {RESULTS} (not with --quick)")


def env_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """The ``--env`` values as a mapping."""
    return dict(pair.split("=", 1) for pair in pairs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Server:
    url: str
    pid: int
    env: dict[str, str]
    log: Path

    def baton(self, *args: str, stdin: str | None = None) -> str:
        """Run the ``baton`` command against this server's database; its stdout."""
        return subprocess.run(
            [str(BIN / "baton"), *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout


def _get_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback)
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, urllib.error.URLError):
        return None


@contextmanager
def serving(
    argv: Sequence[str], *, url: str, ready: str, env: Mapping[str, str], log: Path
) -> Iterator[Server]:
    """Start ``argv`` in its own process group, wait until ``url + ready`` answers
    200, and stop it with SIGTERM (then SIGKILL) whatever happens."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while _get_status(url + ready) != 200:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{argv[0]} exited with {process.returncode}:\n{log.read_text()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} not ready in 60 s:\n{log.read_text()}")
            time.sleep(0.1)
        yield Server(url=url, pid=process.pid, env=dict(env), log=log)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process.returncode not in (0, -signal.SIGTERM):
            tail = log.read_text(errors="replace")[-2000:]
            print(f"warning: {argv[0]} stopped with {process.returncode}:\n{tail}", file=sys.stderr)


@contextmanager
def baton_server(
    database_url: str, workdir: Path, *, workers: int = 1, env: Mapping[str, str] | None = None
) -> Iterator[Server]:
    """``baton db upgrade``, then ``baton serve --workers N`` on a free port,
    ready once ``/readyz`` answers 200 (the database answers, schema at head)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    full_env = {
        **os.environ,
        "BATON_DATABASE_URL": database_url,
        "BATON_PUBLIC_URL": url,
        "BATON_SECURE_COOKIES": "false",
        **(env or {}),
    }
    subprocess.run(
        [str(BIN / "baton"), "db", "upgrade"], env=full_env, check=True, capture_output=True
    )
    argv = [str(BIN / "baton"), "serve", "--port", str(port), "--workers", str(workers)]
    with serving(
        argv, url=url, ready="/readyz", env=full_env, log=workdir / f"baton-{port}.log"
    ) as server:
        yield server


# -- databases and data -------------------------------------------------------------


_databases = 0


@contextmanager
def fresh_database(kind: DatabaseKind, workdir: Path) -> Iterator[str]:
    """An empty database: a new SQLite file, or ``baton_bench_<pid>_<n>`` on the
    PostgreSQL server at ``BATON_TEST_POSTGRES_URL``, dropped afterwards."""
    global _databases
    _databases += 1
    if kind == "sqlite":
        yield f"sqlite:///{workdir}/bench-{_databases}.db"
        return
    import psycopg
    from sqlalchemy.engine import make_url

    from app.settings import normalise_database_url

    name = f"baton_bench_{os.getpid()}_{_databases}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(normalise_database_url(ADMIN_URL)).set(database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass(frozen=True)
class Cost:
    """argon2id's cost as Baton's settings name it."""

    time_cost: int
    memory_kib: int
    parallelism: int

    def env(self) -> dict[str, str]:
        return {
            "BATON_ARGON2_TIME_COST": str(self.time_cost),
            "BATON_ARGON2_MEMORY_COST": str(self.memory_kib),
            "BATON_ARGON2_PARALLELISM": str(self.parallelism),
        }

    def __str__(self) -> str:
        return f"argon2id t={self.time_cost} m={self.memory_kib // 1024}MiB p={self.parallelism}"


DEFAULT_COST = Cost(
    time_cost=3, memory_kib=64 * 1024, parallelism=4
)  # RFC 9106 §4, Baton's default
CHEAP_COST = Cost(
    time_cost=2, memory_kib=19 * 1024, parallelism=1
)  # OWASP's minimum, Baton's floor


def add_users(database_url: str, names: Sequence[str], password: str, cost: Cost) -> None:
    """Users with ``password`` hashed at ``cost`` (the server's, so no login rehashes).

    One hash serves them all: each verification costs the same whatever the
    salt, and hashing once keeps set-up short."""
    from app import passwords, users
    from app.db import Database, utcnow

    hashed = passwords.hash_password(
        password, passwords.Argon2Cost(cost.time_cost, cost.memory_kib, cost.parallelism)
    )
    database = Database(database_url)
    try:
        with database.transaction() as db:
            for name in names:
                users.create(db=db, username=name, password_hash=hashed, now=utcnow())
    finally:
        database.dispose()


def add_first_party_client(server: Server, redirect_uri: str, scope: str) -> str:
    """A public first-party client (PKCE, no consent step); its client_id."""
    created = json.loads(
        server.baton(
            "clients",
            "add",
            "--name",
            "Bench",
            "--public",
            "--first-party",
            "--redirect-uri",
            redirect_uri,
            "--scope",
            scope,
            "--json",
        )
    )
    client_id: str = created["client_id"]
    return client_id


# -- figures and reports ------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between the closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def p50_95_99_ms(values: Sequence[float]) -> str:
    return "/".join(f"{percentile(values, q) * 1000:.1f}" for q in (50, 95, 99))


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _postgres_version() -> str:
    try:
        import psycopg

        with psycopg.connect(ADMIN_URL, connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return f"PostgreSQL {row[0].split()[0]}" if row else "PostgreSQL ?"
    except Exception:  # any failure only means the version is unknown
        return "PostgreSQL unreachable"


def _git(*args: str) -> str:
    result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return result.stdout.strip()


def machine(extra: Sequence[str] = ()) -> str:
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    parts = [
        f"{_cpu_model()}, {os.cpu_count()} cores, {memory_gib:.0f} GiB",
        f"{platform.system()} {platform.release()}",
        f"Python {platform.python_version()}",
        _postgres_version(),
        f"SQLite {sqlite3.sqlite_version}",
        *extra,
    ]
    return "; ".join(parts)


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def commit() -> str:
    head = _git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" with uncommitted changes" if _git("status", "--porcelain") else "")


class Report:
    """Rows printed as they come and kept, to append to RESULTS.md at the end."""

    def __init__(self, title: str, machine_extra: Sequence[str] = ()) -> None:
        self.title = title
        self.started = datetime.now(UTC)
        self.command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
        self.machine = machine(machine_extra)
        self.load = load_average()
        self.commit = commit()
        self.lines: list[str] = []
        self.line(f"# {title}")
        self.line(f"# {self.machine}")
        self.line(f"# commit {self.commit}; load average {self.load} at start")

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def record(self, path: Path, notes: str = "") -> None:
        """Append a dated section with the command, the machine and the rows."""
        section = [
            "",
            f"## {self.title} ({self.started:%Y-%m-%d %H:%M} UTC)",
            "",
            f"- Machine: {self.machine}.",
            f"- Load average at start: {self.load}; end: {load_average()}.",
            f"- Commit: {self.commit}.",
            f"- Command: `{self.command}`",
            *([f"- {notes}"] if notes else []),
            "",
            "```",
            *(line for line in self.lines if not line.startswith("# ")),
            "```",
            "",
        ]
        with path.open("a") as results:
            results.write("\n".join(section))
        print(f"(appended to {path})")
