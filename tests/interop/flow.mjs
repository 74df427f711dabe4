// Baton's whole OAuth 2.1 / OpenID Connect flow, driven by the npm package
// openid-client (v6, built on oauth4webapi): a client library nobody here wrote.
//
//   BATON_INTEROP_USERNAME=alice BATON_INTEROP_PASSWORD=… \
//     node tests/interop/flow.mjs --issuer http://127.0.0.1:8000 --client public
//
// discovery → dynamic registration → PKCE authorization URL → the browser's
// steps (login page, consent page) → code → token (ID token validated by the
// library, nonce) → userinfo → refresh (rotation: the old refresh token is then
// refused) → introspection → a second, silent authorization → revocation →
// introspection says inactive.
//
// Secrets come from the environment only, never argv (where `ps` shows them):
//   BATON_INTEROP_USERNAME, BATON_INTEROP_PASSWORD  the person who signs in
//   BATON_INTEROP_CLIENT_ID, BATON_INTEROP_CLIENT_SECRET
//       a client registered beforehand (`baton clients add`): skip registration
//   BATON_INTEROP_RS_CLIENT_ID, BATON_INTEROP_RS_CLIENT_SECRET
//       the confidential resource server that introspects a public client's
//       tokens (RFC 7662 §2.1); registered dynamically when not given
// Pre-registered clients must have the redirect URI http://127.0.0.1/callback.
//
// Prints one JSON object {ok, client, versions, steps: [{name, ok, …}]} and
// exits 1 when a step failed. Every OAuth endpoint comes from discovery; the
// only Baton paths written here are its login and consent pages' API, which a
// person's browser calls (the "browser" here is fetch with a cookie jar).

import { createServer } from 'node:http'
import { createRequire } from 'node:module'
import { parseArgs } from 'node:util'

import * as client from 'openid-client'

const SCOPE = 'openid profile read write'
const REGISTERED_REDIRECT_URI = 'http://127.0.0.1/callback'
const TIMEOUT_MS = 30_000

const steps = []
const report = { ok: false, client: null, registration: null, versions: versions(), steps }

function versions() {
  const require = createRequire(import.meta.url)
  const version = (name) => require(`${name}/package.json`).version
  return {
    node: process.versions.node,
    'openid-client': version('openid-client'),
    oauth4webapi: version('oauth4webapi'),
    jose: version('jose'),
  }
}

class StepFailed extends Error {}

/** Runs one step and records its outcome; a failed step ends the flow. */
async function step(name, run) {
  const started = Date.now()
  try {
    const detail = (await run()) ?? {}
    steps.push({ name, ok: true, ms: Date.now() - started, ...detail })
    return detail
  } catch (error) {
    steps.push({ name, ok: false, ms: Date.now() - started, error: describe(error) })
    throw new StepFailed(name)
  }
}

function check(condition, message, detail) {
  if (!condition) {
    const error = new Error(message)
    if (detail !== undefined) error.detail = detail
    throw error
  }
}

/** What an error carries: the server's OAuth error, or the library's reason. */
function describe(error) {
  const out = { name: error?.name, message: error?.message ?? String(error) }
  for (const key of ['code', 'error', 'error_description', 'status', 'detail']) {
    if (error?.[key] !== undefined) out[key] = error[key]
  }
  if (error?.cause !== undefined) {
    out.cause = error.cause instanceof Error ? describe(error.cause) : error.cause
  }
  return out
}

/** The error a call that must be refused ends with (null when it was not refused). */
async function refusal(run) {
  try {
    await run()
  } catch (error) {
    return describe(error)
  }
  return null
}

// -- the "browser": fetch with a cookie jar, redirects followed by hand --------

class Browser {
  constructor(origin) {
    this.origin = origin
    this.cookies = new Map()
  }

  async request(url, { method = 'GET', json } = {}) {
    const headers = { accept: 'application/json, text/html;q=0.9' }
    if (this.cookies.size > 0) {
      headers.cookie = [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ')
    }
    let body
    if (json !== undefined) {
      body = JSON.stringify(json)
      headers['content-type'] = 'application/json'
      // A browser says which page a script's request comes from: Baton's own.
      headers.origin = this.origin
    }
    const response = await fetch(url, {
      method,
      headers,
      body,
      redirect: 'manual',
      signal: AbortSignal.timeout(TIMEOUT_MS),
    })
    if (new URL(url).origin === this.origin) this.keep(response)
    return response
  }

  keep(response) {
    for (const line of response.headers.getSetCookie()) {
      const [pair, ...attributes] = line.split(';')
      const at = pair.indexOf('=')
      const name = pair.slice(0, at).trim()
      const expired = attributes.some((a) => /^\s*max-age\s*=\s*(0|-\d+)\s*$/i.test(a))
      if (expired) this.cookies.delete(name)
      else this.cookies.set(name, pair.slice(at + 1).trim())
    }
  }

  /** The absolute Location of a redirect, which it must be. */
  async redirected(url) {
    const response = await this.request(url)
    const location = response.headers.get('location')
    const text = await response.text()
    check(
      [302, 303].includes(response.status) && location,
      `expected a redirect from ${new URL(url).pathname}, got ${response.status}`,
      { status: response.status, body: text.slice(0, 500) },
    )
    return new URL(location, url)
  }

  async json(url, body) {
    const response = await this.request(url, body === undefined ? {} : { method: 'POST', json: body })
    const text = await response.text()
    check(response.status === 200, `${new URL(url).pathname} answered ${response.status}`, {
      status: response.status,
      body: text.slice(0, 500),
    })
    return JSON.parse(text)
  }
}

/** The native app's loopback redirect listener (RFC 8252 §7.3). */
async function loopbackListener() {
  const waiting = []
  const server = createServer((request, response) => {
    response.writeHead(200, { 'content-type': 'text/plain' })
    response.end('You can close this window.')
    waiting.shift()?.(request.url)
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: server.address().port,
    /** The path and query of the next request that arrives. */
    next: () => new Promise((resolve) => waiting.push(resolve)),
    close: () => server.close(),
  }
}

/**
 * What a person's browser does with the authorization URL: authorize →
 * login page → POST /api/v1/login → resume → consent page → POST
 * /api/v1/consent → resume → the app's redirect URI. Returns the URL the app
 * received and the pages that were shown.
 */
async function signIn(browser, authorizationUrl, listener, credentials) {
  const pages = []
  let location = await browser.redirected(authorizationUrl.href)
  while (location.origin === browser.origin && pages.length < 4) {
    const token = location.searchParams.get('redirection_token')
    check(token, `unexpected redirect to ${location.pathname}${location.search}`)
    const page = await browser.request(location.href)
    await page.arrayBuffer()
    check(page.status === 200, `the page ${location.pathname} answered ${page.status}`)
    const api = (path) => new URL(path, browser.origin).href
    let answer
    if (location.pathname === '/login') {
      pages.push({ page: 'login' })
      answer = await browser.json(api('/api/v1/login'), {
        ...credentials,
        redirection_token: token,
      })
    } else if (location.pathname === '/consent') {
      const shown = await browser.json(
        api(`/api/v1/consent?redirection_token=${encodeURIComponent(token)}`),
      )
      pages.push({ page: 'consent', client: shown.client, scopes: shown.scopes.map((s) => s.name) })
      answer = await browser.json(api('/api/v1/consent'), {
        redirection_token: token,
        approve: true,
      })
    } else {
      check(false, `unexpected page ${location.pathname}`)
    }
    location = await browser.redirected(new URL(answer.redir_to, browser.origin).href)
  }
  check(
    location.origin === `http://127.0.0.1:${listener.port}`,
    `the browser ended at ${location.origin}${location.pathname}, not the redirect URI`,
  )
  const received = listener.next()
  const landed = await fetch(location.href, { signal: AbortSignal.timeout(TIMEOUT_MS) })
  await landed.arrayBuffer()
  return { callback: new URL(await received, location.origin), pages }
}

// -- the flow ------------------------------------------------------------------

async function main() {
  const { values: args } = parseArgs({
    options: {
      issuer: { type: 'string', default: process.env.BATON_ISSUER },
      client: { type: 'string', default: 'public' },
    },
  })
  const env = process.env
  const credentials = { username: env.BATON_INTEROP_USERNAME, password: env.BATON_INTEROP_PASSWORD }
  check(args.issuer, 'give the issuer URL: --issuer URL (or BATON_ISSUER)')
  check(credentials.username && credentials.password, 'set BATON_INTEROP_USERNAME and _PASSWORD')
  check(['public', 'confidential'].includes(args.client), '--client is public or confidential')
  const issuer = new URL(args.issuer)
  const confidential = args.client === 'confidential'
  const preregistered = Boolean(env.BATON_INTEROP_CLIENT_ID)
  report.client = args.client
  report.registration = preregistered ? 'preregistered' : 'dynamic'

  // openid-client v6 refuses plain-http endpoints. The test server listens on
  // loopback HTTP, so the flow opts in, for discovery and every later request.
  const options = { execute: [client.allowInsecureRequests], timeout: TIMEOUT_MS / 1000 }
  const listener = await loopbackListener()
  // Registered without a port; the app listens on an ephemeral one (RFC 8252 §7.3).
  const redirectUri = `http://127.0.0.1:${listener.port}/callback`
  const browser = new Browser(issuer.origin)

  /** A Configuration for a client known by id (and secret), from the discovered metadata. */
  const configured = (server, clientId, secret) => {
    const config = new client.Configuration(
      server,
      clientId,
      secret ? { client_secret: secret } : {},
      secret ? client.ClientSecretBasic(secret) : client.None(),
    )
    client.allowInsecureRequests(config)
    return config
  }

  /** RFC 7591 at the discovered registration_endpoint. */
  const register = async (name, kind) => {
    const registered = await client.dynamicClientRegistration(
      issuer,
      {
        client_name: name,
        redirect_uris: [REGISTERED_REDIRECT_URI],
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        token_endpoint_auth_method: kind === 'confidential' ? 'client_secret_basic' : 'none',
        scope: SCOPE,
      },
      // The library would default to client_secret_post; use what is registered.
      kind === 'confidential' ? undefined : client.None(),
      options,
    )
    const metadata = registered.clientMetadata()
    check(
      Boolean(metadata.client_secret) === (kind === 'confidential'),
      `a ${kind} client ${metadata.client_secret ? 'got' : 'did not get'} a client_secret`,
    )
    return metadata
  }

  let server
  let config
  let introspector
  try {
    await step('discovery', async () => {
      // OpenID Connect Discovery 1.0 §4; the library checks the issuer it finds.
      const discovered = await client.discovery(issuer, 'nobody-yet', undefined, undefined, options)
      server = discovered.serverMetadata()
      for (const name of ['authorization_endpoint', 'token_endpoint', 'jwks_uri']) {
        check(server[name], `no ${name} in the metadata`)
      }
      return {
        issuer: server.issuer,
        endpoints: Object.fromEntries(
          Object.entries(server).filter(([k]) => k.endsWith('_endpoint') || k === 'jwks_uri'),
        ),
      }
    })

    await step('registration', async () => {
      if (preregistered) {
        config = configured(server, env.BATON_INTEROP_CLIENT_ID, env.BATON_INTEROP_CLIENT_SECRET)
        return { client_id: env.BATON_INTEROP_CLIENT_ID, preregistered: true }
      }
      check(server.registration_endpoint, 'no registration_endpoint in the metadata')
      const metadata = await register(`openid-client interop (${args.client})`, args.client)
      config = configured(server, metadata.client_id, metadata.client_secret)
      return {
        client_id: metadata.client_id,
        token_endpoint_auth_method: metadata.token_endpoint_auth_method,
        grant_types: metadata.grant_types,
      }
    })

    // Who introspects: the confidential client itself, or for a public client
    // the resource server its tokens are for (RFC 7662 §2.1 wants it authenticated).
    await step('resource server', async () => {
      if (confidential) {
        introspector = config
        return { introspects_as: 'the client itself' }
      }
      if (env.BATON_INTEROP_RS_CLIENT_ID) {
        const { BATON_INTEROP_RS_CLIENT_ID: id, BATON_INTEROP_RS_CLIENT_SECRET: secret } = env
        introspector = configured(server, id, secret)
        return { introspects_as: id, preregistered: true }
      }
      const metadata = await register('openid-client interop (resource server)', 'confidential')
      introspector = configured(server, metadata.client_id, metadata.client_secret)
      return { introspects_as: metadata.client_id }
    })

    /** A PKCE (S256) authorization request with state and nonce, through the browser. */
    const authorize = async (name, expectedPages) => {
      const request = {
        codeVerifier: client.randomPKCECodeVerifier(),
        state: client.randomState(),
        nonce: client.randomNonce(),
      }
      await step(name, async () => {
        const url = client.buildAuthorizationUrl(config, {
          redirect_uri: redirectUri,
          scope: SCOPE,
          code_challenge: await client.calculatePKCECodeChallenge(request.codeVerifier),
          code_challenge_method: 'S256',
          state: request.state,
          nonce: request.nonce,
        })
        const { callback, pages } = await signIn(browser, url, listener, credentials)
        request.callback = callback
        const shown = pages.map((p) => p.page)
        check(
          JSON.stringify(shown) === JSON.stringify(expectedPages),
          `pages shown: [${shown}], expected [${expectedPages}]`,
        )
        check(callback.searchParams.get('code'), 'no code at the redirect URI', {
          callback: Object.fromEntries(callback.searchParams),
        })
        return { pages, callback_parameters: [...callback.searchParams.keys()].sort() }
      })
      return request
    }

    /** The code exchange; the library checks state, PKCE, the ID token and its nonce. */
    const exchange = async (name, request) => {
      let tokens
      await step(name, async () => {
        tokens = await client.authorizationCodeGrant(config, request.callback, {
          pkceCodeVerifier: request.codeVerifier,
          expectedState: request.state,
          expectedNonce: request.nonce,
          idTokenExpected: true,
        })
        check(tokens.refresh_token, 'no refresh token with the code exchange')
        return {
          token_type: tokens.token_type,
          scope: tokens.scope,
          expires_in: tokens.expires_in,
          refresh_token: Boolean(tokens.refresh_token),
          id_token_claims: tokens.claims(),
        }
      })
      return tokens
    }

    const introspect = (name, token, hint) =>
      step(name, async () => ({
        introspection: await client.tokenIntrospection(introspector, token, {
          token_type_hint: hint,
        }),
      }))

    // 1. The first sign-in shows the login page, then the consent page.
    const first = await authorize('authorize', ['login', 'consent'])
    const tokens = await exchange('token', first)
    const subject = tokens.claims().sub

    await step('userinfo', async () => ({
      // OpenID Connect Core 1.0 §5.3.4: the library checks sub against the ID token's.
      userinfo: await client.fetchUserInfo(config, tokens.access_token, subject),
    }))

    let refreshed
    await step('refresh', async () => {
      refreshed = await client.refreshTokenGrant(config, tokens.refresh_token)
      check(refreshed.refresh_token, 'no new refresh token (OAuth 2.1 §4.3.1 rotation)')
      check(refreshed.refresh_token !== tokens.refresh_token, 'the refresh token was not rotated')
      check(refreshed.access_token !== tokens.access_token, 'the same access token came back')
      return { scope: refreshed.scope, rotated: true, id_token: Boolean(refreshed.id_token) }
    })
    await introspect('introspect refreshed access token', refreshed.access_token, 'access_token')

    await step('refresh with the rotated-out token', async () => {
      const refused = await refusal(() => client.refreshTokenGrant(config, tokens.refresh_token))
      check(refused, 'the rotated-out refresh token was accepted again')
      check(refused.error === 'invalid_grant', `refused with ${refused.error}`, refused)
      return { refused }
    })
    // A rotated-out refresh token that comes back has leaked: its family ends.
    await introspect('introspect after reuse', refreshed.access_token, 'access_token')

    // 2. With the session and the remembered consent, a second authorization is
    // silent; it starts a new token family to revoke.
    const second = await authorize('authorize again', [])
    const again = await exchange('token again', second)
    await introspect('introspect access token', again.access_token, 'access_token')
    await introspect('introspect refresh token', again.refresh_token, 'refresh_token')
    await step('revoke', async () => {
      // RFC 7009, as the client itself (a public client by its client_id).
      await client.tokenRevocation(config, again.refresh_token, { token_type_hint: 'refresh_token' })
    })
    await introspect('introspect revoked refresh token', again.refresh_token, 'refresh_token')
    await introspect('introspect its access token', again.access_token, 'access_token')
    await step('userinfo after revocation', async () => {
      const refused = await refusal(() => client.fetchUserInfo(config, again.access_token, subject))
      check(refused, 'userinfo answered to a revoked access token')
      return { refused }
    })

    const expected = {
      'introspect refreshed access token': true,
      'introspect after reuse': false,
      'introspect access token': true,
      'introspect refresh token': true,
      'introspect revoked refresh token': false,
      'introspect its access token': false,
    }
    await step('introspection verdicts', async () => {
      const wrong = steps
        .filter((s) => s.name in expected)
        .filter((s) => s.introspection.active !== expected[s.name])
        .map((s) => s.name)
      check(wrong.length === 0, `unexpected introspection answers: ${wrong.join(', ')}`)
    })
    report.ok = true
  } finally {
    listener.close()
  }
}

try {
  await main()
} catch (error) {
  if (!(error instanceof StepFailed)) steps.push({ name: 'setup', ok: false, error: describe(error) })
}
process.stdout.write(`${JSON.stringify(report, null, 2)}\n`)
process.exitCode = report.ok ? 0 : 1
