"""``make run`` on a fresh database: it migrates, creates the admin, serves the
demo, and the demo's OAuth flow completes with the password it printed."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.factories import query_of
from tests.servers import free_port, stop

ROOT = Path(__file__).resolve().parents[1]
PASSWORD_LINE = re.compile(r"created user 'admin' with password '([^']+)'")


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[tuple[str, str]]:
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "BATON_DATABASE_URL": f"sqlite:///{tmp_path}/baton.db",
    }
    for inherited in ("BATON_PUBLIC_URL", "BATON_DEMO", "BATON_SECURE_COOKIES"):
        env.pop(inherited, None)
    log = tmp_path / "make-run.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["make", "--no-print-directory", "run"],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            try:
                if requests.get(url + "/demo", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        else:
            pytest.fail("make run did not serve within 120 s:\n" + log.read_text())
        match = PASSWORD_LINE.search(log.read_text())
        assert match, log.read_text()
        assert f"open {url}/demo" in log.read_text()
        yield url, match[1]
    finally:
        stop(process)


def test_make_run_serves_a_demo_that_completes(make_run: tuple[str, str]) -> None:
    url, password = make_run
    browser = requests.Session()
    assert browser.get(url + "/", allow_redirects=False).headers["location"] == "/demo"
    config = browser.get(url + "/demo/config.json").json()
    assert config["redirect_uri"] == url + "/demo/callback"

    # What demo.js does in the browser.
    verifier = secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    state = secrets.token_urlsafe(16)
    paused = browser.get(
        url + config["authorize_endpoint"],
        params={
            "response_type": "code",
            "client_id": config["client_id"],
            "redirect_uri": config["redirect_uri"],
            "scope": config["scope"],
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
        allow_redirects=False,
    )
    token = query_of(paused.headers["location"])["redirection_token"]
    login = browser.post(
        url + "/api/v1/login",
        json={"username": "admin", "password": password, "redirection_token": token},
    )
    assert login.status_code == 200, login.text
    resumed = browser.get(url + login.json()["redir_to"], allow_redirects=False)
    callback = resumed.headers["location"]
    assert callback.startswith(config["redirect_uri"] + "?")
    assert query_of(callback)["state"] == state
    assert browser.get(callback).status_code == 200  # the demo page itself

    exchanged = browser.post(
        url + config["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": query_of(callback)["code"],
            "redirect_uri": config["redirect_uri"],
            "client_id": config["client_id"],
            "code_verifier": verifier,
        },
    )
    assert exchanged.status_code == 200, exchanged.text
    me = requests.get(
        url + config["userinfo_endpoint"],
        headers={"Authorization": "Bearer " + exchanged.json()["access_token"]},
        timeout=10,
    )
    assert me.json()["username"] == "admin"
