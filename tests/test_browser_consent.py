"""The consent page in Debian's Chromium, driven by Playwright: a third-party
client's whole flow (authorize → login → consent → code → token), denial,
fewer scopes, a remembered grant, the keyboard, and the page's messages.

The client is registered with ``baton clients add`` without ``--first-party``;
its redirect URI is a small HTTP server on loopback that records what it gets.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from playwright.sync_api import Browser, BrowserContext, Locator, Page, Route, expect

from tests import test_browser as login_pages
from tests.factories import ClientInfo, authorize_params, pkce, query_of
from tests.servers import Server, serving
from tests.test_browser import PASSWORD, screenshot, sign_in

browser = login_pages.browser  # the same Chromium fixture, for this module too

SCOPE = "openid read write"
NOT_SIGNED_IN = "You are not signed in"
ALREADY_ANSWERED = "You already answered this request"


# -- the client's side ---------------------------------------------------------


class _Callback(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!DOCTYPE html><title>Notes CLI</title><p>Back in the application.</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture(scope="module")
def redirect_uri() -> Iterator[str]:
    """The third-party application's redirect URI (loopback http, RFC 8252)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Callback)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/callback"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _with_users(running: Server) -> Server:
    for username in ("alice", "bob"):
        running.baton("users", "add", username, "--password-stdin", stdin=PASSWORD + "\n")
    return running


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("consent")
    with serving(f"sqlite:///{workdir}/baton.db", workdir) as running:
        yield _with_users(running)


@pytest.fixture(scope="module")
def short_lived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("consent-short")
    with serving(f"sqlite:///{workdir}/baton.db", workdir, {"BATON_FLOW_TTL": "5s"}) as running:
        yield _with_users(running)


def register(server: Server, redirect_uri: str) -> ClientInfo:
    """A third-party client: no ``--first-party``, so the user is asked."""
    added = server.baton(
        "clients", "add", "--name", "Notes CLI", "--public",
        "--redirect-uri", redirect_uri, "--scope", SCOPE, "--json",
    )  # fmt: skip
    return ClientInfo(json.loads(added.stdout)["client_id"], None, redirect_uri)


@pytest.fixture
def notes(server: Server, redirect_uri: str) -> ClientInfo:
    # One client per test: grants are remembered per (user, client).
    return register(server, redirect_uri)


@dataclass
class Started:
    params: dict[str, str]
    verifier: str


def start(page: Page, server: Server, app: ClientInfo, scope: str = SCOPE) -> Started:
    challenge = pkce()
    params = authorize_params(app, challenge, scope=scope)
    page.goto(server.url + "/oauth2/authorize?" + urlencode(params))
    return Started(params, challenge.verifier)


def to_consent(page: Page, server: Server, app: ClientInfo, scope: str = SCOPE) -> Started:
    """authorize → login page → sign in → the consent page, ready."""
    started = start(page, server, app, scope)
    page.wait_for_url("**/login?redirection_token=*")
    sign_in(page)
    page.wait_for_url("**/consent?redirection_token=*")
    expect(page.locator("#consent-form")).to_be_visible()
    return started


def callback(page: Page, started: Started) -> dict[str, str]:
    """What the application's redirect URI received (it must echo ``state``)."""
    page.wait_for_url(started.params["redirect_uri"] + "?*")
    answer = query_of(page.url)
    assert answer["state"] == started.params["state"]
    expect(page.locator("body")).to_contain_text("Back in the application")
    return answer


def exchange(server: Server, started: Started, code: str) -> dict[str, Any]:
    response = requests.post(
        server.url + "/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": started.params["redirect_uri"],
            "client_id": started.params["client_id"],
            "code_verifier": started.verifier,
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text
    issued: dict[str, Any] = response.json()
    return issued


def whoami(server: Server, access_token: str) -> str:
    response = requests.get(
        server.url + "/api/v1/users/me",
        headers={"Authorization": f"Bearer {access_token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    username: str = response.json()["username"]
    return username


def grants(context: BrowserContext, server: Server, app: ClientInfo) -> list[dict[str, Any]]:
    """The signed-in user's grants to ``app``, asked with this browser's session cookie."""
    response = context.request.get(server.url + "/api/v1/users/me/oauth2/authorizations")
    assert response.status == 200, response.text()
    listed: list[dict[str, Any]] = response.json()
    return [grant for grant in listed if grant["app_client_id"] == app.client_id]


def scope_box(page: Page, name: str) -> Locator:
    return page.locator(f'#scopes input[value="{name}"]')


# -- the flow ------------------------------------------------------------------


def test_approve_gives_the_application_a_code_and_a_token(
    browser: Browser, server: Server, notes: ClientInfo
) -> None:
    context = browser.new_context()
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    started = to_consent(page, server, notes)
    served = context.request.get(server.url + "/consent")
    assert served.headers["content-type"].startswith("text/html")
    assert "script-src 'self';" in served.headers["content-security-policy"]
    assert "unsafe-inline" not in served.headers["content-security-policy"]

    expect(page.locator("#heading")).to_have_text("Allow Notes CLI to access your account?")
    expect(page.locator("#signed-in")).to_have_text("Signed in as alice.")
    expect(page.locator("#time-left")).to_contain_text("This request expires in 9:")
    expect(page.locator("#approve")).to_be_focused()
    # Every requested permission, described, labelled, and checked.
    for name, description in (
        ("openid", "Confirm your identity"),
        ("read", "Read your data"),
        ("write", "Change your data"),
    ):
        expect(page.get_by_role("checkbox", name=description)).to_be_checked()
        expect(scope_box(page, name)).to_be_checked()
    # openid is shown but cannot be unchecked.
    expect(scope_box(page, "openid")).to_be_disabled()
    scope_box(page, "openid").click(force=True)
    expect(scope_box(page, "openid")).to_be_checked()
    screenshot(page, "consent-page")

    # Hold the answer on its way: the page shows it is working and takes no other.
    held: list[Route] = []
    page.route("**/api/v1/consent", lambda route: held.append(route))
    page.click("#approve")
    expect(page.locator("#approve")).to_have_text("Approving…")
    expect(page.locator("#approve .spinner")).to_be_visible()
    expect(page.locator("#approve")).to_be_disabled()
    expect(page.locator("#deny")).to_be_disabled()
    expect(page.locator("#consent-form")).to_have_attribute("aria-busy", "true")
    screenshot(page, "consent-page-approving")
    assert len(held) == 1
    assert held[0].request.post_data_json == {
        "redirection_token": query_of(page.url)["redirection_token"],
        "approve": True,
    }
    held[0].continue_()

    answer = callback(page, started)
    assert "error" not in answer
    issued = exchange(server, started, answer["code"])
    assert issued["scope"] == SCOPE
    assert whoami(server, issued["access_token"]) == "alice"
    [grant] = grants(context, server, notes)
    assert grant["scope"] == SCOPE

    # The back button returns to the consent page of an answered request.
    page.go_back()
    page.wait_for_url("**/consent?redirection_token=*")
    expect(page.locator("#status")).to_contain_text(ALREADY_ANSWERED)
    expect(page.locator("#status")).to_contain_text("return to the application")
    expect(page.locator("#consent-form")).to_be_hidden()
    screenshot(page, "consent-page-answered")
    # Nothing the page does is refused by the Content-Security-Policy.
    assert not [line for line in console if "Content Security Policy" in line], console
    context.close()


def test_deny_sends_access_denied_to_the_application(
    browser: Browser, server: Server, notes: ClientInfo
) -> None:
    context = browser.new_context()
    page = context.new_page()
    started = to_consent(page, server, notes)
    page.click("#deny")
    answer = callback(page, started)
    assert answer["error"] == "access_denied"
    assert "code" not in answer
    assert grants(context, server, notes) == []
    context.close()


def test_unchecked_permissions_are_left_out_of_the_token(
    browser: Browser, server: Server, notes: ClientInfo
) -> None:
    context = browser.new_context()
    page = context.new_page()
    started = to_consent(page, server, notes)

    # Nothing but openid kept: Baton refuses, the page shows its title, and
    # the request can still be answered.
    page.get_by_role("checkbox", name="Read your data").uncheck()
    page.get_by_role("checkbox", name="Change your data").uncheck()
    page.click("#approve")
    expect(page.locator("#error")).to_have_text(
        "Approve at least one permission, or deny the request."
    )
    expect(scope_box(page, "read")).to_be_focused()
    expect(page.locator("#approve")).to_be_enabled()
    screenshot(page, "consent-page-nothing-approved")

    scope_box(page, "read").check()
    posted: list[Any] = []
    page.on(
        "request",
        lambda request: (
            posted.append(request.post_data_json)
            if request.method == "POST" and request.url.endswith("/api/v1/consent")
            else None
        ),
    )
    page.click("#approve")
    answer = callback(page, started)
    assert [body["scopes"] for body in posted] == [["openid", "read"]]
    issued = exchange(server, started, answer["code"])
    assert issued["scope"].split() == ["openid", "read"]
    assert "write" not in issued["scope"].split()
    [grant] = grants(context, server, notes)
    assert grant["scope"] == "openid read"
    context.close()


def test_a_remembered_grant_skips_the_consent_page(
    browser: Browser, server: Server, notes: ClientInfo
) -> None:
    context = browser.new_context()
    page = context.new_page()
    first = to_consent(page, server, notes)
    page.click("#approve")
    exchange(server, first, callback(page, first)["code"])

    visited: list[str] = []
    page.on("request", lambda request: visited.append(request.url))
    # The same browser, still signed in: straight back to the application.
    again = start(page, server, notes)
    answer = callback(page, again)
    assert exchange(server, again, answer["code"])["scope"] == SCOPE
    # Fewer scopes are covered too.
    fewer = start(page, server, notes, scope="openid read")
    assert exchange(server, fewer, callback(page, fewer)["code"])["scope"] == "openid read"
    assert not [url for url in visited if "/consent" in url]
    context.close()

    # The grant is the user's, not the browser's: another browser signs in, no consent.
    other = browser.new_context()
    page = other.new_page()
    visited.clear()
    page.on("request", lambda request: visited.append(request.url))
    elsewhere = start(page, server, notes)
    page.wait_for_url("**/login?redirection_token=*")
    sign_in(page)
    assert "code" in callback(page, elsewhere)
    assert not [url for url in visited if "/consent" in url]
    other.close()


def test_approval_with_the_keyboard_alone(
    browser: Browser, server: Server, notes: ClientInfo
) -> None:
    context = browser.new_context()
    page = context.new_page()
    started = to_consent(page, server, notes)
    approve, deny = page.locator("#approve"), page.locator("#deny")
    expect(approve).to_be_focused()
    page.keyboard.press("Shift+Tab")
    expect(deny).to_be_focused()
    page.keyboard.press("Shift+Tab")
    expect(scope_box(page, "write")).to_be_focused()
    page.keyboard.press("Space")
    expect(scope_box(page, "write")).not_to_be_checked()
    page.keyboard.press("Shift+Tab")
    expect(scope_box(page, "read")).to_be_focused()  # openid, disabled, is skipped
    screenshot(page, "consent-page-keyboard")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(approve).to_be_focused()
    page.keyboard.press("Enter")
    answer = callback(page, started)
    assert exchange(server, started, answer["code"])["scope"] == "openid read"
    context.close()


# -- what the page says when the request cannot be answered --------------------


def test_another_browser_is_told_to_sign_in_and_another_user_sees_nothing(
    browser: Browser, server: Server, notes: ClientInfo
) -> None:
    context = browser.new_context()
    page = context.new_page()
    started = to_consent(page, server, notes)
    link = page.url

    other = browser.new_context()  # no session, no binding cookie
    elsewhere = other.new_page()
    elsewhere.goto(link)
    expect(elsewhere.locator("#error")).to_contain_text(NOT_SIGNED_IN)
    expect(elsewhere.locator("#error")).to_be_focused()
    expect(elsewhere.locator("#consent-form")).to_be_hidden()
    expect(elsewhere.locator("#heading")).to_have_text("Allow access")
    screenshot(elsewhere, "consent-page-not-signed-in")

    # Bob signs in there: the link is still not his to answer, nor to read.
    elsewhere.goto(server.url + "/login")
    elsewhere.fill("#username", "bob")
    elsewhere.fill("#password", PASSWORD)
    elsewhere.click("#submit")
    expect(elsewhere.locator("#status")).to_contain_text("You are signed in")
    elsewhere.goto(link)
    expect(elsewhere.locator("#error")).to_contain_text("expired or was already answered")
    expect(elsewhere.locator("#consent-form")).to_be_hidden()
    expect(elsewhere.locator("#heading")).not_to_contain_text("Notes CLI")
    expect(elsewhere.locator("#signed-in")).to_have_text("Signed in as bob.")
    screenshot(elsewhere, "consent-page-unknown")
    other.close()

    # Alice's browser still answers.
    page.click("#approve")
    assert "code" in callback(page, started)
    context.close()


def test_an_answer_whose_resume_was_lost_continues(
    browser: Browser, server: Server, notes: ClientInfo
) -> None:
    context = browser.new_context()
    page = context.new_page()
    started = to_consent(page, server, notes)
    link = page.url
    # The answer is recorded, but the browser never reaches the resume URL.
    lost: list[str] = []

    def lose(route: Route) -> None:
        lost.append(route.request.url)
        route.abort()

    page.route(lambda url: "/oauth2/authorize" in url, lose)
    with page.expect_event("requestfailed", lambda request: "/oauth2/authorize" in request.url):
        page.click("#approve")
    assert len(lost) == 1
    page.unroute_all()
    page.goto(link)  # reopened: Baton says "consumed" and where to continue
    answer = callback(page, started)
    assert exchange(server, started, answer["code"])["scope"] == SCOPE
    context.close()


def test_when_the_time_runs_out_the_request_closes(
    browser: Browser, short_lived: Server, redirect_uri: str
) -> None:
    notes = register(short_lived, redirect_uri)
    context = browser.new_context()
    page = context.new_page()
    to_consent(page, short_lived, notes)
    expect(page.locator("#time-left")).to_contain_text("This request expires in 0:0")
    # The countdown reaches zero; the page asks Baton again and closes the form.
    expect(page.locator("#consent-form")).to_be_hidden(timeout=15_000)
    expect(page.locator("#error")).to_contain_text("expired")
    expect(page.locator("#error")).to_be_focused()
    expect(page.locator("#approve")).to_be_hidden()
    screenshot(page, "consent-page-expired")
    context.close()


def test_an_expired_request_offers_a_restart(
    browser: Browser, short_lived: Server, redirect_uri: str
) -> None:
    notes = register(short_lived, redirect_uri)
    context = browser.new_context()
    page = context.new_page()
    started = to_consent(page, short_lived, notes)
    expect(page.locator("#consent-form")).to_be_hidden(timeout=15_000)
    page.reload()  # the user comes back to the tab later
    expect(page.locator("#error")).to_have_text("This request has expired.")
    expect(page.locator("#restart")).to_be_visible()
    page.click("#restart")
    page.wait_for_url("**/consent?redirection_token=*")  # still signed in: asked again
    page.click("#approve")
    answer = callback(page, started)  # the same request: the same state
    assert exchange(short_lived, started, answer["code"])["scope"] == SCOPE
    context.close()


def test_the_consent_page_without_a_request(browser: Browser, server: Server) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(server.url + "/consent")
    expect(page.locator("#error")).to_contain_text("There is no request to answer here")
    expect(page.locator("#consent-form")).to_be_hidden()
    context.close()
