"""The login page and the demo in Debian's Chromium, driven by Playwright.

Chromium comes from Debian (``make test`` installs it when it may); nothing is
downloaded. Without it these tests skip, unless BATON_TEST_BROWSER=required.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from app.pages import STATIC
from tests.servers import Server, free_port, serving

CHROMIUM = Path(os.environ.get("BATON_TEST_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
PASSWORD = "browser password, long enough"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("BATON_TEST_BROWSER", "").lower() == "required":
            pytest.fail(message + "; BATON_TEST_BROWSER=required")
        pytest.skip(message)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("browser")
    with serving(f"sqlite:///{workdir}/baton.db", workdir, {"BATON_DEMO": "true"}) as running:
        running.baton("users", "add", "alice", "--password-stdin", stdin=PASSWORD + "\n")
        yield running


def start_demo(page: Page, server: Server) -> None:
    page.goto(server.url + "/demo")
    page.click("#start")
    page.wait_for_url("**/login?redirection_token=*")


def sign_in(page: Page, password: str = PASSWORD) -> None:
    page.fill("#username", "alice")
    page.fill("#password", password)
    page.click("#submit")


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_the_whole_flow(browser: Browser, server: Server) -> None:
    context = browser.new_context()
    page = context.new_page()
    start_demo(page, server)
    screenshot(page, "login-page")
    sign_in(page)
    page.wait_for_url("**/demo/callback*")
    expect(page.locator("#whoami")).to_contain_text("alice")
    context.close()


def test_a_wrong_password_then_the_right_one(browser: Browser, server: Server) -> None:
    context = browser.new_context()
    page = context.new_page()
    start_demo(page, server)
    sign_in(page, "not the password")
    error = page.locator("#error")
    expect(error).to_contain_text("Invalid username or password")
    screenshot(page, "login-page-wrong-password")
    expect(page.locator("#password")).to_be_focused()
    sign_in(page)
    page.wait_for_url("**/demo/callback*")
    expect(page.locator("#whoami")).to_contain_text("alice")
    context.close()


def test_a_token_stolen_into_another_browser_is_refused(browser: Browser, server: Server) -> None:
    victim = browser.new_context()
    page = victim.new_page()
    start_demo(page, server)
    stolen = page.url
    thief = browser.new_context()  # another cookie jar: no binding cookie
    elsewhere = thief.new_page()
    elsewhere.goto(stolen)
    # The page asks Baton about the link first: to this browser it is unknown.
    expect(elsewhere.locator("#error")).to_contain_text("expired or was already used")
    expect(elsewhere.locator("#submit")).to_be_disabled()
    screenshot(elsewhere, "login-page-stolen-token")
    assert "session_id" not in {c["name"] for c in thief.cookies()}
    # The rightful browser still completes.
    sign_in(page)
    page.wait_for_url("**/demo/callback*")
    expect(page.locator("#whoami")).to_contain_text("alice")
    victim.close()
    thief.close()


def test_two_tabs_complete_in_either_order(browser: Browser, server: Server) -> None:
    context = browser.new_context()
    first, second = context.new_page(), context.new_page()
    start_demo(first, server)
    start_demo(second, server)
    for page in (second, first):
        sign_in(page)
        page.wait_for_url("**/demo/callback*")
        expect(page.locator("#whoami")).to_contain_text("alice")
    context.close()


def test_the_login_page_names_the_application_and_counts_down(
    browser: Browser, server: Server
) -> None:
    context = browser.new_context()
    page = context.new_page()
    start_demo(page, server)
    expect(page.locator("#client-name")).to_contain_text("Baton demo asks you to sign in")
    expect(page.locator("#time-left")).to_contain_text("expires in 9:")
    login_url = page.url
    sign_in(page)
    page.wait_for_url("**/demo/callback*")
    expect(page.locator("#whoami")).to_contain_text("alice")
    page.goto(login_url)  # back to the login page of a finished flow
    expect(page.locator("#status")).to_contain_text("This sign-in is complete")
    screenshot(page, "login-page-completed")
    context.close()


@pytest.fixture(scope="module")
def short_lived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("short")
    env = {"BATON_DEMO": "true", "BATON_FLOW_TTL": "3s"}
    with serving(f"sqlite:///{workdir}/baton.db", workdir, env) as running:
        running.baton("users", "add", "alice", "--password-stdin", stdin=PASSWORD + "\n")
        yield running


def test_an_expired_flow_and_the_restart(browser: Browser, short_lived: Server) -> None:
    context = browser.new_context()
    page = context.new_page()
    start_demo(page, short_lived)
    # The countdown reaches zero; the page asks again and offers a restart.
    expect(page.locator("#restart")).to_be_visible(timeout=10_000)
    expect(page.locator("#error")).to_contain_text("expired")
    screenshot(page, "login-page-expired")
    page.click("#restart")
    page.wait_for_url("**/login?redirection_token=*")
    sign_in(page)
    page.wait_for_url("**/demo/callback*")
    expect(page.locator("#whoami")).to_contain_text("alice")
    context.close()


def test_the_back_button_after_resume_issues_no_second_code(
    browser: Browser, server: Server
) -> None:
    context = browser.new_context()
    page = context.new_page()
    resumes: list[str] = []
    page.on(
        "request",
        lambda request: resumes.append(request.url) if "flow=" in request.url else None,
    )
    start_demo(page, server)
    sign_in(page)
    page.wait_for_url("**/demo/callback*")
    expect(page.locator("#whoami")).to_contain_text("alice")
    assert resumes
    again = page.goto(resumes[0])
    assert again is not None
    assert again.status == 400
    expect(page.locator("body")).to_contain_text("already completed")
    context.close()


def test_a_double_submitted_login_completes_once(browser: Browser, server: Server) -> None:
    context = browser.new_context()
    page = context.new_page()
    start_demo(page, server)
    page.fill("#username", "alice")
    page.fill("#password", PASSWORD)
    page.dblclick("#submit")
    page.wait_for_url("**/demo/callback*")
    expect(page.locator("#whoami")).to_contain_text("alice")
    context.close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None


@contextmanager
def spa_origin(tmp_path: Path, baton_url: str) -> Iterator[tuple[str, ThreadingHTTPServer]]:
    """Baton's login page hosted on another origin (another port: same site)."""
    static = tmp_path / "static"
    static.mkdir(parents=True)
    for name in ("login.js", "baton.css"):
        shutil.copy(STATIC / name, static / name)
    page = (STATIC / "login.html").read_text()
    page = page.replace(
        '<meta name="baton-api" content="">', f'<meta name="baton-api" content="{baton_url}">'
    )
    (tmp_path / "login.html").write_text(page)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(tmp_path)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_login_page_on_another_origin(browser: Browser, tmp_path: Path) -> None:
    port = free_port()
    baton_url = f"http://127.0.0.1:{port}"
    with spa_origin(tmp_path / "spa", baton_url) as (spa_url, _):
        env = {
            "BATON_DEMO": "true",
            "BATON_LOGIN_URL": spa_url + "/login.html",
            "BATON_CORS_ORIGINS": spa_url,
        }
        with serving(f"sqlite:///{tmp_path}/baton.db", tmp_path, env, port=port) as baton:
            baton.baton("users", "add", "alice", "--password-stdin", stdin=PASSWORD + "\n")
            context = browser.new_context()
            page = context.new_page()
            page.goto(baton.url + "/demo")
            page.click("#start")
            page.wait_for_url(spa_url + "/login.html?redirection_token=*")
            expect(page.locator("#client-name")).to_contain_text("Baton demo")
            sign_in(page)
            page.wait_for_url("**/demo/callback*")
            expect(page.locator("#whoami")).to_contain_text("alice")
            context.close()


def test_a_login_page_on_an_origin_baton_does_not_allow(
    browser: Browser, server: Server, tmp_path: Path
) -> None:
    with spa_origin(tmp_path / "spa", server.url) as (spa_url, _):
        context = browser.new_context()
        page = context.new_page()
        start_demo(page, server)
        token = page.url.split("redirection_token=")[1]
        page.goto(f"{spa_url}/login.html?redirection_token={token}")
        sign_in(page)
        expect(page.locator("#error")).to_contain_text("Could not reach the server")
        assert "session_id" not in {c["name"] for c in context.cookies()}
        context.close()
