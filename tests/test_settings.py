"""Settings from BATON_* variables: defaults, parsing, and refusals that name the variable."""

from __future__ import annotations

import re
from dataclasses import fields
from datetime import timedelta

import pytest
from argon2 import profiles

from app.db import PoolOptions
from app.passwords import Argon2Cost
from app.settings import Settings, SettingsError, format_duration, parse_duration


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.database_url == "sqlite:///./var/baton.db"
    assert settings.public_url == "http://127.0.0.1:8000"
    assert settings.secure_cookies is True
    assert settings.session_duration == timedelta(hours=24)
    assert settings.flow_ttl == timedelta(minutes=10)
    assert settings.login_url == "/login"
    assert settings.demo is False
    assert settings.hash_workers >= 1


def test_values_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "BATON_DATABASE_URL": "postgresql://baton@db:5432/baton",
            "BATON_PUBLIC_URL": "https://auth.example.com/",
            "BATON_SECURE_COOKIES": "false",
            "BATON_SESSION_DURATION": "8h",
            "BATON_FLOW_TTL": "1h30m",
            "BATON_LOGIN_URL": "https://login.example.com/signin?theme=dark",
            "BATON_CORS_ORIGINS": "https://login.example.com",
            "BATON_HASH_WORKERS": "3",
            "BATON_DEMO": "yes",
        }
    )
    assert settings.database_url == "postgresql+psycopg://baton@db:5432/baton"
    assert settings.public_url == "https://auth.example.com"
    assert settings.secure_cookies is False
    assert settings.session_duration == timedelta(hours=8)
    assert settings.flow_ttl == timedelta(minutes=90)
    assert settings.login_url == "https://login.example.com/signin?theme=dark"
    assert settings.hash_workers == 3
    assert settings.demo is True


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BATON_DATABASE_URL", "mysql://root@localhost/baton"),
        ("BATON_PUBLIC_URL", "auth.example.com"),
        ("BATON_PUBLIC_URL", "http://auth.example.com"),
        ("BATON_PUBLIC_URL", "https://auth.example.com/?x=1"),
        ("BATON_SECURE_COOKIES", "maybe"),
        ("BATON_SESSION_DURATION", "forever"),
        ("BATON_SESSION_DURATION", "0s"),
        ("BATON_FLOW_TTL", "10 minutes"),
        ("BATON_FLOW_TTL", "-5m"),
        ("BATON_LOGIN_URL", "//evil.example/login"),
        ("BATON_LOGIN_URL", "javascript:alert(1)"),
        ("BATON_LOGIN_URL", "login"),
        ("BATON_HASH_WORKERS", "0"),
        ("BATON_HASH_WORKERS", "two"),
        ("BATON_LOG_LEVEL", "chatty"),
        ("BATON_LOG_FORMAT", "yaml"),
        ("BATON_METRICS", "sometimes"),
    ],
)
def test_bad_values_name_their_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"^{variable}: "):
        Settings.from_env({variable: value})


def test_blank_values_mean_the_default() -> None:
    assert Settings.from_env({"BATON_FLOW_TTL": "  "}).flow_ttl == timedelta(minutes=10)


def test_observability_settings() -> None:
    defaults = Settings.from_env({})
    assert (defaults.log_format, defaults.metrics) == ("text", True)
    chosen = Settings.from_env({"BATON_LOG_FORMAT": " JSON ", "BATON_METRICS": "off"})
    assert (chosen.log_format, chosen.metrics) == ("json", False)
    assert Settings.from_env({"BATON_METRICS": "on"}).metrics is True


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("24h", 86400), ("1h30m", 5400), ("7d", 604800), ("250ms", 0.25)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


def test_durations_print_back() -> None:
    for text in ["90s", "10m", "5h", "7d"]:
        assert format_duration(parse_duration(text)) == text


def test_durations_go_up_to_100_years() -> None:
    assert parse_duration("36500d") == timedelta(days=36500)
    assert parse_duration("000000000000000000036500d") == timedelta(days=36500)
    assert parse_duration("36499d23h59m59s999ms") == timedelta(days=36500, milliseconds=-1)


@pytest.mark.parametrize("text", ["1\u0663s", "\uff11\uff10m", "\u0967h"])
def test_durations_are_ascii_digits(text: str) -> None:
    """``\\d`` would read Arabic-Indic or full-width digits as a number."""
    with pytest.raises(ValueError, match="expected a duration such as"):
        parse_duration(text)


@pytest.mark.parametrize(
    "text",
    ["36501d", "36500d1ms", "99999999999d", "9999999999999999999s", "9" * 5000 + "ms"],
    ids=["36501d", "36500d1ms", "past datetime", "past C int", "past int()'s digits"],
)
def test_durations_over_100_years_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"^expected a duration of at most 36500d \(100 years\)"):
        parse_duration(text)


DURATIONS = [f"BATON_{f.name.upper()}" for f in fields(Settings) if "timedelta" in str(f.type)]


@pytest.mark.parametrize("variable", DURATIONS)
@pytest.mark.parametrize("value", ["99999999999d", "9999999d"], ids=["overflow", "past 9999"])
def test_a_duration_over_100_years_names_its_variable(variable: str, value: str) -> None:
    # 9999999d parsed, and a session of it ended past year 9999: every login failed with a 500.
    with pytest.raises(SettingsError, match=f"^{variable}: expected a duration of at most 36500d"):
        Settings.from_env({variable: value})


# -- tuning: password hashing, the database pool, shutdown ------------------------


def test_tuning_defaults() -> None:
    settings = Settings.from_env({})
    # RFC 9106 §4's second recommended option, argon2-cffi's own defaults.
    low_memory = profiles.RFC_9106_LOW_MEMORY
    assert settings.argon2_cost == Argon2Cost(
        time_cost=low_memory.time_cost,
        memory_cost=low_memory.memory_cost,
        parallelism=low_memory.parallelism,
    )
    assert settings.argon2_cost == Argon2Cost(time_cost=3, memory_cost=64 * 1024, parallelism=4)
    assert settings.database_pool == PoolOptions(
        size=10,
        max_overflow=10,
        timeout=timedelta(seconds=10),
        statement_timeout=timedelta(seconds=30),
    )
    assert settings.shutdown_grace == timedelta(seconds=30)


def test_tuning_values_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "BATON_ARGON2_TIME_COST": "4",
            "BATON_ARGON2_MEMORY_COST": "128MiB",
            "BATON_ARGON2_PARALLELISM": "1",
            "BATON_DB_POOL_SIZE": "20",
            "BATON_DB_MAX_OVERFLOW": "0",
            "BATON_DB_POOL_TIMEOUT": "2s",
            "BATON_DB_STATEMENT_TIMEOUT": "1500ms",
            "BATON_SHUTDOWN_GRACE": "1m",
        }
    )
    assert settings.argon2_cost == Argon2Cost(time_cost=4, memory_cost=131072, parallelism=1)
    assert settings.database_pool == PoolOptions(
        size=20,
        max_overflow=0,
        timeout=timedelta(seconds=2),
        statement_timeout=timedelta(milliseconds=1500),
    )
    assert settings.shutdown_grace == timedelta(minutes=1)


@pytest.mark.parametrize(
    ("text", "kibibytes"),
    [
        ("19456", 19456),
        ("65536KiB", 65536),
        ("64MiB", 65536),
        ("64 mib", 65536),
        ("19MiB", 19456),
        ("1GiB", 1048576),
    ],
)
def test_argon2_memory_is_kibibytes_or_a_size(text: str, kibibytes: int) -> None:
    settings = Settings.from_env({"BATON_ARGON2_MEMORY_COST": text})
    assert settings.argon2_memory_cost == kibibytes


@pytest.mark.parametrize("text", ["off", "OFF", "0"])
def test_the_statement_timeout_can_be_off(text: str) -> None:
    assert Settings.from_env({"BATON_DB_STATEMENT_TIMEOUT": text}).db_statement_timeout is None


def test_the_statement_timeout_is_at_most_postgresql_s_limit() -> None:
    # PostgreSQL refuses a connection whose statement_timeout is over 2**31 - 1 ms (24.8 days).
    settings = Settings.from_env({"BATON_DB_STATEMENT_TIMEOUT": "24d"})
    assert settings.db_statement_timeout == timedelta(days=24)
    with pytest.raises(SettingsError, match=r"^BATON_DB_STATEMENT_TIMEOUT: expected at most 24d"):
        Settings.from_env({"BATON_DB_STATEMENT_TIMEOUT": "25d"})


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        # OWASP's minimum for argon2id is m=19 MiB, t=2, p=1.
        ("BATON_ARGON2_TIME_COST", "1", "below OWASP's minimum for argon2id, 2$"),
        ("BATON_ARGON2_TIME_COST", "0", "below OWASP's minimum"),
        ("BATON_ARGON2_TIME_COST", "three", "invalid literal"),
        ("BATON_ARGON2_TIME_COST", str(2**32), "above argon2's maximum"),
        ("BATON_ARGON2_MEMORY_COST", "19455", "below OWASP's minimum for argon2id, 19456 KiB$"),
        ("BATON_ARGON2_MEMORY_COST", "18MiB", "^BATON_ARGON2_MEMORY_COST: 18432 KiB is below"),
        ("BATON_ARGON2_MEMORY_COST", "64MB", "expected KiB or a size such as 64MiB"),
        ("BATON_ARGON2_MEMORY_COST", "-64MiB", "expected KiB or a size"),
        ("BATON_ARGON2_MEMORY_COST", "lots", "expected KiB or a size"),
        ("BATON_ARGON2_MEMORY_COST", "4096GiB", "above argon2's maximum"),
        ("BATON_ARGON2_PARALLELISM", "0", "below OWASP's minimum for argon2id, 1$"),
        ("BATON_ARGON2_PARALLELISM", "2.5", "invalid literal"),
        ("BATON_DB_POOL_SIZE", "0", "expected a positive integer"),
        ("BATON_DB_POOL_SIZE", "ten", "invalid literal"),
        ("BATON_DB_MAX_OVERFLOW", "-1", "expected zero or a positive integer"),
        ("BATON_DB_POOL_TIMEOUT", "0s", "above zero"),
        ("BATON_DB_POOL_TIMEOUT", "10", "expected a duration"),
        ("BATON_DB_STATEMENT_TIMEOUT", "forever", "expected a duration"),
        ("BATON_SHUTDOWN_GRACE", "0s", "above zero"),
        ("BATON_SHUTDOWN_GRACE", "-5s", "expected a duration"),
    ],
)
def test_bad_tuning_values_name_their_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=f"^{variable}: ") as refused:
        Settings.from_env({variable: value})
    assert re.search(message, str(refused.value))


def test_argon2_needs_8_kib_per_lane() -> None:
    # argon2's own rule (RFC 9106 §3.1: m >= 8p); only reachable far above OWASP's minimum.
    with pytest.raises(
        SettingsError, match=r"^BATON_ARGON2_MEMORY_COST: .*BATON_ARGON2_PARALLELISM"
    ):
        Settings.from_env({"BATON_ARGON2_MEMORY_COST": "19MiB", "BATON_ARGON2_PARALLELISM": "2433"})
    lanes = Settings.from_env(
        {"BATON_ARGON2_MEMORY_COST": "19MiB", "BATON_ARGON2_PARALLELISM": "2432"}
    )
    assert lanes.argon2_cost.parallelism == 2432
