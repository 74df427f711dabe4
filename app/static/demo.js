"use strict";

(() => {
  const KEY_VERIFIER = "baton-demo:code_verifier";
  const KEY_STATE = "baton-demo:state";
  const $ = (id) => document.getElementById(id);
  const errorBox = $("error");

  function showError(message) {
    errorBox.textContent = message;
    errorBox.focus();
  }

  function progress(message) {
    $("progress").hidden = !message;
    $("progress-text").textContent = message || "";
  }

  function base64url(bytes) {
    let binary = "";
    for (const b of new Uint8Array(bytes)) binary += String.fromCharCode(b);
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  const randomString = (n) => base64url(crypto.getRandomValues(new Uint8Array(n)));

  async function fetchJson(url, options) {
    const headers = { Accept: "application/json", ...(options && options.headers) };
    const response = await fetch(url, { ...options, headers });
    const body = await response.json().catch(() => null);
    return { response, body };
  }

  // Human-readable message from an RFC 6749/6750 error or an RFC 7807 problem document.
  function describeError(body, status) {
    if (body && typeof body.error === "string") {
      return body.error_description ? `${body.error}: ${body.error_description}` : body.error;
    }
    if (body && typeof body.title === "string") return body.title;
    return `Unexpected response from the server (HTTP ${status}).`;
  }

  async function startFlow(config) {
    if (!window.crypto || !crypto.subtle) throw new Error("Web Crypto needs HTTPS or localhost.");
    const verifier = randomString(32); // 43 chars of [A-Za-z0-9-_]
    const challenge = base64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
    const state = randomString(16);
    sessionStorage.setItem(KEY_VERIFIER, verifier);
    sessionStorage.setItem(KEY_STATE, state);

    const url = new URL(config.authorize_endpoint, window.location.origin);
    url.search = new URLSearchParams({
      response_type: "code",
      client_id: config.client_id,
      redirect_uri: config.redirect_uri,
      scope: config.scope,
      state,
      code_challenge: challenge,
      code_challenge_method: "S256",
    }).toString();
    window.location.assign(url.toString());
  }

  async function handleCallback(config) {
    const query = new URLSearchParams(window.location.search);
    const storedState = sessionStorage.getItem(KEY_STATE);
    const verifier = sessionStorage.getItem(KEY_VERIFIER);
    // One-shot: forget the secrets and drop the code from the URL before using it.
    sessionStorage.removeItem(KEY_STATE);
    sessionStorage.removeItem(KEY_VERIFIER);
    history.replaceState(null, "", "/demo/callback");
    $("again").hidden = false;

    if (query.has("error")) {
      const description = query.get("error_description");
      showError(description ? `${query.get("error")}: ${description}` : query.get("error"));
      return;
    }
    if (!query.has("code")) {
      showError("There is no authorization response to process. Run the flow again.");
      return;
    }
    if (!storedState || !verifier || query.get("state") !== storedState) {
      showError("State mismatch — refusing the response.");
      return;
    }

    progress("Exchanging the code for tokens…");
    const token = await fetchJson(config.token_endpoint, {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({
        grant_type: "authorization_code",
        code: query.get("code"),
        redirect_uri: config.redirect_uri,
        client_id: config.client_id,
        code_verifier: verifier,
      }),
    });
    if (!token.response.ok || !token.body || typeof token.body.access_token !== "string") {
      showError(describeError(token.body, token.response.status));
      return;
    }
    $("token").textContent = JSON.stringify(token.body, null, 2);
    $("result").hidden = false;

    progress("Calling the user-info endpoint…");
    const me = await fetchJson(config.userinfo_endpoint, {
      headers: { Authorization: `Bearer ${token.body.access_token}` },
    });
    if (!me.response.ok || !me.body || typeof me.body.username !== "string") {
      showError(describeError(me.body, me.response.status));
      return;
    }
    $("whoami").textContent = `Signed in as ${me.body.username}`;
    $("whoami").focus();
  }

  async function main() {
    const onCallback = window.location.pathname === "/demo/callback";
    progress("Loading the demo configuration…");
    const { response, body: config } = await fetchJson("/demo/config.json");
    progress("");
    if (!response.ok || !config) {
      showError(`Could not load the demo configuration (HTTP ${response.status}).`);
      return;
    }
    if (onCallback) {
      await handleCallback(config);
      return;
    }
    $("intro").hidden = false;
    const start = $("start");
    start.disabled = false;
    start.addEventListener("click", () => {
      start.disabled = true;
      startFlow(config).catch((err) => {
        start.disabled = false;
        showError(`Could not start the flow: ${err.message}`);
      });
    });
  }

  main()
    .catch(() => showError("Could not reach the server. Check your connection and try again."))
    .finally(() => progress(""));
})();
