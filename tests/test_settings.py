"""Settings from BATON_* variables: defaults, parsing, and refusals that name the variable."""

from __future__ import annotations

from datetime import timedelta

import pytest

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
    ],
)
def test_bad_values_name_their_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"^{variable}: "):
        Settings.from_env({variable: value})


def test_blank_values_mean_the_default() -> None:
    assert Settings.from_env({"BATON_FLOW_TTL": "  "}).flow_ttl == timedelta(minutes=10)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("24h", 86400), ("1h30m", 5400), ("7d", 604800), ("250ms", 0.25)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


def test_durations_print_back() -> None:
    for text in ["90s", "10m", "5h", "7d"]:
        assert format_duration(parse_duration(text)) == text
