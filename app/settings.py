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

from app.throttle import Policy

DEFAULT_DATABASE_URL = "sqlite:///./var/baton.db"

_DURATION = re.compile(r"(?P<value>\d+)(?P<unit>ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


class SettingsError(ValueError):
    """A setting has a value Baton cannot use; the message names the variable."""


def parse_duration(text: str) -> timedelta:
    """Parse ``90s``, ``10m``, ``24h``, ``1h30m`` or ``7d`` into a timedelta."""
    text = text.strip().lower()
    position, seconds = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            break
        seconds += int(match["value"]) * _UNITS[match["unit"]]
        position = match.end()
    if not text or position != len(text):
        raise ValueError(f"expected a duration such as 90s, 10m, 24h or 1h30m, got {text!r}")
    return timedelta(seconds=seconds)


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
    demo: bool = False
    log_level: str = "info"
    purge_interval: timedelta | None = timedelta(minutes=10)
    purge_age: timedelta = timedelta(hours=24)
    max_body_bytes: int = 64 * 1024
    max_connections: int = 1000
    cors_origins: tuple[str, ...] = ()
    theme_css: str | None = None
    trusted_proxies: tuple[str, ...] = ()
    audit_retention: timedelta | None = timedelta(days=90)
    session_idle_timeout: timedelta | None = timedelta(hours=8)
    throttle_user_failures: int = 5
    throttle_ip_failures: int = 20
    throttle_window: timedelta = timedelta(minutes=15)
    throttle_max_delay: timedelta = timedelta(minutes=15)

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
        login_origin = origin_of(settings.login_url) if "://" in settings.login_url else None
        if login_origin and login_origin not in settings.allowed_origins:
            raise SettingsError(
                f"BATON_LOGIN_URL is on {login_origin}, which BATON_CORS_ORIGINS must list "
                "so that the login page may call /api/v1"
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


def _duration_or_off(text: str) -> timedelta | None:
    if text.strip().lower() in {"off", "0", "false", "never"}:
        return None
    return _positive_duration(text)


def _log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in {"critical", "error", "warning", "info", "debug"}:
        raise ValueError(f"expected one of critical, error, warning, info, debug, got {text!r}")
    return level


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
    "demo": _parse_bool,
    "log_level": _log_level,
    "purge_interval": _duration_or_off,
    "purge_age": parse_duration,
    "max_body_bytes": _positive_int,
    "max_connections": _positive_int,
    "cors_origins": _origins,
    "theme_css": _readable_file,
    "trusted_proxies": _addresses,
    "audit_retention": _duration_or_off,
    "session_idle_timeout": _duration_or_off,
    "throttle_user_failures": _positive_int,
    "throttle_ip_failures": _positive_int,
    "throttle_window": _positive_duration,
    "throttle_max_delay": _positive_duration,
}
