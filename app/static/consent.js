"use strict";

(() => {
  const UNKNOWN_MSG = "This request has expired or was already answered. " +
    "Go back to the application and start again.";
  const SIGNED_OUT_MSG = "You are not signed in, so you cannot answer this request. " +
    "Go back to the application and start again: it will ask you to sign in.";
  const NO_TOKEN_MSG = "There is no request to answer here. " +
    "This page opens when an application asks for access to your account.";
  const NETWORK_MSG = "Could not reach the server. Check your connection and try again.";

  const form = document.getElementById("consent-form");
  const heading = document.getElementById("heading");
  const signedIn = document.getElementById("signed-in");
  const list = document.getElementById("scopes");
  const approve = document.getElementById("approve");
  const deny = document.getElementById("deny");
  const errorBox = document.getElementById("error");
  const statusBox = document.getElementById("status");
  const timeLeft = document.getElementById("time-left");
  const restart = document.getElementById("restart");
  const labels = new Map([[approve, ["Approve", "Approving…"]], [deny, ["Deny", "Denying…"]]]);

  const token = new URLSearchParams(window.location.search).get("redirection_token");
  // Where Baton is: this origin, or the <meta name="baton-api"> of a page hosted elsewhere.
  const apiMeta = document.querySelector('meta[name="baton-api"]');
  const api = ((apiMeta && apiMeta.content) || "").replace(/\/+$/, "");
  const credentials = api ? "include" : "same-origin";

  let busy = false;
  let countdown = null;

  // Only same-origin, path-absolute redirects: "/x" but not "//host" or "/\host".
  function isSafeRedirect(target) {
    return typeof target === "string" &&
      target.startsWith("/") &&
      !target.startsWith("//") &&
      !/[\\\u0000-\u001f\u007f]/.test(target);
  }

  // While one answer is on its way, neither button can send another.
  function setBusy(button, on) {
    busy = on;
    for (const [each, [idle, working]] of labels) {
      const active = on && each === button;
      each.disabled = on;
      each.querySelector(".spinner").hidden = !active;
      each.querySelector(".label").textContent = active ? working : idle;
    }
    form.setAttribute("aria-busy", on ? "true" : "false");
  }

  function showError(message, focusTarget) {
    errorBox.textContent = message;
    (focusTarget || errorBox).focus();
  }

  function showStatus(message) {
    statusBox.textContent = message;
    statusBox.focus();
  }

  async function readJson(response) {
    try {
      return await response.json();
    } catch {
      return null;
    }
  }

  function stopCountdown() {
    if (countdown !== null) window.clearInterval(countdown);
    countdown = null;
    timeLeft.hidden = true;
  }

  function startCountdown(seconds) {
    stopCountdown();
    const deadline = Date.now() + seconds * 1000;
    const tick = () => {
      const left = Math.max(0, Math.round((deadline - Date.now()) / 1000));
      const minutes = Math.floor(left / 60);
      const rest = String(left % 60).padStart(2, "0");
      timeLeft.textContent = `This request expires in ${minutes}:${rest}.`;
      timeLeft.hidden = false;
      // expires_in is rounded down: ask again a second after zero, once.
      if (Date.now() >= deadline + 1000) {
        stopCountdown();
        checkFlow();
      }
    };
    tick();
    countdown = window.setInterval(tick, 1000);
  }

  // The request can no longer be answered from this page.
  function close() {
    stopCountdown();
    form.hidden = true;
  }

  function scopeItem(scope, index) {
    const item = document.createElement("li");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.id = `scope-${index}`;
    box.value = scope.name;
    box.checked = true;
    // openid only says who the user is; Baton always keeps it.
    box.disabled = scope.name === "openid";
    const label = document.createElement("label");
    label.htmlFor = box.id;
    label.textContent = scope.description || scope.name;
    const name = document.createElement("code");
    name.textContent = box.disabled ? `${scope.name} · always included` : scope.name;
    label.append(name);
    item.append(box, label);
    return item;
  }

  function applyFlow(view) {
    if (view.client && typeof view.client.name === "string") {
      heading.textContent = `Allow ${view.client.name} to access your account?`;
      document.title = `${view.client.name} · Allow access · Baton`;
    }
    if (typeof view.username === "string") {
      signedIn.textContent = `Signed in as ${view.username}.`;
      signedIn.hidden = false;
    }
    const status = view.status;
    if (status === "pending") {
      if (!list.hasChildNodes() && Array.isArray(view.scopes)) {
        list.replaceChildren(...view.scopes.map(scopeItem));
      }
      form.hidden = false;
      if (typeof view.expires_in === "number") startCountdown(view.expires_in);
      if (!busy) approve.focus();
      return;
    }
    close();
    if (status === "consumed" && isSafeRedirect(view.restart_url)) {
      showStatus("You already answered this request. Continuing…");
      window.location.assign(api + view.restart_url);
    } else if (status === "completed") {
      showStatus("You already answered this request. You can return to the application.");
    } else if (status === "expired") {
      showError("This request has expired.");
      if (isSafeRedirect(view.restart_url)) {
        restart.href = api + view.restart_url;
        restart.hidden = false;
      }
    } else {
      showError(UNKNOWN_MSG);
    }
  }

  function problemMessage(response, problem) {
    let message = problem && typeof problem.title === "string" && problem.title
      ? problem.title
      : `Something went wrong (HTTP ${response.status}).`;
    const wait = response.headers.get("Retry-After");
    if (response.status === 503) message += " Please try again in a moment.";
    if (response.status === 429 && wait) message += ` Try again in ${wait} seconds.`;
    return message;
  }

  async function checkFlow() {
    if (!token) {
      showError(NO_TOKEN_MSG);
      return;
    }
    let response;
    let body = null;
    try {
      response = await fetch(
        api + "/api/v1/consent?redirection_token=" + encodeURIComponent(token),
        { credentials, headers: { "Accept": "application/json" } },
      );
      body = await readJson(response);
    } catch {
      response = null;
    }
    if (response && response.ok && body && typeof body === "object") {
      applyFlow(body);
      return;
    }
    close();
    if (!response) showError(NETWORK_MSG);
    else if (response.status === 401) showError(SIGNED_OUT_MSG);
    else showError(problemMessage(response, body));
  }

  async function answer(approved) {
    const payload = { redirection_token: token, approve: approved };
    const boxes = Array.from(list.querySelectorAll('input[type="checkbox"]'));
    if (approved && boxes.some((box) => !box.checked)) {
      payload.scopes = boxes.filter((box) => box.checked).map((box) => box.value);
    }

    let response;
    let body = null;
    try {
      response = await fetch(api + "/api/v1/consent", {
        method: "POST",
        credentials,
        headers: { "Content-Type": "application/json", "Accept": "application/json" },
        body: JSON.stringify(payload),
      });
      body = await readJson(response);
    } catch {
      response = null;
    }

    if (!response || body === null || typeof body !== "object") {
      showError(NETWORK_MSG);
      return false;
    }
    if (response.ok) {
      if (isSafeRedirect(body.redir_to)) {
        window.location.assign(api + body.redir_to);
        return true; // keep the buttons disabled while the browser navigates
      }
      showError(`Unexpected answer from the server (HTTP ${response.status}).`);
      return false;
    }
    const fields = Array.isArray(body.invalid_fields) ? body.invalid_fields : [];
    if (fields.some((f) => f && f.name === "redirection_token" && f.error === "reference_not_found")) {
      await checkFlow(); // says why: expired, already answered, unknown
      return false;
    }
    if (response.status === 401) {
      close();
      showError(SIGNED_OUT_MSG);
      return false;
    }
    const firstBox = boxes.find((box) => !box.disabled);
    const onScopes = fields.some((f) => f && f.name === "scopes");
    showError(problemMessage(response, body), onScopes && firstBox ? firstBox : null);
    return false;
  }

  async function decide(button, approved) {
    if (busy || button.disabled || !token) return;
    errorBox.textContent = "";
    statusBox.textContent = "";
    setBusy(button, true);
    let navigating = false;
    try {
      navigating = await answer(approved);
    } finally {
      if (!navigating) setBusy(button, false);
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    decide(approve, true);
  });
  deny.addEventListener("click", () => decide(deny, false));

  // Back to this page from the application (back/forward cache): the buttons
  // may still say "Approving…"; ask Baton what became of the request.
  window.addEventListener("pageshow", (event) => {
    if (!event.persisted) return;
    setBusy(null, false);
    checkFlow();
  });

  checkFlow();
})();
