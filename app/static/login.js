"use strict";

(() => {
  const EXPIRED_MSG = "This sign-in link has expired or was already used. " +
    "Go back to the application and start again.";
  const NETWORK_MSG = "Could not reach the server. Check your connection and try again.";

  const form = document.getElementById("login-form");
  const username = document.getElementById("username");
  const password = document.getElementById("password");
  const submit = document.getElementById("submit");
  const errorBox = document.getElementById("error");
  const statusBox = document.getElementById("status");
  const spinner = submit.querySelector(".spinner");
  const label = submit.querySelector(".label");

  const token = new URLSearchParams(window.location.search).get("redirection_token");
  // Where Baton is: this origin, or the <meta name="baton-api"> of a page hosted elsewhere.
  const apiMeta = document.querySelector('meta[name="baton-api"]');
  const api = ((apiMeta && apiMeta.content) || "").replace(/\/+$/, "");
  const credentials = api ? "include" : "same-origin";
  if (!token) document.getElementById("direct-hint").hidden = false;

  let busy = false;

  // Only same-origin, path-absolute redirects: "/x" but not "//host" or "/\host".
  function isSafeRedirect(target) {
    return typeof target === "string" &&
      target.startsWith("/") &&
      !target.startsWith("//") &&
      !/[\\\u0000-\u001f\u007f]/.test(target);
  }

  function setBusy(on) {
    busy = on;
    submit.disabled = on;
    spinner.hidden = !on;
    label.textContent = on ? "Signing in…" : "Sign in";
    form.setAttribute("aria-busy", on ? "true" : "false");
  }

  function clearMessages() {
    errorBox.textContent = "";
    statusBox.textContent = "";
    username.removeAttribute("aria-invalid");
    password.removeAttribute("aria-invalid");
  }

  function showError(message, focusTarget) {
    errorBox.textContent = message;
    (focusTarget || errorBox).focus();
  }

  function disableForm() {
    username.disabled = true;
    password.disabled = true;
    submit.disabled = true;
  }

  async function readJson(response) {
    try {
      return await response.json();
    } catch {
      return null;
    }
  }

  // What GET /api/v1/login/flow says about this link (see docs/integration.md).
  const clientName = document.getElementById("client-name");
  const timeLeft = document.getElementById("time-left");
  const restart = document.getElementById("restart");
  let countdown = null;

  function stopCountdown() {
    if (countdown !== null) window.clearInterval(countdown);
    countdown = null;
    timeLeft.hidden = true;
  }

  function startCountdown(seconds) {
    const deadline = Date.now() + seconds * 1000;
    const tick = () => {
      const left = Math.max(0, Math.round((deadline - Date.now()) / 1000));
      const minutes = Math.floor(left / 60);
      const rest = String(left % 60).padStart(2, "0");
      timeLeft.textContent = `This sign-in link expires in ${minutes}:${rest}.`;
      timeLeft.hidden = false;
      if (left === 0) {
        stopCountdown();
        checkFlow();
      }
    };
    tick();
    countdown = window.setInterval(tick, 1000);
  }

  function applyFlow(view) {
    const status = view && view.status;
    if (view && view.client && typeof view.client.name === "string") {
      const scopes = Array.isArray(view.scopes) && view.scopes.length
        ? ` (access: ${view.scopes.join(", ")})` : "";
      clientName.textContent = `${view.client.name} asks you to sign in${scopes}.`;
      clientName.hidden = false;
    }
    if (status === "pending") {
      if (typeof view.expires_in === "number") startCountdown(view.expires_in);
      return;
    }
    stopCountdown();
    disableForm();
    if (status === "consumed" && isSafeRedirect(view.restart_url)) {
      statusBox.textContent = "You are already signed in. Continuing…";
      window.location.assign(api + view.restart_url);
    } else if (status === "completed") {
      statusBox.textContent = "This sign-in is complete. You can return to the application.";
      statusBox.focus();
    } else if (status === "expired") {
      showError("This sign-in link has expired.");
      if (isSafeRedirect(view.restart_url)) {
        restart.href = api + view.restart_url;
        restart.hidden = false;
      }
    } else {
      showError(EXPIRED_MSG);
    }
  }

  async function checkFlow() {
    if (!token) return;
    try {
      const response = await fetch(
        api + "/api/v1/login/flow?redirection_token=" + encodeURIComponent(token),
        { credentials, headers: { "Accept": "application/json" } },
      );
      applyFlow(response.ok ? await response.json() : { status: "unknown" });
    } catch {
      // The form still works; the POST will report any problem.
    }
  }

  checkFlow();

  function handleProblem(status, problem) {
    const fields = Array.isArray(problem.invalid_fields) ? problem.invalid_fields : [];
    if (fields.some((f) => f && f.name === "redirection_token" && f.error === "reference_not_found")) {
      disableForm();
      showError(EXPIRED_MSG);
      checkFlow();
      return;
    }
    let message = typeof problem.title === "string" && problem.title
      ? problem.title
      : `Sign-in failed (HTTP ${status}).`;
    if (status === 503) message += " Please try again in a moment.";
    if (status === 429 && problem.retry_after) message += ` Try again in ${problem.retry_after} seconds.`;

    const named = new Set(fields.map((f) => f && f.name));
    if (named.has("username")) username.setAttribute("aria-invalid", "true");
    if (named.has("password") || status === 401) password.setAttribute("aria-invalid", "true");

    password.value = "";
    showError(message, named.has("username") && !named.has("password") ? username : password);
  }

  async function signIn() {
    const payload = { username: username.value, password: password.value };
    if (token) payload.redirection_token = token;

    let response;
    let body;
    try {
      response = await fetch(api + "/api/v1/login", {
        method: "POST",
        credentials,
        headers: { "Content-Type": "application/json", "Accept": "application/json" },
        body: JSON.stringify(payload),
      });
      body = await readJson(response);
    } catch {
      body = null;
    }

    if (!response || body === null || typeof body !== "object") {
      password.value = "";
      showError(NETWORK_MSG, password);
      return false;
    }
    if (response.status === 200) {
      if (isSafeRedirect(body.redir_to)) {
        window.location.assign(api + body.redir_to);
        return true; // keep the button disabled while the browser navigates
      }
      password.value = "";
      statusBox.textContent = "You are signed in.";
      statusBox.focus();
      return false;
    }
    body.retry_after = response.headers.get("Retry-After");
    handleProblem(response.status, body);
    return false;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (busy || submit.disabled) return;
    clearMessages();

    const missing = [username, password].filter((input) => input.value === "");
    if (missing.length > 0) {
      missing.forEach((input) => input.setAttribute("aria-invalid", "true"));
      showError("Enter your username and password.", missing[0]);
      return;
    }

    setBusy(true);
    let navigating = false;
    try {
      navigating = await signIn();
    } finally {
      if (!navigating) setBusy(false);
    }
    // The expired-link case disables the whole form; keep it that way.
    if (username.disabled) submit.disabled = true;
  });
})();
