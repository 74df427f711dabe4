"""Real ``baton serve`` processes for end-to-end tests over loopback HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Server:
    url: str
    env: dict[str, str]
    log: Path

    def baton(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the ``baton`` command against this server's database."""
        return subprocess.run(
            [str(BIN / "baton"), *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )


def wait_until_serving(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"baton exited with {process.returncode}:\n{log.read_text()}")
        try:
            if requests.get(url + "/api/v1/openapi.json", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"baton did not start in 30 s:\n{log.read_text()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def serving(
    database_url: str,
    workdir: Path,
    extra_env: Mapping[str, str] | None = None,
    port: int | None = None,
) -> Iterator[Server]:
    """Migrate ``database_url`` with ``baton db upgrade`` and serve it on a free port."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "BATON_DATABASE_URL": database_url,
        "BATON_PUBLIC_URL": url,
        "BATON_SECURE_COOKIES": "false",
        **(extra_env or {}),
    }
    log = workdir / f"baton-{port}.log"
    server = Server(url=url, env=env, log=log)
    server.baton("db", "upgrade")
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(BIN / "baton"), "serve", "--port", str(port)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_serving(url, process, log)
        yield server
    finally:
        stop(process)
