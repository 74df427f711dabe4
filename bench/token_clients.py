"""What clients and resource servers do with Baton's tokens, for the token
benchmarks: a server with users, a public first-party client and a
confidential resource server; tokens issued through whole flows; and the
scenarios the load generator runs (refresh chains, introspection, probes).

Each refresh spends the refresh token it presents and returns a new one
(OAuth 2.1 §4.3.1), and presenting a spent one again revokes its family, so
every virtual user chains its own tokens: a load generator's process starts
each user from a family of its own (``params["refresh_tokens"][number]``) and
keeps the newest token in ``_chains``. A family serves one load only: a
process that ends takes its newest tokens with it.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import harness
from loadgen import Http, Unexpected
from whole_flow import PASSWORD, REDIRECT_URI, USERS, baton_flow

RS_REDIRECT_URI = "https://rs.example/cb"


@dataclass(frozen=True)
class Target:
    """A running Baton with what the token benchmarks need registered in it."""

    kind: harness.DatabaseKind
    workers: int
    server: harness.Server
    client_id: str  # public, first-party: refreshes with its client_id alone
    scope: str
    introspection_auth: str  # an HTTP Basic Authorization value (the resource server)

    @property
    def label(self) -> str:
        return f"{self.kind} w{self.workers}"


def basic_auth(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: each part form-urlencoded, then Basic."""
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def add_resource_server(server: harness.Server) -> str:
    """A confidential client for a resource server; its Basic credentials."""
    created = json.loads(
        server.baton(
            "clients",
            "add",
            "--name",
            "RS",
            "--first-party",
            "--redirect-uri",
            RS_REDIRECT_URI,
            "--json",
        )
    )
    return basic_auth(created["client_id"], created["client_secret"])


def start_target(
    stack: ExitStack,
    kind: harness.DatabaseKind,
    workdir: Path,
    *,
    workers: int,
    cost: harness.Cost,
    scope: str,
    env: Mapping[str, str] | None = None,
) -> Target:
    """A fresh database and ``baton serve`` on it (both closed by ``stack``),
    with USERS users at ``cost``, the public client and the resource server."""
    url = stack.enter_context(harness.fresh_database(kind, workdir))
    server = stack.enter_context(
        harness.baton_server(url, workdir, workers=workers, env={**cost.env(), **(env or {})})
    )
    harness.add_users(url, [f"user{n}" for n in range(USERS)], PASSWORD, cost)
    client_id = harness.add_first_party_client(server, REDIRECT_URI, scope)
    return Target(kind, workers, server, client_id, scope, add_resource_server(server))


# -- issuing tokens (before any load, from this process) ---------------------------------


def issue(target: Target, count: int, concurrency: int = 4) -> list[dict[str, Any]]:
    """``count`` token responses, each from a whole flow of its own (a family
    of its own), ``concurrency`` flows at a time."""
    params = {"client_id": target.client_id, "scope": target.scope}
    parts = urlsplit(target.server.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80

    async def run() -> list[dict[str, Any]]:
        issued: list[dict[str, Any]] = []

        async def flows(number: int) -> None:
            http = Http(host, port, lambda step, seconds: None)
            try:
                while len(issued) < count:
                    http.cookies.clear()
                    issued.append(await baton_flow(http, number, params))
            finally:
                await http.close()

        await asyncio.gather(*(flows(n) for n in range(concurrency)))
        return issued[:count]

    responses = asyncio.run(run())
    for response in responses:
        if "refresh_token" not in response:
            raise RuntimeError(f"no refresh token issued: {sorted(response)}")
    return responses


def refresh_tokens(responses: Sequence[Mapping[str, Any]]) -> list[str]:
    return [str(response["refresh_token"]) for response in responses]


def access_tokens(responses: Sequence[Mapping[str, Any]]) -> list[str]:
    return [str(response["access_token"]) for response in responses]


# -- scenarios (run by the load generator's process) -------------------------------------

# The newest refresh token of each chain this process drives, by the token
# the chain started from (see the module's docstring).
_chains: dict[str, str] = {}


async def refresh_grant(
    http: Http, refresh_token: str, client_id: str, step: str = "refresh"
) -> dict[str, Any]:
    """RFC 6749 §6 by a public client; the token response, with a new refresh token."""
    response = await http.request(
        step,
        "POST",
        "/oauth2/token",
        form={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": client_id,
        },
        expect=200,
    )
    tokens: dict[str, Any] = response.json()
    if "refresh_token" not in tokens or "access_token" not in tokens:
        raise Unexpected(f"{step}: tokens missing from {sorted(tokens)}")
    return tokens


async def refreshed(http: Http, number: int, params: Mapping[str, Any]) -> dict[str, Any]:
    """One refresh grant on the user's own chain; the token response."""
    start = params["refresh_tokens"][number]
    tokens = await refresh_grant(
        http, _chains.get(start, start), params["client_id"], params.get("step", "refresh")
    )
    _chains[start] = tokens["refresh_token"]
    return tokens


async def refresh(http: Http, number: int, params: Mapping[str, Any]) -> None:
    await refreshed(http, number, params)


async def introspected(
    http: Http, token: str, params: Mapping[str, Any], step: str = "introspect"
) -> dict[str, Any]:
    """RFC 7662 §2.1 as a resource server sends it (no token_type_hint),
    authenticated unless ``params["auth"]`` is empty; the token must be active."""
    auth = params.get("auth")
    response = await http.request(
        step,
        "POST",
        "/oauth2/introspect",
        form={"token": token},
        extra_headers={"Authorization": auth} if auth else None,
        expect=200,
    )
    answer: dict[str, Any] = response.json()
    if answer.get("active") is not True:
        raise Unexpected(f"introspect: not active: {answer}")
    return answer


async def introspect(http: Http, number: int, params: Mapping[str, Any]) -> None:
    """Introspect one of ``params["access_tokens"]`` (tokens never refreshed)."""
    tokens = params["access_tokens"]
    await introspected(http, tokens[number % len(tokens)], params)


async def probe(http: Http, number: int, params: Mapping[str, Any]) -> None:
    """One request at a time to each probed endpoint, then a pause: a refresh
    on this user's chain, the introspection of the access token it returned,
    and ``/readyz``."""
    tokens = await refreshed(http, number, {**params, "step": "token"})
    await introspected(http, tokens["access_token"], params)
    await http.request("readyz", "GET", "/readyz", expect=200)
    await asyncio.sleep(params["pause"])


# -- processes ----------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (uvicorn's workers under its supervisor)."""
    return [p for p in harness.process_tree(pid) if p != pid and _parent(p) == pid]


def workers_of(server: harness.Server, workers: int) -> list[int]:
    """The processes that serve requests: ``baton serve --workers 1`` serves
    in its own process; with more, each worker is a child of uvicorn's
    supervisor started by multiprocessing's spawn (its other child is
    multiprocessing's resource tracker)."""
    if workers == 1:
        return [server.pid]
    return [pid for pid in children(server.pid) if b"spawn_main" in _cmdline(pid)]


def _parent(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(text[text.rindex(")") + 2 :].split()[1])


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""
