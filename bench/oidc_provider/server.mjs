// node oidc-provider 9 set up for the same flow as Baton's whole-flow benchmark
// (bench/whole_flow.py): a public client with PKCE, a login interaction that
// checks a password against an argon2id hash, consent granted at once (the
// client is first-party, as Baton's is), then the code exchange.
//
// oidc-provider asks for no password at all by default (its devInteractions
// accept any login); here the login posts a username and password, which are
// verified with the npm `argon2` package (the reference C implementation, as
// argon2-cffi is) at the cost in ARGON2_TIME_COST / ARGON2_MEMORY_COST (KiB) /
// ARGON2_PARALLELISM. Storage is oidc-provider's own in-memory adapter.
//
//   PORT=8000 BENCH_USERS=16 BENCH_PASSWORD=... CLIENT_ID=bench REDIRECT_URI=... node server.mjs
//   node server.mjs --hash-cpu 20   # CPU ms of one argon2id verification, then exit
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { cpuUsage, env, argv, exit } from 'node:process';

import argon2 from 'argon2';
import Provider from 'oidc-provider';

const cost = {
  type: argon2.argon2id,
  timeCost: Number(env.ARGON2_TIME_COST ?? 2),
  memoryCost: Number(env.ARGON2_MEMORY_COST ?? 19 * 1024),
  parallelism: Number(env.ARGON2_PARALLELISM ?? 1),
};
const password = env.BENCH_PASSWORD ?? 'bench password, long enough';

if (argv[2] === '--hash-cpu') {
  const rounds = Number(argv[3] ?? 20);
  const stored = await argon2.hash(password, cost);
  await argon2.verify(stored, password); // warm: the first one also maps its memory
  const before = cpuUsage();
  for (let i = 0; i < rounds; i += 1) await argon2.verify(stored, password);
  const used = cpuUsage(before);
  console.log(JSON.stringify({ cpu_ms_per_verify: (used.user + used.system) / 1000 / rounds }));
  exit(0);
}

const port = Number(env.PORT);
const issuer = `http://127.0.0.1:${port}`;

// One hash serves every user, as on Baton's side; unknown users are verified
// against a dummy hash, as Baton does, so that they cost the same.
const stored = await argon2.hash(password, cost);
const dummy = await argon2.hash(randomBytes(16).toString('hex'), cost);
const users = new Map();
for (let i = 0; i < Number(env.BENCH_USERS ?? 16); i += 1) users.set(`user${i}`, stored);

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'bench', alg: 'RS256', use: 'sig' };

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: env.CLIENT_ID ?? 'bench',
      token_endpoint_auth_method: 'none',
      redirect_uris: [env.REDIRECT_URI ?? 'http://127.0.0.1:9/cb'],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
    },
  ],
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  jwks: { keys: [jwk] },
  features: { devInteractions: { enabled: false } },
  async findAccount(ctx, sub) {
    return { accountId: sub, async claims() { return { sub }; } };
  },
  // Baton issues a refresh token with every code (its client may refresh);
  // oidc-provider's default waits for offline_access. Same work on both sides.
  async issueRefreshToken(ctx, client) {
    return client.grantTypeAllowed('refresh_token');
  },
  // First-party client: consent is granted without asking, as the
  // oidc-provider documentation shows for skipping consent.
  async loadExistingGrant(ctx) {
    const { client, session, result } = ctx.oidc;
    const grantId = result?.consent?.grantId || session.grantIdFor(client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({ clientId: client.clientId, accountId: session.accountId });
    grant.addOIDCScope([...ctx.oidc.requestParamOIDCScopes].join(' '));
    await grant.save();
    return grant;
  },
});

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
}

const loginPage = (uid) => `<!doctype html><meta charset="utf-8"><title>Sign in</title>
<form id="login-form" method="post" action="/interaction/${uid}/login">
<input name="username" autocomplete="username"><input name="password" type="password">
<button>Sign in</button></form>`;

// The interaction routes: the login page (GET) and the login (POST, JSON, like
// Baton's /api/v1/login), which answers { redir_to } for the page to follow.
provider.use(async (ctx, next) => {
  const match = /^\/interaction\/([^/]+)(\/login)?$/.exec(ctx.path);
  if (!match) return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (!match[2] && ctx.method === 'GET') {
    ctx.set('Cache-Control', 'no-store');
    ctx.type = 'html';
    ctx.body = loginPage(details.uid);
    return undefined;
  }
  if (match[2] && ctx.method === 'POST' && details.prompt.name === 'login') {
    const { username, password: given } = await readJson(ctx.req);
    const hash = users.get(username);
    const ok = (await argon2.verify(hash ?? dummy, String(given ?? ''))) && hash !== undefined;
    if (!ok) {
      ctx.status = 401;
      ctx.body = { error: 'invalid_credentials' };
      return undefined;
    }
    const redirTo = await provider.interactionResult(
      ctx.req, ctx.res, { login: { accountId: username } }, { mergeWithLastSubmission: false },
    );
    ctx.set('Cache-Control', 'no-store');
    ctx.body = { redir_to: redirTo };
    return undefined;
  }
  return next();
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
