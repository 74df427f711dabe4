"""Settings, read once from ``BATON_*`` environment variables.

Every value is parsed and checked here, so a bad setting stops start-up with a
message that names the variable instead of failing later on a request.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from ipaddress import ip_address, ip_network
from urllib.parse import urlsplit

from app.db import PoolOptions
from app.passwords import DEFAULT_COST, OWASP_MINIMUM, Argon2Cost
from app.throttle import Policy

DEFAULT_DATABASE_URL = "sqlite:///./var/baton.db"

_DURATION = re.compile(r"(?P<value>[0-9]+)(?P<unit>ms|s|m|h|d)")  # not \d: "1٣s" is no duration
_MILLISECONDS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
# Longer than anything Baton should wait or keep: past it, a time that far from
# now may be no date at all (a 9999999d session would end after year 9999).
MAX_DURATION = timedelta(days=36500)
_MAX_MILLISECONDS = MAX_DURATION // timedelta(milliseconds=1)
_MAX_DIGITS = len(str(_MAX_MILLISECONDS))


class SettingsError(ValueError):
    """A setting has a value Baton cannot use; the message names the variable."""


def parse_duration(text: str) -> timedelta:
    """Parse ``90s``, ``10m``, ``24h``, ``1h30m`` or ``7d`` (at most 36500d) into a timedelta."""
    text = text.strip().lower()
    position, parts = 0, []
    for match in _DURATION.finditer(text):
        if match.start() != position:
            break
        parts.append((match["value"].lstrip("0") or "0", match["unit"]))
        position = match.end()
    if not text or position != len(text):
        raise ValueError(f"expected a duration such as 90s, 10m, 24h or 1h30m, got {text!r}")
    # More digits than the maximum has milliseconds is over it in any unit;
    # such a number is not given to int(), which refuses over 4300 digits.
    milliseconds = sum(
        int(digits) * _MILLISECONDS[unit] if len(digits) <= _MAX_DIGITS else _MAX_MILLISECONDS + 1
        for digits, unit in parts
    )
    if milliseconds > _MAX_MILLISECONDS:
        raise ValueError(f"expected a duration of at most 36500d (100 years), got {text!r}")
    return timedelta(milliseconds=milliseconds)


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ip_address(host).is_loopback
    except ValueError:
        return False


def normalise_database_url(url: str) -> str:
    """Accept a plain ``postgresql://`` URL and use psycopg 3 for it."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def database_url(text: str) -> str:
    url = normalise_database_url(text.strip())
    if not url.startswith(("sqlite://", "postgresql+psycopg://")):
        raise ValueError(f"expected a sqlite:/// or postgresql:// URL, got {text!r}")
    return url


def _public_url(text: str) -> str:
    url = text.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"expected an absolute http(s) URL, got {text!r}")
    if parts.query or parts.fragment:
        raise ValueError("must not contain a query or a fragment")
    # OAuth 2.1 §1.5: TLS everywhere, except loopback during development.
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError("must use https unless the host is loopback (localhost, 127.0.0.1)")
    return url


def _login_url(text: str) -> str:
    url = text.strip()
    parts = urlsplit(url)
    if parts.scheme:
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"expected a path such as /login or an http(s) URL, got {text!r}")
    elif not url.startswith("/") or url.startswith("//"):
        raise ValueError(f"expected a path such as /login or an http(s) URL, got {text!r}")
    if parts.fragment:
        raise ValueError("must not contain a fragment")
    return url


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _origins(text: str) -> tuple[str, ...]:
    """Exact origins (``https://login.example.com``), comma- or space-separated.
    No wildcard: these origins may call the API with the user's cookies."""
    found = []
    for item in text.replace(",", " ").split():
        parts = urlsplit(item)
        if item == "*" or "*" in item:
            raise ValueError("wildcards are not allowed: list exact origins")
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError(f"expected an origin such as https://login.example.com, got {item!r}")
        if parts.path not in {"", "/"} or parts.query or parts.fragment:
            raise ValueError(f"an origin has no path, query or fragment: {item!r}")
        found.append(origin_of(item))
    return tuple(dict.fromkeys(found))


def _addresses(text: str) -> tuple[str, ...]:
    """IP addresses or networks of reverse proxies whose X-Forwarded-For is trusted."""
    found = []
    for item in text.replace(",", " ").split():
        try:
            ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"expected IP addresses or networks, got {item!r}") from None
        found.append(item)
    return tuple(found)


def _readable_file(text: str) -> str:
    path = os.path.expanduser(text.strip())
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ValueError(f"no readable file at {text!r}")
    return path


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"expected a positive integer, got {text!r}")
    return value


def _positive_duration(text: str) -> timedelta:
    value = parse_duration(text)
    if value <= timedelta(0):
        raise ValueError(f"expected a duration above zero, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"expected zero or a positive integer, got {text!r}")
    return value


_KIBIBYTES = re.compile(r"(?P<value>\d+)\s*(?P<unit>kib|mib|gib)?")
_KIB_PER_UNIT = {None: 1, "kib": 1, "mib": 1024, "gib": 1024 * 1024}


def _argon2_within(value: int, minimum: int, maximum: int, unit: str = "") -> int:
    # The minimum is OWASP's for argon2id (m=19 MiB, t=2, p=1); the maximum, RFC 9106 §3.1's.
    if value < minimum:
        raise ValueError(f"{value}{unit} is below OWASP's minimum for argon2id, {minimum}{unit}")
    if value > maximum:
        raise ValueError(f"{value}{unit} is above argon2's maximum, {maximum}{unit}")
    return value


def _argon2_time_cost(text: str) -> int:
    return _argon2_within(int(text), OWASP_MINIMUM.time_cost, 2**32 - 1)


def _argon2_memory_cost(text: str) -> int:
    """KiB, as argon2 counts memory: ``65536``, ``65536KiB``, ``64MiB`` or ``1GiB``."""
    match = _KIBIBYTES.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"expected KiB or a size such as 64MiB or 1GiB, got {text!r}")
    value = int(match["value"]) * _KIB_PER_UNIT[match["unit"]]
    return _argon2_within(value, OWASP_MINIMUM.memory_cost, 2**32 - 1, " KiB")


def _argon2_parallelism(text: str) -> int:
    return _argon2_within(int(text), OWASP_MINIMUM.parallelism, 2**24 - 1)


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    public_url: str = "http://127.0.0.1:8000"
    secure_cookies: bool = True
    session_duration: timedelta = timedelta(hours=24)
    flow_ttl: timedelta = timedelta(minutes=10)
    login_url: str = "/login"
    code_ttl: timedelta = timedelta(minutes=1)
    access_token_ttl: timedelta = timedelta(hours=1)
    hash_workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    hash_wait: timedelta = timedelta(seconds=10)
    # Hashes in processes of their own (see ``HashingPool``); false: threads.
    hash_processes: bool = True
    demo: bool = False
    log_level: str = "info"
    log_format: str = "text"
    metrics: bool = True
    purge_interval: timedelta | None = timedelta(minutes=10)
    purge_age: timedelta = timedelta(hours=24)
    max_body_bytes: int = 64 * 1024
    max_connections: int = 1000
    reuse_port: bool = False
    cors_origins: tuple[str, ...] = ()
    theme_css: str | None = None
    trusted_proxies: tuple[str, ...] = ()
    audit_retention: timedelta | None = timedelta(days=90)
    session_idle_timeout: timedelta | None = timedelta(hours=8)
    throttle_user_failures: int = 5
    throttle_ip_failures: int = 20
    throttle_window: timedelta = timedelta(minutes=15)
    throttle_max_delay: timedelta = timedelta(minutes=15)
    argon2_time_cost: int = DEFAULT_COST.time_cost
    argon2_memory_cost: int = DEFAULT_COST.memory_cost  # KiB
    argon2_parallelism: int = DEFAULT_COST.parallelism
    db_pool_size: int = 10
    db_max_overflow: int = 10
    db_pool_timeout: timedelta = timedelta(seconds=10)
    db_statement_timeout: timedelta | None = timedelta(seconds=30)
    shutdown_grace: timedelta = timedelta(seconds=30)
    consent_url: str = "/consent"
    grant_lifetime: timedelta = timedelta(hours=2160)
    refresh_token_ttl: timedelta = timedelta(days=30)
    id_token_ttl: timedelta = timedelta(hours=1)
    signing_alg: str = "RS256"
    dcr: bool = False
    unauthenticated_introspection: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name, parse in _PARSERS.items():
            variable = "BATON_" + name.upper()
            raw = env.get(variable)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[name] = parse(raw)
            except ValueError as error:
                raise SettingsError(f"{variable}: {error}") from None
        settings = cls(**values)  # type: ignore[arg-type]
        for name, url in (("LOGIN_URL", settings.login_url), ("CONSENT_URL", settings.consent_url)):
            origin = origin_of(url) if "://" in url else None
            if origin and origin not in settings.allowed_origins:
                raise SettingsError(
                    f"BATON_{name} is on {origin}, which BATON_CORS_ORIGINS must list "
                    "so that the page may call /api/v1"
                )
        if settings.argon2_memory_cost < 8 * settings.argon2_parallelism:
            raise SettingsError(
                "BATON_ARGON2_MEMORY_COST: argon2 needs at least 8 KiB for each lane of "
                "BATON_ARGON2_PARALLELISM"
            )
        return settings

    @property
    def allowed_origins(self) -> frozenset[str]:
        """Origins whose browsers may change state through /api/v1."""
        return frozenset({origin_of(self.public_url), *self.cors_origins})

    @property
    def throttle(self) -> Policy:
        return Policy(
            user_failures=self.throttle_user_failures,
            ip_failures=self.throttle_ip_failures,
            window=self.throttle_window,
            max_delay=self.throttle_max_delay,
        )

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def argon2_cost(self) -> Argon2Cost:
        return Argon2Cost(
            time_cost=self.argon2_time_cost,
            memory_cost=self.argon2_memory_cost,
            parallelism=self.argon2_parallelism,
        )

    @property
    def database_pool(self) -> PoolOptions:
        """The server's PostgreSQL pool; SQLite keeps its own setup."""
        return PoolOptions(
            size=self.db_pool_size,
            max_overflow=self.db_max_overflow,
            timeout=self.db_pool_timeout,
            statement_timeout=self.db_statement_timeout,
        )


def _duration_or_off(text: str) -> timedelta | None:
    if text.strip().lower() in {"off", "0", "false", "never"}:
        return None
    return _positive_duration(text)


# PostgreSQL's statement_timeout is at most 2**31 - 1 milliseconds (24.8 days);
# a longer one would make it refuse every connection.
_MAX_STATEMENT_TIMEOUT = timedelta(days=24)


def _statement_timeout(text: str) -> timedelta | None:
    value = _duration_or_off(text)
    if value is not None and value > _MAX_STATEMENT_TIMEOUT:
        raise ValueError(f"expected at most 24d (PostgreSQL's limit) or off, got {text!r}")
    return value


def _log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in {"critical", "error", "warning", "info", "debug"}:
        raise ValueError(f"expected one of critical, error, warning, info, debug, got {text!r}")
    return level


def _log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in {"text", "json"}:
        raise ValueError(f"expected text or json, got {text!r}")
    return value


SIGNING_ALGORITHMS = ("RS256", "ES256")


def _signing_alg(text: str) -> str:
    alg = text.strip().upper()
    if alg not in SIGNING_ALGORITHMS:
        raise ValueError(f"expected one of {', '.join(SIGNING_ALGORITHMS)}, got {text!r}")
    return alg


_PARSERS = {
    "database_url": database_url,
    "public_url": _public_url,
    "secure_cookies": _parse_bool,
    "session_duration": _positive_duration,
    "flow_ttl": _positive_duration,
    "login_url": _login_url,
    "code_ttl": _positive_duration,
    "access_token_ttl": _positive_duration,
    "hash_workers": _positive_int,
    "hash_wait": _positive_duration,
    "hash_processes": _parse_bool,
    "demo": _parse_bool,
    "log_level": _log_level,
    "log_format": _log_format,
    "metrics": _parse_bool,
    "purge_interval": _duration_or_off,
    "purge_age": parse_duration,
    "max_body_bytes": _positive_int,
    "max_connections": _positive_int,
    "reuse_port": _parse_bool,
    "cors_origins": _origins,
    "theme_css": _readable_file,
    "trusted_proxies": _addresses,
    "audit_retention": _duration_or_off,
    "session_idle_timeout": _duration_or_off,
    "throttle_user_failures": _positive_int,
    "throttle_ip_failures": _positive_int,
    "throttle_window": _positive_duration,
    "throttle_max_delay": _positive_duration,
    "argon2_time_cost": _argon2_time_cost,
    "argon2_memory_cost": _argon2_memory_cost,
    "argon2_parallelism": _argon2_parallelism,
    "db_pool_size": _positive_int,
    "db_max_overflow": _non_negative_int,
    "db_pool_timeout": _positive_duration,
    "db_statement_timeout": _statement_timeout,
    "shutdown_grace": _positive_duration,
    "consent_url": _login_url,
    "grant_lifetime": _positive_duration,
    "refresh_token_ttl": _positive_duration,
    "id_token_ttl": _positive_duration,
    "signing_alg": _signing_alg,
    "dcr": _parse_bool,
    "unauthenticated_introspection": _parse_bool,
}
