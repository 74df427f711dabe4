"""The deployment files agree with Baton.

Docker cannot run here, so this module reads ``Dockerfile``, ``.dockerignore``,
``docker-compose.yml``, ``deploy/env.example`` and the nginx configuration, and
runs what they would run: every ``baton`` command line the compose file and the
image start goes through the real command (``db upgrade`` against a real empty
database, ``serve`` up to the call to uvicorn), every ``BATON_*`` value goes
through ``Settings.from_env``, and the image's health check runs against a real
``baton serve``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from datetime import timedelta
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
import yaml
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from sqlalchemy.engine import make_url
from starlette.applications import Starlette
from uvicorn.importer import import_from_string

from app.cli import main
from app.cli._base import WORKER_APP
from app.migrate import alembic_config, current_revision
from app.settings import Settings, parse_duration
from tests.servers import free_port, serving

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / "deploy" / "env.example"
NGINX = ROOT / "deploy" / "nginx" / "baton.conf"

REPLICAS = ("baton1", "baton2")
# Inside a container, Baton must listen beyond loopback for the proxy to reach it.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104
# What an operator puts in .env before `docker compose up`.
OPERATOR = {
    "POSTGRES_PASSWORD": secrets.token_hex(24),
    "BATON_PUBLIC_URL": "https://auth.example.com",
}
SETTINGS = frozenset(f.name for f in dataclasses.fields(Settings))


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what the compose file sets may reach the commands."""
    for name in list(os.environ):
        if name.startswith("BATON_") and not name.startswith("BATON_TEST_"):
            monkeypatch.delenv(name)


# -- compose variables ($VAR, ${VAR}, ${VAR:-default}, ${VAR:?error}, $$) ---------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-?])(?P<argument>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class RequiredVariableMissing(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """What docker compose does to a value, with ``env`` as the shell and .env."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        value = env.get(name)
        operator = match["operator"]
        if operator is None:
            return value or ""
        # With a colon, an empty value counts as unset.
        missing = value is None or (value == "" and operator.startswith(":"))
        if operator.endswith("-"):
            return match["argument"] if missing else str(value)
        if missing:
            raise RequiredVariableMissing(name, match["argument"])
        return str(value)

    return _VARIABLE.sub(substitute, text)


def resolve(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    return node


def references(node: Any) -> set[tuple[str, str | None]]:
    """(variable, operator) for every place the compose file reads a variable."""
    if isinstance(node, str):
        return {
            (m["braced"] or m["bare"], m["operator"])
            for m in _VARIABLE.finditer(node)
            if not m["escaped"]
        }
    if isinstance(node, list):
        return set().union(*(references(item) for item in node))
    if isinstance(node, dict):
        return set().union(*(references(value) for value in node.values()))
    return set()


def read_env_file(path: Path) -> dict[str, str]:
    entries = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, separator, value = line.partition("=")
            assert separator, f"{path.name}: not NAME=value: {line!r}"
            entries[name.strip()] = value.strip()
    return entries


def raw_compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def operator_env() -> dict[str, str]:
    """deploy/env.example as the operator fills it in."""
    example = read_env_file(ENV_EXAMPLE)
    return {**example, **{k: v for k, v in OPERATOR.items() if not example.get(k)}}


def compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    resolved: dict[str, Any] = resolve(raw_compose(), operator_env() if env is None else env)
    return resolved


def services(env: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose(env)["services"]
    return found


def baton_services() -> list[str]:
    """The services that run Baton's image (the one built from this directory)."""
    return sorted(name for name, service in services().items() if "build" in service)


# -- the Dockerfile ----------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def instruction(keyword: str) -> str:
    """The arguments of the last ``keyword`` (the one that counts)."""
    found = [arguments for name, arguments in dockerfile() if name == keyword]
    assert found, f"the Dockerfile has no {keyword}"
    return found[-1]


def exec_form(keyword: str) -> list[str]:
    value = json.loads(instruction(keyword))
    assert isinstance(value, list), keyword
    assert all(isinstance(v, str) for v in value), keyword
    return value


def healthcheck() -> tuple[dict[str, str], list[str]]:
    options, separator, command = instruction("HEALTHCHECK").partition(" CMD ")
    assert separator, "HEALTHCHECK has no CMD"
    flags = dict(option.removeprefix("--").split("=", 1) for option in options.split())
    argv = json.loads(command)
    assert isinstance(argv, list), "HEALTHCHECK CMD in exec form: no shell in the way"
    return flags, argv


def argv_of(service: Mapping[str, Any]) -> list[str]:
    """What the container runs: compose's entrypoint/command over the image's."""
    entrypoint = service.get("entrypoint", exec_form("ENTRYPOINT"))
    command = service.get("command", exec_form("CMD"))
    for part in (entrypoint, command):
        assert isinstance(part, list), "exec form (a YAML list): no shell parses it"
    return [*entrypoint, *command]


# -- running the commands ----------------------------------------------------------


class UvicornRun:
    """Stands in for ``uvicorn.run``: ``baton serve`` runs up to serving."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def __call__(self, app: Any, **options: Any) -> None:
        self.calls.append((app, options))


def run_baton(
    argv: list[str], env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch
) -> tuple[str, UvicornRun]:
    """Run a container's command line through the real ``baton`` command."""
    assert argv[0] == "baton", f"not a baton command: {argv}"
    uvicorn_run = UvicornRun()
    monkeypatch.setattr("uvicorn.run", uvicorn_run)
    # serve changes the process (its environment for workers, its SIGTERM
    # handler): put both back, as they were, whatever it did.
    environment, terminate = dict(os.environ), signal.getsignal(signal.SIGTERM)
    try:
        result = CliRunner().invoke(main, argv[1:], env=dict(env), catch_exceptions=False)
    finally:
        os.environ.clear()
        os.environ.update(environment)
        signal.signal(signal.SIGTERM, terminate)
    assert result.exit_code == 0, f"{shlex.join(argv)} exited {result.exit_code}:\n{result.output}"
    return result.output, uvicorn_run


def container_env(service: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    environment: dict[str, str] = services(env)[service]["environment"]
    return {name: str(value) for name, value in environment.items()}


def serve_options(
    service: str, monkeypatch: pytest.MonkeyPatch, **env: str
) -> tuple[Any, dict[str, Any]]:
    """What a replica's command hands to uvicorn."""
    argv = argv_of(services({**operator_env(), **env})[service])
    _, uvicorn_run = run_baton(argv, container_env(service), monkeypatch)
    assert len(uvicorn_run.calls) == 1
    return uvicorn_run.calls[0]


def proxy_address() -> str:
    networks = services()["proxy"]["networks"]
    (address,) = (n["ipv4_address"] for n in networks.values() if "ipv4_address" in n)
    return str(address)


# -- the nginx configuration --------------------------------------------------------


def nginx() -> str:
    return re.sub(r"#[^\n]*", "", NGINX.read_text())


def nginx_values(directive: str) -> list[str]:
    return [m.strip() for m in re.findall(rf"(?m)^\s*{directive}\s+([^;]+);", nginx())]


def nginx_value(directive: str) -> str:
    values = nginx_values(directive)
    assert len(values) == 1, f"{directive}: {values}"
    return values[0]


def nginx_upstreams() -> dict[str, list[str]]:
    return {
        name: re.findall(r"(?m)^\s*server\s+([^\s;]+)", body)
        for name, body in re.findall(r"upstream\s+(\S+)\s*\{(.*?)\}", nginx(), re.S)
    }


def nginx_upstream_value(directive: str) -> str:
    ((_, body),) = re.findall(r"upstream\s+(\S+)\s*\{(.*?)\}", nginx(), re.S)
    (value,) = re.findall(rf"(?m)^\s*{directive}\s+([^;]+);", body)
    return str(value).strip()


def nginx_seconds(value: str) -> float:
    return parse_duration(value).total_seconds()


def nginx_bytes(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", value).groups()  # type: ignore[union-attr]
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit.lower()]


# == the tests =======================================================================


def test_the_compose_file_has_the_services_of_a_production_install() -> None:
    assert set(services()) == {"postgres", "migrate", *REPLICAS, "proxy"}
    assert baton_services() == sorted(["migrate", *REPLICAS])
    for name in baton_services():
        assert services()[name]["build"] == ".", "Baton's image is built from this directory"


def test_postgres_is_health_checked_with_pg_isready_and_keeps_its_data() -> None:
    postgres = services()["postgres"]
    check = postgres["healthcheck"]
    assert check["test"][0] == "CMD"
    assert "pg_isready" in check["test"][1]
    environment = postgres["environment"]
    assert f"--username={environment['POSTGRES_USER']}" in check["test"]
    assert f"--dbname={environment['POSTGRES_DB']}" in check["test"]
    for interval in ("interval", "timeout"):
        assert parse_duration(check[interval]) > timedelta(0)
    assert int(check["retries"]) >= 3
    volume, target = postgres["volumes"][0].split(":")[:2]
    assert target == "/var/lib/postgresql/data"
    assert volume in compose()["volumes"], "a named volume, so data outlives the container"


def test_the_start_order_is_postgres_then_migrate_then_replicas_then_proxy() -> None:
    found = services()
    assert found["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert found["migrate"]["restart"] == "no", "a one-shot job must not loop"
    for replica in REPLICAS:
        assert found[replica]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }
        assert found[replica]["restart"] in {"always", "unless-stopped"}
    assert found["proxy"]["depends_on"] == {
        replica: {"condition": "service_healthy", "restart": True} for replica in REPLICAS
    }
    # service_healthy needs a health check: the replicas have the image's.
    flags, _ = healthcheck()
    assert all("healthcheck" not in found[r] for r in REPLICAS)
    assert nginx_seconds(flags["interval"]) > 0


def test_the_database_password_and_the_public_url_must_be_set() -> None:
    example = read_env_file(ENV_EXAMPLE)
    # An unedited copy of the example refuses to start, naming what is missing.
    for name in OPERATOR:
        assert example[name] == "", f"env.example must leave {name} empty"
        with pytest.raises(RequiredVariableMissing) as missing:
            compose({**operator_env(), name: ""})
        assert missing.value.name == name
    # Wherever they are read, with no fallback.
    operators = {op for name, op in references(raw_compose()) if name in OPERATOR}
    assert operators == {":?"}
    # No secret is written in the compose file itself.
    password = OPERATOR["POSTGRES_PASSWORD"]
    assert password not in COMPOSE.read_text()
    assert services()["postgres"]["environment"]["POSTGRES_PASSWORD"] == password
    url = make_url(container_env("baton1")["BATON_DATABASE_URL"])
    assert url.password == password


def test_every_variable_the_compose_file_reads_is_in_env_example() -> None:
    assert {name for name, _ in references(raw_compose())} == set(read_env_file(ENV_EXAMPLE))
    for name in read_env_file(ENV_EXAMPLE):
        if name.startswith("BATON_"):
            assert name.removeprefix("BATON_").lower() in SETTINGS, f"{name} is no setting"


@pytest.mark.parametrize("service", sorted(["migrate", *REPLICAS]))
@pytest.mark.parametrize("dotenv", ["env.example", "required only"])
def test_every_baton_setting_the_compose_file_sets_is_accepted(service: str, dotenv: str) -> None:
    # The example's optional values, or the compose file's own defaults.
    env = container_env(service, operator_env() if dotenv == "env.example" else OPERATOR)
    # prometheus_client's own switch: a directory that is empty at each start.
    assert env.pop("PROMETHEUS_MULTIPROC_DIR") in services()[service]["tmpfs"]
    for name in env:
        assert name.startswith("BATON_"), name
        # Settings.from_env ignores unknown variables: a misspelt one would be lost.
        assert name.removeprefix("BATON_").lower() in SETTINGS, f"{name} is no Baton setting"
    settings = Settings.from_env(env)
    database = make_url(settings.database_url)
    postgres = services()["postgres"]["environment"]
    assert (database.host, database.port) == ("postgres", 5432)
    assert (database.username, database.database) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_DB"],
    )
    assert settings.public_url == OPERATOR["BATON_PUBLIC_URL"]
    assert settings.secure_cookies, "behind TLS, cookies are Secure"
    assert settings.trusted_proxies == (proxy_address(),)


def test_the_trusted_proxy_is_the_proxy_on_the_replicas_network() -> None:
    network = compose()["networks"]["backend"]
    subnet = ip_network(network["ipam"]["config"][0]["subnet"])
    assert ip_address(proxy_address()) in subnet
    for name in baton_services():
        assert services()[name]["networks"] == ["backend"]
    assert "backend" in services()["proxy"]["networks"]


def test_migrate_brings_an_empty_database_to_head_and_again_on_every_start(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = argv_of(services()["migrate"])
    env = {**container_env("migrate"), "BATON_DATABASE_URL": empty_database_url}
    head = ScriptDirectory.from_config(alembic_config(empty_database_url)).get_current_head()
    for _ in range(2):  # `docker compose up` runs it at every start
        output, uvicorn_run = run_baton(argv, env, monkeypatch)
        assert f"is at revision {head}" in output
        assert current_revision(empty_database_url) == head
    assert uvicorn_run.calls == []


@pytest.mark.parametrize("replica", REPLICAS)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_replicas_command_serves_on_the_port_nginx_proxies_to(
    replica: str, workers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, options = serve_options(replica, monkeypatch, WORKERS_PER_REPLICA=workers)
    assert options["host"] == ALL_INTERFACES
    assert f"{replica}:{options['port']}" in nginx_upstreams()["baton"]
    assert options["workers"] == int(workers)
    assert options["proxy_headers"] is True
    assert options["forwarded_allow_ips"] == [proxy_address()]
    if workers == "1":
        assert isinstance(app, Starlette)
        assert options["factory"] is False
    else:
        # Each worker imports and calls this, with the container's settings.
        assert (app, options["factory"]) == (WORKER_APP, True)
        for name, value in container_env(replica).items():
            if name.startswith("BATON_"):
                monkeypatch.setenv(name, value)
        assert isinstance(import_from_string(app)(), Starlette)
    # docker stop waits stop_grace_period before SIGKILL: longer than Baton's own.
    grace = parse_duration(services()[replica]["stop_grace_period"])
    assert grace > timedelta(seconds=options["timeout_graceful_shutdown"])


def test_the_image_runs_baton_serve_as_a_user_on_all_interfaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert all(
        arguments.split()[0] == "python:3.11-slim"
        for keyword, arguments in dockerfile()
        if keyword == "FROM"
    )
    user = instruction("USER").split(":")[0]
    assert user not in {"root", "0"}
    assert not user.isdigit() or int(user) > 0
    assert exec_form("ENTRYPOINT") == ["baton"]
    env = {**container_env("baton1"), "BATON_DATABASE_URL": f"sqlite:///{tmp_path}/baton.db"}
    app, options = run_baton(argv_of({}), env, monkeypatch)[1].calls[0]
    assert options["host"] == ALL_INTERFACES
    assert f"EXPOSE {options['port']}" in DOCKERFILE.read_text()
    assert isinstance(app, Starlette)


def test_serve_help_documents_workers() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--workers INTEGER RANGE" in result.output
    assert "BATON_HASH_WORKERS" in result.output


@pytest.mark.slow
def test_the_image_health_check_passes_on_a_serving_baton_and_fails_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags, argv = healthcheck()
    assert argv[0] == "python"
    # The check targets the port the container serves on (the image's CMD and the replicas').
    _, options = serve_options("baton1", monkeypatch)
    target = f"http://127.0.0.1:{options['port']}/healthz"
    assert target in argv[-1]
    assert nginx_seconds(flags["timeout"]) < nginx_seconds(flags["interval"])

    def check(port: int) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, *argv[1:-1], argv[-1].replace(target, f"{url(port)}/healthz")]
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)

    def url(port: int) -> str:
        return f"http://127.0.0.1:{port}"

    with serving(f"sqlite:///{tmp_path}/baton.db", tmp_path) as server:
        port = int(server.url.rsplit(":", 1)[1])
        passed = check(port)
        assert passed.returncode == 0, passed.stderr
    assert check(free_port()).returncode != 0


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves ``path`` (or a folder above it) out of the context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for pattern in patterns:
        expression = re.escape(pattern.strip("/"))
        expression = expression.replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
        expression = expression.replace(r"\?", "[^/]")
        if any(re.fullmatch(expression, prefix) for prefix in prefixes):
            return True
    return False


def dockerignore() -> list[str]:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns), "exceptions are not modelled here"
    return patterns


def build_context(tmp_path: Path) -> Path:
    """The image's files, as the Dockerfile's COPY lines and .dockerignore make them."""
    patterns = dockerignore()
    image, workdir = tmp_path / "image", "/"
    for keyword, arguments in dockerfile():
        if keyword == "WORKDIR":
            workdir = arguments
        if keyword != "COPY":
            continue
        *sources, destination = arguments.split()
        assert not any(s.startswith("--") for s in sources), "one stage, from the context"
        target = image / (Path(workdir) / destination).relative_to("/")
        for source in sources:
            assert not _ignored(source, patterns), f".dockerignore drops COPY {source}"
            origin = ROOT / source
            if origin.is_dir():
                for file in origin.rglob("*"):
                    relative = file.relative_to(ROOT).as_posix()
                    if file.is_file() and not _ignored(relative, patterns):
                        copied = target / file.relative_to(origin)
                        copied.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(file, copied)
            else:
                copied = target / source if destination.endswith("/") else target
                copied.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, copied)
    return image / Path(workdir).relative_to("/")


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    patterns = dockerignore()
    for path in (".env", "deploy/tls/privkey.pem", "var/baton.db", ".git/config", ".venv/bin"):
        assert _ignored(path, patterns), path
    for path in ("app/main.py", "migrations/env.py", "pyproject.toml", "README.md"):
        assert not _ignored(path, patterns), path


def test_the_image_files_are_enough_for_baton_db_upgrade(tmp_path: Path) -> None:
    """migrations/ is not package data: the image must carry it beside app/."""
    source = build_context(tmp_path)
    assert (source / "pyproject.toml").is_file()
    readme = (source / "pyproject.toml").read_text().split('readme = "')[1].split('"')[0]
    assert (source / readme).is_file(), "pip install needs the readme pyproject.toml names"
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import app; "
        "assert app.__file__.startswith(sys.argv[1]), app.__file__; "
        "from app.cli import main; main(['db', 'upgrade'], prog_name='baton')"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    env |= {"BATON_DATABASE_URL": f"sqlite:///{tmp_path}/image.db", "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(source)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "is at revision" in result.stdout


def test_nginx_proxies_to_every_replica_and_only_to_them() -> None:
    upstreams = nginx_upstreams()
    assert set(nginx_values("proxy_pass")) == {f"http://{name}" for name in upstreams}
    (servers,) = upstreams.values()
    assert sorted(server.split(":")[0] for server in servers) == sorted(REPLICAS)
    proxy = services()["proxy"]
    mounts = dict(volume.split(":")[:2] for volume in proxy["volumes"])
    assert ROOT / "deploy/nginx/baton.conf" == NGINX
    assert mounts.pop("./deploy/nginx/baton.conf").startswith("/etc/nginx/conf.d/")
    (tls,) = mounts.values()
    for directive in ("ssl_certificate", "ssl_certificate_key"):
        assert nginx_value(directive).startswith(tls + "/")
    assert [p.split(":")[-1] for p in proxy["ports"]] == ["443", "80"]


def test_nginx_tells_baton_the_client_and_bounds_slow_clients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = dict(value.split(None, 1) for value in nginx_values("proxy_set_header"))
    # This proxy is the edge: it replaces X-Forwarded-For rather than extends it.
    assert headers["X-Forwarded-For"] == "$remote_addr"
    assert headers["X-Forwarded-Proto"] == "$scheme"
    assert headers["Host"] == "$host"
    for directive in ("client_header_timeout", "client_body_timeout", "send_timeout"):
        assert 0 < nginx_seconds(nginx_value(directive)) <= 60, directive
    _, options = serve_options("baton1", monkeypatch)
    settings = Settings.from_env(container_env("baton1"))
    # A login may wait for a hashing slot: nginx must wait longer than that.
    assert nginx_seconds(nginx_value("proxy_read_timeout")) > settings.hash_wait.total_seconds()
    # Idle upstream connections are dropped before uvicorn drops them.
    upstream_idle = nginx_seconds(nginx_upstream_value("keepalive_timeout"))
    assert upstream_idle < options["timeout_keep_alive"]
    # Baton, not nginx, answers an oversized body, with its problem document.
    assert nginx_bytes(nginx_value("client_max_body_size")) > settings.max_body_bytes


def test_nginx_keeps_metrics_private() -> None:
    blocks = re.findall(r"location\s*=\s*/metrics\s*\{([^}]*)\}", nginx())
    assert [block.split() for block in blocks] in (
        [["return", "404;"]],
        [["deny", "all;"]],
    )


def test_nginx_never_logs_query_strings() -> None:
    """Redirection tokens and authorization codes travel in query strings."""
    formats = dict(
        re.findall(r"log_format\s+(\S+)\s+(.*?);", nginx(), re.S),
    )
    assert formats
    for body in formats.values():
        leak = re.search(r"\$(?:request|request_uri|args|query_string|arg_\w+)\b", body)
        assert leak is None, leak
    servers = len(re.findall(r"(?m)^server\s*\{", nginx()))
    logs = [value.split() for value in nginx_values("access_log")]
    assert len(logs) == servers, "every server overrides the image's default access log"
    assert all(log == ["off"] or log[-1] in formats for log in logs)
