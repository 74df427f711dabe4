"""The CPU cost of Baton's own code, without an HTTP server: requests handed
straight to the ASGI app (middleware, routing, authlib, SQL, the thread hop),
one at a time, on a fresh database. What the HTTP benchmarks cannot separate
from uvicorn and the load generator; the figure to watch while optimising.

Operations: ``flow`` (authorize -> login page -> login -> resume -> token, a
public first-party client, argon2id at t=1 m=8KiB p=1 so that hashing is
negligible), ``introspect`` (HTTP Basic of a resource server), ``refresh`` (a
refresh grant of the public client, on one rotating chain) and ``readyz``.
CPU is the process's (every thread's) CPU time per operation.

    .venv/bin/python bench/in_process.py [--database sqlite|postgresql]
        [--operation flow|introspect|refresh|readyz] [--count N] [--statements] [--steps]
        [--py-spy FILE]

``--statements`` counts the SQL statements and transactions of one operation
(every engine of the process), the most frequent first.

``--steps`` prints the CPU of each request of the operation (for a flow:
authorize, login page, login, resume, token), per operation.

``--py-spy FILE`` records the measured part (collapsed stacks, GIL holders;
``bench/profiles.py FILE`` summarises it). py-spy must be installed in the
virtualenv (``.venv/bin/pip install py-spy``); its samples slow the run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from sqlalchemy import Engine, event  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from app import clients, migrate, users  # noqa: E402
from app.db import Database, utcnow  # noqa: E402
from app.main import create_app  # noqa: E402
from app.passwords import Argon2Cost, hash_password  # noqa: E402
from app.settings import Settings  # noqa: E402

BASE = "https://baton.bench"
PASSWORD = "correct horse battery staple"  # noqa: S105 (a benchmark user's)
REDIRECT_URI = "https://app.example/callback"
CHEAP = Argon2Cost(time_cost=1, memory_cost=8, parallelism=1)
ADMIN_URL = os.environ.get(
    "BATON_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


class Response:
    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body = b""

    def header(self, name: str) -> str:
        return next(value for key, value in self.headers if key == name)

    def cookies(self) -> str:
        return "; ".join(value.split(";")[0] for key, value in self.headers if key == "set-cookie")


class Caller:
    """Calls the ASGI app directly, as uvicorn would after parsing a request."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.steps: Counter[str] | None = None  # CPU seconds by step, when counting

    @staticmethod
    def step(method: str, path: str, query: str) -> str:
        """The step of a whole flow that a request is."""
        if path == "/oauth2/authorize":
            return "resume" if "flow=" in query else "authorize"
        return {"/api/v1/login": "login", "/oauth2/token": "token"}.get(path, f"{method} {path}")

    async def __call__(
        self, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> Response:
        path, _, query = target.partition("?")
        raw = [(b"host", b"baton.bench")]
        raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        if body:
            raw.append((b"content-length", str(len(body)).encode()))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "https",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": raw,
            "client": ("127.0.0.1", 50000),
            "server": ("baton.bench", 443),
        }
        pending = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if pending:
                return pending.pop()
            await asyncio.Event().wait()  # the client never disconnects
            raise AssertionError("unreachable")

        response = Response()

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                response.status = message["status"]
                response.headers = [(k.decode(), v.decode()) for k, v in message["headers"]]
            else:
                response.body += message.get("body", b"")

        cpu = time.process_time()
        await self.app(scope, receive, send)
        if self.steps is not None:
            self.steps[self.step(method, path, query)] += time.process_time() - cpu
        return response


def expect(response: Response, status: int) -> Response:
    if response.status != status:
        raise SystemExit(f"expected {status}, got {response.status}: {response.body[:300]!r}")
    return response


def fresh_database(kind: str) -> tuple[str, Callable[[], None]]:
    if kind == "sqlite":
        folder = tempfile.mkdtemp(prefix="baton-in-process-")
        return f"sqlite:///{folder}/baton.db", lambda: None
    name = f"baton_in_process_{os.getpid()}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    url = urlsplit(ADMIN_URL)._replace(scheme="postgresql+psycopg", path=f"/{name}")
    return url.geturl(), drop


def operation(name: str, call: Caller, database: Database) -> Callable[[], Awaitable[None]]:
    with database.transaction() as db:
        users.create(
            db=db, username="alice", password_hash=hash_password(PASSWORD, CHEAP), now=utcnow()
        )
        app_client = clients.register(
            db=db,
            name="bench app",
            redirect_uris=[REDIRECT_URI],
            public=True,
            first_party=True,
            scope="openid read",
            now=utcnow(),
        ).client.client_id
        resource_server = clients.register(
            db=db,
            name="resource server",
            redirect_uris=["https://rs.example/cb"],
            public=False,
            first_party=False,
            scope="read",
            now=utcnow(),
        )
    secret = resource_server.secret or ""
    basic = base64.b64encode(f"{resource_server.client.client_id}:{secret}".encode()).decode()

    async def flow() -> dict[str, Any]:
        verifier = secrets.token_urlsafe(48)
        digest = hashlib.sha256(verifier.encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        query = urlencode(
            {
                "response_type": "code",
                "client_id": app_client,
                "redirect_uri": REDIRECT_URI,
                "scope": "read",
                "state": "s",
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        paused = expect(await call("GET", "/oauth2/authorize?" + query), 302)
        login_page = paused.header("location")
        binding = paused.cookies()
        token = parse_qs(urlsplit(login_page).query)["redirection_token"][0]
        expect(await call("GET", login_page), 200)
        credentials = {"username": "alice", "password": PASSWORD, "redirection_token": token}
        logged_in = expect(
            await call(
                "POST",
                "/api/v1/login",
                {"content-type": "application/json", "cookie": binding, "origin": BASE},
                json.dumps(credentials).encode(),
            ),
            200,
        )
        resume = json.loads(logged_in.body)["redir_to"]
        cookies = f"{binding}; {logged_in.cookies()}"
        back = expect(await call("GET", resume, {"cookie": cookies}), 302)
        code = parse_qs(urlsplit(back.header("location")).query)["code"][0]
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "client_id": app_client,
            "code_verifier": verifier,
        }
        form_type = {"content-type": "application/x-www-form-urlencoded"}
        issued = expect(
            await call("POST", "/oauth2/token", form_type, urlencode(form).encode()), 200
        )
        tokens: dict[str, Any] = json.loads(issued.body)
        return tokens

    async def whole_flow() -> None:
        await flow()

    if name == "flow":
        return whole_flow
    if name == "readyz":

        async def readyz() -> None:
            expect(await call("GET", "/readyz"), 200)

        return readyz

    if name == "refresh":
        chain: list[str] = []

        async def refresh() -> None:
            if not chain:
                chain.append((await flow())["refresh_token"])
            form = urlencode(
                {"grant_type": "refresh_token", "refresh_token": chain[-1], "client_id": app_client}
            ).encode()
            headers = {"content-type": "application/x-www-form-urlencoded"}
            answer = expect(await call("POST", "/oauth2/token", headers, form), 200)
            chain[-1] = json.loads(answer.body)["refresh_token"]

        return refresh

    access_token: list[str] = []

    async def introspect() -> None:
        if not access_token:
            access_token.append((await flow())["access_token"])
        form = urlencode({"token": access_token[0]}).encode()
        headers = {
            "authorization": f"Basic {basic}",
            "content-type": "application/x-www-form-urlencoded",
        }
        answer = expect(await call("POST", "/oauth2/introspect", headers, form), 200)
        if not json.loads(answer.body)["active"]:
            raise SystemExit("the introspected token is not active")

    return introspect


def _count_statements() -> Counter[str]:
    """From now on, every statement any engine runs (its first words), and
    every transaction begun and ended."""
    counts: Counter[str] = Counter()

    def statement(_conn: Any, _cursor: Any, text: str, *_: Any) -> None:
        counts[" ".join(text.split())[:110]] += 1

    event.listen(Engine, "before_cursor_execute", statement)
    for name in ("begin", "commit", "rollback"):
        event.listen(Engine, name, lambda _conn, name=name: counts.update([f"<{name}>"]))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument(
        "--operation", choices=["flow", "introspect", "refresh", "readyz"], default="flow"
    )
    parser.add_argument("--count", type=int, default=0, help="default: 500 flows, 3000 others")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--py-spy", type=Path, default=None, metavar="FILE")
    parser.add_argument("--statements", action="store_true", help="count SQL per operation")
    parser.add_argument("--steps", action="store_true", help="CPU of each request")
    args = parser.parse_args()
    count = args.count or (500 if args.operation == "flow" else 3000)

    url, drop = fresh_database(args.database)
    try:
        migrate.upgrade(url)
        settings = Settings(
            database_url=url,
            public_url=BASE,
            hash_workers=2,
            argon2_time_cost=CHEAP.time_cost,
            argon2_memory_cost=CHEAP.memory_cost,
            argon2_parallelism=CHEAP.parallelism,
        )
        database = Database(url)
        app = create_app(settings)
        with TestClient(app, base_url=BASE) as client:  # runs the lifespan
            caller = Caller(app)
            one = operation(args.operation, caller, database)

            async def run(times: int) -> list[float]:
                seconds = []
                for _ in range(times):
                    started = time.perf_counter()
                    await one()
                    seconds.append(time.perf_counter() - started)
                return seconds

            client.portal.call(run, args.warmup)
            statements = _count_statements() if args.statements else None
            if args.steps:
                caller.steps = Counter()
            recorder = None
            if args.py_spy is not None:
                recorder = subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        "record",
                        "--pid",
                        str(os.getpid()),
                        "--format",
                        "raw",
                        "--gil",
                        "--nonblocking",
                        "--rate",
                        "500",
                        "--output",
                        str(args.py_spy),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(1.5)  # py-spy attaches
            cpu, wall = time.process_time(), time.perf_counter()
            seconds = client.portal.call(run, count)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            if recorder is not None:
                recorder.send_signal(2)  # SIGINT: py-spy writes what it recorded
                recorder.wait()
        database.dispose()
    finally:
        drop()
    seconds.sort()
    if caller.steps is not None:
        for step, spent in caller.steps.items():  # in the order of the first request
            print(f"{spent / count * 1000:8.3f} ms CPU  {step}")
    if statements is not None:
        for text, times in statements.most_common():
            print(f"{times / count:7.2f}  {text}")
    print(
        f"{args.database} {args.operation}: {count} in {wall:.1f} s; "
        f"CPU {cpu / count * 1000:.3f} ms each, wall {wall / count * 1000:.3f} ms; "
        f"p50 {seconds[count // 2] * 1000:.3f} ms, p99 {seconds[int(count * 0.99)] * 1000:.3f} ms"
    )


if __name__ == "__main__":
    main()
