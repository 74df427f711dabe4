"""The ``baton`` admin command, on SQLite and on PostgreSQL, through click's CliRunner."""

from __future__ import annotations

import io
import json
import os
import re
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

import bcrypt
import click
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from app import clients, users
from app.cli import main
from app.cli._base import read_password
from app.db import Database, utcnow
from app.models import Client
from app.oauth.clients import OAuthClient
from app.passwords import verify_password

PASSWORD = "correct horse battery staple"
UNREACHABLE_URL = "postgresql://postgres@127.0.0.1:1/nope"
BOOTSTRAP_LINE = re.compile(r"^created user '([^']+)' with password '([^']+)' \(shown only once\)$")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from BATON_* variables; none of the caller's may leak in."""
    for name in list(os.environ):
        if name.startswith("BATON_") and not name.startswith("BATON_TEST_"):
            monkeypatch.delenv(name)


def baton(
    url: str | None, *args: str, stdin: str | bytes | None = None, exit_code: int | set[int] = 0
) -> Result:
    """Run ``baton [--database-url URL] ARGS`` and check how it exited.

    An exception other than SystemExit is a crash (a traceback for the operator),
    never an acceptable way to exit 1.
    """
    expected = exit_code if isinstance(exit_code, set) else {exit_code}
    argv = ["--database-url", url, *args] if url else list(args)
    result = CliRunner().invoke(main, argv, input=stdin)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        assert result.exc_info is not None
        crash = "".join(traceback.format_exception(*result.exc_info))
        pytest.fail(f"baton {' '.join(argv)} crashed:\n{crash}")
    assert result.exit_code in expected, (
        f"baton {' '.join(argv)} exited {result.exit_code}, expected {exit_code}:\n{result.output}"
    )
    return result


def error_of(result: Result) -> str:
    """The single line a failed command printed to stderr."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def add_user(url: str, name: str = "alice", password: str = PASSWORD) -> Result:
    return baton(url, "users", "add", name, "--password-stdin", stdin=password + "\n")


def password_works(database: Database, username: str, password: str) -> bool:
    with database.transaction() as db:
        user = users.get_by_username(db=db, username=username)
        assert user is not None, f"no user {username!r} in the database"
        return verify_password(user.password_hash, password).ok


def stored_hash(database: Database, username: str) -> str:
    with database.transaction() as db:
        user = users.get_by_username(db=db, username=username)
        assert user is not None
        return user.password_hash


def list_json(url: str, group: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(baton(url, group, "list", "--json").stdout)
    return rows


def table(result: Result) -> list[list[str]]:
    """The cells of a printed table (columns are separated by two spaces or more)."""
    return [re.split(r"\s{2,}", line.strip()) for line in result.stdout.splitlines()]


def add_client(url: str, *args: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(
        baton(url, "clients", "add", "--name", "App", *args, "--json").stdout
    )
    return document


def stored_client(database: Database, client_id: str) -> Client | None:
    with database.transaction() as db:
        return clients.get(db=db, client_id=client_id)


# -- help and usage -------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["db"],
        ["users"],
        ["clients"],
        ["serve"],
        ["bootstrap"],
        ["db", "upgrade"],
        ["users", "add"],
        ["users", "list"],
        ["users", "passwd"],
        ["users", "disable"],
        ["clients", "add"],
        ["clients", "list"],
        ["clients", "remove"],
    ],
    ids=lambda command: " ".join(command) or "baton",
)
def test_help_exits_zero(command: list[str]) -> None:
    result = baton(None, *command, "--help")
    assert result.stdout.startswith("Usage: ")
    assert " ".join(["main", *command]) in result.stdout.splitlines()[0]


@pytest.mark.parametrize(
    "command",
    [
        ["users", "add", "bob", "--password", "hunter2"],
        ["users", "passwd", "bob", "--password", "hunter2"],
        ["users", "add", "bob", "hunter2"],
        ["users", "passwd", "bob", "hunter2"],
    ],
    ids=["add --password", "passwd --password", "add positional", "passwd positional"],
)
def test_passwords_are_never_accepted_on_argv(database_url: str, command: list[str]) -> None:
    add_user(database_url, "bob")
    result = baton(database_url, *command, exit_code=2)
    assert result.stdout == ""
    assert [u["username"] for u in list_json(database_url, "users")] == ["bob"]


def test_missing_required_option_is_a_usage_error(database_url: str) -> None:
    result = baton(database_url, "clients", "add", "--name", "App", exit_code=2)
    assert "--redirect-uri" in result.stderr
    assert list_json(database_url, "clients") == []


# -- users ----------------------------------------------------------------------


def test_users_add_reads_the_password_from_stdin(database_url: str, database: Database) -> None:
    result = add_user(database_url, "alice", "  spaces inside and around  ")
    assert result.stdout == "created user alice\n"
    assert password_works(database, "alice", "  spaces inside and around  ")
    assert not password_works(database, "alice", "spaces inside and around")
    assert stored_hash(database, "alice").startswith("$argon2id$")


def test_users_add_strips_a_windows_line_ending(database_url: str, database: Database) -> None:
    baton(database_url, "users", "add", "alice", "--password-stdin", stdin=PASSWORD + "\r\n")
    assert password_works(database, "alice", PASSWORD)


def test_users_add_refuses_a_duplicate(database_url: str, database: Database) -> None:
    add_user(database_url, "alice", PASSWORD)
    result = baton(
        database_url, "users", "add", "alice", "--password-stdin", stdin="other\n", exit_code=1
    )
    assert error_of(result) == "Error: user 'alice' already exists"
    assert password_works(database, "alice", PASSWORD)
    assert not password_works(database, "alice", "other")


@pytest.mark.parametrize("stdin", ["", "\n", "\r\n"], ids=["eof", "newline", "crlf"])
def test_users_add_refuses_an_empty_password(database_url: str, stdin: str) -> None:
    result = baton(
        database_url, "users", "add", "alice", "--password-stdin", stdin=stdin, exit_code=1
    )
    assert error_of(result) == "Error: the password must not be empty"
    assert list_json(database_url, "users") == []


def test_users_add_refuses_a_password_over_1024_characters(database_url: str) -> None:
    result = baton(
        database_url,
        "users",
        "add",
        "alice",
        "--password-stdin",
        stdin="x" * 1025 + "\n",
        exit_code=1,
    )
    assert "at most 1024" in error_of(result)
    assert list_json(database_url, "users") == []


@pytest.mark.parametrize("name", [" ", "x" * 256], ids=["blank", "too long"])
def test_users_add_refuses_a_bad_name(database_url: str, name: str) -> None:
    result = baton(
        database_url, "users", "add", name, "--password-stdin", stdin=PASSWORD + "\n", exit_code=1
    )
    assert "1 to 255 characters" in error_of(result)
    assert list_json(database_url, "users") == []


UNPRINTABLE_NAMES = {
    "newline": "bob\nx",
    "carriage return": "bob\rx",
    "escape": "\x1b[31mred",
    "tab": "tab\there",
    "NUL": "nul\x00",
    "C1 NEL": "c1\x85",
    "bidi override": "\u202eevil",
    "zero width": "zero\u200bwidth",
    "line separator": "line\u2028x",
}


@pytest.mark.parametrize("name", UNPRINTABLE_NAMES.values(), ids=UNPRINTABLE_NAMES.keys())
def test_users_add_refuses_control_characters(database_url: str, name: str) -> None:
    # "bob\nx" printed as two lines of `users list`; the login API has no such user to find.
    result = baton(
        database_url, "users", "add", name, "--password-stdin", stdin=PASSWORD + "\n", exit_code=1
    )
    assert error_of(result) == "Error: the user name must not contain control characters"
    assert list_json(database_url, "users") == []


def test_users_add_takes_any_printable_name(database_url: str) -> None:
    for name in ["Zoë Ünal", "李 小龍", "o'brien@example.com", "\u00a0nbsp"]:
        add_user(database_url, name)
    names = [row["username"] for row in list_json(database_url, "users")]
    assert sorted(names) == sorted(["Zoë Ünal", "李 小龍", "o'brien@example.com", "\u00a0nbsp"])


def test_users_list_json(database_url: str, database: Database) -> None:
    add_user(database_url, "bob")
    add_user(database_url, "alice")
    result = baton(database_url, "users", "list", "--json")
    rows = json.loads(result.stdout)
    assert [row["username"] for row in rows] == ["alice", "bob"]
    for row in rows:
        assert set(row) == {
            "username",
            "disabled",
            "created_at",
            "password_changed_at",
            "password_hash_scheme",
        }
        assert row["disabled"] is False
        assert row["password_hash_scheme"] == "argon2id"
        assert datetime.fromisoformat(row["created_at"]).utcoffset() is not None
    for name in ("alice", "bob"):
        assert stored_hash(database, name) not in result.output
    assert "$argon2" not in result.output


def test_users_list_table(database_url: str, database: Database) -> None:
    add_user(database_url, "bob")
    add_user(database_url, "alice")
    baton(database_url, "users", "disable", "bob")
    result = baton(database_url, "users", "list")
    header, *rows = table(result)
    assert header == ["USERNAME", "STATUS", "CREATED", "HASH"]
    assert [row[:2] for row in rows] == [["alice", "active"], ["bob", "disabled"]]
    assert [row[3] for row in rows] == ["argon2id", "argon2id"]
    for row in rows:
        assert datetime.fromisoformat(row[2]).utcoffset() is not None
    assert stored_hash(database, "alice") not in result.output
    assert "$argon2" not in result.output


def test_users_list_of_an_empty_database(database_url: str) -> None:
    assert table(baton(database_url, "users", "list")) == [
        ["USERNAME", "STATUS", "CREATED", "HASH"],
        ["(none)"],
    ]
    assert baton(database_url, "users", "list", "--json").stdout.strip() == "[]"


@pytest.mark.parametrize(
    "password_hash",
    ["plain-text-from-an-old-system", bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()],
    ids=["unsupported", "bcrypt"],
)
def test_users_list_survives_an_imported_hash(
    database_url: str, database: Database, password_hash: str
) -> None:
    # Imported users may carry hashes Baton cannot verify (see passwords.is_supported_hash);
    # listing them must still work, and must not print the hash.
    with database.transaction() as db:
        users.create(db=db, username="legacy", password_hash=password_hash, now=utcnow())
    add_user(database_url, "alice")
    for args in (["users", "list"], ["users", "list", "--json"]):
        result = baton(database_url, *args)
        assert "legacy" in result.stdout
        assert "alice" in result.stdout
        assert password_hash not in result.output


def test_users_passwd_replaces_the_password(database_url: str, database: Database) -> None:
    add_user(database_url, "alice", "old password")
    result = baton(
        database_url, "users", "passwd", "alice", "--password-stdin", stdin="new password\n"
    )
    assert result.stdout == "changed the password of alice; ended 0 session(s)\n"
    assert password_works(database, "alice", "new password")
    assert not password_works(database, "alice", "old password")


def test_users_passwd_of_an_unknown_user(database_url: str, database: Database) -> None:
    add_user(database_url, "alice")
    result = baton(
        database_url, "users", "passwd", "ghost", "--password-stdin", stdin="new\n", exit_code=1
    )
    assert error_of(result) == "Error: no user named 'ghost'"
    assert password_works(database, "alice", PASSWORD)


def test_users_passwd_refuses_an_empty_password(database_url: str, database: Database) -> None:
    add_user(database_url, "alice")
    result = baton(
        database_url, "users", "passwd", "alice", "--password-stdin", stdin="\n", exit_code=1
    )
    assert error_of(result) == "Error: the password must not be empty"
    assert password_works(database, "alice", PASSWORD)


def test_users_disable(database_url: str) -> None:
    add_user(database_url, "alice")
    add_user(database_url, "bob")
    disabling = baton(database_url, "users", "disable", "alice")
    assert disabling.stdout == "disabled user alice; ended 0 session(s)\n"
    disabled = {row["username"]: row["disabled"] for row in list_json(database_url, "users")}
    assert disabled == {"alice": True, "bob": False}


def test_users_disable_of_an_unknown_user(database_url: str) -> None:
    add_user(database_url, "alice")
    result = baton(database_url, "users", "disable", "ghost", exit_code=1)
    assert error_of(result) == "Error: no user named 'ghost'"
    assert [row["disabled"] for row in list_json(database_url, "users")] == [False]


# -- bootstrap ------------------------------------------------------------------


def bootstrap_password(result: Result, username: str = "admin") -> str:
    match = BOOTSTRAP_LINE.match(result.stdout.strip())
    assert match, result.stdout
    assert match[1] == username
    return match[2]


def test_bootstrap_creates_an_admin_once(database_url: str, database: Database) -> None:
    password = bootstrap_password(baton(database_url, "bootstrap"))
    assert len(password) >= 16
    assert password_works(database, "admin", password)
    first_hash = stored_hash(database, "admin")

    again = baton(database_url, "bootstrap")
    assert again.stdout == "users exist already; nothing to do\n"
    assert [row["username"] for row in list_json(database_url, "users")] == ["admin"]
    assert stored_hash(database, "admin") == first_hash


def test_bootstrap_with_another_username(database_url: str, database: Database) -> None:
    password = bootstrap_password(baton(database_url, "bootstrap", "--username", "root"), "root")
    assert password_works(database, "root", password)


def test_bootstrap_does_nothing_when_a_user_exists(database_url: str) -> None:
    add_user(database_url, "alice")
    assert baton(database_url, "bootstrap").stdout == "users exist already; nothing to do\n"
    assert [row["username"] for row in list_json(database_url, "users")] == ["alice"]


@pytest.mark.parametrize("username", ["", "admin\nroot"], ids=["empty", "newline"])
def test_bootstrap_refuses_a_bad_username(database_url: str, username: str) -> None:
    result = baton(database_url, "bootstrap", "--username", username, exit_code=1)
    assert error_of(result).startswith("Error: the user name must ")
    assert list_json(database_url, "users") == []


def test_bootstrap_passwords_differ(tmp_path: Path) -> None:
    passwords = set()
    for n in range(2):
        url = f"sqlite:///{tmp_path / f'{n}.db'}"
        baton(url, "db", "upgrade")
        passwords.add(bootstrap_password(baton(url, "bootstrap")))
    assert len(passwords) == 2


# -- clients --------------------------------------------------------------------


def test_clients_add_public(database_url: str, database: Database) -> None:
    document = add_client(database_url, "--public", "--redirect-uri", "https://app.example/cb")
    assert set(document) == {"client_id", "client_secret"}
    assert document["client_secret"] is None
    row = stored_client(database, document["client_id"])
    assert row is not None
    assert row.public is True
    assert row.secret_hash is None
    assert row.redirect_uris == ["https://app.example/cb"]
    assert row.provenance == "cli"


def test_clients_add_public_table_prints_no_secret(database_url: str) -> None:
    result = baton(
        database_url, "clients", "add", "--name", "App", "--public",
        "--redirect-uri", "https://app.example/cb",
    )  # fmt: skip
    [client_id] = [row["client_id"] for row in list_json(database_url, "clients")]
    assert result.stdout == f"client_id:     {client_id}\n"


def assert_secret_is_stored_hashed(database: Database, client_id: str, secret: str) -> None:
    row = stored_client(database, client_id)
    assert row is not None
    assert row.public is False
    assert OAuthClient(row).check_client_secret(secret)
    assert not OAuthClient(row).check_client_secret(secret + "x")
    with database.transaction() as db:
        raw = db.execute(select(Client.__table__)).one()
    assert all(secret not in str(value) for value in raw), raw


def test_clients_add_confidential_json(database_url: str, database: Database) -> None:
    document = add_client(database_url, "--redirect-uri", "https://app.example/cb")
    secret = document["client_secret"]
    assert isinstance(secret, str)
    assert len(secret) >= 32
    assert_secret_is_stored_hashed(database, document["client_id"], secret)


def test_clients_add_confidential_table_shows_the_secret_once(
    database_url: str, database: Database
) -> None:
    result = baton(
        database_url, "clients", "add", "--name", "App", "--redirect-uri", "https://app.example/cb"
    )
    match = re.fullmatch(
        r"client_id:     (\S+)\nclient_secret: (\S+)  \(shown only once\)\n", result.stdout
    )
    assert match, result.stdout
    client_id, secret = match[1], match[2]
    assert_secret_is_stored_hashed(database, client_id, secret)
    assert secret not in baton(database_url, "clients", "list").output
    assert secret not in baton(database_url, "clients", "list", "--json").output


def test_clients_add_two_confidential_clients_get_different_secrets(database_url: str) -> None:
    first = add_client(database_url, "--redirect-uri", "https://app.example/cb")
    second = add_client(database_url, "--redirect-uri", "https://app.example/cb")
    assert first["client_id"] != second["client_id"]
    assert first["client_secret"] != second["client_secret"]


def test_clients_add_several_redirect_uris(database_url: str) -> None:
    uris = [
        "https://app.example/callback",
        "http://127.0.0.1:33418/callback",
        "http://localhost/callback",
        "com.example.app:/oauth2redirect",
    ]
    arguments = [part for uri in uris for part in ("--redirect-uri", uri)]
    add_client(database_url, "--public", *arguments, "--redirect-uri", uris[0])
    [row] = list_json(database_url, "clients")
    assert row["redirect_uris"] == uris


@pytest.mark.parametrize(
    "uri",
    [
        "http://app.example/callback",
        "https://app.example/callback#fragment",
        "/callback",
        "app.example/callback",
        "javascript:alert(1)",
        "https://[::1/cb",
        "https://app.example/\x01",
        "https://app.example/cb\nhttps://evil.example/cb",
        "https://app.example/\u202ebc",
    ],
    ids=[
        "http non-loopback", "fragment", "relative path", "no scheme", "javascript",
        "unclosed IPv6 literal", "control character", "newline", "bidi override",
    ],
)  # fmt: skip
def test_clients_add_refuses_an_invalid_redirect_uri(database_url: str, uri: str) -> None:
    result = baton(
        database_url,
        "clients", "add", "--name", "App", "--public",
        "--redirect-uri", "https://app.example/ok",
        "--redirect-uri", uri,
        exit_code=1,
    )  # fmt: skip
    assert error_of(result).startswith(f"Error: redirect URI {uri!r} ")
    assert list_json(database_url, "clients") == []


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--name", "App\nclient_secret: forged", "the client name must not"),
        ("--name", "\u202eppA", "the client name must not"),
        ("--scope", "read \x01admin", "the scope must not"),
    ],
    ids=["newline in name", "bidi override in name", "control character in scope"],
)
def test_clients_add_refuses_control_characters(
    database_url: str, option: str, value: str, message: str
) -> None:
    result = baton(
        database_url,
        "clients", "add", "--name", "App", "--public",
        "--redirect-uri", "https://app.example/cb", option, value,
        exit_code=1,
    )  # fmt: skip
    assert error_of(result) == f"Error: {message} contain control characters"
    assert list_json(database_url, "clients") == []


def test_clients_add_refuses_an_empty_scope(database_url: str) -> None:
    result = baton(
        database_url,
        "clients", "add", "--name", "App", "--public",
        "--redirect-uri", "https://app.example/cb", "--scope", " ",
        exit_code=1,
    )  # fmt: skip
    assert error_of(result) == "Error: at least one scope is required"
    assert list_json(database_url, "clients") == []


@pytest.mark.parametrize(
    "options",
    [
        ("--name", "n" * 256, "--scope", "read"),
        # distinct scopes: repeated ones are collapsed before they are stored
        ("--name", "App", "--scope", " ".join(f"scope{i}" for i in range(200))),
    ],
    ids=["name over 255", "scope over 1024"],
)
def test_clients_add_refuses_values_longer_than_their_column(
    database_url: str, options: tuple[str, ...]
) -> None:
    # users add refuses a name over 255 characters; clients add must refuse what
    # its columns (name String(255), scope String(1024)) cannot hold, on both databases.
    result = baton(
        database_url,
        "clients", "add", "--public", "--redirect-uri", "https://app.example/cb", *options,
        exit_code=1,
    )  # fmt: skip
    error_of(result)
    assert list_json(database_url, "clients") == []


def test_clients_list_json(database_url: str) -> None:
    public = add_client(
        database_url, "--public", "--first-party", "--redirect-uri", "https://a.example/cb"
    )
    confidential = add_client(
        database_url, "--redirect-uri", "https://b.example/cb", "--scope", "read read profile"
    )
    rows = list_json(database_url, "clients")
    assert [row["client_id"] for row in rows] == [public["client_id"], confidential["client_id"]]
    for row in rows:
        assert set(row) == {
            "client_id", "name", "type", "first_party", "redirect_uris",
            "scope", "grant_types", "provenance", "created_at",
        }  # fmt: skip
        assert row["provenance"] == "cli"
        assert row["name"] == "App"
        assert datetime.fromisoformat(row["created_at"]).utcoffset() is not None
    assert rows[0]["type"] == "public"
    assert rows[0]["first_party"] is True
    assert rows[0]["scope"] == "read write"
    assert rows[1]["type"] == "confidential"
    assert rows[1]["first_party"] is False
    assert rows[1]["scope"] == "read profile"
    assert rows[1]["redirect_uris"] == ["https://b.example/cb"]


def test_clients_list_table(database_url: str) -> None:
    public = add_client(
        database_url,
        "--public",
        "--redirect-uri",
        "https://a.example/cb",
        "--redirect-uri",
        "http://127.0.0.1/cb",
    )
    confidential = add_client(database_url, "--redirect-uri", "https://b.example/cb")
    header, *rows = table(baton(database_url, "clients", "list"))
    assert header == ["CLIENT ID", "NAME", "TYPE", "SOURCE", "SCOPE", "REDIRECT URIS"]
    assert rows == [
        [
            public["client_id"],
            "App",
            "public",
            "cli",
            "read write",
            "https://a.example/cb http://127.0.0.1/cb",
        ],
        [
            confidential["client_id"],
            "App",
            "confidential",
            "cli",
            "read write",
            "https://b.example/cb",
        ],
    ]


def test_clients_list_of_an_empty_database(database_url: str) -> None:
    header = ["CLIENT ID", "NAME", "TYPE", "SOURCE", "SCOPE", "REDIRECT URIS"]
    assert table(baton(database_url, "clients", "list")) == [header, ["(none)"]]
    assert list_json(database_url, "clients") == []


def test_clients_remove(database_url: str, database: Database) -> None:
    kept = add_client(database_url, "--public", "--redirect-uri", "https://a.example/cb")
    removed = add_client(database_url, "--redirect-uri", "https://b.example/cb")
    result = baton(database_url, "clients", "remove", removed["client_id"])
    assert result.stdout == f"removed client {removed['client_id']}\n"
    assert stored_client(database, removed["client_id"]) is None
    assert [row["client_id"] for row in list_json(database_url, "clients")] == [kept["client_id"]]


def test_clients_remove_of_an_unknown_client(database_url: str) -> None:
    kept = add_client(database_url, "--public", "--redirect-uri", "https://a.example/cb")
    result = baton(database_url, "clients", "remove", "0" * 32, exit_code=1)
    assert error_of(result) == f"Error: no client with id {'0' * 32!r}"
    assert [row["client_id"] for row in list_json(database_url, "clients")] == [kept["client_id"]]


def test_clients_remove_twice(database_url: str) -> None:
    client = add_client(database_url, "--public", "--redirect-uri", "https://a.example/cb")
    baton(database_url, "clients", "remove", client["client_id"])
    baton(database_url, "clients", "remove", client["client_id"], exit_code=1)


# -- failures of the environment ------------------------------------------------


@pytest.mark.parametrize(
    ("command", "stdin"),
    [
        (["users", "list"], None),
        (["users", "add", "alice", "--password-stdin"], PASSWORD + "\n"),
        (["users", "disable", "alice"], None),
        (["bootstrap"], None),
        (["clients", "list", "--json"], None),
        (["clients", "add", "--name", "App", "--redirect-uri", "https://a.example/cb"], None),
        (["clients", "remove", "abc"], None),
        (["db", "upgrade"], None),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
def test_unreachable_database(command: list[str], stdin: str | None) -> None:
    result = baton(UNREACHABLE_URL, *command, stdin=stdin, exit_code=1)
    message = error_of(result)
    assert message.startswith(
        "Error: cannot use the database postgresql+psycopg://postgres@127.0.0.1:1/nope: "
    ), message
    assert result.stdout == ""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def unmigrated_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A reachable database without Baton's schema (``baton db upgrade`` never ran)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'unmigrated.db'}"
    url: str = request.getfixturevalue("postgres").create_database()
    return url


@pytest.mark.parametrize(
    "command",
    [["users", "list"], ["bootstrap"], ["clients", "list"], ["users", "disable", "alice"]],
    ids=" ".join,
)
def test_a_database_without_the_schema(unmigrated_url: str, command: list[str]) -> None:
    result = baton(unmigrated_url, *command, exit_code=1)
    assert error_of(result).startswith("Error: cannot use the database "), result.output


def test_unreachable_database_hides_the_password() -> None:
    url = "postgresql://postgres:topsecret@127.0.0.1:1/nope"
    result = baton(url, "users", "list", exit_code=1)
    assert "topsecret" not in result.output
    assert "cannot use the database postgresql+psycopg://postgres:***@127.0.0.1:1/nope" in (
        error_of(result)
    )


@pytest.mark.parametrize(
    ("command", "stdin"),
    [
        (["users", "list"], None),
        (["users", "add", "alice", "--password-stdin"], PASSWORD + "\n"),
        (["bootstrap"], None),
        (["clients", "list"], None),
        (["db", "upgrade"], None),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
def test_a_bad_setting_is_named(
    monkeypatch: pytest.MonkeyPatch, database_url: str, command: list[str], stdin: str | None
) -> None:
    monkeypatch.setenv("BATON_FLOW_TTL", "banana")
    result = baton(database_url, *command, stdin=stdin, exit_code=1)
    assert error_of(result).startswith("Error: BATON_FLOW_TTL: "), result.output
    monkeypatch.delenv("BATON_FLOW_TTL")
    assert list_json(database_url, "users") == []


@pytest.mark.parametrize(
    "variable",
    ["FLOW_TTL", "CODE_TTL", "HASH_WAIT", "DB_POOL_TIMEOUT", "PURGE_INTERVAL", "SESSION_DURATION"],
)
@pytest.mark.parametrize("value", ["99999999999d", "9999999d"], ids=["overflow", "past 9999"])
def test_a_duration_setting_over_100_years_is_named(
    monkeypatch: pytest.MonkeyPatch, database_url: str, variable: str, value: str
) -> None:
    monkeypatch.setenv(f"BATON_{variable}", value)
    result = baton(database_url, "flows", "list", exit_code=1)
    assert error_of(result) == (
        f"Error: BATON_{variable}: expected a duration of at most 36500d (100 years), got {value!r}"
    )


@pytest.mark.parametrize(
    "url", ["mysql://root@127.0.0.1/baton", "not a url"], ids=["mysql", "garbage"]
)
def test_an_unusable_database_url(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("BATON_DATABASE_URL", url)
    from_env = baton(None, "users", "list", exit_code=1)
    assert error_of(from_env).startswith("Error: BATON_DATABASE_URL: ")
    monkeypatch.delenv("BATON_DATABASE_URL")
    # The option is refused like the variable: a bad setting (1) or a bad option value (2).
    from_option = baton(url, "users", "list", exit_code={1, 2})
    assert error_of(from_option).startswith("Error: "), from_option.output


def test_the_database_url_option_overrides_the_environment(
    monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere.db"
    monkeypatch.setenv("BATON_DATABASE_URL", f"sqlite:///{elsewhere}")
    add_user(database_url, "alice")
    assert [row["username"] for row in list_json(database_url, "users")] == ["alice"]
    assert not elsewhere.exists()


def test_the_database_url_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.setenv("BATON_DATABASE_URL", database_url)
    baton(None, "users", "add", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    assert [row["username"] for row in list_json(database_url, "users")] == ["alice"]


# -- input that is not UTF-8 ------------------------------------------------------

# How Python hands over the argument $'\xff' (PEP 383: a byte that is not UTF-8
# becomes a lone surrogate), which no database can store.
NOT_UTF8 = b"\xff".decode("utf-8", "surrogateescape")
CALLBACK = "https://app.example/cb"


@pytest.mark.parametrize(
    ("command", "stdin"),
    [
        (["users", "add", NOT_UTF8, "--password-stdin"], PASSWORD + "\n"),
        (["users", "show", NOT_UTF8], None),
        (["users", "disable", NOT_UTF8], None),
        (["users", "sessions", NOT_UTF8], None),
        (["clients", "add", "--name", NOT_UTF8, "--redirect-uri", CALLBACK], None),
        (
            ["clients", "add", "--name", "App", "--redirect-uri", CALLBACK, "--scope", NOT_UTF8],
            None,
        ),
        (["clients", "add", "--name", "App", "--redirect-uri", CALLBACK + NOT_UTF8], None),
        (["clients", "show", NOT_UTF8], None),
        (["clients", "remove", NOT_UTF8], None),
        (["flows", "list", "--client", NOT_UTF8], None),
        (["flows", "list", "--user", NOT_UTF8], None),
        (["flows", "show", NOT_UTF8], None),
        (["flows", "revoke", NOT_UTF8], None),
        (["flows", "show", "caf\u00e9" + NOT_UTF8], None),
    ],
    ids=lambda value: " ".join(value).replace(NOT_UTF8, "\\xff") if isinstance(value, list) else "",
)
def test_arguments_that_are_not_utf8_are_refused(
    database_url: str, command: list[str], stdin: str | None
) -> None:
    result = baton(database_url, *command, stdin=stdin, exit_code=1)
    assert re.fullmatch(r"Error: arguments must be valid UTF-8, not '.*\\xff'", error_of(result))
    assert result.stdout == ""
    assert list_json(database_url, "users") == list_json(database_url, "clients") == []


def test_a_password_that_is_not_utf8_is_refused(database_url: str) -> None:
    # printf '\xff\n' | baton users add alice --password-stdin
    result = baton(
        database_url, "users", "add", "alice", "--password-stdin", stdin=b"\xff\n", exit_code=1
    )
    assert error_of(result) == "Error: the password must be valid UTF-8"
    assert list_json(database_url, "users") == []


def test_a_password_read_with_surrogateescape_that_is_not_utf8_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Python reads stdin so in the C and POSIX locales: the \xff arrives as a surrogate.
    stdin = io.TextIOWrapper(io.BytesIO(b"\xff\n"), encoding="utf-8", errors="surrogateescape")
    monkeypatch.setattr("sys.stdin", stdin)
    with pytest.raises(click.ClickException, match=r"^the password must be valid UTF-8$"):
        read_password(password_stdin=True)
