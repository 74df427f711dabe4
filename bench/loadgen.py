"""A closed-loop load generator that runs in its own process.

Each virtual user holds one keep-alive HTTP/1.1 connection over loopback and
runs a scenario (an ``async`` function of the benchmark's module) again and
again. The client is a minimal one on raw asyncio streams, because the load
generator shares the cores with the server: a full client library would take
CPU from the server it measures. The server's CPU time is read from ``/proc``
at both ends of the measured window, from this process, so that the window the
requests are counted in and the window the CPU is counted in are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import resource
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import harness

REQUEST_TIMEOUT = 30.0


class Unexpected(Exception):
    """A response the scenario did not expect: the iteration counts as failed."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined by "\n"
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def location(self) -> str:
        return self.headers.get("location", "")


@dataclass
class Http:
    """One browser: a keep-alive connection to one server and a cookie jar."""

    host: str
    port: int
    record: Callable[[str, float], None]
    cookies: dict[str, str] = field(default_factory=dict)
    _reader: asyncio.StreamReader | None = None
    _writer: asyncio.StreamWriter | None = None

    async def request(
        self,
        step: str,
        method: str,
        target: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        form: Mapping[str, str] | None = None,
        expect: int,
        extra_headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send one request, time it as ``step`` and check its status."""
        body = b""
        headers = [f"Host: {self.host}:{self.port}"]
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers.append("Content-Type: application/json")
        elif form is not None:
            body = urlencode(form).encode()
            headers.append("Content-Type: application/x-www-form-urlencoded")
        if body or method == "POST":
            headers.append(f"Content-Length: {len(body)}")
        headers.extend(f"{name}: {value}" for name, value in (extra_headers or {}).items())
        if self.cookies:
            headers.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        head = f"{method} {self.path_of(target)} HTTP/1.1\r\n" + "\r\n".join(headers) + "\r\n\r\n"
        started = time.perf_counter()
        response = await asyncio.wait_for(self._exchange(head.encode() + body), REQUEST_TIMEOUT)
        self.record(step, time.perf_counter() - started)
        self._keep_cookies(response)
        if response.status != expect:
            raise Unexpected(f"{step}: {response.status} {response.body[:200]!r}")
        return response

    def path_of(self, target: str) -> str:
        """``target`` as an origin-form request target (a Location may be absolute)."""
        if target.startswith("/"):
            return target
        parts = urlsplit(target)
        if (parts.hostname, parts.port) != (self.host, self.port):
            raise Unexpected(f"redirected off the server: {target}")
        return parts.path + (f"?{parts.query}" if parts.query else "")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def _exchange(self, request: bytes) -> Response:
        reused = self._writer is not None
        try:
            return await self._send(request)
        except (OSError, asyncio.IncompleteReadError):
            await self.close()
            if not reused:
                raise
        return await self._send(request)  # the server closed an idle connection: once more

    async def _send(self, request: bytes) -> Response:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                name, value = name.strip().lower(), value.strip()
                headers[name] = f"{headers[name]}\n{value}" if name in headers else value
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._chunked()
        else:
            body = await self._reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Response(status, headers, body)

    async def _chunked(self) -> bytes:
        assert self._reader is not None
        parts: list[bytes] = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await self._reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                return b"".join(parts)
            parts.append(await self._reader.readexactly(size))
            await self._reader.readexactly(2)

    def _keep_cookies(self, response: Response) -> None:
        # One host, so names are enough; a cookie cleared by the server
        # (Max-Age=0 or an Expires in the past, as both servers clear them) goes.
        for line in response.headers.get("set-cookie", "").split("\n"):
            if not line:
                continue
            pair, *attributes = line.split(";")
            name, _, value = pair.strip().partition("=")
            lowered = [a.strip().lower() for a in attributes]
            if "max-age=0" in lowered or any(
                a.startswith("expires=thu, 01 jan 1970") for a in lowered
            ):
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value


Scenario = Callable[[Http, int, Mapping[str, Any]], Awaitable[object]]


@dataclass(frozen=True)
class Load:
    """What to run: ``scenario(http, user_number, params)`` by ``concurrency``
    virtual users, measured for ``duration`` seconds after ``warmup``."""

    url: str
    scenario: Scenario
    params: Mapping[str, Any]
    concurrency: int
    warmup: float
    duration: float
    server_pids: tuple[int, ...]  # roots of the process trees whose CPU is read


@dataclass(frozen=True)
class Outcome:
    done: int  # iterations completed inside the window
    failed: int  # iterations failed inside the window
    failures: tuple[str, ...]  # a few distinct failure messages, from any time
    seconds: float  # the window's length
    server_cpu: float  # CPU seconds of the server's processes over the window
    hashing_cpu: float  # the part of it in hashing processes (harness.cpu_split)
    server_switches: int  # context switches of the server's threads over the window
    loadgen_cpu: float  # CPU seconds of this load generator over the window
    steps: dict[str, list[float]]  # latencies (s) of the requests ended in the window

    @property
    def rate(self) -> float:
        return self.done / self.seconds

    @property
    def server_cpu_ms_per_iteration(self) -> float:
        return self.server_cpu * 1000 / self.done if self.done else float("nan")

    @property
    def hashing_cpu_ms_per_iteration(self) -> float:
        return self.hashing_cpu * 1000 / self.done if self.done else float("nan")


def once(url: str, scenario: Scenario, params: Mapping[str, Any]) -> object:
    """One iteration in this process, before any load: what it returns (the
    token response, say), or the reason it failed."""

    async def run() -> object:
        parts = urlsplit(url)
        http = Http(parts.hostname or "127.0.0.1", parts.port or 80, lambda step, seconds: None)
        try:
            return await scenario(http, 0, params)
        finally:
            await http.close()

    return asyncio.run(run())


def run_load(load: Load) -> Outcome:
    """Run ``load`` in a fresh process (spawned, so it shares nothing with this one)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_run, load).result()


def _run(load: Load) -> Outcome:
    return asyncio.run(_drive(load))


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _drive(load: Load) -> Outcome:
    parts = urlsplit(load.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    measuring = False
    stopping = False
    done = failed = 0
    failures: dict[str, None] = {}
    steps: dict[str, list[float]] = {}

    def record(step: str, seconds: float) -> None:
        if measuring:
            steps.setdefault(step, []).append(seconds)

    async def user(number: int) -> None:
        nonlocal done, failed
        http = Http(host, port, record)
        try:
            while not stopping:
                http.cookies.clear()  # every iteration is a new browser
                try:
                    await load.scenario(http, number, load.params)
                except Exception as error:  # any failure ends this iteration only
                    failed += measuring
                    if len(failures) < 5:
                        failures[f"{type(error).__name__}: {error}"] = None
                    await http.close()
                    await asyncio.sleep(0.05)  # no hot loop against a failing server
                else:
                    done += measuring
        finally:
            await http.close()

    users = [asyncio.create_task(user(n)) for n in range(load.concurrency)]
    await asyncio.sleep(load.warmup)
    switches_before = harness.context_switches(load.server_pids)
    cpu_before, own_before = harness.cpu_split(load.server_pids), _own_cpu()
    started = time.perf_counter()
    measuring = True
    await asyncio.sleep(load.duration)
    measuring = False
    seconds = time.perf_counter() - started
    cpu_after, own_after = harness.cpu_split(load.server_pids), _own_cpu()
    switches_after = harness.context_switches(load.server_pids)
    stopping = True
    _, pending = await asyncio.wait(users, timeout=REQUEST_TIMEOUT)
    for task in pending:
        task.cancel()
    return Outcome(
        done=done,
        failed=failed,
        failures=tuple(failures),
        seconds=seconds,
        server_cpu=sum(cpu_after) - sum(cpu_before),
        hashing_cpu=cpu_after[1] - cpu_before[1],
        server_switches=switches_after - switches_before,
        loadgen_cpu=own_after - own_before,
        steps=steps,
    )
