"""Prometheus metrics: HTTP traffic, logins, pending flows and password hashing.

Each app has its own ``CollectorRegistry`` (tests build many apps in one
process). Under ``baton serve --workers N`` the workers share one port, so a
scrape reaches one of them at random: set ``PROMETHEUS_MULTIPROC_DIR`` and
prometheus_client keeps every worker's values in files there, which
``/metrics`` adds up (see the README).
"""

from __future__ import annotations

import os
import time
from typing import Any, Literal, get_args

from anyio import to_thread
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LoginOutcome = Literal[
    "success", "invalid_credentials", "throttled", "flow_not_found", "overloaded"
]
LOGIN_OUTCOMES: tuple[LoginOutcome, ...] = get_args(LoginOutcome)

# Every path that matches no route is counted under this one label value, and
# every unusual method under "other": label values stay a bounded set.
UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# prometheus_client chooses its storage when it is imported, from
# PROMETHEUS_MULTIPROC_DIR in the environment; Baton follows that choice.
MULTIPROCESS = values.ValueClass is not values.MutexValue

# A hash takes tens of milliseconds (argon2id) to a few hundred (bcrypt);
# a wait is bounded by BATON_HASH_WAIT (10 s by default).
_HASHING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The counters Baton keeps, with one method per event."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self._requests = Counter(
            "baton_http_requests",
            "HTTP requests answered, by route template (unmatched for unknown paths).",
            ["route", "method", "status"],
            registry=registry,
        )
        self._durations = Histogram(
            "baton_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template.",
            ["route", "method"],
            registry=registry,
        )
        self._logins = Counter(
            "baton_logins",
            "Well-formed POST /api/v1/login attempts, by outcome; invalid_credentials "
            "covers unknown users, wrong passwords and disabled users alike.",
            ["outcome"],
            registry=registry,
        )
        for outcome in LOGIN_OUTCOMES:
            self._logins.labels(outcome)
        self._flows_created = Counter(
            "baton_flows_created",
            "Pending flows created by /oauth2/authorize: browsers sent to the login page "
            "or to the consent page.",
            registry=registry,
        )
        self._flows_consumed = Counter(
            "baton_flows_consumed",
            "Login flows consumed by a successful POST /api/v1/login (a retried login that "
            "gets the same answer again is not counted again).",
            registry=registry,
        )
        self._flows_purged = Counter(
            "baton_flows_purged",
            "Finished flows (expired, consumed or revoked) deleted by this server's scheduled "
            "purge; `baton flows purge` is not counted. Expiry itself is not an event.",
            registry=registry,
        )
        self._hashing_queue = Gauge(
            "baton_hashing_queue_depth",
            "Password checks waiting for a hashing slot.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._hashing_wait = Histogram(
            "baton_hashing_wait_seconds",
            "Time spent waiting for a hashing slot, including waits that timed out (503).",
            registry=registry,
            buckets=_WAIT_BUCKETS,
        )
        self._hashing = Histogram(
            "baton_hashing_seconds",
            "Time to hash or verify one password.",
            registry=registry,
            buckets=_HASHING_BUCKETS,
        )

    # -- events ------------------------------------------------------------

    def request(self, *, route: str, method: str, status: int, seconds: float) -> None:
        self._requests.labels(route, method, str(status)).inc()
        self._durations.labels(route, method).observe(seconds)

    def login(self, outcome: LoginOutcome) -> None:
        self._logins.labels(outcome).inc()

    def flow_created(self) -> None:
        self._flows_created.inc()

    def flow_consumed(self) -> None:
        self._flows_consumed.inc()

    def flows_purged(self, count: int) -> None:
        self._flows_purged.inc(count)

    # -- app.passwords.HashingObserver ---------------------------------------

    def waiting(self, change: int) -> None:
        self._hashing_queue.inc(change)

    def waited(self, seconds: float) -> None:
        self._hashing_wait.observe(seconds)

    def hashed(self, seconds: float) -> None:
        self._hashing.observe(seconds)

    # -- exposition ------------------------------------------------------------

    def render(self) -> bytes:
        if MULTIPROCESS:
            # Every worker's values, read from PROMETHEUS_MULTIPROC_DIR.
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)

    def close(self) -> None:
        """At shutdown: a stopped worker's queue depth no longer counts."""
        if MULTIPROCESS:
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def route(metrics: Metrics) -> Route:
    """``GET /metrics``, the Prometheus text exposition."""

    async def scrape(request: Request) -> Response:
        body = await to_thread.run_sync(metrics.render)
        return Response(body, media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})

    return Route("/metrics", scrape, methods=["GET"])


def route_template(scope: Scope) -> str:
    """The path template of the route that will answer (``/oauth2/authorize``,
    ``/static``), chosen as Starlette's router chooses; never the raw path."""
    routes: list[BaseRoute] = getattr(scope.get("app"), "routes", [])
    partial = None
    for candidate in routes:
        match, _ = candidate.matches(scope)
        if match is Match.FULL:
            return _path_of(candidate)
        if match is Match.PARTIAL and partial is None:
            partial = candidate  # the path matches, the method does not (405)
    return UNMATCHED if partial is None else _path_of(partial)


def _path_of(candidate: BaseRoute) -> str:
    path: Any = getattr(candidate, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


class MetricsMiddleware:
    """Counts and times every HTTP request by route template, method and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"] if scope["method"] in _METHODS else "other"
        started = time.perf_counter()
        status = 500  # what the server answers when the app raises

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            # Starlette's router leaves the route it chose in the scope; a
            # request answered before routing is matched here instead.
            route = scope.get("route")
            self.metrics.request(
                route=route_template(scope) if route is None else _path_of(route),
                method=method,
                status=status,
                seconds=time.perf_counter() - started,
            )
